"""Attention dropout's keep mask (`_dropout_mask`): a function of the key and the position only,
with the statistics of independent Bernoulli draws at the keep probability, and one mask for
every softmax attention form (explicit, CPU query blocks, GPU key blocks)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_bench.mixers import _dropout_mask

SHAPE = (4, 4, 256, 256)  # 1M weights: a rate's standard error is under 0.0005


def mask(rate, seed=0, shape=SHAPE):
    return np.asarray(_dropout_mask.full(jax.random.key(seed), shape, rate))


def test_mix_is_murmur3s_finaliser():
    # fmix32 of MurmurHash3 (Appleby's smhasher), computed by hand for 0, 1 and 0xDEADBEEF
    def fmix32(h):
        h ^= h >> 16
        h = (h * 0x85EBCA6B) & 0xFFFFFFFF
        h ^= h >> 13
        h = (h * 0xC2B2AE35) & 0xFFFFFFFF
        return h ^ (h >> 16)
    xs = np.array([0, 1, 0xDEADBEEF, 12345], np.uint32)
    got = np.asarray(_dropout_mask.mix(jnp.asarray(xs)))
    assert got.tolist() == [fmix32(int(x)) for x in xs]
    assert got[1] == 0x514E28B7  # smhasher's published fmix32(1)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_the_keep_rate_is_one_minus_the_dropout_rate(rate):
    m = mask(rate)
    assert m.shape == SHAPE and m.dtype == bool
    assert abs(m.mean() - (1 - rate)) < 0.002
    # every slice too: no head, row or key is biased
    for axis in range(4):
        means = m.mean(axis=tuple(a for a in range(4) if a != axis))
        assert np.abs(means - (1 - rate)).max() < 0.03 + 6 * np.sqrt(rate * (1 - rate) * m.shape[axis] / m.size)


@pytest.mark.parametrize("axis", [0, 1, 2, 3])
def test_neighbours_along_every_axis_are_independent(axis):
    rate = 0.3
    m = mask(rate)
    a, b = np.take(m, range(m.shape[axis] - 1), axis), np.take(m, range(1, m.shape[axis]), axis)
    p = 1 - rate
    # the four joint frequencies of (kept, kept), (kept, dropped), ... of neighbours
    for x, y, want in [(1, 1, p * p), (1, 0, p * rate), (0, 1, rate * p), (0, 0, rate * rate)]:
        assert abs(((a == x) & (b == y)).mean() - want) < 0.003


def test_two_keys_give_independent_masks_and_one_key_the_same():
    m0, m1 = mask(0.5, seed=0), mask(0.5, seed=1)
    assert (mask(0.5, seed=0) == m0).all()
    assert abs((m0 == m1).mean() - 0.5) < 0.002
    # the next step's key (fold_in) too
    k = jax.random.key(0)
    m2 = np.asarray(_dropout_mask.full(jax.random.fold_in(k, 1), SHAPE, 0.5))
    assert abs((m0 == m2).mean() - 0.5) < 0.002


def test_a_slice_of_the_words_gives_the_same_slice_of_the_mask():
    rng, shape, rate = jax.random.key(4), (2, 3, 40, 50), 0.2
    whole = np.asarray(_dropout_mask.full(rng, shape, rate))
    row, col = _dropout_mask.words(rng, shape[:-1], shape[-1])
    part = _dropout_mask.keep(row[:, 1:, 10:20], col[30:45], rate)
    np.testing.assert_array_equal(part, whole[:, 1:, 10:20, 30:45])
