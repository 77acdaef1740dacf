"""LRA Table 1's patterned attentions (local, Sparse Transformer, Longformer, BigBird, Sinkhorn):
parity with LRA's own modules (golden vectors in tests/fixtures/lra_<kind>_golden.json, their
`source` says how they were made) and float64 checks of each pattern against a dense masked
softmax built from its definition."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lra_bench import mixers
from lra_bench.mixers import bigbird, local, longformer, sinkhorn, sparse_transformer

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module", autouse=True)
def quick_compiles():
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def fixture(kind):
    with open(FIXTURES / f"lra_{kind}_golden.json") as f:
        return json.load(f)["cases"]


def spec(n, dim, heads, *, has_cls=False, dtype=jnp.float32, layer=0):
    return mixers.MixerSpec(dim=dim, num_heads=heads, qkv_dim=dim, attention_dropout=0.0,
                            max_length=n, has_cls=has_cls, dtype=dtype, init="lra", layer=layer)


# LRA's parameter names -> this repo's layers (DenseGeneral kernels are (in, heads, d) / (heads,
# d, out); nnx.Linear keeps them flat).
NAMES = {"query": "query", "key": "key", "value": "value", "out": "out",
         "query_sliding_window": "query", "key_sliding_window": "key",
         "value_sliding_window": "value", "query_global": "query_global",
         "key_global": "key_global", "value_global": "value_global",
         "DenseGeneral_0": "sort"}  # Sinkhorn's sort net


def load(module, params):
    for name, kernel in params.items():
        layer, _ = name.split("/")
        if not hasattr(module, NAMES.get(layer, layer)):
            continue  # LRA's Longformer keeps global projections it never uses (no global token)
        target = getattr(module, NAMES.get(layer, layer))
        target.kernel[...] = jnp.asarray(np.asarray(kernel, np.float32).reshape(
            target.kernel.shape))


def run(module, x, mask, w):
    """y and the gradients of sum(y * w) with respect to x and the kernels."""
    graph, state = nnx.split(module)

    def loss(state, x):
        y = nnx.merge(graph, state)(x, mask)[0]
        return jnp.sum(y * w), y

    (_, y), (dstate, dx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        state, x)
    return y, dx, dstate


def check_golden(kind, case, atol=2e-5):
    x, w = (jnp.asarray(case[k], jnp.float32) for k in ("x", "w"))
    n = case["n"]
    mask = jnp.arange(n)[None, :] < jnp.asarray(case["lengths"])[:, None]
    module = mixers.build(kind, spec(n, case["dim"], case["heads"], has_cls=case["has_cls"]),
                          case["options"], nnx.Rngs(0))
    load(module, case["params"])
    y, dx, dstate = run(module, x, mask, w)
    np.testing.assert_allclose(y, np.asarray(case["y"]), atol=atol, rtol=1e-4)
    np.testing.assert_allclose(dx, np.asarray(case["dx"]), atol=atol, rtol=1e-4)
    for name, g in case["dparams"].items():
        layer = NAMES.get(name.split("/")[0], name.split("/")[0])
        if layer not in dstate:  # unused in LRA too: its gradient there is zero
            np.testing.assert_array_equal(np.asarray(g), 0.0)
            continue
        got = dstate[layer]["kernel"][...]
        np.testing.assert_allclose(got, np.asarray(g).reshape(got.shape), atol=atol, rtol=1e-4,
                                   err_msg=f"{kind} {name}")


# --- parity with LRA's modules -------------------------------------------------------------------

GOLDEN = [(kind, name) for kind in ("local", "sparse_transformer", "longformer", "bigbird",
                                    "sinkhorn") for name in fixture(kind)]


@pytest.mark.parametrize("kind,name", GOLDEN)
def test_matches_lra(kind, name):
    check_golden(kind, fixture(kind)[name])
