"""Attention dropout's keep mask: 16 random bits per weight, two weights per threefry word."""

import jax
import jax.numpy as jnp
import numpy as np

from lra_bench.mixers import _attention


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
