"""Softmax attention on CPU over blocks of queries, with a flash-style backward pass.

`_attention.attention` runs every CPU softmax attention here (the Transformer, Fourier's short
sequence, top-k's chunks, Nyströmformer's landmark softmaxes). Each block of queries computes its
logits, their maximum and normaliser; the backward pass recomputes a block's weights from the
saved maximum and normaliser, so no (queries x keys) float array is ever stored. The arrays are
heads-major with k and v transposed once per step, so every product in a block is a plain
matrix product. Attention dropout runs inside the blocks: each block hashes its own part of the
keep mask from the mask's row and column words (`_dropout_mask`), in the forward pass and again
in the backward pass, so no (queries x keys) mask is stored either.

Precision follows `lra_bench.mixers`: logits, maxima, normalisers and the softmax gradient in
`island(dtype)`; the (unnormalised) weights go back to the compute dtype for the products.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lra_bench.mixers import _dropout_mask
from lra_bench.mixers._precision import island

QUERY_BLOCK = 128  # the most queries of one row per block (see block_shape)
MIN_BLOCK = 16
BLOCK_BYTES = 2**21  # a block's (rows, heads, queries, keys) logits at heads of BLOCK_HEAD_DIM
BLOCK_HEAD_DIM = 16
SMALL_BYTES = 2**18  # logits of every query below which the explicit form is faster (see pays)
SHORT_KEYS = 1024  # rows of at most this many keys (top-k's chunks) take smaller blocks:
SHORT_BLOCK_BYTES = 2**19  # see block_shape


def mean_values(v, axis: int = 1):
    """What uniform weights over every key give, the mean of v over its keys' `axis` (kept)."""
    return jnp.mean(v.astype(island(v.dtype)), axis=axis, keepdims=True).astype(v.dtype)


def pays(q, k) -> bool:
    """Whether blocks beat the explicit form: not for the smallest attentions, where their
    fixed costs show. 32 rows of 17 tokens, 4 heads of 16 (148 KiB of logits): 0.54 ms in
    blocks against 0.41 ms; 33 tokens (544 KiB): 1.18 against 1.22 ms; 65 tokens: 3.0 against
    3.3 ms (forward + backward, one thread, 2026-11-30)."""
    return _logits_bytes(q, k) > SMALL_BYTES


def _logits_bytes(q, k, queries=None):
    b, n, h = q.shape[:3]
    return b * h * (n if queries is None else queries) * k.shape[1] * island(q.dtype).itemsize


def query_blocks(q, k, v, key_mask, scale, words=None, rate: float = 0.0):
    """Softmax attention of (batch, tokens, heads, head_dim) arrays over blocks of queries,
    heads-major, with a flash-style backward pass (`_grouped`); key_mask: (batch, 1, 1, keys).
    The step keeps (block x keys) arrays instead of (queries x keys) ones. A
    block has the most queries (a power of two, at least MIN_BLOCK, at most QUERY_BLOCK) whose
    logits fit BLOCK_BYTES, split evenly so that the last block is not mostly padding; short
    rows go in groups of rows (`block_shape`). A group of rows without any real key (top-k's
    chunks that lie wholly in a document's padding) skips the products: its output is known
    (the mean of v, attention dropout or not: no real query reads it). words: attention
    dropout's mask words (`_dropout_mask.words`: rows (batch, heads, queries, 1), columns
    (keys,)), or None. On GPU the whole product keeps the
    device busier, so this is CPU only.
    """
    b, n, h, d = q.shape
    rows, size = block_shape(q, k)
    blocks = -(-n // size)
    size = -(-n // blocks)  # e.g. 300 queries: 3 x 100 rather than 3 x 128
    q = jnp.pad(q * scale, [(0, 0), (0, blocks * size - n), (0, 0), (0, 0)])
    # (groups, rows, heads, tokens, head_dim): one transpose of each input for the whole step
    q, k, v = (t.reshape(b // rows, rows, *t.shape[1:]).swapaxes(2, 3) for t in (q, k, v))
    key_mask = key_mask.reshape(b // rows, rows, *key_mask.shape[1:])
    row, col = (None, None) if words is None else words
    if row is not None:
        row = jnp.pad(row, [(0, 0), (0, 0), (0, blocks * size - n), (0, 0)])
        row = row.reshape(b // rows, rows, *row.shape[1:])

    y = _grouped(q, k, v, key_mask, row, col, size, rate)  # (groups, rows, heads, tokens, d)
    return y.swapaxes(2, 3).reshape(b, blocks * size, h, d)[:, :n]


def _split(t, size):
    """(rows, heads, blocks * size, d) -> (blocks, rows, heads, size, d)."""
    r, h, n, d = t.shape
    return t.reshape(r, h, n // size, size, d).transpose(2, 0, 1, 3, 4)


def _join(t):
    """The inverse of `_split`."""
    blocks, r, h, size, d = t.shape
    return t.transpose(1, 2, 0, 3, 4).reshape(r, h, blocks * size, d)


def _block_logits(qb, kt, key_mask):
    acc = island(qb.dtype)
    logits = jnp.einsum("rhqd,rhdk->rhqk", qb, kt, preferred_element_type=acc)
    return jnp.where(key_mask, logits, jnp.finfo(acc).min)


def _block_keep(row_b, col, rate):
    return None if row_b is None else _dropout_mask.keep(row_b, col, rate)


def _blockwise_forward(qs, k, v, key_mask, rows, col, rate):
    # Every product is a plain (m x k) @ (k x n) on heads-major arrays: with k^T kept once here
    # (and v^T in the backward pass) XLA needs no transposed copy per block. The (token-major,
    # autodiff) form of the same maths ran 1.6-1.7x slower: 4 rows of 512, heads of 16, one
    # thread, forward + backward: 27 ms against 16 ms (2026-11-30).
    kt = k.swapaxes(-1, -2)

    def one(block):
        qb, row_b = block
        keep_b = _block_keep(row_b, col, rate)
        logits = _block_logits(qb, kt, key_mask)
        top = jnp.max(logits, axis=-1, keepdims=True)
        e = jnp.exp(logits - top)
        inv = 1.0 / jnp.sum(e, axis=-1, keepdims=True)
        if keep_b is not None:  # dropout after the normalisation, as in the explicit form
            e = jnp.where(keep_b, e, 0.0) / (1.0 - rate)
        y = jnp.einsum("rhqk,rhkd->rhqd", e.astype(v.dtype), v, preferred_element_type=e.dtype)
        return (y * inv).astype(v.dtype), (top, inv)

    return jax.lax.map(one, (qs, rows))


def _split_inputs(q, row, size):
    """q and the mask's row words in blocks (each pass makes its own: kept for the backward
    pass, they were one more loop output the size of q)."""
    return _split(q, size), None if row is None else _split(row, size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _grouped(q, k, v, key_mask, row, col, size, rate):
    """Softmax attention on heads-major arrays, group by group of rows, `size` queries at a
    time. q: (groups, rows, heads, blocks * size, head_dim), already scaled; k, v: (groups, rows,
    heads, keys, head_dim); key_mask: (groups, rows, 1, 1, keys); row, col: attention dropout's
    mask words, (groups, rows, heads, blocks * size, 1) and (keys,), or None. Only each query's
    row maximum and normaliser are kept for the backward pass, which recomputes a block's
    weights from them (as flash attention does): no softmax recomputation, no (queries x keys)
    float array. A group of rows without any real key skips the products, forward and backward.

    Why the backward pass is written out around the loop over groups, not inside it: inside,
    autodiff made the loop stack its residuals as outputs of their own (copies of q's blocks, k,
    v and the output: the skip's `lax.cond` returned them), and XLA allocated those buffers, and
    the backward loop's, zero-filled at the step's start: top-k's layer at 8K tokens peaked at
    52.9 MiB there, 8 of its 4 MiB buffers such loop outputs; 39.7 MiB now."""
    return _grouped_fwd(q, k, v, key_mask, row, col, size, rate)[0]


def _grouped_fwd(q, k, v, key_mask, row, col, size, rate):
    def one_group(args):
        qg, kg, vg, mg, row_g = args
        qs, rows = _split_inputs(qg, row_g, size)

        def no_real_key():
            # Every key of these rows is padding: the weights are uniform, so every output is
            # the mean of v, as the explicit form gives, without its (block x keys) work.
            y = jnp.broadcast_to(mean_values(vg, axis=2), (*qs.shape[:-1], vg.shape[-1]))
            stat = jnp.zeros((*qs.shape[:-1], 1), island(qg.dtype))
            return y, (stat, stat)

        y, stats = jax.lax.cond(jnp.any(mg),
                                lambda: _blockwise_forward(qs, kg, vg, mg, rows, col, rate),
                                no_real_key)
        return _join(y), stats

    y, stats = jax.lax.map(one_group, (q, k, v, key_mask, row))
    return y, (q, k, v, key_mask, row, col, y, stats)


def _grouped_bwd(size, rate, residuals, dy):
    q, k, v, key_mask, row, col, y, stats = residuals

    def one_group(i, grads):
        qg, kg, vg, mg, row_g, yg, stats_g, dyg = jax.tree.map(
            lambda t: t[i], (q, k, v, key_mask, row, y, stats, dy))

        def no_real_key():
            # the mean of v's gradient: each key gets the sum of dy over the queries / keys
            dv = jnp.sum(dyg.astype(island(vg.dtype)), axis=2, keepdims=True) / vg.shape[2]
            return (jnp.zeros_like(qg), jnp.zeros_like(kg),
                    jnp.broadcast_to(dv, vg.shape).astype(vg.dtype))

        g = jax.lax.cond(
            jnp.any(mg), lambda: _blockwise_grads(qg, kg, vg, mg, row_g, col, yg, stats_g, dyg,
                                                  size, rate), no_real_key)
        return tuple(jax.lax.dynamic_update_index_in_dim(a, b, i, 0) for a, b in zip(grads, g))

    # The gradients' buffers are filled from dy, not from a constant: XLA allocates a constant-
    # filled loop buffer at the step's start, which kept three (q, k, v)-sized buffers alive
    # through the whole forward pass (12 of top-k's 49 MiB at 8K tokens).
    start = 0 * dy.ravel()[0]
    grads = tuple(jnp.full(t.shape, start, t.dtype) for t in (q, k, v))
    return (*jax.lax.fori_loop(0, q.shape[0], one_group, grads), None, None, None)


def _blockwise_grads(q, k, v, key_mask, row, col, y, stats, dy, size, rate):
    """q, k and v's gradients for one group of rows (`_grouped`)."""
    top, inv = stats
    qs, rows = _split_inputs(q, row, size)
    acc = island(qs.dtype)
    kt, vt = k.swapaxes(-1, -2), v.swapaxes(-1, -2)
    dy, y = _split(dy, size), _split(y, size)
    # sum_k p * dp = dy . y for each query (dropout included): the softmax backward without an
    # (n x n) reduction
    delta = jnp.sum(dy.astype(acc) * y.astype(acc), axis=-1, keepdims=True)

    def one(carry, block):
        dkt, dvt = carry
        qb, dyb, top_b, inv_b, delta_b, row_b = block
        keep_b = _block_keep(row_b, col, rate)  # hashed again, not stored
        p = jnp.exp(_block_logits(qb, kt, key_mask) - top_b) * inv_b
        dropped = p if keep_b is None else jnp.where(keep_b, p, 0.0) / (1.0 - rate)
        # k and v's gradients are kept transposed, (d x keys), so each update is a plain product
        dvt = dvt + jnp.einsum("rhdq,rhqk->rhdk", dyb.swapaxes(-1, -2), dropped.astype(dyb.dtype),
                               preferred_element_type=acc)
        dp = jnp.einsum("rhqd,rhdk->rhqk", dyb, vt, preferred_element_type=acc)
        if keep_b is not None:
            dp = jnp.where(keep_b, dp, 0.0) / (1.0 - rate)
        ds = jnp.where(key_mask, p * (dp - delta_b), 0.0)
        dq = jnp.einsum("rhqk,rhkd->rhqd", ds.astype(k.dtype), k, preferred_element_type=acc)
        dkt = dkt + jnp.einsum("rhdq,rhqk->rhdk", qb.swapaxes(-1, -2), ds.astype(qb.dtype),
                               preferred_element_type=acc)
        return (dkt, dvt), dq.astype(qs.dtype)

    zeros = jnp.zeros(kt.shape, acc)
    (dkt, dvt), dq = jax.lax.scan(one, (zeros, zeros), (qs, dy, top, inv, delta, rows))
    return _join(dq), dkt.swapaxes(-1, -2).astype(k.dtype), dvt.swapaxes(-1, -2).astype(v.dtype)


_grouped.defvjp(_grouped_fwd, _grouped_bwd)


def block_shape(q, k) -> tuple[int, int]:
    """(batch rows, queries) of one block of `query_blocks`: as many rows x queries as have
    BLOCK_BYTES of logits (times (head_dim / BLOCK_HEAD_DIM)^2: each logit of a larger head
    costs more to compute than to keep), up to QUERY_BLOCK queries of each row.

    Measured on one thread, forward + backward, heads of 16 unless said (2026-11-30): 4 rows of
    512 (top-k's chunks at 1K) 2 x 128 and 4 x 64 took 15.0-15.4 ms, 4 x 32 16.0, 1 x 256 16.1,
    4 x 256 19.4; 32 rows of 512: 2 x 128 121 ms, 4 x 64 131, 1 x 256 128; 2 rows of 2K: 1 x 64
    116-118 ms, 2 x 64 121, 1 x 32 122; 2 rows of 8K: 1 x 16 and 1 x 32 2.25-2.31 s, 2 x 32
    2.94; 4 rows of 2K, heads of 64: 4 x 128 870 ms, 4 x 256 867, 2 x 128 920, 4 x 64 943;
    Nystromformer's 4K queries x 64 landmarks: 2 x 128 8.9 ms, 1 x 128 14.2.

    Rows of at most SHORT_KEYS keys take at most SHORT_BLOCK_BYTES (times the same factor):
    smaller blocks ran faster there and keep a quarter of the logits (A/B, one thread, loaded
    machine, 2026-12-07): top-k's layer at 1K (4 rows of 512) 1 x 64 against 2 x 128 0.68x the
    time, 7.8 against 13.5 MiB for the step; 128 rows of 512 (ListOps top-k at batch 32) 0.89x;
    32 rows of 1K 0.86x; softmax's layer at 1K 0.88x. At 4K keys they ran 1.14x slower, so longer
    rows keep BLOCK_BYTES.

    Many small rows (each under 1/8 of the budget, all of them within twice it) go in one group:
    a loop over groups has a fixed cost that only small rows feel. 32 rows of 65 tokens (top-k's
    first layer in the ListOps quick preset): one group 3.0 ms, two or more 4.7-5.0 ms. Long rows
    keep to the budget: Nystromformer's 64 landmarks x 1K keys, 2 rows, ran 10-20% slower as
    one group than row by row.
    """
    b, head_dim = q.shape[0], q.shape[-1]
    budget = (BLOCK_BYTES if k.shape[1] > SHORT_KEYS else min(BLOCK_BYTES, SHORT_BLOCK_BYTES)
              ) * max(1, head_dim // BLOCK_HEAD_DIM) ** 2
    fits = max(1, budget // max(_logits_bytes(q[:1], k, queries=1), 1))  # row-queries
    size = min(QUERY_BLOCK, max(MIN_BLOCK, 1 << (int(fits).bit_length() - 1)))
    if 8 * _logits_bytes(q[:1], k) <= budget and _logits_bytes(q, k) <= 2 * budget:
        return b, size
    rows = max(1, min(b, fits // size))
    while b % rows:
        rows -= 1
    return rows, size
