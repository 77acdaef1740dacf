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
from lra_bench.mixers import _sparse_blocks, bigbird, local, longformer, sinkhorn, sparse_transformer
from lra_bench.mixers._attention import attention

FIXTURES = Path(__file__).parent / "fixtures"


# compiled without most XLA passes (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("fast_compile_module")


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


@pytest.mark.parametrize("name", list(fixture("sparse_transformer")))
def test_sparse_transformer_dense_form_matches_lra(name):
    """The default form is blocked (above); LRA's own dense masked softmax matches too."""
    case = fixture("sparse_transformer")[name]
    check_golden("sparse_transformer", {**case, "options": {**case["options"], "form": "dense"}})


# --- float64: each pattern against a dense masked softmax built from its definition -------------

@pytest.fixture
def x64():
    if hasattr(jax, "enable_x64"):
        ctx = jax.enable_x64(True)
    else:  # pragma: no cover
        from jax.experimental import enable_x64
        ctx = enable_x64()
    with ctx:
        yield


def qkv64(b, n, h, d, seed=0):
    rs = np.random.RandomState(seed)
    return tuple(jnp.asarray(rs.randn(b, n, h, d)) for _ in range(3))


def dense(q, k, v, allowed, fallback=True):
    """softmax(q k^T / sqrt(d)) v over the allowed (batch, heads, n, n) pairs, in numpy float64;
    a row with no allowed key averages the values of its `fallback` keys (LRA's all-masked rows
    are uniform over the keys its softmax runs over)."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    allowed = np.broadcast_to(allowed, logits.shape)
    empty = ~allowed.any(-1, keepdims=True)
    allowed = np.where(empty, np.broadcast_to(fallback, logits.shape), allowed)
    logits = np.where(allowed, np.where(empty, 0.0, logits), -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def lengths_mask(lengths, n):
    return np.arange(n)[None, :] < np.asarray(lengths)[:, None]


@pytest.mark.parametrize("layout", ["lra", "blocks"])
def test_local_is_softmax_inside_its_groups(x64, layout):
    b, n, h, d, size = 2, 12, 2, 3, 4
    q, k, v = qkv64(b, n, h, d)
    mask = lengths_mask([12, 7], n)
    t = np.arange(n)
    nb = n // size
    group = t % nb if layout == "lra" else t // size
    # LRA's view: token t = i * nb + j is masked by entry j * size + i
    seen = mask[:, (t % nb) * size + t // nb] if layout == "lra" else mask
    same = group[:, None] == group[None, :]
    allowed = same & seen[:, None, :, None] & seen[:, None, None, :]
    got = local.local_attention(q, k, v, jnp.asarray(mask), block_size=size, layout=layout)
    np.testing.assert_allclose(got, dense(q, k, v, allowed, fallback=same), atol=1e-12)


@pytest.mark.parametrize("cls", [False, True])
def test_sparse_fixed_pattern_is_its_definition(x64, cls):
    n, size, c = 13, 4, 1
    pattern = sparse_transformer.fixed_pattern(n, size, c, cls=cls)
    off = int(cls)
    for i in range(n):
        for j in range(n):
            if cls and (i == 0 or j == 0):
                want = True
            else:
                a, z = i - off, j - off
                want = z <= a and (a // size == z // size or z % size == 0 or z % size >= size - c)
            assert pattern[i, j] == want, (i, j)
    q, k, v = qkv64(2, n, 2, 3)
    mask = lengths_mask([13, 8], n)
    allowed = pattern[None, None] & mask[:, None, :, None] & mask[:, None, None, :]
    got = sparse_transformer.sparse_attention(q, k, v, jnp.asarray(mask), pattern)
    np.testing.assert_allclose(got, dense(q, k, v, allowed), atol=1e-12)


@pytest.mark.parametrize("n,size,c,cls,causal,rate", [
    (13, 4, 1, False, True, 0.0), (13, 4, 1, True, True, 0.0), (17, 5, 2, True, False, 0.0),
    (16, 4, 4, False, True, 0.0), (11, 4, 0, True, True, 0.0), (13, 4, 1, True, True, 0.3),
    (20, 6, 2, False, False, 0.5)])
def test_sparse_blocked_form_is_the_dense_masked_softmax(x64, n, size, c, cls, causal, rate):
    """Outputs and gradients, with padding, CLS, lengths not divisible by the block size and
    attention dropout drawn from the same key."""
    q, k, v = qkv64(2, n, 3, 4)
    g = qkv64(2, n, 3, 4, seed=1)[0]
    mask = jnp.asarray(lengths_mask([n, n // 2], n))
    rng = jax.random.key(3) if rate else None
    pattern = sparse_transformer.fixed_pattern(n, size, c, causal=causal, cls=cls)

    def dense_form(q, k, v):
        return sparse_transformer.sparse_attention(q, k, v, mask, pattern, dropout_rate=rate,
                                                   dropout_rng=rng)

    def blocked_form(q, k, v):
        return _sparse_blocks.blocked_fixed_attention(q, k, v, mask, size, c, causal=causal,
                                                      cls=cls, dropout_rate=rate, dropout_rng=rng)

    for_grad = lambda f: jax.grad(lambda *a: jnp.sum(f(*a) * g), argnums=(0, 1, 2))  # noqa: E731
    np.testing.assert_allclose(blocked_form(q, k, v), dense_form(q, k, v), atol=1e-12)
    for got, want in zip(for_grad(blocked_form)(q, k, v), for_grad(dense_form)(q, k, v)):
        np.testing.assert_allclose(got, want, atol=1e-12)
    if rate:  # the dropout really dropped something: not the output without it
        assert not np.allclose(blocked_form(q, k, v), sparse_transformer.sparse_attention(
            q, k, v, mask, pattern))


# 12 over 11 tokens: a chunk would see every key, so one dense band (not full) is computed; 40:
# the band holds every key
@pytest.mark.parametrize("window,chunk,cls", [(4, None, False), (5, 3, False), (7, 2, True),
                                              (12, None, False), (12, None, True),
                                              (40, None, False), (40, None, True)])
def test_longformer_band_in_chunks_is_the_dense_band(x64, window, chunk, cls):
    n = 11
    q, k, v = qkv64(2, n, 2, 3)
    mask = lengths_mask([11, 6], n)
    left, right = longformer.window_sides(window)
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    band = (j - i >= -(left - 1)) & (j - i <= right)
    if cls:
        band = band | (j == 0)
    allowed = band[None, None] & mask[:, None, :, None] & mask[:, None, None, :]
    got = longformer.sliding_window_attention(q, k, v, jnp.asarray(mask), window=window,
                                              chunk=chunk, global_first=cls)
    np.testing.assert_allclose(got, dense(q, k, v, allowed), atol=1e-12)


def test_bigbird_is_window_global_and_its_random_blocks(x64):
    size, nb, r, h = 2, 9, 2, 3
    n = size * nb
    q, k, v = qkv64(2, n, h, 3)
    mask = lengths_mask([18, 11], n)
    rand = bigbird.random_blocks(n, size, r, h, seed=5)
    blocks = np.arange(n) // size
    qb, kb = blocks[:, None], blocks[None, :]
    allowed = np.zeros((1, h, n, n), bool)
    for head in range(h):
        pattern = (qb == 0) | (qb == nb - 1) | (kb == 0) | (kb == nb - 1) | (np.abs(qb - kb) <= 1)
        for row in range(1, nb - 1):
            pattern |= (qb == row) & np.isin(kb, rand[head, row - 1])
        allowed[0, head] = pattern
    allowed = allowed & mask[:, None, None, :]
    want = dense(q, k, v, allowed) * mask[:, :, None, None]  # pad queries output 0
    got = bigbird.bigbird_attention(q, k, v, jnp.asarray(mask), block_size=size, rand=rand)
    np.testing.assert_allclose(got, want, atol=1e-12)
    # the random blocks are never a row's own window or a global block
    for head in range(h):
        for row in range(1, nb - 1):
            assert not set(rand[head, row - 1]) & {0, nb - 1, row - 1, row, row + 1}


def test_sinkhorn_summed_key_branch_and_the_sinkhorn_operator(x64):
    size, nb = 3, 4
    n = size * nb
    q, k, v = qkv64(2, n, 2, 3)
    mask = lengths_mask([12, 7], n)
    # every query at group position s = t // nb sees K_sum[j] = sum_g K[j * nb + g] (LRA's einsum)
    ksum = np.asarray(k).reshape(2, size, nb, 2, 3).sum(2)
    vsum = np.asarray(v).reshape(2, size, nb, 2, 3).sum(2)
    blocks = mask.reshape(2, nb, size)
    pair = np.einsum("bgs,bgj->bsj", blocks, blocks) > 0
    s = np.arange(n) // nb
    want = np.stack([dense(np.asarray(q)[:, t:t + 1], ksum, vsum, pair[:, None, s[t]:s[t] + 1])[:, 0]
                     for t in range(n)], axis=1)
    got = sinkhorn.summed_key_attention(q, k, v, jnp.asarray(mask), block_size=size)
    np.testing.assert_allclose(got, want, atol=1e-12)
    # the paper's operator: enough iterations give a doubly stochastic matrix
    p = sinkhorn.sinkhorn_normalise(jnp.asarray(np.random.RandomState(1).randn(2, 5, 5)), 60, 0.75)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(p.sum(-2), 1.0, atol=1e-9)


def test_sinkhorn_summed_keys_draw_the_same_dropout_bits_in_both_layouts(x64, monkeypatch):
    # Short rows run as one problem per row, long ones batched by group position s (row
    # b * size + s: the nb queries at s) against copies of the summed keys; both must draw the
    # batched layout's bits, so a run's dropout does not depend on its length's layout.
    monkeypatch.setenv("LRA_ATTENTION", "explicit")
    size, nb = 3, 4
    q, k, v = qkv64(2, size * nb, 2, 3)
    mask = jnp.asarray(lengths_mask([12, 7], size * nb))
    rng = jax.random.key(3)
    ksum, vsum = (jnp.repeat(t.reshape(2, size, nb, 2, 3).sum(2), size, axis=0) for t in (k, v))
    blocks = mask.reshape(2, nb, size).astype(jnp.int32)
    pair = jnp.einsum("bgs,bgj->bsj", blocks, blocks) > 0
    want = attention(q.reshape(2 * size, nb, 2, 3), ksum, vsum, pair.reshape(2 * size, size),
                     dropout_rate=0.5, dropout_rng=rng).reshape(q.shape)
    for logits in (size * nb * size, 0):  # one problem, then batched
        monkeypatch.setattr(sinkhorn, "ONE_PROBLEM_LOGITS", logits)
        got = sinkhorn.summed_key_attention(q, k, v, mask, block_size=size, dropout_rate=0.5,
                                            dropout_rng=rng)
        np.testing.assert_allclose(got, want, atol=1e-12)
    assert not np.allclose(got, sinkhorn.summed_key_attention(q, k, v, mask, block_size=size))


@pytest.mark.parametrize("kind,options", [("local", dict(block_size=4)),
                                          ("local", dict(block_size=4, layout="blocks")),
                                          ("sparse_transformer", dict(block_size=4, c=1)),
                                          ("sparse_transformer", dict(block_size=4, c=1,
                                                                      form="dense")),
                                          ("longformer", dict(window=4, global_tokens="cls")),
                                          ("bigbird", dict(block_size=2, num_rand_blocks=1)),
                                          ("sinkhorn", dict(block_size=4)),
                                          ("sinkhorn", dict(block_size=4, sorting="sinkhorn"))])
def test_one_sample_does_not_see_the_others_and_bf16_runs(kind, options):
    """Masks, padding inside the mixer, batch independence; bf16 in, bf16 out, finite."""
    n, dim = 13, 8
    module = mixers.build(kind, spec(n, dim, 2, has_cls=True), options, nnx.Rngs(0))
    x = jnp.asarray(np.random.RandomState(0).randn(3, n, dim), jnp.float32)
    mask = jnp.asarray(lengths_mask([13, 9, 5], n))
    forward = nnx.jit(lambda m, x, mask: m(x, mask)[0])
    y = forward(module, x, mask)
    y2 = forward(module, x.at[1:].multiply(3.0), mask)
    assert y.shape == x.shape and bool(jnp.isfinite(y).all())
    np.testing.assert_allclose(y[0], y2[0], atol=1e-5)
    module16 = mixers.build(kind, spec(n, dim, 2, has_cls=True, dtype=jnp.bfloat16), options,
                            nnx.Rngs(0))
    y16 = forward(module16, x.astype(jnp.bfloat16), mask)
    assert y16.dtype == jnp.bfloat16 and bool(jnp.isfinite(y16.astype(jnp.float32)).all())
