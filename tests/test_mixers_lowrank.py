"""LRA Table 1's Linformer, Performer, Synthesizer and Reformer: float64 equation tests against
numpy re-types of LRA's JAX layers (google-research/long-range-arena ad0ff01,
lra_benchmarks/models/<name>/<name>_attention.py; its flax.deprecated code cannot be installed
here), and golden vectors from the Nystromformer re-run's PyTorch layers
(tests/fixtures/table1_golden.md)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lra_bench import mixers
from lra_bench.mixers import linformer, performer, reformer, synthesizer

TOL = dict(rtol=1e-10, atol=1e-12)


# compiled without most XLA passes (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("fast_compile_module", "x64")  # float64: conftest




def rand(seed, shape, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal(shape)


def softmax_np(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def lengths_mask(lengths, n):
    return np.arange(n)[None, :] < np.asarray(lengths)[:, None]


def golden():
    import pathlib
    return np.load(pathlib.Path(__file__).parent / "fixtures" / "table1_golden.npz")


def to_blhd(t):  # torch layout (b, h, n, d) -> ours (b, n, h, d)
    return np.swapaxes(t, 1, 2)


# --- Linformer -----------------------------------------------------------------------------------

def test_linformer_lra_projects_pads_and_shares_one_kernel():
    b, n, h, d, k = 2, 9, 2, 4, 3
    q, key, v = (rand(i, (b, n, h, d)) for i in range(3))
    e = rand(3, (11, k))  # (max_len, k), cut to n
    mask = lengths_mask([9, 5], n)
    got = linformer.linformer_attention(*map(jnp.asarray, (q, key, v, mask, e)), mask_keys=False)
    kl, vl = np.einsum("bnhd,nk->bkhd", key, e[:n]), np.einsum("bnhd,nk->bkhd", v, e[:n])
    w = softmax_np(np.einsum("bqhd,bkhd->bhqk", q, kl) / np.sqrt(d))
    np.testing.assert_allclose(got, np.einsum("bhqk,bkhd->bqhd", w, vl), **TOL)


def test_linformer_nystrom_matches_the_official_pytorch_layer():
    g = golden()
    mask = g["mask"].astype(bool)

    def loss(q, k, v, e):
        y = linformer.linformer_attention(q, k, v, jnp.asarray(mask), e, mask_keys=True)
        return jnp.sum(y * to_blhd(g["g"])), y

    args = [jnp.asarray(to_blhd(g[x])) for x in "qkv"] + [jnp.asarray(g["linformer_e"])]
    (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(*args)
    np.testing.assert_allclose(y, to_blhd(g["linformer_out"]), **TOL)
    for got, name in zip(grads, ("dq", "dk", "dv")):
        np.testing.assert_allclose(got, to_blhd(g[f"linformer_{name}"]), **TOL)
    np.testing.assert_allclose(grads[3], g["linformer_de"], **TOL)


# --- Performer -----------------------------------------------------------------------------------

def lra_favor_np(x, w, is_query, eps):
    """Re-typed nonnegative_softmax_kernel_feature_creator (LRA performer_attention.py)."""
    dn = x.shape[-1] ** -0.25
    dash = np.einsum("bnhd,md->bnhm", dn * x, w)
    diag = (np.sum(x * x, -1, keepdims=True) / 2.0) * dn * dn
    top = dash.max(-1, keepdims=True) if is_query else dash.max((1, 3), keepdims=True)
    return w.shape[0] ** -0.5 * (np.exp(dash - diag - top) + eps)


def lra_linear_np(pq, pk, v, stab):
    w_ = np.einsum("bnhm,bhmd->bnhd", pq, np.einsum("bshm,bshd->bhmd", pk, v))
    r = np.einsum("bnhm,bhm->bnh", pq, pk.sum(1))
    r = r + 2 * stab * (np.abs(r) <= stab)
    return w_ / r[..., None]


def test_performer_lra_relu_default_is_generalized_attention_without_masks():
    q, k, v = (rand(i, (2, 7, 2, 4)) for i in range(3))
    mask = lengths_mask([7, 3], 7)
    got = performer.performer_attention(*map(jnp.asarray, (q, k, v, mask)))
    pq, pk = np.maximum(q, 0) + 0.001, np.maximum(k, 0) + 0.001
    np.testing.assert_allclose(got, lra_linear_np(pq, pk, v, 0.0), **TOL)


def test_performer_lra_favor_with_a_fixed_draw():
    q, k, v = (rand(i, (2, 7, 2, 4)) for i in range(3))
    w = np.asarray(performer.gaussian_orthogonal_matrix(jax.random.key(0), 6, 4))
    got = performer.performer_attention(*map(jnp.asarray, (q, k, v, np.ones((2, 7), bool), w)),
                                        features="favor+", kernel_eps=1e-6, stabilizer=1e-6)
    want = lra_linear_np(lra_favor_np(q, w, True, 1e-6), lra_favor_np(k, w, False, 1e-6), v, 1e-6)
    np.testing.assert_allclose(got, want, **TOL)


def test_performer_orthogonal_draws_and_query_seeded_redraw():
    w = np.asarray(performer.gaussian_orthogonal_matrix(jax.random.key(1), 8, 4, scaling=1))
    blocks = w.reshape(2, 4, 4) / 2.0  # sqrt(4) scaling: each block of 4 rows is orthonormal
    for blk in blocks:
        np.testing.assert_allclose(blk @ blk.T, np.eye(4), atol=1e-12)
    q = jnp.asarray(rand(0, (1, 5, 2, 4)))
    a, b_ = (performer.query_seeded_projection(x, 3) for x in (q, q))
    np.testing.assert_array_equal(a, b_)  # a function of the queries only
    assert not np.allclose(a, performer.query_seeded_projection(q + 1e-3, 3))


def test_performer_favor_approximates_softmax_with_many_features():
    q, k, v = (rand(i, (1, 16, 1, 4), 0.5) for i in range(3))
    w = performer.gaussian_orthogonal_matrix(jax.random.key(2), 1024, 4)
    got = jax.jit(performer.performer_attention, static_argnames=("features", "kernel_eps"))(
        *map(jnp.asarray, (q, k, v, np.ones((1, 16), bool))), w, features="favor+", kernel_eps=0.0)
    want = np.einsum("bhqk,bkhd->bqhd", softmax_np(np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0), v)
    np.testing.assert_allclose(got, want, atol=0.05)


def test_performer_nystrom_matches_performer_pytorch():
    g = golden()
    mask = jnp.asarray(g["mask"].astype(bool))
    w = jnp.asarray(g["performer_w"])

    def loss(q, k, v):
        y = performer.performer_attention(q, k, v, mask, w, features="favor+", kernel_eps=1e-4,
                                          key_max="global", masking="zero", prescale=True)
        return jnp.sum(y * to_blhd(g["g"])), y

    args = [jnp.asarray(to_blhd(g[x])) for x in "qkv"]
    (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(*args)
    np.testing.assert_allclose(y, to_blhd(g["performer_out"]), **TOL)
    for got, name in zip(grads, ("dq", "dk", "dv")):
        np.testing.assert_allclose(got, to_blhd(g[f"performer_{name}"]), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("key_max, ties", [("per_head", True), ("global", True), ("global", False)])
def test_performer_favor_backward_is_autodiffs(key_max, ties):
    """The written-out backward (performer.favor_attention) against autodiff of the features
    as the FAVOR+ equation reads, jnp.max included, which shares its gradient among ties."""
    q, k, v = (rand(i, (2, 6, 2, 4)) for i in range(3))
    w = np.array(performer.gaussian_orthogonal_matrix(jax.random.key(3), 5, 4))
    if ties:  # a longest row, twice: wherever it gives the max, the max is reached twice
        w[1] = w[0] = 3 * w[0]
        assert (np.einsum("bnhd,md->bhnm", q, w).argmax(-1) == 0).any()
    w = jnp.asarray(w)
    axes = performer.key_max_axes(key_max)
    g = jnp.asarray(rand(4, (2, 6, 2, 4)))

    def features(x, axes):
        x = x * x.shape[-1] ** -0.25
        dash = jnp.einsum("bhnd,md->bhnm", x, w)
        top = jnp.max(dash, axis=axes, keepdims=True)
        return w.shape[0] ** -0.5 * (jnp.exp(dash - 0.5 * jnp.sum(x * x, -1, keepdims=True) - top)
                                     + 1e-4)

    def autodiff(q, k, v):
        q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
        out = performer.renormalized_linear_attention(features(q, (3,)), features(k, axes), v,
                                                      stabilizer=1e-6)
        return jnp.sum(jnp.swapaxes(out, 1, 2) * g)

    def written_out(q, k, v):
        y = performer.performer_attention(q, k, v, jnp.ones((2, 6), bool), w, features="favor+",
                                          kernel_eps=1e-4, stabilizer=1e-6, key_max=key_max)
        return jnp.sum(y * g)

    args = tuple(map(jnp.asarray, (q, k, v)))
    want = jax.grad(autodiff, argnums=(0, 1, 2))(*args)
    got = jax.jit(jax.grad(written_out, argnums=(0, 1, 2)))(*args)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, **TOL)


# --- Synthesizer ---------------------------------------------------------------------------------

def test_synthesizer_random_adds_learnt_logits_and_masks_pads():
    b, n, h, d, m = 2, 6, 2, 4, 8
    q, k, v = (rand(i, (b, n, h, d)) for i in range(3))
    r = rand(3, (h, m, m))
    mask = lengths_mask([6, 4], n)
    got = synthesizer.synthesizer_attention(*map(jnp.asarray, (q, k, v, mask)),
                                            synthesizer.random_logits(jnp.asarray(r), n))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d) + r[None, :, :n, :n]
    logits = np.where(mask[:, None, None, :], logits, -1e10)
    np.testing.assert_allclose(got, np.einsum("bhqk,bkhd->bqhd", softmax_np(logits), v), **TOL)


def test_synthesizer_factorized_and_dense_logits_follow_the_reference_shapes():
    r1, r2 = rand(0, (2, 8, 3)), rand(1, (2, 3, 8))
    np.testing.assert_allclose(synthesizer.factorized_random_logits(r1, r2, 5)[0],
                               np.einsum("hlk,hkn->hln", r1[:, :5], r2[:, :, :5]), **TOL)
    proj = rand(2, (1, 5, 2, 8))  # (batch, n, heads, max_len): reshaped, not transposed
    np.testing.assert_array_equal(synthesizer.dense_logits(jnp.asarray(proj), 5),
                                  proj.reshape(1, 2, 5, 8)[..., :5])


def test_synthesizer_without_dot_product_uses_the_synthetic_logits_alone():
    v = rand(0, (1, 5, 2, 3))
    r = rand(1, (1, 2, 5, 5))
    got = synthesizer.synthesizer_attention(None, None, jnp.asarray(v), jnp.ones((1, 5), bool),
                                            jnp.asarray(r), dot_product=False)
    np.testing.assert_allclose(got, np.einsum("bhqk,bkhd->bqhd", softmax_np(r), v), **TOL)


# --- Reformer ------------------------------------------------------------------------------------

def lra_lsh_single_head_np(query, value, rot, n_buckets, n_hashes):
    """Re-typed lsh_attention_single_head (LRA reformer_attention.py) for one batch row, one head;
    rot: (d, n_hashes, n_buckets / 2), the draw LRA makes from PRNGKey(0)."""
    seqlen, qdim = query.shape
    rotated = np.einsum("tf,fhi->hti", query, rot)
    buckets = np.argmax(np.concatenate([rotated, -rotated], -1), -1)
    buckets = (buckets + (np.arange(n_hashes) * n_buckets)[:, None]).reshape(-1)
    ticker = np.arange(n_hashes * seqlen)
    sticker = np.argsort(seqlen * buckets + ticker % seqlen, kind="stable")
    undo_sort = np.argsort(sticker, kind="stable")
    st = sticker % seqlen
    bq = query[st].reshape(n_hashes * n_buckets, -1, qdim)
    bv = value[st].reshape(n_hashes * n_buckets, -1, qdim)
    look = lambda x: np.concatenate([x, np.concatenate([x[-1:], x[:-1]], 0)], 1)  # noqa: E731
    bk, bv = look(bq), look(bv)
    dots = np.einsum("hie,hje->hij", bq, bk) * qdim ** 0.5
    lse = np.log(np.exp(dots - dots.max(-1, keepdims=True)).sum(-1, keepdims=True)) + \
        dots.max(-1, keepdims=True)
    x = (np.exp(dots - lse) @ bv).reshape(-1, qdim)[undo_sort].reshape(n_hashes, seqlen, qdim)
    logits = lse.reshape(-1)[undo_sort].reshape(n_hashes, seqlen, 1)
    return np.sum(x * softmax_np(logits, axis=0), 0)


@pytest.mark.parametrize("n_hashes", [1, 2])
def test_reformer_lra_matches_the_retyped_reference(n_hashes):
    b, n, h, d, nb = 2, 20, 2, 4, 10
    qk, v = rand(0, (b, n, h, d)), rand(1, (b, n, h, d))
    rot = rand(2, (d, n_hashes, nb // 2))
    lsh = jax.jit(reformer.lsh_attention, static_argnames=(
        "chunk", "key_norm", "logit_scale", "self_mask", "mask_keys"))
    got = lsh(jnp.asarray(qk), jnp.asarray(v), jnp.ones((b, n), bool), jnp.asarray(rot)[None],
              chunk=n // nb, key_norm=False, logit_scale=d ** 0.5, self_mask=False,
              mask_keys=False)
    want = np.stack([np.stack([lra_lsh_single_head_np(qk[i, :, j], v[i, :, j], rot, nb, n_hashes)
                               for j in range(h)], 1) for i in range(b)])
    np.testing.assert_allclose(got, want, **TOL)


def test_reformer_hf_matches_transformers_lsh_self_attention():
    g = golden()
    x, mask = jnp.asarray(g["reformer_x"]), jnp.asarray(g["reformer_mask"].astype(bool))
    rot = jnp.asarray(g["reformer_rotations"])
    b, n, dim = x.shape
    heads = rot.shape[0]

    def loss(x, wq, wv):
        split = lambda t: t.reshape(b, n, heads, -1)  # noqa: E731
        y = reformer.lsh_attention(split(x @ wq.T), split(x @ wv.T), mask, rot, chunk=4,
                                   key_norm=True, logit_scale=1.0, self_mask=True, mask_keys=True)
        y = y.reshape(b, n, dim)
        return jnp.sum(y * g["reformer_g"]), y

    args = (x, jnp.asarray(g["reformer_wq"]), jnp.asarray(g["reformer_wv"]))
    (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(*args)
    np.testing.assert_allclose(y, g["reformer_out"], **TOL)
    for got, name in zip(grads, ("dx", "dwq", "dwv")):
        np.testing.assert_allclose(got, g[f"reformer_{name}"], rtol=1e-8, atol=1e-10)


# --- the modules ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,options", [
    ("linformer", {}), ("linformer", dict(projection="nystrom", k=4)),
    ("performer", {}), ("performer", dict(features="favor+", nb_features=3)),
    ("performer", dict(features="favor+", redraw="fixed", masking="zero", prescale=True)),
    ("synthesizer", {}), ("synthesizer", dict(mode="dense+factorized_random", k=2)),
    ("synthesizer", dict(dot_product=False)),
    ("reformer", {}), ("reformer", dict(style="hf", n_hashes=2, chunk_len=4))])
def test_modules_run_and_return_the_input_shape(kind, options):
    spec = mixers.MixerSpec(dim=8, num_heads=2, qkv_dim=8, attention_dropout=0.1, max_length=13,
                            has_cls=True, dtype=jnp.float64)
    mixer = mixers.build(kind, spec, options, nnx.Rngs(0))
    x = jnp.asarray(rand(0, (2, 13, 8)))
    mask = jnp.asarray(lengths_mask([13, 6], 13))
    y = nnx.jit(lambda mixer, x, mask: mixer(x, mask, deterministic=False,
                                             rngs=nnx.Rngs(dropout=1))[0])(mixer, x, mask)
    assert y.shape == x.shape and y.dtype == x.dtype and np.all(np.isfinite(y))
