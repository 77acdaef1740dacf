"""Every mixer's maths in float64 against its equations at 1e-12: the kernels are dtype-generic
(their float32 islands are promote_types(dtype, float32), so float64 stays float64).

x64 is switched on inside each test only (a context manager), so other tests see no change.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft
from flax import nnx

from lra_bench import config, mixers
from lra_bench.mixers import _fastrpb, fastformer, fourier, linear, nystromformer, sikf, softmax
from test_mixers_equations import explicit_toeplitz, fastformer_numpy, quadratic_linear_attention

TOL = dict(rtol=1e-12, atol=1e-12)

pytestmark = pytest.mark.usefixtures("x64")  # every test in float64 (tests/conftest.py)




def rand(seed, shape, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal(shape)


def length_mask(lengths, n):
    return np.arange(n)[None, :] < np.asarray(lengths)[:, None]


def f64(*arrays):
    out = tuple(jnp.asarray(a, jnp.float64) for a in arrays)
    assert all(a.dtype == jnp.float64 for a in out)  # x64 is on
    return out


def softmax_np(logits, axis=-1):
    e = np.exp(logits - logits.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def attention_np(q, k, v, mask, scale):
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    logits = np.where(mask[:, None, None, :], logits, -np.inf)
    return np.einsum("bhqk,bkhd->bqhd", softmax_np(logits), v)


def test_softmax_attention():
    q, k, v = (rand(i, (2, 9, 2, 4)) for i in range(3))
    mask = length_mask([9, 4], 9)
    got = jax.jit(softmax.softmax_attention)(*f64(q, k, v), jnp.asarray(mask))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, attention_np(q, k, v, mask, 0.5), **TOL)


def test_query_blocks_give_the_whole_attention_and_its_gradient(monkeypatch):
    """The CPU path over blocks of queries (here 8, not dividing 20) is the same function."""
    from lra_bench.mixers import _attention, _blocks
    monkeypatch.setattr(_blocks, "QUERY_BLOCK", 8)
    q, k, v = f64(*(rand(i, (2, 20, 2, 4)) for i in range(3)))
    key_mask = jnp.asarray(length_mask([20, 13], 20))[:, None, None, :]
    for fn in (_blocks.query_blocks, _attention._explicit):
        got = jax.value_and_grad(lambda q, k, v: (fn(q, k, v, key_mask, 0.5) ** 3).sum(),
                                 argnums=(0, 1, 2))(q, k, v)
        if fn is _blocks.query_blocks:
            blocked = got
    for a, b in zip(jax.tree.leaves(blocked), jax.tree.leaves(got)):
        np.testing.assert_allclose(a, b, **TOL)



@pytest.mark.parametrize("batch, head_dim, block_bytes, query_block, shape", [
    (4, 4, 64 * 1024, 128, (1, 64)),   # one row's 64 queries fill the budget
    (4, 4, 8 * 1024, 128, (1, 16)),    # long rows: still MIN_BLOCK queries
    (16, 4, 256 * 1024, 128, (2, 128)),  # short rows: groups of rows, QUERY_BLOCK queries each
    (15, 4, 256 * 1024, 128, (1, 128)),  # groups divide the batch: 15 rows go one by one
    (4, 4, 64 * 1024, 16, (4, 16)),    # groups of rows over several blocks of queries
    (4, 32, 16 * 1024, 128, (1, 64)),  # twice BLOCK_HEAD_DIM: four times the bytes per block
    (16, 4, 512 * 1024, 128, (16, 128)),  # many small rows within twice the budget: one group
    (4, 4, 128 * 1024, 128, (1, 128)),  # rows of 1/2 the budget keep to it, all within twice or not
])
def test_grouped_query_blocks_give_the_whole_attention_and_its_gradient(
        monkeypatch, batch, head_dim, block_bytes, query_block, shape):
    from lra_bench.mixers import _attention, _blocks
    monkeypatch.setattr(_blocks, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(_blocks, "QUERY_BLOCK", query_block)
    q, k, v = f64(*(rand(i, (batch, 64, 2, head_dim)) for i in range(3)))  # 8-byte logits
    assert _blocks.block_shape(q, k) == shape
    lengths = ([64, 40, 0, 0] * 4)[:batch]  # rows without a real key: whole groups of them too
    key_mask = jnp.asarray(length_mask(lengths, 64))[:, None, None, :]
    grads = [jax.value_and_grad(lambda q, k, v: (fn(q, k, v, key_mask, 0.5) ** 3).sum(),
                                argnums=(0, 1, 2))(q, k, v)
             for fn in (_blocks.query_blocks, _attention._explicit)]
    for a, b in zip(*(jax.tree.leaves(g) for g in grads)):
        np.testing.assert_allclose(a, b, **TOL)

def test_query_blocks_with_attention_dropout_give_the_explicit_form_and_its_gradient(monkeypatch):
    """Attention dropout inside the CPU blocks: the same keep mask as the explicit form's draw,
    the same outputs and gradients (rows with a real key; an all-padding group of rows gives the
    mean of v in the blocks, which no real query reads)."""
    from lra_bench.mixers import _attention, _blocks
    monkeypatch.setattr(_blocks, "BLOCK_BYTES", 8 * 1024)  # 16-query blocks, one row each
    monkeypatch.setattr(_blocks, "SMALL_BYTES", 0)  # blocks even for this small attention
    q, k, v = f64(*(rand(i, (3, 40, 2, 4)) for i in range(3)))
    mask = jnp.asarray(length_mask([40, 23, 0], 40))
    rng = jax.random.key(7)

    def loss(attend):
        def f(q, k, v):
            y = attend(q, k, v)[:2]  # the rows with real keys
            return (y ** 3).sum()
        return jax.value_and_grad(f, argnums=(0, 1, 2))(q, k, v)

    blocked = loss(lambda q, k, v: _attention.attention(q, k, v, mask, dropout_rate=0.25,
                                                         dropout_rng=rng))
    monkeypatch.setenv("LRA_ATTENTION", "explicit")
    explicit = loss(lambda q, k, v: _attention.attention(q, k, v, mask, dropout_rate=0.25,
                                                          dropout_rng=rng))
    undropped = loss(lambda q, k, v: _attention.attention(q, k, v, mask))
    for a, b in zip(jax.tree.leaves(blocked), jax.tree.leaves(explicit)):
        np.testing.assert_allclose(a, b, **TOL)
    assert abs(float(blocked[0]) - float(undropped[0])) > 1e-3  # the dropout did drop


def test_linear_and_sikf_attention():
    q, k, v = (rand(i, (2, 10, 2, 4), 0.5) for i in range(3))
    mask = length_mask([10, 6], 10)
    elu = lambda t: np.where(t > 0, t, np.expm1(t)) + 1.0  # noqa: E731
    got = jax.jit(linear.elu_linear_attention)(*f64(q, k, v), jnp.asarray(mask))
    np.testing.assert_allclose(got, quadratic_linear_attention(elu(q), elu(k), v, mask, 1e-6),
                               **TOL)
    got = jax.jit(sikf.sikf_attention, static_argnames="eps")(*f64(q, k, v), jnp.asarray(mask),
                                                             eps=0.0)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, quadratic_linear_attention(np.exp(q), np.exp(k), v, mask, 0.0),
                               **TOL)


def nystrom_np(q, k, v, mask, m, kernel):
    """The Nystromformer equations with the exact pseudo-inverse, padded to a multiple of m."""
    b, n, h, d = q.shape
    pad = -n % m
    q, k, v = (np.pad(t, [(0, 0), (0, pad), (0, 0), (0, 0)]) for t in (q, k, v))
    mask = np.pad(mask, [(0, 0), (0, pad)])
    keep = mask[:, :, None, None]
    q, k, v = q * keep * d ** -0.25, k * keep * d ** -0.25, v * keep
    seg = lambda t: t.reshape(b, m, -1, h, d).mean(2)  # noqa: E731
    ql, kl = seg(q), seg(k)
    f = softmax_np(np.einsum("bnhd,bmhd->bhnm", q, kl))
    a = softmax_np(np.einsum("bmhd,bkhd->bhmk", ql, kl))
    bl = np.where(mask[:, None, None, :], np.einsum("bmhd,bnhd->bhmn", ql, k), -np.inf)
    out = np.einsum("bhnm,bhmk,bhkl,blhd->bnhd", f, np.linalg.pinv(a), softmax_np(bl), v)
    w = kernel.shape[1]
    vp = np.pad(v, [(0, 0), (w // 2, w // 2), (0, 0), (0, 0)])
    conv = sum(vp[:, i:i + n + pad] * kernel[:, i][:, None] for i in range(w))
    return (out + conv)[:, :n]


def test_nystrom_attention_and_pinv():
    q, k, v = (rand(i, (2, 14, 2, 4)) for i in range(3))
    mask, kernel = length_mask([14, 9], 14), rand(3, (2, 5), 0.3)
    run = jax.jit(nystromformer.nystrom_attention, static_argnames=("num_landmarks", "pinv"))
    got = run(*f64(q, k, v), jnp.asarray(mask), num_landmarks=4, pinv="exact",
              conv_kernel=f64(kernel)[0])
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, nystrom_np(q, k, v, mask, 4, kernel), **TOL)
    # the conv alone, over several blocks of its band-matrix form (here 4 outputs per block)
    w = kernel.shape[1]
    vp = np.pad(v, [(0, 0), (w // 2, w // 2), (0, 0), (0, 0)])
    want = sum(vp[:, i:i + 14] * kernel[:, i][:, None] for i in range(w))
    conv = jax.jit(nystromformer.depthwise_sequence_conv, static_argnames="block")
    for block in (4, 5, 64):
        np.testing.assert_allclose(conv(*f64(v, kernel), block=block), want, **TOL)
    a = softmax_np(2.0 * rand(4, (3, 6, 6)))
    z = jax.jit(nystromformer.iterative_pinv, static_argnums=1)(*f64(a), 40)
    np.testing.assert_allclose(z, np.linalg.pinv(a), rtol=1e-10, atol=1e-10)  # converged


def test_fastrpb_1d():
    w, v = rand(0, (2, _fastrpb.param_size(9, "full"))), rand(1, (2, 9, 2, 3))
    mask = length_mask([9, 6], 9)
    got = jax.jit(_fastrpb.fastrpb, static_argnames=("base_type", "has_cls"))(
        *f64(w, v), jnp.asarray(mask), base_type="full", has_cls=False)
    want = np.einsum("hij,bjhd->bihd", explicit_toeplitz(w, 9, "full"),
                     np.where(mask[:, :, None, None], v, 0.0))
    np.testing.assert_allclose(got, want, **TOL)


def test_fourier_filter():
    x = rand(0, (2, 30, 8))
    got = jax.jit(fourier.dct_downsample, static_argnums=1)(*f64(x), 6)
    want = scipy.fft.idct(scipy.fft.dct(x, type=2, axis=1, norm="ortho")[:, :6], type=2, axis=1,
                          norm="ortho")
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, **TOL)


def test_fastformer_layer():
    s = mixers.MixerSpec(dim=16, num_heads=2, qkv_dim=16, attention_dropout=0.0, max_length=11,
                         has_cls=False, dtype=jnp.float64)
    m = mixers.build("fastformer", s, {"init_std": 0.3}, nnx.Rngs(0))
    x, mask = rand(1, (3, 11, 16)), length_mask([11, 7, 2], 11)
    got = nnx.jit(lambda m, x: m(x, jnp.asarray(mask))[0])(m, *f64(x))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, fastformer_numpy(m, x, mask, 2), **TOL)
    # the pure function is the whole layer: with the output projection, it is the module
    pure = fastformer.fastformer(*f64(x), jnp.asarray(mask), query=m.query, key=m.key,
                                 query_att=m.query_att, key_att=m.key_att,
                                 transform=m.transform, num_heads=2)
    np.testing.assert_allclose(m.out(pure), got, **TOL)


@pytest.mark.parametrize("model", ["transformer", "linear", "sikf", "nystromformer", "fourier",
                                   "topk", "fastformer"])
def test_every_mixer_returns_float64_for_float64(model):
    options = dict(config.resolve(model, "listops", "smoke").mixer)
    kind = options.pop("kind")
    if kind == "topk":
        options["pool_lengths"] = [8]
    s = mixers.MixerSpec(dim=16, num_heads=2, qkv_dim=16, attention_dropout=0.0, max_length=32,
                         has_cls=False, dtype=jnp.float64)
    m = mixers.build(kind, s, options, nnx.Rngs(0))
    y, _ = jax.eval_shape(lambda x: m(x, jnp.ones((2, 32), bool)),
                          jax.ShapeDtypeStruct((2, 32, 16), jnp.float64))
    assert y.dtype == jnp.float64