"""One softmax attention for every mixer that attends, with the best implementation per backend.

GPU, bf16/fp16, no attention dropout: cuDNN's fused (flash) kernel through
`jax.nn.dot_product_attention(implementation="cudnn")`; it never writes the N x N weights.
cuDNN takes key padding only as per-row lengths (real keys first: its bias must be a full
(.., T, S) array, the N x N write the kernel exists to avoid), so each row's real keys are
gathered to the front first: softmax attention does not depend on the order of the keys, so any
key mask works (black pixels as padding in the image tasks, top-k's pooled masks), for an
O(N d) gather.
Everywhere else (CPU, float32/float64, dropout, a head size cuDNN rejects) the lean explicit form:
two einsums, a `where` for the key mask and `jax.nn.softmax`; on CPU over blocks of queries
small enough for a block's logits to stay in cache, with the weights recomputed in the backward
pass, so no N x N array is stored. On CPU this
matters: `jax.nn.dot_product_attention`'s XLA path works on a 5-D (1, B, H, N, N) layout and
writes about eight N x N arrays per step (five of them transposed copies).

Precision follows the mixed-precision rule of `lra_bench.mixers`: logits are accumulated, masked
and normalised in `island(dtype)` (float32 for bf16/fp16/float32, float64 for float64); the
weights go back to the compute dtype for the product with v.

`tests/test_attention_fused.py` checks the fused path against the explicit form (on CPU through
JAX's XLA implementation of the same call, on a GPU through cuDNN); `LRA_ATTENTION=explicit`
forces the explicit form everywhere.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp

FUSED_DTYPES = (jnp.bfloat16, jnp.float16)
QUERY_BLOCK = 512  # the most queries per block of the explicit form on CPU
MIN_BLOCK = 16
BLOCK_BYTES = 2**20  # a block's (batch, heads, block, keys) logits, about the L2 cache of a core
BLOCK_HEAD_DIM = 16  # the head size BLOCK_BYTES was measured with (see _block_shape)
BLOCKS_ABOVE = 2 * BLOCK_BYTES  # blocks when the logits of all the queries exceed this
FUSED_IMPLEMENTATION = "cudnn"  # tests run the same call with JAX's "xla" implementation on CPU
FUSED_TILE = 64  # sequence lengths given to the fused kernel are padded to a multiple of this
_warned: set[str] = set()


def island(dtype):
    """The dtype a numerically delicate step runs in: at least float32, float64 stays float64."""
    return jnp.promote_types(dtype, jnp.float32)


def _fused_applies(q, dropout: bool) -> bool:
    # LRA_ATTENTION=explicit switches the fused kernel off (A/B checks, or a cuDNN that fails
    # only at compile time, which the fallback below cannot catch).
    return (not dropout and jax.default_backend() == "gpu" and q.dtype in FUSED_DTYPES
            and q.shape[-1] <= 128 and q.shape[-1] % 8 == 0
            and os.environ.get("LRA_ATTENTION", "auto") != "explicit")


def attention(q, k, v, mask, *, dropout_rate: float = 0.0, dropout_rng=None, scale=None,
              query_mask=None):
    """Scaled dot-product attention with key-padding masking.

    q: (batch, queries, heads, head_dim); k, v: (batch, keys, heads, head_dim); mask: (batch,
    keys) bool, True at real keys. Returns (batch, queries, heads, head_dim) in v's dtype. A row
    with no real key gets uniform weights (its output is finite and ignored downstream).
    query_mask: (batch, queries) bool or None. Where it is False the query's logits are all
    masked, as in LRA's query & key padding mask: its weights are uniform over every key, so its
    output is the plain mean of v (computed directly, the same on every backend).
    """
    y = _attention(q, k, v, mask, dropout_rate, dropout_rng, scale)
    if query_mask is None:
        return y
    return jnp.where(query_mask[:, :, None, None], y, _mean_values(v))


def _attention(q, k, v, mask, dropout_rate, dropout_rng, scale):
    dropout = dropout_rate > 0.0 and dropout_rng is not None
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    key_mask = mask[:, None, None, :]  # (B, 1, 1, S): broadcasts over heads and queries
    if _fused_applies(q, dropout):
        try:
            return _fused(q, k, v, mask, scale)
        except (ValueError, NotImplementedError, RuntimeError, TypeError) as error:
            # this cuDNN/JAX build rejects the shape or dtype: the explicit form below, said once
            # per reason (a silent fallback would pass an N x N baseline off as the fused one)
            reason = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            if reason not in _warned:
                _warned.add(reason)
                logging.getLogger("lra_bench").warning(
                    "fused attention rejected for q %s %s (%s); using the explicit form",
                    q.shape, q.dtype, reason)
    if dropout:
        # Not in blocks: the mask must then be kept (1 byte per weight) or drawn again in the
        # backward pass, and blocks with a kept mask ran 10% slower than this (text Transformer,
        # 2K tokens, batch 4: 0.084 against 0.094 steps/s, for 3.2 against 5.3 GiB).
        return _explicit(q, k, v, key_mask, scale, dropout_rate, dropout_rng)
    if jax.default_backend() == "cpu" and _logits_bytes(q, k) > BLOCKS_ABOVE:
        return _query_blocks(q, k, v, key_mask, scale)
    return _explicit(q, k, v, key_mask, scale)


def _mean_values(v):
    """(batch, 1, heads, head_dim): what uniform weights over every key give, the mean of v."""
    return jnp.mean(v.astype(island(v.dtype)), axis=1, keepdims=True).astype(v.dtype)


def _fused(q, k, v, mask, scale, implementation=None):
    """The fused kernel with the key mask as lengths: each row's real keys moved to the front
    (a stable sort of the mask), then `key_value_seq_lengths`. Queries and keys are padded to a
    multiple of FUSED_TILE (a CLS token makes 4097; the kernel's tiles are 64 or 128 long): the
    extra keys lie beyond every row's length, the extra queries are dropped. A row with no real
    key gets the uniform average of v, as in the explicit form (the kernel is given length 1,
    then overridden)."""
    order = jnp.argsort(jnp.logical_not(mask).astype(jnp.int8), axis=1, stable=True)
    k_front, v_front = (jnp.take_along_axis(t, order[:, :, None, None], axis=1) for t in (k, v))
    lengths = jnp.sum(mask, axis=1, dtype=jnp.int32)
    pad = lambda t: jnp.pad(t, [(0, 0), (0, -t.shape[1] % FUSED_TILE), (0, 0), (0, 0)])  # noqa: E731
    y = jax.nn.dot_product_attention(
        pad(q), pad(k_front), pad(v_front), scale=scale,
        key_value_seq_lengths=jnp.maximum(lengths, 1),
        implementation=implementation or FUSED_IMPLEMENTATION)[:, :q.shape[1]]
    return jnp.where((lengths == 0)[:, None, None, None], _mean_values(v), y)


def _explicit(q, k, v, key_mask, scale, dropout_rate: float = 0.0, dropout_rng=None):
    acc = island(q.dtype)
    # Scaling q (n x d) instead of the logits (n x n) saves a pass over the largest array.
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * scale, k, preferred_element_type=acc)
    logits = jnp.where(key_mask, logits, jnp.finfo(acc).min)
    weights = jax.nn.softmax(logits, axis=-1)
    if dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)


def _logits_bytes(q, k, queries=None):
    b, n, h = q.shape[:3]
    return b * h * (n if queries is None else queries) * k.shape[1] * island(q.dtype).itemsize


def _query_blocks(q, k, v, key_mask, scale):
    """The explicit form over blocks of queries, one after another, each block's weights
    recomputed in the backward pass (jax.checkpoint): the step keeps (block x keys) arrays
    instead of (queries x keys) ones. A block has the most queries (a power of two, at least
    MIN_BLOCK, at most QUERY_BLOCK) whose logits fit BLOCK_BYTES, split evenly so that the last
    block is not mostly padding. Measured on CPU (one thread, batch 2, 4 heads, head size 16,
    fwd + bwd): 16-query blocks ran 1.7x faster at 2K tokens than 512-query blocks, which were
    themselves as fast as the whole (queries x keys) form; at batch 16 the smaller blocks still
    won (1.4x at 1K), and Nyströmformer's (2048 queries x 64 landmarks) softmaxes ran 1.4x
    faster in 512-query blocks than whole. A group of rows without any real key (top-k's chunks
    that lie wholly in a document's padding) skips the products: its output is known. On GPU the
    whole product keeps the device busier, so this is CPU only.
    """
    b, n = q.shape[:2]
    rows, size = _block_shape(q, k)
    blocks = -(-n // size)
    size = -(-n // blocks)  # e.g. 820 queries: 2 x 410 rather than 2 x 512
    q = jnp.pad(q, [(0, 0), (0, blocks * size - n), (0, 0), (0, 0)])
    q = q.reshape(b // rows, rows, blocks, size, *q.shape[2:]).swapaxes(1, 2)
    k, v = (t.reshape(b // rows, rows, *t.shape[1:]) for t in (k, v))
    key_mask = key_mask.reshape(b // rows, rows, *key_mask.shape[1:])

    def one_group(args):
        qg, kg, vg, mg = args  # qg: (blocks, rows, size, heads, head_dim)

        def attend():
            one_block = jax.checkpoint(lambda qi: _explicit(qi, kg, vg, mg, scale))
            return jax.lax.map(one_block, qg)

        def no_real_key():
            # Every key of these rows is padding (top-k's chunks past a document's end): the
            # weights are uniform, so every output is the mean of v, as the explicit form gives,
            # without its (block x keys) work.
            return jnp.broadcast_to(_mean_values(vg)[None], (*qg.shape[:3], *vg.shape[2:]))

        return jax.lax.cond(jnp.any(mg), attend, no_real_key)

    y = jax.lax.map(one_group, (q, k, v, key_mask))  # (groups, blocks, rows, size, h, d)
    y = y.swapaxes(1, 2).reshape(b, blocks * size, *y.shape[4:])
    return y[:, :n]


def _block_shape(q, k) -> tuple[int, int]:
    """(batch rows, queries) of one block of `_query_blocks`."""
    b, head_dim = q.shape[0], q.shape[-1]
    per_query = max(_logits_bytes(q, k, queries=1), 1)  # one query of every row
    fits = BLOCK_BYTES // per_query
    # BLOCK_BYTES holds for heads of BLOCK_HEAD_DIM. Each logit of a larger head costs more
    # to compute than to keep, and the best block grew with the head size squared: for heads of
    # 64 (LRA's text Transformer) at 2K tokens, batch 4, 128-256 queries per block took
    # 1.34-1.41 s forward + backward against 2.57 s for 16 (heads of 32: 0.93-0.99 s against
    # 1.29 s; one thread, 2026-11-29).
    scale = max(1, head_dim // BLOCK_HEAD_DIM) ** 2
    fits_head = scale * BLOCK_BYTES // per_query
    size = min(QUERY_BLOCK, max(MIN_BLOCK, 1 << max(int(fits_head).bit_length() - 1, 0)))
    rows = b
    per_row = BLOCK_BYTES // max(_logits_bytes(q[:1], k, queries=1), 1)
    if fits < 2 * MIN_BLOCK and b % 2 == 0 and per_row >= 4 * MIN_BLOCK:
        # Many short rows (top-k's 512-token chunks are batch rows: 32 of them at 8K): pairs of
        # rows, 2 * MIN_BLOCK queries each. Measured on 16 rows of 512 (one thread, fwd + bwd):
        # 104 ms against 121 ms for 8 rows x 16 queries (4 heads of 16), 319 against 644 ms with
        # heads of 64, 213 against 231 ms for 4 rows x 16 with 8 heads; single rows, and more
        # rows or queries per block, were slower in every case.
        rows, size = 2, 2 * MIN_BLOCK
    elif fits < MIN_BLOCK and per_row >= 2 * MIN_BLOCK:
        # Rows too long for 2 x 2 * MIN_BLOCK queries but short enough to group: as many rows
        # as MIN_BLOCK queries of each fit (blockwise attention at 8K with 16 heads).
        rows, size = min(b, per_row // MIN_BLOCK), MIN_BLOCK
        while b % rows:
            rows -= 1
    return rows, size
