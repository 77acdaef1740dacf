"""The mixers of issue 3 against their equations, plus the checks every mixer must pass."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lra_bench import config, mixers
from lra_bench.mixers import _fastrpb
from lra_bench.mixers import linear as linear_mixer
from lra_bench.mixers import nystromformer as nystrom_mixer
from lra_bench.mixers import sikf as sikf_mixer
from lra_bench.mixers import softmax as softmax_mixer
from step_checks import check_test_accuracies

# Jitted: one compilation per shape is much faster on CPU than eager op-by-op dispatch.
elu_feature_map = jax.jit(linear_mixer.elu_feature_map)
normalized_linear_attention = jax.jit(linear_mixer.normalized_linear_attention,
                                      static_argnames="eps")
iterative_pinv = jax.jit(nystrom_mixer.iterative_pinv, static_argnums=(1, 2))
nystrom_attention = jax.jit(nystrom_mixer.nystrom_attention, static_argnames=(
    "num_landmarks", "pinv_iterations", "pinv_init", "pinv"))
segment_means = nystrom_mixer.segment_means
sikf_attention = jax.jit(sikf_mixer.sikf_attention, static_argnames="eps")
softmax_attention = jax.jit(softmax_mixer.softmax_attention)
fastrpb = jax.jit(_fastrpb.fastrpb, static_argnames=("base_type", "has_cls", "grid"))

MODELS = ("fastformer", "linear", "sikf", "nystromformer")


# compiled without most XLA passes (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("fast_compile_module")


def normal(seed, shape, scale=1.0):
    return scale * jax.random.normal(jax.random.key(seed), shape)


def length_mask(lengths, n):
    return jnp.arange(n)[None, :] < jnp.asarray(lengths)[:, None]


def spec(length, *, has_cls=False, grid=None, dim=16, heads=2):
    return mixers.MixerSpec(dim=dim, num_heads=heads, qkv_dim=dim, attention_dropout=0.0,
                            max_length=length, has_cls=has_cls, grid=grid, dtype=jnp.float32)


@nnx.jit
def forward(model, x, mask):
    return model(x, mask)[0]


def build(name, s, seed=0, **override):
    """The model's mixer with its smoke-preset options, on the spec `s`."""
    options = dict(config.resolve(name, "listops", "smoke").mixer)
    kind = options.pop("kind")
    return mixers.build(kind, s, {**options, **override}, nnx.Rngs(seed))


# --- Nyströmformer -------------------------------------------------------------------------------

def test_nystrom_with_one_landmark_per_token_and_exact_pinv_is_softmax_attention():
    b, n, h, d = 2, 8, 2, 4
    q, k, v = (normal(i, (b, n, h, d), 0.7) for i in range(3))
    mask = jnp.ones((b, n), bool)
    got = nystrom_attention(q, k, v, mask, num_landmarks=n, pinv="exact")
    want = softmax_attention(q, k, v, mask)
    np.testing.assert_allclose(got, want, atol=2e-4)
    # With fewer landmarks it is only an approximation, so the comparison above can fail.
    approx = nystrom_attention(q, k, v, mask, num_landmarks=2, pinv="exact")
    assert float(jnp.abs(approx - want).max()) > 1e-2


@pytest.mark.parametrize("init", ["per_matrix", "global"])
def test_iterative_pinv_converges_to_the_moore_penrose_inverse(init):
    a = jax.nn.softmax(2.0 * normal(0, (4, 8, 8)), axis=-1)
    exact = jnp.linalg.pinv(a)
    err = lambda z: float(jnp.abs(z - exact).max() / jnp.abs(exact).max())  # noqa: E731
    assert err(iterative_pinv(a, 30, init)) < 1e-4
    assert err(iterative_pinv(a, 30, init)) < err(iterative_pinv(a, 6, init))
    # and it satisfies the Penrose equation A Z A = A
    z = iterative_pinv(a, 30, init)
    np.testing.assert_allclose(a @ z @ a, a, atol=1e-5)


def test_nystrom_pads_itself_and_one_sample_does_not_depend_on_the_others():
    b, n, h, d = 3, 14, 2, 4  # 14 tokens, 4 landmarks: padded to 16 inside, never reshaped as is
    q, k, v = (normal(i, (b, n, h, d)) for i in range(3))
    mask = length_mask([14, 11, 7], n)
    # Other samples with much larger logits: a Z0 scaled over the whole batch would change.
    q2 = q.at[1:].multiply(6.0)
    for init, independent in (("per_matrix", True), ("global", False)):
        out = nystrom_attention(q, k, v, mask, num_landmarks=4, pinv_init=init)
        out2 = nystrom_attention(q2, k, v, mask, num_landmarks=4, pinv_init=init)
        assert out.shape == (b, n, h, d) and bool(jnp.isfinite(out).all())
        assert np.allclose(out[0], out2[0], atol=1e-6) == independent, init
    with pytest.raises(ValueError, match="multiple"):
        segment_means(q, 4)


# --- linear attention and SIKF ------------------------------------------------------------------

def quadratic_linear_attention(phi_q, phi_k, v, mask, eps):
    """The O(n^2) form: (phi(Q) phi(K)^T, padded keys zeroed, row-normalised) V, in float64."""
    phi_q, phi_k, v = (np.asarray(t, np.float64) for t in (phi_q, phi_k, v))
    scores = np.einsum("blhf,bshf->bhls", phi_q, phi_k) * np.asarray(mask)[:, None, None, :]
    out = np.einsum("bhls,bshd->blhd", scores, v)
    return out / (scores.sum(-1).transpose(0, 2, 1)[..., None] + eps)


@pytest.mark.parametrize("heads", [2, 8])  # the block-diagonal product, and per head (> 4)
def test_linear_attention_equals_the_explicit_quadratic_form(heads):
    q, k, v = (normal(i, (2, 12, heads, 4)) for i in range(3))
    mask = length_mask([12, 5], 12)
    got = normalized_linear_attention(elu_feature_map(q), elu_feature_map(k), v, mask, eps=1e-6)
    want = quadratic_linear_attention(elu_feature_map(q), elu_feature_map(k), v, mask, 1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_sikf_is_invariant_to_shifts_of_queries_and_keys():
    q, k, v = (normal(i, (2, 12, 2, 4)) for i in range(3))
    mask = length_mask([12, 5], 12)
    s, t = normal(5, (2, 1, 2, 1), 3.0), normal(6, (2, 1, 2, 1), 3.0)  # per sample and head
    base = sikf_attention(q, k, v, mask)
    np.testing.assert_allclose(sikf_attention(q + s, k + t, v, mask), base, rtol=1e-5, atol=1e-6)
    # elu(x) + 1 is not shift invariant: the same check fails for it.
    elu = lambda a, b: normalized_linear_attention(  # noqa: E731
        elu_feature_map(a), elu_feature_map(b), v, mask)
    assert not np.allclose(elu(q + s, k + t), elu(q, k), atol=1e-3)


def test_sikf_equals_the_quadratic_form_with_the_exp_kernel():
    q, k, v = (normal(i, (2, 12, 2, 4), 0.5) for i in range(3))
    mask = length_mask([12, 5], 12)
    # exp(q - c_q) . exp(k - c_k) = exp(-c_q - c_k) exp(q) . exp(k): the centring cancels out.
    want = quadratic_linear_attention(jnp.exp(q), jnp.exp(k), v, mask, 0.0)
    np.testing.assert_allclose(sikf_attention(q, k, v, mask, eps=0.0), want, rtol=1e-5, atol=1e-6)


# --- FastRPB -------------------------------------------------------------------------------------

def explicit_toeplitz(w, n, base_type):
    """W[i, j] straight from the definition: w[N - 1 + i - j] (full) or w[|i - j|] (symmetric)."""
    w = np.asarray(w, np.float64)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    if base_type == "symmetric":
        return w[:, np.abs(i - j)]
    centre = (w.shape[-1] - 1) // 2
    return w[:, centre + i - j]  # (heads, n, n)


# (base, CLS, the length w was made for); it is applied to 9 tokens (+ CLS)
@pytest.mark.parametrize("base_type,has_cls,n_max", [("full", False, 12), ("full", True, 9),
                                                     ("symmetric", True, 12)])
def test_fastrpb_1d_fft_equals_explicit_toeplitz_product(base_type, has_cls, n_max):
    heads, length = 2, 9 + int(has_cls)
    w = normal(0, (heads, _fastrpb.param_size(n_max, base_type)))  # not the tiny init: sensitive
    v = normal(1, (2, length, heads, 3))
    mask = length_mask([length, length - 3], length)
    got = fastrpb(w, v, mask, base_type=base_type, has_cls=has_cls)
    body = np.where(np.asarray(mask)[:, :, None, None], np.asarray(v, np.float64), 0.0)
    body = body[:, 1:] if has_cls else body
    want = np.einsum("hij,bjhd->bihd", explicit_toeplitz(w, 9, base_type), body)
    if has_cls:
        want = np.concatenate([np.zeros_like(want[:, :1]), want], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("base_type", ["full", "symmetric"])
def test_fastrpb_2d_fft_equals_explicit_row_plus_column_bias(base_type):
    rows, cols, heads = 3, 4, 2  # not square, so swapping rows and columns would show
    w = normal(0, (heads, _fastrpb.param_size(max(rows, cols), base_type)))
    v = normal(1, (2, 1 + rows * cols, heads, 3))
    mask = length_mask([13, 10], 13)
    got = fastrpb(w, v, mask, base_type=base_type, has_cls=True, grid=(rows, cols))
    t_r, t_c = explicit_toeplitz(w, rows, base_type), explicit_toeplitz(w, cols, base_type)
    r, c = np.divmod(np.arange(rows * cols), cols)  # row-major pixel order
    w2d = t_r[:, r[:, None], r[None, :]] + t_c[:, c[:, None], c[None, :]]
    body = np.where(np.asarray(mask)[:, :, None, None], np.asarray(v, np.float64), 0.0)[:, 1:]
    want = np.einsum("hij,bjhd->bihd", w2d, body)
    np.testing.assert_allclose(got[:, 1:], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got[:, 0], 0.0)


def test_zero_fastrpb_weights_give_the_plain_attention_output():
    s = spec(13, has_cls=True)
    x, mask = normal(0, (2, 13, 16)), length_mask([13, 8], 13)
    plain = forward(build("sikf", s, fastrpb="none"), x, mask)
    with_bias = build("sikf", s, fastrpb="1d")  # same seed: same projections, plus the bias
    with_bias.bias[...] = 100.0 * with_bias.bias[...]
    assert not np.allclose(forward(with_bias, x, mask), plain, atol=1e-3)
    with_bias.bias[...] = jnp.zeros_like(with_bias.bias[...])
    np.testing.assert_allclose(forward(with_bias, x, mask), plain, atol=1e-6)


# --- Fastformer ----------------------------------------------------------------------------------

def fastformer_numpy(m, x, mask, heads):
    """The Fastformer equations in float64 numpy, from the module's weights."""
    p = lambda lin: (np.asarray(lin.kernel[...], np.float64),  # noqa: E731
                     np.asarray(lin.bias[...], np.float64))
    lin = lambda t, layer: t @ p(layer)[0] + p(layer)[1]  # noqa: E731
    x, mask = np.asarray(x, np.float64), np.asarray(mask)
    b, n, _ = x.shape
    q, k = lin(x, m.query), lin(x, m.key)
    d = q.shape[-1]
    dh = d // heads

    def pool(scores, values):  # softmax over the real tokens only, per head
        scores = scores / math.sqrt(dh)
        out = np.zeros((b, heads, dh))
        for i in range(b):
            s = scores[i, mask[i]]
            wts = np.exp(s - s.max(0)) / np.exp(s - s.max(0)).sum(0)  # (real, heads)
            out[i] = np.einsum("nh,nhd->hd", wts, values[i, mask[i]].reshape(-1, heads, dh))
        return out

    global_q = pool(lin(q, m.query_att), q)
    pk = k * global_q.reshape(b, 1, d)
    global_k = pool(lin(pk, m.key_att), pk)
    u = (q.reshape(b, n, heads, dh) * global_k[:, None]).reshape(b, n, d)
    return lin(lin(u, m.transform) + q, m.out)


def test_fastformer_equals_a_float64_evaluation_of_its_equations_with_padding():
    m = build("fastformer", spec(11), init_std=0.3)  # larger weights: non-uniform softmaxes
    x, mask = normal(1, (3, 11, 16)), length_mask([11, 7, 2], 11)
    np.testing.assert_allclose(forward(m, x, mask), fastformer_numpy(m, x, mask, 2),
                               rtol=1e-4, atol=1e-5)


# --- every mixer ---------------------------------------------------------------------------------

CASES = [(name, None) for name in MODELS] + [("sikf", (4, 5))]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c[0] + ("-2d" if c[1] else ""))
def mixer_case(request):
    name, grid = request.param
    s = spec(21, has_cls=True, grid=grid)  # 21 = CLS + 4x5; nystrom pads 21 -> 32 (16 landmarks)
    x = normal(1, (2, 21, 16))
    mask = length_mask([21, 13], 21)
    return build(name, s), x, mask


def test_valid_outputs_do_not_depend_on_padded_content(mixer_case):
    m, x, mask = mixer_case
    other = jnp.where(mask[..., None], x, normal(9, x.shape, 5.0))
    assert not np.allclose(other, x)
    y1, y2 = forward(m, x, mask), forward(m, other, mask)
    keep = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(y2)[keep], np.asarray(y1)[keep], rtol=1e-5, atol=1e-5)


def test_gradients_are_finite_and_reach_every_parameter(mixer_case):
    m, x, mask = mixer_case

    def loss(model, x):
        y = model(x, mask)[0]
        return jnp.sum(jnp.where(mask[..., None], y, 0.0) ** 2)

    grads_m, grads_x = nnx.jit(nnx.grad(loss, argnums=(0, 1)))(m, x)
    leaves = jax.tree.leaves(nnx.state(grads_m, nnx.Param)) + [grads_x]
    assert all(bool(jnp.isfinite(g).all()) for g in leaves)
    assert all(float(jnp.abs(g).max()) > 0 for g in leaves)


def test_jit_matches_eager(mixer_case):
    m, x, mask = mixer_case
    np.testing.assert_allclose(forward(m, x, mask), m(x, mask)[0], rtol=1e-5, atol=1e-6)


# --- a smoke training run per model ------------------------------------------------------------

SMOKE_SETS = ["data.num_train=64", "data.num_val=16", "data.num_test=16", "train.batch_size=8",
              "train.eval_every=4", "model.num_layers=1"]


@pytest.fixture(scope="module")
def listops_dir(tmp_path_factory):
    from lra_bench.data import listops
    rc = config.resolve("transformer", "listops", "smoke", overrides=SMOKE_SETS)
    root = tmp_path_factory.mktemp("data")
    listops.generate_files(root / "listops" / rc.data["variant"], rc.data)
    return root


@pytest.mark.parametrize("name", MODELS)
def test_smoke_run_trains(name, listops_dir):
    from lra_bench import data, trainer
    rc = config.resolve(name, "listops", "smoke", steps=4, overrides=SMOKE_SETS)
    summary = trainer.train_and_evaluate(rc, data.load(rc, listops_dir))
    assert summary["steps"] == 4 and math.isfinite(summary["final_train_loss"])
    check_test_accuracies(summary, 16)  # data.num_test=16
    assert summary["params"] > 0
