"""Softmax attention over blocks of keys (the unfused GPU form, `_key_blocks`) against the explicit
form in float64 at 1e-12, gradients and attention dropout included: the explicit form is given
the same dropout key, from which every form hashes the same mask (`_dropout_mask`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_bench.mixers import _attention, _key_blocks


@pytest.fixture(autouse=True)
def x64_small_blocks(monkeypatch):
    monkeypatch.setattr(_key_blocks, "MIN_KEY_BLOCK", 8)
    monkeypatch.setattr(_key_blocks, "KEY_BLOCK_BYTES", 2 * 3 * 21 * 8 * 8)  # 8 keys per block
    ctx = jax.enable_x64(True) if hasattr(jax, "enable_x64") else \
        __import__("jax.experimental", fromlist=["enable_x64"]).enable_x64()
    with ctx:
        yield


def inputs(n=21, keys=29, b=2, h=3, d=4, empty_row=False):
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((b, n, h, d)))
    k, v = (jnp.asarray(rng.standard_normal((b, keys, h, d))) for _ in range(2))
    mask = np.ones((b, keys), bool)
    mask[0, 19:] = False  # padding at the end: the last block has no real key in row 0
    mask[1] = rng.random(keys) < 0.6
    mask[1, :9] = False  # the first block of row 1 is all padding
    if empty_row:
        mask[1] = False
    return q, k, v, jnp.asarray(mask)


def loss(f):
    return lambda q, k, v: jnp.sum(f(q, k, v) * jnp.cos(jnp.arange(q.shape[1]))[None, :, None, None])


def check(blocked, explicit, q, k, v):
    (value, grads), (value_want, grads_want) = (
        jax.value_and_grad(loss(f), argnums=(0, 1, 2))(q, k, v) for f in (blocked, explicit))
    for got, want in zip((value, *grads), (value_want, *grads_want)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("empty_row", [False, True])
def test_key_blocks_give_the_explicit_form_and_its_gradient(empty_row):
    q, k, v, mask = inputs(empty_row=empty_row)
    assert _key_blocks.block_size(q, k) < k.shape[1] // 3  # several blocks, the last one padded
    scale = 0.7
    check(lambda q, k, v: _key_blocks.key_blocks(q, k, v, mask, scale),
          lambda q, k, v: _attention._explicit(q, k, v, mask[:, None, None, :], scale), q, k, v)


def test_key_blocks_with_attention_dropout_give_the_explicit_form_with_the_same_mask():
    q, k, v, mask = inputs()
    rng, rate, scale = jax.random.key(3), 0.25, 0.5
    check(lambda q, k, v: _key_blocks.key_blocks(q, k, v, mask, scale, rng, rate),
          lambda q, k, v: _attention._explicit(q, k, v, mask[:, None, None, :], scale,
                                               rate, rng), q, k, v)
    # the dropout did drop: not the undropped attention
    undropped = _key_blocks.key_blocks(q, k, v, mask, scale)
    assert np.abs(_key_blocks.key_blocks(q, k, v, mask, scale, rng, rate) - undropped).max() > 1e-3


def test_an_unfused_gpu_attention_takes_key_blocks_where_the_n_squared_form_is_large(monkeypatch):
    monkeypatch.setattr(_attention, "backend", lambda: "gpu")
    monkeypatch.setattr(_key_blocks, "SMALL_BYTES", 2 * 3 * 21 * 29 * 8 - 1)
    q, k, v, mask = inputs()
    rng = jax.random.key(0)
    with _attention.recording() as forms:
        _attention.attention(q, k, v, mask, dropout_rate=0.1, dropout_rng=rng)
        _attention.attention(q[:, :20], k, v, mask, dropout_rate=0.1, dropout_rng=rng)  # small
    assert [f for f, _ in forms] == ["key blocks", "explicit"]
    assert forms[0][1].startswith("attention dropout")
