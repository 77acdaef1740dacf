"""Softmax attention over blocks of keys with an online softmax: memory linear in the length.

Where cuDNN's fused kernel does not run on a GPU (attention dropout, float32/float64, heads over
128 features, or a rejected call), `_attention.attention` runs this form instead of the explicit
one once the N x N logits would pass SMALL_BYTES: a scan over blocks of keys keeps, for every
query, a running maximum, normaliser and weighted sum of values (flash attention's online
softmax), so the step holds (batch, heads, queries, key block) arrays, never (queries x keys).
Its backward pass is written out (`jax.custom_vjp`): it keeps q, k, v, the output and each
query's log-normaliser, and recomputes a key block's weights from them. Attention dropout's keep
mask is hashed per key block from its position (`_dropout_mask`), the same bits again in the
backward pass: it is never stored, and it is the mask the explicit form draws from the same key
(tests/test_attention_key_blocks.py).

On CPU `_blocks.query_blocks` stays the form (measured faster there); this one is for devices
where a few large products per step keep the chip busier than many small ones.

Precision follows `lra_bench.mixers`: logits, maxima, normalisers and the softmax gradient in
`island(dtype)`; the (unnormalised) weights go back to the compute dtype for the products.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lra_bench.mixers import _dropout_mask
from lra_bench.mixers._blocks import mean_values
from lra_bench.mixers._precision import island

SMALL_BYTES = 2**24  # N x N logits (all rows and heads) under which the explicit form runs
KEY_BLOCK_BYTES = 2**28  # one key block's (batch, heads, queries, keys) logits
MIN_KEY_BLOCK = 128
MAX_KEY_BLOCK = 1024


def _logits_bytes(q, keys: int) -> int:
    b, n, h = q.shape[:3]
    return b * h * n * keys * island(q.dtype).itemsize


def pays(q, k) -> bool:
    """Whether the N x N form would hold enough memory to matter (more than SMALL_BYTES of
    logits; it writes several such arrays per step)."""
    return _logits_bytes(q, k.shape[1]) > SMALL_BYTES


def block_size(q, k) -> int:
    """Keys per block: the most (a power of two in [MIN_KEY_BLOCK, MAX_KEY_BLOCK]) whose logits
    for every query fit KEY_BLOCK_BYTES, split evenly over the keys (no mostly-padding block)."""
    keys = k.shape[1]
    fits = max(1, KEY_BLOCK_BYTES // max(_logits_bytes(q, 1), 1))
    size = min(MAX_KEY_BLOCK, max(MIN_KEY_BLOCK, 1 << (int(fits).bit_length() - 1)))
    blocks = -(-keys // size)
    return -(-keys // blocks)


def key_blocks(q, k, v, mask, scale, rng=None, rate: float = 0.0):
    """Softmax attention of (batch, tokens, heads, head_dim) arrays over blocks of keys; mask:
    (batch, keys) bool, True at real keys; rng: attention dropout's key, or None. A row with no
    real key gets the mean of v (uniform weights, as the explicit form gives without dropout)."""
    b, n, h, _ = q.shape
    keys = k.shape[1]
    size = block_size(q, k)
    blocks = -(-keys // size)
    pad = blocks * size - keys

    def split(t):  # (b, keys, h, d) -> (blocks, b, h, size, d)
        t = jnp.pad(t, [(0, 0), (0, pad), (0, 0), (0, 0)])
        return t.reshape(b, blocks, size, h, t.shape[-1]).transpose(1, 0, 3, 2, 4)

    masks = jnp.pad(mask, [(0, 0), (0, pad)]).reshape(b, blocks, 1, 1, size).swapaxes(0, 1)
    words = None
    if rng is not None:  # the mask's row words whole, its column words in key blocks
        row, col = _dropout_mask.words(rng, (b, h, n), keys)
        words = row, jnp.pad(col, (0, pad)).reshape(blocks, size)
    y = _key_blocks((q * scale).swapaxes(1, 2), split(k), split(v), masks, words, rate)
    y = y.swapaxes(1, 2)  # (b, n, h, d)
    return jnp.where(jnp.any(mask, axis=1)[:, None, None, None], y, mean_values(v))


def _logits(q, kb, mb):
    acc = island(q.dtype)
    s = jnp.einsum("bhqd,bhkd->bhqk", q, kb, preferred_element_type=acc)
    return jnp.where(mb, s, jnp.finfo(acc).min)


def _dropped(p, keep, rate):
    return p if keep is None else jnp.where(keep, p, 0.0) / (1.0 - rate)


def _block_keep(words, col_b, rate):
    return None if words is None else _dropout_mask.keep(words[0], col_b, rate)


def _columns(words, blocks: int):
    """Each key block's column words for the scan (zeros, unused, without dropout)."""
    return jnp.zeros((blocks, 1), jnp.uint32) if words is None else words[1]


def _forward(q, ks, vs, masks, words, rate):
    acc = island(q.dtype)
    b, h, n, _ = q.shape

    def one(carry, block):
        top, total, out = carry
        kb, vb, mb, col_b = block
        s = _logits(q, kb, mb)
        new_top = jnp.maximum(top, jnp.max(s, axis=-1, keepdims=True))
        p = jnp.exp(s - new_top)
        shrink = jnp.exp(top - new_top)
        total = total * shrink + jnp.sum(p, axis=-1, keepdims=True)
        # after the normaliser, as in the explicit form
        p = _dropped(p, _block_keep(words, col_b, rate), rate)
        out = out * shrink + jnp.einsum("bhqk,bhkd->bhqd", p.astype(vs.dtype), vb,
                                        preferred_element_type=acc)
        return (new_top, total, out), None

    init = (jnp.full((b, h, n, 1), jnp.finfo(acc).min, acc), jnp.zeros((b, h, n, 1), acc),
            jnp.zeros((b, h, n, vs.shape[-1]), acc))
    (top, total, out), _ = jax.lax.scan(one, init, (ks, vs, masks, _columns(words, ks.shape[0])))
    return (out / total).astype(vs.dtype), top + jnp.log(total)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _key_blocks(q, ks, vs, masks, words, rate):
    """q: (b, h, n, d), scaled; ks, vs: (blocks, b, h, size, d); masks: (blocks, b, 1, 1, size);
    words: attention dropout's mask words ((b, h, n, 1) rows, (blocks, size) columns) or None.
    Returns (b, h, n, d)."""
    return _forward(q, ks, vs, masks, words, rate)[0]


def _key_blocks_fwd(q, ks, vs, masks, words, rate):
    y, lse = _forward(q, ks, vs, masks, words, rate)
    return y, (q, ks, vs, masks, words, y, lse)


def _key_blocks_bwd(rate, residuals, dy):
    q, ks, vs, masks, words, y, lse = residuals
    acc = island(q.dtype)
    # sum_k p * dp = dy . y for each query (dropout included)
    delta = jnp.sum(dy.astype(acc) * y.astype(acc), axis=-1, keepdims=True)

    def one(dq, block):
        kb, vb, mb, col_b = block
        p = jnp.exp(_logits(q, kb, mb) - lse)  # the block's normalised weights, recomputed
        keep = _block_keep(words, col_b, rate)  # hashed again
        dvb = jnp.einsum("bhqk,bhqd->bhkd", _dropped(p, keep, rate).astype(dy.dtype), dy,
                         preferred_element_type=acc)
        dp = _dropped(jnp.einsum("bhqd,bhkd->bhqk", dy, vb, preferred_element_type=acc),
                      keep, rate)
        ds = jnp.where(mb, p * (dp - delta), 0.0)
        dq = dq + jnp.einsum("bhqk,bhkd->bhqd", ds.astype(kb.dtype), kb,
                             preferred_element_type=acc)
        dkb = jnp.einsum("bhqk,bhqd->bhkd", ds.astype(q.dtype), q, preferred_element_type=acc)
        return dq, (dkb.astype(ks.dtype), dvb.astype(vs.dtype))

    dq, (dks, dvs) = jax.lax.scan(one, jnp.zeros(q.shape, acc),
                                  (ks, vs, masks, _columns(words, ks.shape[0])))
    return dq.astype(q.dtype), dks, dvs, None, None


_key_blocks.defvjp(_key_blocks_fwd, _key_blocks_bwd)
