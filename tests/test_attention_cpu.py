"""Softmax attention on CPU: which form runs, and attention dropout's keep mask (16 random bits
per weight, two weights per threefry word). The maths of each form is checked in float64 in
test_mixers_float64.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_bench.mixers import _attention, _blocks


def program(n, **kwargs):
    """The traced attention of (2, n, 4, 16) arrays, nested programs included, as text."""
    q = jnp.zeros((2, n, 4, 16))
    mask = jnp.ones((2, n), bool)
    return str(jax.make_jaxpr(lambda q: _attention.attention(q, q, q, mask, **kwargs))(q))


@pytest.mark.parametrize("dropout", [False, True])
def test_blocks_run_where_they_pay(monkeypatch, dropout):
    kwargs = dict(dropout_rate=0.1, dropout_rng=jax.random.key(0)) if dropout else {}
    # 2 x 4 x 1024^2 float32 logits (32 MiB): blocks with their own backward pass
    assert "custom_vjp_call" in program(1024, **kwargs)
    # 2 x 4 x 64^2 (128 KiB): the explicit form, whose fixed costs are lower
    assert _blocks._logits_bytes(jnp.zeros((2, 64, 4, 16)), jnp.zeros((2, 64, 4, 16))) < \
        _blocks.SMALL_BYTES
    assert "custom_vjp_call" not in program(64, **kwargs)
    monkeypatch.setenv("LRA_ATTENTION", "explicit")
    assert "custom_vjp_call" not in program(1024, **kwargs)


def keep(rate, b=2, n=256, h=4, keys=257, seed=0):
    q, k = jnp.zeros((b, n, h, 8)), jnp.zeros((b, keys, h, 8))
    return np.asarray(_attention._keep_mask(q, k, rate, jax.random.key(seed)))


def test_keep_mask_shape_and_rate():
    m = keep(0.1)
    assert m.shape == (2, 4, 256, 257) and m.dtype == bool  # an odd key count: half a word unused
    assert abs(m.mean() - 0.9) < 0.002  # 526K draws: the standard error is 0.0004
    assert keep(0.0).all()
    assert abs(keep(0.5).mean() - 0.5) < 0.002
    assert (keep(0.1) == m).all() and (keep(0.1, seed=1) != m).any()  # a function of the key


def test_the_two_weights_of_one_word_are_independent():
    m = keep(0.3, keys=256)
    pairs = m.reshape(*m.shape[:-1], -1, 2)  # the low and high 16 bits of each word
    both = (pairs[..., 0] & pairs[..., 1]).mean()
    assert abs(both - 0.7 ** 2) < 0.003
    # neighbours that do not share a word agree as often as those that do
    across = (m[..., 1:-1:2] & m[..., 2::2]).mean()
    assert abs(across - both) < 0.004
