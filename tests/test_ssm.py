"""S4D and S5: their maths in float64 against the recurrences they compute, their initialisations,
padding that never reaches a real position, and the block layouts and parameter groups of their
LRA protocols."""

from __future__ import annotations

import fnmatch

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lra_bench import config
from lra_bench.data import synthetic
from lra_bench.mixers import MixerSpec, _ssm, s4d, s5
from lra_bench.model import Classifier
from lra_bench.optim import group_labels, make_optimizer, param_path
from lra_bench.trainer import build

TOL = dict(rtol=1e-10, atol=1e-10)


# compiled without most XLA passes (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("fast_compile_module")


def jitted(module, **kwargs):
    """module(*args, **kwargs) as one compiled function (eager NNX runs op by op: slow)."""
    graphdef, state = nnx.split(module)
    run = jax.jit(lambda state, *args: nnx.merge(graphdef, state)(*args, **kwargs))
    return lambda *args: run(state, *args)




def crandn(rng, shape):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def lengths_mask(lengths, n):
    return np.arange(n)[None, :] < np.asarray(lengths)[:, None]


def recurrence(lam_bar, b_bar, c, d, u, conj_sym, backward_c=None, backward_lag=0):
    """The sequential reference, one step at a time in numpy (complex128).
    Forward: x_k = lam_bar x_{k-1} + b_bar u_k, y_k = Re(c x_k) (x2 with conj_sym) + d u_k.
    Backward (backward_c): z_k = lam_bar z_{k+1} + b_bar u_{k + lag}; y_k += Re(backward_c z_k)."""
    batch, length, _ = u.shape
    scale = 2.0 if conj_sym else 1.0
    y = np.zeros(u.shape)
    for b in range(batch):
        x = np.zeros(lam_bar.shape, complex)
        for k in range(length):
            x = lam_bar * x + b_bar @ u[b, k]
            y[b, k] = scale * (c @ x).real + d * u[b, k]
        if backward_c is not None:
            z = np.zeros(lam_bar.shape, complex)
            for k in reversed(range(length)):
                src = k + backward_lag
                z = lam_bar * z + (b_bar @ u[b, src] if src < length else 0.0)
                y[b, k] += scale * (backward_c @ z).real
    return y


@pytest.mark.parametrize("disc,bidirectional", [("zoh", True), ("bilinear", False)])
def test_s4d_fft_convolution_equals_the_recurrence(x64, disc, bidirectional):
    rng = np.random.default_rng(0)
    h, n2, length = 3, 4, 11
    A = -np.exp(rng.standard_normal((h, n2)) * 0.3) - 1j * np.abs(rng.standard_normal((h, n2)))
    B, C = crandn(rng, (h, n2)), crandn(rng, (2 if bidirectional else 1, h, n2))
    dt, D = np.exp(rng.uniform(np.log(1e-2), np.log(0.5), h)), rng.standard_normal(h)
    u = rng.standard_normal((2, length, h))
    mask = lengths_mask([length, 7], length)
    kernel = s4d.s4d_kernel(jnp.asarray(dt), jnp.asarray(A), jnp.asarray(B), jnp.asarray(C),
                            length, disc)
    got = s4d.s4d_ssm(jnp.asarray(u), jnp.asarray(mask), kernel, jnp.asarray(D), bidirectional)
    discretize = _ssm.DISCRETIZATIONS[disc]
    u0 = np.where(mask[..., None], u, 0.0)
    want = np.zeros_like(u)
    for j in range(h):  # S4D is H independent single-input single-output systems
        lam_bar, b_bar = map(np.asarray, discretize(jnp.asarray(A[j]),
                                                    jnp.asarray(B[j][:, None]), dt[j]))
        want[..., j] = recurrence(lam_bar, b_bar, C[0, j], D[j], u0[..., j:j + 1], True,
                                  C[1, j] if bidirectional else None, backward_lag=1)[..., 0]
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), want, **TOL)


@pytest.mark.parametrize("disc,conj_sym,bidirectional", [("zoh", True, True),
                                                         ("bilinear", False, False)])
def test_s5_parallel_scan_equals_the_sequential_recurrence(x64, disc, conj_sym, bidirectional):
    rng = np.random.default_rng(1)
    h, p, length = 3, 4, 13
    lam = -np.exp(rng.standard_normal(p) * 0.3) + 1j * rng.standard_normal(p)
    B, C = crandn(rng, (p, h)), crandn(rng, (2 if bidirectional else 1, h, p))
    step, D = np.exp(rng.uniform(np.log(1e-2), np.log(0.5), p)), rng.standard_normal(h)
    u = rng.standard_normal((2, length, h))
    mask = lengths_mask([length, 5], length)
    lam_bar, b_bar = _ssm.DISCRETIZATIONS[disc](jnp.asarray(lam), jnp.asarray(B), jnp.asarray(step))
    got = s5.s5_ssm(jnp.asarray(u), jnp.asarray(mask), lam_bar, b_bar, jnp.asarray(C),
                    jnp.asarray(D), conj_sym=conj_sym, bidirectional=bidirectional)
    want = recurrence(np.asarray(lam_bar), np.asarray(b_bar), C[0], D,
                      np.where(mask[..., None], u, 0.0), conj_sym,
                      C[1] if bidirectional else None, backward_lag=0)
    np.testing.assert_allclose(np.asarray(got), want, **TOL)


def test_discretisations_are_their_closed_forms(x64):
    """ZOH is the exact solution over one step (the matrix exponential of [[a, b], [0, 0]] dt);
    bilinear is the trapezoidal rule's (1 + a dt / 2) / (1 - a dt / 2)."""
    import scipy.linalg

    a, b, dt = -0.3 + 2.0j, 0.7 - 0.2j, 0.25
    lam_bar, b_bar = _ssm.discretize_zoh(jnp.asarray([a]), jnp.asarray([[b]]), jnp.asarray([dt]))
    e = scipy.linalg.expm(np.array([[a, b], [0, 0]]) * dt)
    np.testing.assert_allclose([complex(lam_bar[0]), complex(b_bar[0, 0])], [e[0, 0], e[0, 1]],
                               rtol=1e-12)
    lam_bar, b_bar = _ssm.discretize_bilinear(jnp.asarray([a]), jnp.asarray([[b]]),
                                              jnp.asarray([dt]))
    np.testing.assert_allclose(complex(lam_bar[0]), (1 + a * dt / 2) / (1 - a * dt / 2), rtol=1e-12)
    np.testing.assert_allclose(complex(b_bar[0, 0]), dt * b / (1 - a * dt / 2), rtol=1e-12)


def test_hippo_legs_diagonalisation():
    n = 8
    lam, v, b = _ssm.hippo_legs_normal(n)
    p = np.sqrt(np.arange(n) + 0.5)
    s = _ssm.hippo_legs(n) + np.outer(p, p)
    np.testing.assert_allclose(v @ np.diag(lam) @ v.conj().T, s, atol=1e-10)
    np.testing.assert_allclose(lam.real, -0.5)
    assert np.all(np.diff(lam.imag) > 0) and np.all(lam.imag[: n // 2] < 0)
    np.testing.assert_allclose(v @ b, np.sqrt(2 * np.arange(n) + 1), atol=1e-10)
    a, b_lin = s4d.s4d_init("lin", 4)
    np.testing.assert_allclose(a, -0.5 - 1j * np.pi * np.arange(4))
    np.testing.assert_allclose(b_lin, 1.0)
    a, b_legs = s4d.s4d_init("legs", 4)
    np.testing.assert_allclose(a, lam[:4])  # N = 8: the first 4 of the 8 modes
    assert np.all(np.abs(b_legs.imag) <= 2.0)
    lam5, V, Vinv = s5.block_diagonal_init(16, 2, conj_sym=True)
    assert lam5.shape == (8,) and V.shape == (16, 8) and Vinv.shape == (8, 16)
    np.testing.assert_allclose(Vinv @ V, np.eye(8), atol=1e-10)
    np.testing.assert_allclose(lam5, np.tile(_ssm.hippo_legs_normal(8)[0][:4], 2))


SPEC = MixerSpec(dim=6, num_heads=1, qkv_dim=6, attention_dropout=0.0, max_length=16,
                 has_cls=False, dtype=jnp.float32)


@pytest.mark.parametrize("kind,options", [
    ("s4d", dict(d_state=8, init="legs", bidirectional=True)),
    ("s5", dict(state_size=8, blocks=2, activation="half_glu2")),
    ("s5", dict(state_size=8, blocks=1, conj_sym=False, activation="full_glu",
                C_init="complex_normal")),
])
def test_pads_never_reach_a_real_position(kind, options):
    module = {"s4d": s4d, "s5": s5}[kind]
    mixer = module.Mixer(SPEC, rngs=nnx.Rngs(params=0), **options)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 16, 6)).astype(np.float32)
    mask = lengths_mask([16, 9], 16)
    junk = np.where(mask[..., None], x, 1e3 * rng.standard_normal(x.shape)).astype(np.float32)
    run = jitted(mixer)
    y, out_mask = run(jnp.asarray(x), jnp.asarray(mask))
    y_junk, _ = run(jnp.asarray(junk), jnp.asarray(mask))
    assert y.shape == x.shape and y.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out_mask), mask)
    np.testing.assert_allclose(np.asarray(y_junk)[mask], np.asarray(y)[mask], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def ssm_configs():
    sets = ["model.emb_dim=8", "model.num_layers=2", "model.pooling=mean", "model.norm=batch",
            "model.mlp=none", "model.positional=none", "data.max_length=24", "model.dropout=0.0",
            "model.attention_dropout=0.0"]
    return {
        "s4d": config.resolve("s4d", "listops", "smoke", overrides=[
            *sets, "model.prenorm=false", "model.final_norm=false", "mixer.d_state=4"]),
        "s5": config.resolve("s5", "listops", "smoke", overrides=[
            *sets, "mixer.state_size=8", "mixer.blocks=2"]),
    }


@pytest.mark.parametrize("name", ["s4d", "s5"])
def test_a_sequence_is_classified_the_same_whatever_its_padding(ssm_configs, name):
    """The whole model, BatchNorm in training mode included: statistics over real tokens only,
    so the logits of a sequence do not depend on how many pads follow it or on the other rows'
    pads."""
    rc = ssm_configs[name]
    model = Classifier(rc, rngs=nnx.Rngs(params=0))
    tokens = np.zeros((2, 24), np.int32)
    tokens[0, :10] = np.arange(1, 11)
    tokens[1, :17] = np.arange(17) % 15 + 1
    for deterministic in (True, False):
        # Under jit the training pass's update of the running statistics is dropped.
        run = jitted(model, deterministic=deterministic, rngs=nnx.Rngs(dropout=0))
        full, short = run(jnp.asarray(tokens)), run(jnp.asarray(tokens[:, :20]))
        np.testing.assert_allclose(np.asarray(full), np.asarray(short), rtol=2e-5, atol=2e-5)


def test_batch_statistics_move_in_training_and_are_used_in_evaluation(ssm_configs):
    rc = ssm_configs["s5"]
    steps = build(rc)
    batch = synthetic.make_split(rc.data, 2, seed=0)
    before = steps.init_state["rest"]
    means = lambda rest: [v for p, v in jax.tree_util.tree_leaves_with_path(rest)  # noqa: E731
                          if param_path(p).endswith("mean")]
    assert means(before), "model.norm = batch keeps running statistics"
    init_means = [np.array(m) for m in means(before)]
    eval_before = steps.eval_step(steps.init_state["params"], before, {**batch, "weights":
                                  np.ones(2, np.float32)})
    state, _ = steps.train_step(steps.init_state, batch)
    assert any(not np.allclose(a, b) for a, b in zip(init_means, means(state["rest"])))
    eval_after = steps.eval_step(state["params"], state["rest"], {**batch, "weights":
                                 np.ones(2, np.float32)})
    assert float(eval_before["loss"]) != float(eval_after["loss"])


def abstract_params(rc):
    return nnx.state(nnx.eval_shape(lambda: Classifier(rc, rngs=nnx.Rngs(params=0))), nnx.Param)


def test_default_block_is_unchanged_by_the_layout_switches():
    """The switches' defaults are the pre-LN LayerNorm Transformer block: same parameter paths."""
    rc = config.resolve("transformer", "listops", "smoke")
    paths = {param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(abstract_params(rc))}
    assert "encoder/blocks/0/norm1/scale" in paths and "encoder/norm/scale" in paths
    assert "encoder/blocks/0/mlp_in/kernel" in paths
    bad = config.resolve("s5", "listops", "smoke", overrides=["model.mlp=none", "model.norm=batch"])
    paths = {param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(abstract_params(bad))}
    assert not any("mlp_in" in p or "norm2" in p for p in paths)


def test_parameter_groups_route_rates_and_decay():
    """A group's parameters follow its rate and decay; the rest the run's (S4's A, B at a lower
    rate without decay; here rate 0 makes the routing visible)."""
    rc = config.resolve("s4d", "listops", "smoke", overrides=[
        "model.emb_dim=8", "model.num_layers=1", "mixer.d_state=4",
        'train.param_groups=[{match = ["*/mixer/A_real", "*/mixer/A_imag", "*/mixer/B"], '
        'learning_rate = 0.0, weight_decay = 0.0}, {match = ["*/mixer/log_dt"], weight_decay = 0.0}]'])
    params = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract_params(rc))
    labels = {param_path(p): v for p, v in jax.tree_util.tree_leaves_with_path(
        group_labels(params, rc.train["param_groups"]))}
    assert labels["encoder/blocks/0/mixer/B"] == "group0"
    assert labels["encoder/blocks/0/mixer/log_dt"] == "group1"
    assert labels["encoder/blocks/0/mixer/C"] == "default"
    tx = make_optimizer({**rc.train, "warmup_steps": 0})
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    for p, u in jax.tree_util.tree_leaves_with_path(updates):
        name = param_path(p)
        frozen = any(fnmatch.fnmatchcase(name, pat) for pat in rc.train["param_groups"][0]["match"])
        assert bool(np.all(np.asarray(u) == 0)) == frozen, name


@pytest.mark.parametrize("bad,message", [
    ('[{match = "B"}]', "non-empty list"),
    ('[{match = ["B"], lr = 1.0}]', "unknown keys"),
    ('[{match = ["B"], learning_rate = -1.0}]', ">= 0"),
])
def test_bad_parameter_groups_are_named(bad, message):
    from lra_bench.errors import UserError

    with pytest.raises(UserError, match=message):
        config.resolve("s4d", "listops", "smoke", overrides=[f"train.param_groups={bad}"])
