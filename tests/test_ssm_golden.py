"""S4D and S5 against golden outputs and gradients of their official code (float64).

tests/fixtures/s4d_golden.json: state-spaces/s4@e757cef models/s4/s4d.py (PyTorch), and
tests/fixtures/s5_golden.json: lindermanlab/S5@3c18fdb s5/ssm.py (JAX/linen), each made by a
scratch script outside this repository; the files name their source and how they were made.
The official parameters are loaded into our modules (renamed, S4D's A_imag negated: the full S4
kernel's convention of A.imag <= 0), then outputs and the gradients of sum(y * w) must agree.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lra_bench.mixers import MixerSpec, s4d, s5
from lra_bench.optim import param_path
from lra_bench.paths import PACKAGE_DIR

FIXTURES = PACKAGE_DIR.parent / "tests" / "fixtures"
TOL = dict(rtol=1e-9, atol=1e-10)


# compiled without most XLA passes (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("fast_compile_module", "x64")  # float64: conftest




def load(name):
    return json.loads((FIXTURES / name).read_text())


def spec(h):
    return MixerSpec(dim=h, num_heads=1, qkv_dim=h, attention_dropout=0.0, max_length=64,
                     has_cls=False, dtype=jnp.float64)


def assign(module, values: dict):
    for name, value in values.items():
        target = module
        *parents, leaf = name.split(".")
        for p in parents:
            target = getattr(target, p)
        setattr(target, leaf, nnx.Param(jnp.asarray(value, jnp.float64)))


def grads_of(module, forward, u, w):
    """d sum(forward(module, u) * w) / d(parameters, u)."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def loss(params, u):
        return jnp.sum(forward(nnx.merge(graphdef, params, rest), u) * w)

    y = jax.jit(lambda params, u: forward(nnx.merge(graphdef, params, rest), u))(params, u)
    gp, gu = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, u)
    return y, {param_path(p): v for p, v in jax.tree_util.tree_leaves_with_path(gp)}, gu


def test_s4d_matches_the_official_layer():
    g = load("s4d_golden.json")
    p, h = g["params"], g["options"]["H"]
    # Built abstractly (every parameter is replaced below): no eager initialisers to run.
    mixer = nnx.eval_shape(lambda: s4d.Mixer(
        spec(h), rngs=nnx.Rngs(params=0), d_state=g["options"]["d_state"], init="lin",
        disc="zoh", dt_transform="exp", bidirectional=False, glu=True))
    c = np.asarray(p["kernel.C"])
    weight = np.asarray(p["output_linear.0.weight"])[:, :, 0]  # Conv1d(H, 2H, 1): (2H, H, 1)
    assign(mixer, {"log_dt": p["kernel.log_dt"], "A_real": p["kernel.log_A_real"],
                   "A_imag": -np.asarray(p["kernel.A_imag"]),
                   "B": np.stack([np.ones(c.shape[:2]), np.zeros(c.shape[:2])], -1),
                   "C": c[None], "D": p["D"], "output_linear.kernel": weight.T,
                   "output_linear.bias": p["output_linear.0.bias"]})
    u, w = jnp.asarray(g["u"]), jnp.asarray(g["w"])
    mask = jnp.ones(u.shape[:2], bool)
    y, grads, gu = grads_of(mixer, lambda m, u: m(u, mask)[0], u, w)
    np.testing.assert_allclose(np.asarray(y), g["y"], **TOL)
    np.testing.assert_allclose(np.asarray(gu), g["grad_u"], **TOL)
    want = g["grad_params"]
    pairs = {"log_dt": want["kernel.log_dt"], "A_real": want["kernel.log_A_real"],
             "A_imag": -np.asarray(want["kernel.A_imag"]), "C": np.asarray(want["kernel.C"])[None],
             "D": want["D"], "output_linear/kernel": np.asarray(
                 want["output_linear.0.weight"])[:, :, 0].T,
             "output_linear/bias": want["output_linear.0.bias"]}
    for name, value in pairs.items():
        np.testing.assert_allclose(np.asarray(grads[name]), value, err_msg=name, **TOL)


@pytest.mark.parametrize("index", [0, 1])
def test_s5_matches_the_official_ssm(index):
    g = load("s5_golden.json")["cases"][index]
    o, p = g["options"], g["params"]
    # The initialisation is deterministic in Lambda: the official block-diagonal HiPPO-LegS.
    lam = s5.block_diagonal_init(o["state_size"], o["blocks"], o["conj_sym"])[0]
    np.testing.assert_allclose(lam.real, p["Lambda_re"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lam.imag, p["Lambda_im"], rtol=1e-12, atol=1e-12)
    # Built abstractly (every SSM parameter is replaced below): no eager initialisers to run.
    mixer = nnx.eval_shape(lambda: s5.Mixer(
        spec(o["H"]), rngs=nnx.Rngs(params=0), state_size=o["state_size"], blocks=o["blocks"],
        conj_sym=o["conj_sym"], bidirectional=o["bidirectional"],
        discretization=o["discretization"], C_init=o["C_init"], activation="gelu"))
    c = np.stack([p["C1"], p["C2"]]) if o["bidirectional"] else np.asarray(p["C"])[None]
    assign(mixer, {"Lambda_re": p["Lambda_re"], "Lambda_im": p["Lambda_im"], "B": p["B"],
                   "C": c, "D": p["D"], "log_step": p["log_step"]})

    def ssm(m, u):
        lam_bar, b_bar, c = m.discretized(jnp.float64)
        return s5.s5_ssm(u[None], jnp.ones(u.shape[:1], bool)[None], lam_bar, b_bar, c,
                         m.D[...], conj_sym=m.conj_sym, bidirectional=m.bidirectional)[0]

    u, w = jnp.asarray(g["u"]), jnp.asarray(g["w"])
    y, grads, gu = grads_of(mixer, ssm, u, w)
    np.testing.assert_allclose(np.asarray(y), g["y"], **TOL)
    np.testing.assert_allclose(np.asarray(gu), g["grad_u"], **TOL)
    want = g["grad_params"]
    want_c = (np.stack([want["C1"], want["C2"]]) if o["bidirectional"]
              else np.asarray(want["C"])[None])
    for name, value in {"Lambda_re": want["Lambda_re"], "Lambda_im": want["Lambda_im"],
                        "B": want["B"], "C": want_c, "D": want["D"],
                        "log_step": want["log_step"]}.items():
        np.testing.assert_allclose(np.asarray(grads[name]), value, err_msg=name, **TOL)
