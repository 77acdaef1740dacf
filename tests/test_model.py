import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lra_bench import config
from lra_bench.mixers._projections import glu
from lra_bench.mixers.softmax import softmax_attention
from lra_bench.model import Classifier, sinusoidal_table


def _model(pooling, **extra):
    sets = [f"model.pooling={pooling!r}".replace("'", '"'), "model.dropout=0.0"]
    sets += [f"{k}={v}" for k, v in extra.items()]
    rc = config.resolve("transformer", "listops", "smoke", overrides=sets)
    return rc, Classifier(rc, rngs=nnx.Rngs(params=0))


def _padded_batch(rc, seed=0):
    rng = np.random.default_rng(seed)
    L = rc.data["max_length"]
    tokens = rng.integers(1, rc.data["vocab_size"], size=(3, L)).astype(np.int32)
    lengths = np.array([L, L // 2, 5])
    tokens[np.arange(L)[None, :] >= lengths[:, None]] = 0
    return tokens, lengths


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_padded_content_does_not_reach_the_output(pooling):
    rc, model = _model(pooling)
    tokens, _ = _padded_batch(rc)
    x1, m1 = model.encoder(jnp.asarray(tokens))
    # Change what sits at the padded positions (the pad id's embedding row) without changing
    # which positions are padding: a masking bug shows up as a change at the valid positions.
    emb = model.encoder.embed
    original = emb.embedding[...]
    noise = jax.random.normal(jax.random.key(7), original[0].shape) * 10.0  # not constant: LN would cancel it
    emb.embedding[...] = original.at[0].set(original[0] + noise)
    x2, m2 = model.encoder(jnp.asarray(tokens))
    emb.embedding[...] = original
    np.testing.assert_array_equal(m1, m2)
    valid = np.asarray(m1)
    assert (~valid).any()
    np.testing.assert_allclose(np.asarray(x1)[valid], np.asarray(x2)[valid], atol=1e-4)
    np.testing.assert_allclose(model.encoder.pool(x1, m1), model.encoder.pool(x2, m2), atol=1e-4)
    assert not np.allclose(np.asarray(x1)[~valid], np.asarray(x2)[~valid])


def test_batch_rows_are_independent():
    rc, model = _model("mean")
    tokens, _ = _padded_batch(rc)
    logits_batch = model(jnp.asarray(tokens))
    logits_alone = model(jnp.asarray(tokens[2:3, :]))
    np.testing.assert_allclose(np.asarray(logits_batch)[2:3], np.asarray(logits_alone), atol=1e-5)


def test_softmax_attention_paths_agree_and_mask_keys():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(kk, (2, 6, 2, 4)) for kk in (k1, k2, k3))
    mask = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    fused = softmax_attention(q, k, v, mask)
    # dropout rate ~0 takes the explicit path with the same math
    explicit = softmax_attention(q, k, v, mask, dropout_rate=1e-9, dropout_rng=jax.random.key(1))
    np.testing.assert_allclose(fused, explicit, atol=1e-5)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
    logits = np.where(np.asarray(mask)[:, None, None, :], logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    np.testing.assert_allclose(fused, np.einsum("bhqk,bkhd->bqhd", w, v), atol=1e-5)


def test_sinusoidal_table_matches_the_formula():
    t = sinusoidal_table(10, 6)
    assert t.shape == (10, 6)
    np.testing.assert_allclose(t[3, 0], np.sin(3.0))
    np.testing.assert_allclose(t[3, 1], np.cos(3.0))
    np.testing.assert_allclose(t[3, 2], np.sin(3.0 / 10000 ** (2 / 6)), rtol=1e-6)


def test_dual_encoder_shares_one_encoder_and_builds_paired_features():
    rc = config.resolve("transformer", "listops", "smoke", overrides=["model.dropout=0.0"])
    rc = config.RunConfig.from_dict({**rc.to_dict(), "data": {**rc.data, "dual": True}})
    model = Classifier(rc, rngs=nnx.Rngs(params=0))
    assert model.hidden.kernel.shape[0] == 4 * rc.model["emb_dim"]
    tokens = np.random.default_rng(0).integers(1, 10, size=(2, 2, rc.data["max_length"])).astype(np.int32)
    logits = model(jnp.asarray(tokens))
    assert logits.shape == (2, rc.data["num_classes"])
    swapped = model(jnp.asarray(tokens[:, ::-1]))
    # [x1, x2, x1*x2, x1-x2] is not symmetric in the pair: swapping documents changes logits.
    assert not np.allclose(np.asarray(logits), np.asarray(swapped))


def test_glu_is_the_first_half_gated_by_the_sigmoid_of_the_second(x64):
    """nn.GLU(dim=-1) (state-spaces/s4 src/models/nn/activation.py): [a, g] -> a * sigmoid(g),
    in float64 (shared by S4D's output, S5's gates and model.mlp = "glu")."""
    y = np.random.default_rng(0).standard_normal((2, 5, 6))
    got = np.asarray(glu(jnp.asarray(y)))
    assert got.dtype == np.float64 and got.shape == (2, 5, 3)
    np.testing.assert_allclose(got, y[..., :3] / (1.0 + np.exp(-y[..., 3:])), rtol=1e-13)


def test_glu_mlp_block_is_dense_glu_dense_after_the_mixer():
    """model.mlp = "glu": the block's MLP is Dense(H, 2F) -> GLU -> dropout -> Dense(F, H)
    (state-spaces/s4's FFN with activation 'glu'), applied to the pre-LN'd mixer output."""
    rc, model = _model("mean", **{"model.mlp": '"glu"', "model.mlp_dim": 6, "model.num_layers": 1})
    block = model.encoder.blocks[0]
    d = rc.model["emb_dim"]
    assert block.mlp_in.kernel.shape == (d, 12) and block.mlp_out.kernel.shape == (6, d)
    tokens, _ = _padded_batch(rc)
    x = model.encoder.embed(jnp.asarray(tokens))
    mask = jnp.asarray(tokens != 0)
    out, _ = block(x, mask, deterministic=True, rngs=None)
    # The mixer half as the block computes it; the MLP half re-typed in numpy.
    mixed = np.asarray(x + block.mixer(block.norm1(x), mask)[0], np.float64)
    h = np.asarray(block.norm2(jnp.asarray(mixed, jnp.float32)), np.float64)
    p = lambda v: np.asarray(v[...], np.float64)  # noqa: E731
    z = h @ p(block.mlp_in.kernel) + p(block.mlp_in.bias)
    want = mixed + (z[..., :6] / (1.0 + np.exp(-z[..., 6:]))) @ p(block.mlp_out.kernel) \
        + p(block.mlp_out.bias)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-5)
    logits = model(jnp.asarray(tokens))
    assert logits.shape == (3, rc.data["num_classes"]) and np.isfinite(np.asarray(logits)).all()
    with pytest.raises(Exception, match="model.mlp must be gelu, glu or none"):
        config.resolve("transformer", "listops", "smoke", overrides=['model.mlp="swiglu"'])
