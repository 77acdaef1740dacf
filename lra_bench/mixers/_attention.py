"""One softmax attention for every mixer that attends, with the best implementation per backend.

GPU, bf16/fp16, no attention dropout: cuDNN's fused (flash) kernel through
`jax.nn.dot_product_attention(implementation="cudnn")`; it never writes the N x N weights.
cuDNN takes key padding only as per-row lengths (real keys first: its bias must be a full
(.., T, S) array, the N x N write the kernel exists to avoid), so each row's real keys are
gathered to the front first: softmax attention does not depend on the order of the keys, so any
key mask works (black pixels as padding in the image tasks, top-k's pooled masks), for an
O(N d) gather.
Without the fused kernel (GPU in float32/float64, with attention dropout, or a head size cuDNN
rejects) the lean explicit form: two einsums, a `where` for the key mask and `jax.nn.softmax`.
On CPU without attention dropout the same maths runs over blocks of queries (`_query_blocks`):
heads-major, a block's logits small enough to stay in cache, and a flash-style backward pass that
recomputes a block's weights from each query's saved maximum and normaliser, so no N x N array
is ever stored. On CPU this matters: `jax.nn.dot_product_attention`'s XLA path works on a 5-D
(1, B, H, N, N) layout and writes about eight N x N arrays per step (five of them transposed
copies).

Precision follows the mixed-precision rule of `lra_bench.mixers`: logits are accumulated, masked
and normalised in `island(dtype)` (float32 for bf16/fp16/float32, float64 for float64); the
weights (unnormalised in the blocks) go back to the compute dtype for the product with v.

`tests/test_attention_fused.py` checks the fused path against the explicit form (on CPU through
JAX's XLA implementation of the same call, on a GPU through cuDNN); `LRA_ATTENTION=explicit`
forces the explicit form everywhere (A/B checks of the fused kernel and the CPU blocks).
"""

from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp

FUSED_DTYPES = (jnp.bfloat16, jnp.float16)
QUERY_BLOCK = 128  # the most queries of one row per block on CPU (see _block_shape)
MIN_BLOCK = 16
BLOCK_BYTES = 2**21  # a block's (rows, heads, queries, keys) logits at heads of BLOCK_HEAD_DIM
BLOCK_HEAD_DIM = 16
FUSED_IMPLEMENTATION = "cudnn"  # tests run the same call with JAX's "xla" implementation on CPU
FUSED_TILE = 64  # sequence lengths given to the fused kernel are padded to a multiple of this
_warned: set[str] = set()


def island(dtype):
    """The dtype a numerically delicate step runs in: at least float32, float64 stays float64."""
    return jnp.promote_types(dtype, jnp.float32)


def _explicit_only() -> bool:
    # LRA_ATTENTION=explicit: A/B checks, or a cuDNN that fails only at compile time, which the
    # fallback in _attention cannot catch.
    return os.environ.get("LRA_ATTENTION", "auto") == "explicit"


def _fused_applies(q, dropout: bool) -> bool:
    return (not dropout and jax.default_backend() == "gpu" and q.dtype in FUSED_DTYPES
            and q.shape[-1] <= 128 and q.shape[-1] % 8 == 0 and not _explicit_only())


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
    if jax.default_backend() == "cpu" and not _explicit_only():
        keep = _keep_mask(q, k, dropout_rate, dropout_rng) if dropout else None
        return _query_blocks(q, k, v, key_mask, scale, keep, dropout_rate)
    return _explicit(q, k, v, key_mask, scale, dropout_rate, dropout_rng if dropout else None)


def _mean_values(v, axis: int = 1):
    """What uniform weights over every key give, the mean of v over its keys' `axis` (kept)."""
    return jnp.mean(v.astype(island(v.dtype)), axis=axis, keepdims=True).astype(v.dtype)


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


def _keep_mask(q, k, rate, rng):
    """Attention dropout's (batch, heads, queries, keys) keep mask, the same draw in every form.

    Each 32-bit threefry word serves two weights (16 bits each, kept when below
    round((1 - rate) * 2^16)): the bits are the costliest part of attention dropout on CPU, more
    than the attention's own maths. A text Transformer step at 1K tokens, batch 8, took 4.1 s
    with `jax.random.bernoulli`'s mask and 2.8 s without dropout; a 4M-weight mask took 33 ms
    this way against 66 ms (one thread, 2026-11-30). The keep probability is quantised to
    1/65536 (0.9 -> 0.899994). The mask is drawn once and kept (1 byte per weight): drawing it
    again in the backward pass would double that cost.
    """
    b, n, h = q.shape[:3]
    keys = k.shape[1]
    words = jax.random.bits(rng, (b, h, n, -(-keys // 2)), jnp.uint32)
    halves = jnp.stack([words & 0xFFFF, words >> 16], axis=-1).reshape(b, h, n, -1)[..., :keys]
    return halves < round((1.0 - rate) * 65536)


def _explicit(q, k, v, key_mask, scale, dropout_rate: float = 0.0, dropout_rng=None):
    acc = island(q.dtype)
    # Scaling q (n x d) instead of the logits (n x n) saves a pass over the largest array.
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * scale, k, preferred_element_type=acc)
    logits = jnp.where(key_mask, logits, jnp.finfo(acc).min)
    weights = jax.nn.softmax(logits, axis=-1)
    if dropout_rng is not None:
        keep = _keep_mask(q, k, dropout_rate, dropout_rng)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)


def _logits_bytes(q, k, queries=None):
    b, n, h = q.shape[:3]
    return b * h * (n if queries is None else queries) * k.shape[1] * island(q.dtype).itemsize


def _query_blocks(q, k, v, key_mask, scale, keep=None, rate: float = 0.0):
    """The explicit form over blocks of queries on CPU, heads-major, with a flash-style backward
    (`_blockwise`): the step keeps (block x keys) arrays instead of (queries x keys) ones. A
    block has the most queries (a power of two, at least MIN_BLOCK, at most QUERY_BLOCK) whose
    logits fit BLOCK_BYTES, split evenly so that the last block is not mostly padding; short
    rows go in groups of rows (`_block_shape`). A group of rows without any real key (top-k's
    chunks that lie wholly in a document's padding) skips the products: its output is known
    (the mean of v, attention dropout or not: no real query reads it). keep: attention
    dropout's (batch, heads, queries, keys) mask, or None. On GPU the whole product keeps the
    device busier, so this is CPU only.
    """
    b, n, h, d = q.shape
    rows, size = _block_shape(q, k)
    blocks = -(-n // size)
    size = -(-n // blocks)  # e.g. 300 queries: 3 x 100 rather than 3 x 128
    q = jnp.pad(q * scale, [(0, 0), (0, blocks * size - n), (0, 0), (0, 0)])
    # (groups, rows, heads, tokens, head_dim): one transpose of each input for the whole step
    q, k, v = (t.reshape(b // rows, rows, *t.shape[1:]).swapaxes(2, 3) for t in (q, k, v))
    key_mask = key_mask.reshape(b // rows, rows, *key_mask.shape[1:])
    if keep is not None:
        keep = jnp.pad(keep, [(0, 0), (0, 0), (0, blocks * size - n), (0, 0)])
        keep = keep.reshape(b // rows, rows, *keep.shape[1:])

    def one_group(args):
        qg, kg, vg, mg, keep_g = args

        def no_real_key():
            # Every key of these rows is padding: the weights are uniform, so every output is
            # the mean of v, as the explicit form gives, without its (block x keys) work.
            return jnp.broadcast_to(_mean_values(vg, axis=2), (*qg.shape[:3], vg.shape[-1]))

        def attend():
            return _blockwise(qg, kg, vg, mg, keep_g, size, rate)

        return jax.lax.cond(jnp.any(mg), attend, no_real_key)

    y = jax.lax.map(one_group, (q, k, v, key_mask, keep))  # (groups, rows, heads, tokens, head_dim)
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


def _blockwise_forward(q, k, v, key_mask, keep, size, rate):
    # Every product is a plain (m x k) @ (k x n) on heads-major arrays: with k^T kept once here
    # (and v^T in the backward pass) XLA needs no transposed copy per block. The (token-major,
    # autodiff) form of the same maths ran 1.6-1.7x slower: 4 rows of 512, heads of 16, one
    # thread, forward + backward: 27 ms against 16 ms (2026-11-30).
    kt = k.swapaxes(-1, -2)

    def one(block):
        qb, keep_b = block
        logits = _block_logits(qb, kt, key_mask)
        top = jnp.max(logits, axis=-1, keepdims=True)
        e = jnp.exp(logits - top)
        inv = 1.0 / jnp.sum(e, axis=-1, keepdims=True)
        if keep_b is not None:  # dropout after the normalisation, as in the explicit form
            e = jnp.where(keep_b, e, 0.0) / (1.0 - rate)
        y = jnp.einsum("rhqk,rhkd->rhqd", e.astype(v.dtype), v, preferred_element_type=e.dtype)
        return (y * inv).astype(v.dtype), (top, inv)

    return jax.lax.map(one, (_split(q, size), None if keep is None else _split(keep, size)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _blockwise(q, k, v, key_mask, keep, size, rate):
    """Softmax attention on heads-major arrays, `size` queries at a time. q: (rows, heads,
    blocks * size, head_dim), already scaled; k, v: (rows, heads, keys, head_dim); key_mask:
    (rows, 1, 1, keys); keep: attention dropout's (rows, heads, blocks * size, keys) mask, or
    None. Only each query's row maximum and normaliser are kept for the backward pass, which
    recomputes a block's weights from them (as flash attention does): no softmax recomputation,
    no (queries x keys) float array."""
    return _join(_blockwise_forward(q, k, v, key_mask, keep, size, rate)[0])


def _blockwise_fwd(q, k, v, key_mask, keep, size, rate):
    y, stats = _blockwise_forward(q, k, v, key_mask, keep, size, rate)
    return _join(y), (q, k, v, key_mask, keep, y, stats)


def _blockwise_bwd(size, rate, residuals, dy):
    q, k, v, key_mask, keep, y, (top, inv) = residuals
    acc = island(q.dtype)
    kt, vt = k.swapaxes(-1, -2), v.swapaxes(-1, -2)
    dy = _split(dy, size)
    # sum_k p * dp = dy . y for each query (dropout included): the softmax backward without an
    # (n x n) reduction
    delta = jnp.sum(dy.astype(acc) * y.astype(acc), axis=-1, keepdims=True)

    def one(carry, block):
        dkt, dvt = carry
        qb, dyb, top_b, inv_b, delta_b, keep_b = block
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
        return (dkt, dvt), dq.astype(q.dtype)

    zeros = jnp.zeros(kt.shape, acc)
    blocks = (_split(q, size), dy, top, inv, delta, None if keep is None else _split(keep, size))
    (dkt, dvt), dq = jax.lax.scan(one, (zeros, zeros), blocks)
    return (_join(dq), dkt.swapaxes(-1, -2).astype(k.dtype), dvt.swapaxes(-1, -2).astype(v.dtype),
            None, None)


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def _block_shape(q, k) -> tuple[int, int]:
    """(batch rows, queries) of one block of `_query_blocks`: as many rows x queries as have
    BLOCK_BYTES of logits (times (head_dim / BLOCK_HEAD_DIM)^2: each logit of a larger head
    costs more to compute than to keep), up to QUERY_BLOCK queries of each row.

    Measured on one thread, forward + backward, heads of 16 unless said (2026-11-30): 4 rows of
    512 (top-k's chunks at 1K) 2 x 128 and 4 x 64 took 15.0-15.4 ms, 4 x 32 16.0, 1 x 256 16.1,
    4 x 256 19.4; 32 rows of 512: 2 x 128 121 ms, 4 x 64 131, 1 x 256 128; 2 rows of 2K: 1 x 64
    116-118 ms, 2 x 64 121, 1 x 32 122; 2 rows of 8K: 1 x 16 and 1 x 32 2.25-2.31 s, 2 x 32
    2.94; 4 rows of 2K, heads of 64: 4 x 128 870 ms, 4 x 256 867, 2 x 128 920, 4 x 64 943;
    Nystromformer's 4K queries x 64 landmarks: 2 x 128 8.9 ms, 1 x 128 14.2.
    """
    b, head_dim = q.shape[0], q.shape[-1]
    budget = BLOCK_BYTES * max(1, head_dim // BLOCK_HEAD_DIM) ** 2
    fits = max(1, budget // max(_logits_bytes(q[:1], k, queries=1), 1))  # row-queries
    size = min(QUERY_BLOCK, max(MIN_BLOCK, 1 << (int(fits).bit_length() - 1)))
    rows = max(1, min(b, fits // size))
    while b % rows:
        rows -= 1
    return rows, size
