"""Attention dropout's keep mask as a function of position: one integer hash per weight.

Every softmax attention form (explicit, CPU query blocks, GPU key blocks) draws the same mask
from the same key, each for the weights it holds, so no form stores an N x N mask and the forms
agree exactly (tests/test_dropout_mask.py). The weight of (batch b, head h, query q, key j)
is kept when

    mix(row[b, h, q] ^ col[j]) < round((1 - rate) * 2^32)

where row = mix(flat (b, h, q) index * GOLDEN + s0), col = mix(j ^ s1), (s0, s1) are two threefry
words of the step's dropout key and `mix` is MurmurHash3's 32-bit finaliser. Threefry's own bits
for every weight were most of a CPU training step: a 2,000-token ListOps Transformer step with
attention dropout ran at 0.046 steps/s against 0.082 without (batch 8, 2 loaded cores,
2026-12-07); a mask word costs threefry ~20 rounds, this ~7 integer operations, and the block
forms draw it again in the backward pass instead of keeping a byte per weight. The keep
probability is quantised to 2^-32. Its statistics (rate, independence between neighbouring
weights, heads, rows and keys) are tested; docs/fidelity.md lists it (PyTorch's dropout draws
Philox bits: no implementation reproduces another's mask).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

GOLDEN = 0x9E3779B9  # spreads consecutive row indices over the words before mixing


def mix(x):
    """MurmurHash3's 32-bit finaliser: a bijection of uint32 in which every input bit changes
    every output bit with probability ~1/2."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def words(rng, lead: tuple[int, ...], keys: int):
    """The mask's row words, shaped (*lead, 1) (lead: (batch, heads, queries)), and column words,
    shaped (keys,), from the dropout key."""
    s0, s1 = jax.random.bits(rng, (2,), jnp.uint32)
    size = 1
    for n in lead:
        size *= n
    rows = jax.lax.iota(jnp.uint32, size).reshape(*lead, 1)
    return mix(rows * jnp.uint32(GOLDEN) + s0), mix(jax.lax.iota(jnp.uint32, keys) ^ s1)


def threshold(rate: float) -> int:
    return min(round((1.0 - rate) * 2**32), 2**32 - 1)


def keep(row, col, rate: float):
    """The keep mask of the weights whose row words are `row` (..., queries, 1) and column words
    `col` (..., keys) (any broadcastable slices of `words`' arrays)."""
    return mix(row ^ col) < jnp.uint32(threshold(rate))


def full(rng, shape: tuple[int, ...], rate: float):
    """The whole (batch, heads, queries, keys) keep mask: what the explicit form uses."""
    row, col = words(rng, shape[:-1], shape[-1])
    return keep(row, col, rate)
