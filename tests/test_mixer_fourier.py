"""Fourier Transformer mixer: DCT against scipy, the filter, masks, the block, a smoke run."""

import math
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft
from flax import nnx

from lra_bench import config, data, report
from lra_bench.data import listops
from lra_bench.mixers import MixerSpec, fourier, softmax
from lra_bench.model import Block
from lra_bench.run import execute


# Eager JAX compiles every op on its own; jitting whole functions keeps these tests fast.
dct_ortho, idct_ortho = jax.jit(fourier.dct_ortho), jax.jit(fourier.idct_ortho)
dct_downsample = jax.jit(fourier.dct_downsample, static_argnums=1)
fourier_filter = jax.jit(fourier.fourier_filter, static_argnums=(2, 3))


def spec(has_cls=False, dtype=jnp.float32, **kw):
    return MixerSpec(dim=16, num_heads=2, qkv_dim=16, attention_dropout=0.0, max_length=64,
                     has_cls=has_cls, dtype=dtype, **kw)


def right_padded(lengths, total, dim, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(lengths), total, dim)).astype(np.float32)
    mask = np.arange(total)[None] < np.asarray(lengths)[:, None]
    return jnp.asarray(x), jnp.asarray(mask)


@pytest.mark.parametrize("length", [7, 32])
def test_dct_and_idct_equal_scipy_ortho_type2(length):
    x = np.random.default_rng(length).normal(size=(2, length, 3)).astype(np.float32)
    want = scipy.fft.dct(x.astype(np.float64), type=2, norm="ortho", axis=1)
    np.testing.assert_allclose(dct_ortho(jnp.asarray(x)), want, atol=2e-5)
    want_inv = scipy.fft.idct(x.astype(np.float64), type=2, norm="ortho", axis=1)
    np.testing.assert_allclose(idct_ortho(jnp.asarray(x)), want_inv, atol=2e-5)


def test_filter_is_truncated_dct_then_inverse_at_the_short_length():
    x, mask = right_padded([40, 25], 40, 4)
    keep = fourier.kept_coefficients(40, 0.2)
    y, short = fourier_filter(x, mask, 0.2, has_cls=False)
    xs = np.where(np.asarray(mask)[..., None], np.asarray(x, np.float64), 0.0)
    coefficients = scipy.fft.dct(xs, type=2, norm="ortho", axis=1)[:, :keep]
    want = scipy.fft.idct(coefficients, type=2, norm="ortho", axis=1)
    assert y.shape == (2, keep, 4) == want.shape
    np.testing.assert_allclose(y, want, atol=2e-5)
    # right padding with n real tokens: the first ceil(n keep / T) short samples are real
    np.testing.assert_array_equal(short.sum(1), [keep, math.ceil(25 * keep / 40)])
    np.testing.assert_array_equal(short, np.arange(keep)[None] < short.sum(1)[:, None])


@pytest.mark.parametrize("has_cls", [False, True])
@pytest.mark.parametrize("length,ratio", [(50, 0.2), (33, 0.5), (20, 1.0)])
def test_output_length_is_ceil_t_p_plus_cls(has_cls, length, ratio):
    x, mask = right_padded([length + has_cls] * 2, length + has_cls, 16)
    mixer = fourier.Mixer(spec(has_cls), rngs=nnx.Rngs(0), keep_ratio=ratio)
    y, short = nnx.eval_shape(lambda m: m(x, mask), mixer)
    assert y.shape[1] == short.shape[1] == math.ceil(length * ratio) + has_cls


def test_cls_token_bypasses_the_filter():
    x, mask = right_padded([20, 11], 20, 16)
    mixer = fourier.Mixer(spec(True), rngs=nnx.Rngs(0))
    stream = nnx.jit(lambda m: m.residual_stream(x, x, mask))(mixer)
    np.testing.assert_array_equal(stream[:, 0], x[:, 0])
    np.testing.assert_allclose(stream[:, 1:], fourier_filter(x[:, 1:], mask[:, 1:], 0.2,
                                                                      False)[0], atol=1e-6)


def test_keep_ratio_one_equals_softmax_attention_with_the_same_weights():
    x, mask = right_padded([24, 15, 9], 24, 16, seed=1)
    plain = softmax.Mixer(spec(), rngs=nnx.Rngs(3))
    mixer = fourier.Mixer(spec(), rngs=nnx.Rngs(0), keep_ratio=1.0)
    nnx.update(mixer.attention, nnx.state(plain))
    y, short = nnx.jit(lambda m: m(x, mask))(mixer)
    want, _ = nnx.jit(lambda m: m(x, mask))(plain)
    np.testing.assert_array_equal(short, mask)
    m = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(y)[m], np.asarray(want)[m], atol=1e-5)


def test_real_outputs_do_not_depend_on_pad_content():
    x, mask = right_padded([30, 12], 30, 16, seed=2)
    noisy = jnp.where(mask[..., None], x, 1e4)
    mixer = fourier.Mixer(spec(True), rngs=nnx.Rngs(0))
    cls = jnp.ones_like(mask[:, :1])
    call = nnx.jit(lambda m, x: m(jnp.concatenate([x[:, :1], x], 1), jnp.concatenate([cls, mask], 1)))
    (a, ma), (b, mb) = call(mixer, x), call(mixer, noisy)
    np.testing.assert_array_equal(ma, mb)
    m = np.asarray(ma)
    np.testing.assert_allclose(np.asarray(a)[m], np.asarray(b)[m], atol=1e-5)


def test_dct_runs_in_float32_under_bfloat16():
    x = jax.random.normal(jax.random.key(0), (2, 300, 8)).astype(jnp.bfloat16)
    y = dct_downsample(x, 60)
    assert y.dtype == jnp.bfloat16
    want = dct_downsample(x.astype(jnp.float32), 60).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(want, np.float32))


def test_filtered_block_adds_to_the_filtered_normalised_input():
    rc = config.resolve("fourier", "listops", "smoke")
    sp = replace(spec(True, layer=0, num_layers=2), dim=rc.model["emb_dim"],
                 qkv_dim=rc.model["qkv_dim"])
    block = Block(rc, sp, rngs=nnx.Rngs(0))
    x, mask = right_padded([41, 20], 41, rc.model["emb_dim"], seed=4)
    out, short = nnx.jit(lambda b: b(x, mask, deterministic=True, rngs=None))(block)

    @nnx.jit
    def by_hand(b):
        h = b.norm1(x)
        filtered, filtered_mask = fourier.fourier_filter(h, mask, 0.2, has_cls=True)
        z = filtered + b.mixer(h, mask)[0]
        return z + b.mlp_out(jax.nn.gelu(b.mlp_in(b.norm2(z)))), filtered_mask

    z, want_mask = by_hand(block)
    assert out.shape == (2, 1 + math.ceil(40 * 0.2), rc.model["emb_dim"])
    np.testing.assert_array_equal(short, want_mask)
    np.testing.assert_allclose(out, z, atol=1e-5)
    # a layer outside filter_layers is the plain pre-LN block
    plain = Block(rc, replace(sp, layer=1), rngs=nnx.Rngs(0))
    out1, mask1 = nnx.eval_shape(lambda b: b(x, mask, deterministic=True, rngs=None), plain)
    assert out1.shape == x.shape and mask1.shape == mask.shape
    assert not hasattr(plain.mixer, "after_block")


def smoke_run(model, tmp_path, overrides=()):
    small = ["data.num_train=64", "data.num_val=32", "data.num_test=32", "train.batch_size=16"]
    rc = config.resolve(model, "listops", "smoke", overrides=small + list(overrides), steps=3)
    listops.generate_files(tmp_path / "data" / "listops" / rc.data["variant"], rc.data)
    assert data.load(rc, tmp_path / "data")["train"]["inputs"].shape == (64, 128)
    summary = execute(rc, tmp_path / "data", tmp_path / "results", interactive=False)
    assert summary["status"] == "completed" and math.isfinite(summary["final_train_loss"])
    table = report.accuracy_table(report.load_runs(tmp_path / "results")[0])
    assert model in set(table["model"])
    return summary


def test_fourier_trains_in_a_smoke_run_and_is_reported(tmp_path, fast_compile):
    smoke_run("fourier", tmp_path)
