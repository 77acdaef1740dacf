"""Reformer (Kitaev et al. 2020): LSH attention, shared query/key, softmax inside hash buckets.

Tokens are hashed by a random rotation, bucket(x) = argmax([x R, -x R]) per round; each round's
tokens are sorted by (bucket, position), cut into chunks, and every chunk attends to itself and the
chunk before it (wrapping around, across rounds); the rounds' outputs are combined by their
log-normalisers, out_i = sum_r softmax_r(lse_r(i)) out_r(i). Two references, `style`:

  "lra"  google-research/long-range-arena `lra_benchmarks/models/reformer/reformer_attention.py`
         (ad0ff01, Mar 2021), as it runs in LRA: n_buckets = 10, n_hashes = 1. The sequence is
         padded by chunk_len - n % chunk_len (chunk_len = 10; a full extra chunk when n divides)
         with zero q and v; the sorted rounds are cut into n_hashes * n_buckets chunks of
         n_pad / n_buckets tokens. The rotations come from PRNGKey(0) on every call: the same for
         every head, layer and step. Keys are the queries unnormalised, and the logits are
         q.k * sqrt(d) (multiplied, not divided). No mask at all: not the padding, not a token
         attending to itself. q and v are projected to the model width, not qkv_dim, and there
         is no output projection (its ReformerAttention returns the heads concatenated).
  "hf"   mlpen/Nystromformer `LRA/code/attention_reformer.py` (reformer-2) on HuggingFace
         transformers 3.x `LSHSelfAttention` with ReformerConfig's defaults: chunks of
         chunk_len = 64, one chunk before, num_buckets = 2^floor(log2(2 n / 64)) (factorised
         buckets, for n > 8K, are not implemented), fresh Gaussian rotations per head at every
         call, keys = q * rsqrt(mean(q^2) + 1e-6) / sqrt(d), logits q.k; pad keys masked with
         -1e9 and hashed to an extra bucket of their own; a token sees itself only at -1e5.
         q/k and v projections without bias, then the wrapper's output Linear (with bias).

The bucket softmax is written out here, not the shared `attention`: the rounds are combined
through each query's log-normaliser, which `attention` does not return, and the self mask is
per (query, key) pair. Logits, normalisers and weights run in `island` precision.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lra_bench.errors import UserError
from lra_bench.mixers import MixerSpec
from lra_bench.mixers._precision import island
from lra_bench.mixers._projections import dense

STYLES = ("lra", "hf")
MASK_VALUE, SELF_MASK_VALUE = -1e9, -1e5  # transformers' float32 values


def hash_buckets(x, rotations, mask=None):
    """(batch, n, heads, d) -> (batch, heads, rounds, n) bucket ids, offset by round.

    rotations: (heads or 1, d, rounds, n_buckets / 2). mask (batch, n) or None: when given and
    some token is a pad, pads go to an extra last bucket of each round (transformers)."""
    rotated = jnp.einsum("bnhd,hdrk->bhrnk", jax.lax.stop_gradient(x),
                         rotations.astype(x.dtype), preferred_element_type=island(x.dtype))
    buckets = jnp.argmax(jnp.concatenate([rotated, -rotated], axis=-1), axis=-1)
    n_buckets = 2 * rotations.shape[-1]
    if mask is not None:
        any_pad = ~jnp.all(mask)
        n_buckets = n_buckets + any_pad.astype(buckets.dtype)
        buckets = jnp.where(mask[:, None, None, :] | ~any_pad, buckets, n_buckets - 1)
    rounds = rotations.shape[2]
    return buckets + (jnp.arange(rounds) * n_buckets)[None, None, :, None]


def lsh_attention(qk, v, mask, rotations, *, chunk: int, key_norm: bool, logit_scale: float,
                  self_mask: bool, mask_keys: bool):
    """qk, v: (batch, n, heads, d) with n * rounds divisible by `chunk`; mask: (batch, n).
    Returns (batch, n, heads, d) in v's dtype."""
    b, n, h, d = qk.shape
    acc = island(qk.dtype)
    rounds = rotations.shape[2]
    buckets = hash_buckets(qk, rotations, mask if mask_keys else None)  # (b, h, r, n)
    ticker = jnp.arange(rounds * n)
    sort_keys = (buckets.reshape(b, h, -1) * n + ticker % n)
    order = jnp.argsort(sort_keys, axis=-1, stable=True)  # (b, h, r n)
    undo = jnp.argsort(order, axis=-1)
    pos = order % n

    def gather(t):  # (b, n, h, d) -> (b, h, r n, d) in sorted order
        return jnp.take_along_axis(t.transpose(0, 2, 1, 3), pos[..., None], axis=2)

    sq, sv = gather(qk), gather(v)
    sk = sq.astype(acc)
    if key_norm:
        sk = sk * jax.lax.rsqrt(jnp.mean(sk * sk, axis=-1, keepdims=True) + 1e-6) * d ** -0.5
    chunks = rounds * n // chunk

    def chunked(t):
        return t.reshape(b, h, chunks, chunk, *t.shape[3:])

    def with_previous(t):  # each chunk and the one before it (the first sees the last)
        return jnp.concatenate([t, jnp.roll(t, 1, axis=2)], axis=3)

    bq = chunked(sq)
    bk, bv = with_previous(chunked(sk.astype(qk.dtype))), with_previous(chunked(sv))
    dots = jnp.einsum("bhcid,bhcjd->bhcij", bq, bk, preferred_element_type=acc) * logit_scale
    if mask_keys:
        key_ok = with_previous(chunked(jnp.take_along_axis(
            jnp.broadcast_to(mask[:, None, :], (b, h, n)), pos, axis=2)))
        dots = jnp.where(key_ok[:, :, :, None, :], dots, MASK_VALUE)
    if self_mask:
        bpos = chunked(pos)
        same = bpos[..., :, None] == with_previous(bpos)[..., None, :]
        dots = jnp.where(same, SELF_MASK_VALUE, dots)
    lse = jax.nn.logsumexp(dots, axis=-1, keepdims=True)
    weights = jnp.exp(dots - lse)
    out = jnp.einsum("bhcij,bhcjd->bhcid", weights.astype(v.dtype), bv,
                     preferred_element_type=acc)
    out = jnp.take_along_axis(out.reshape(b, h, rounds * n, d), undo[..., None], axis=2)
    lse = jnp.take_along_axis(lse.reshape(b, h, rounds * n), undo, axis=2)
    out, lse = out.reshape(b, h, rounds, n, d), lse.reshape(b, h, rounds, n)
    probs = jax.nn.softmax(lse, axis=2)
    y = jnp.sum(out * probs[..., None], axis=2)
    return y.transpose(0, 2, 1, 3).astype(v.dtype)


def hf_num_buckets(length: int, chunk: int) -> int:
    """transformers' `_set_num_buckets` without factorisation: 2^floor(log2(2 n / chunk))."""
    return 2 ** ((2 * (length // chunk)).bit_length() - 1)


class Mixer(nnx.Module):
    def __init__(self, spec: MixerSpec, *, rngs: nnx.Rngs, style: str = "lra", n_hashes: int = 1,
                 n_buckets: int = 10, chunk_len: int = 10):
        if style not in STYLES:
            raise UserError(f"mixer.style must be one of {', '.join(STYLES)}, got '{style}'")
        if n_hashes < 1:
            raise UserError(f"mixer.n_hashes must be at least 1, got {n_hashes}")
        if chunk_len < 1:
            raise UserError(f"mixer.chunk_len must be at least 1, got {chunk_len}")
        self.spec, self.style, self.n_hashes, self.chunk_len = spec, style, n_hashes, chunk_len
        if style == "lra":
            if n_buckets < 2 or n_buckets % 2:
                raise UserError(f"mixer.n_buckets must be even and at least 2, got {n_buckets}")
            padded = spec.max_length + chunk_len - spec.max_length % chunk_len
            if padded % n_buckets:
                raise UserError(f"mixer.n_buckets ({n_buckets}) must divide the padded length "
                                f"({padded}: a multiple of mixer.chunk_len = {chunk_len}); "
                                f"LRA uses n_buckets = chunk_len = 10")
            self.n_buckets, width, heads = n_buckets, spec.dim, spec.num_heads
        else:
            padded = -(-spec.max_length // chunk_len) * chunk_len
            self.n_buckets = max(2, hf_num_buckets(padded, chunk_len))
            width, heads = spec.qkv_dim, spec.num_heads
        if width % heads:
            raise UserError(f"reformer: {width} features do not split into {heads} heads")
        self.heads, self.head_dim = heads, width // heads
        xavier = nnx.initializers.xavier_uniform()
        init = dict(kernel_init=xavier) if spec.init == "lra" else {}
        kw = dict(dtype=spec.dtype, rngs=rngs, use_bias=False, **init)
        self.query = nnx.Linear(spec.dim, width, **kw)
        self.value = nnx.Linear(spec.dim, width, **kw)
        self.out = None if style == "lra" else nnx.Linear(width, spec.dim, dtype=spec.dtype,
                                                          rngs=rngs, **init)

    def rotations(self, rngs):
        shape = (self.head_dim, self.n_hashes, self.n_buckets // 2)
        if self.style == "lra":  # PRNGKey(0) in every call, shared by the heads
            return jax.random.normal(jax.random.PRNGKey(0), shape)[None]
        key = rngs.dropout() if rngs is not None else jax.random.PRNGKey(self.spec.layer)
        return jax.random.normal(key, (self.heads, *shape))

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        b, n = x.shape[:2]
        split = lambda t: t.reshape(b, n, self.heads, self.head_dim)  # noqa: E731
        qk, v = split(dense(self.query, x)), split(dense(self.value, x))
        if self.style == "lra":
            extra = self.chunk_len - n % self.chunk_len
            chunk = (n + extra) // self.n_buckets
        else:
            extra = -n % self.chunk_len
            chunk = self.chunk_len
        pad = [(0, 0), (0, extra), (0, 0), (0, 0)]
        qk, v, m = jnp.pad(qk, pad), jnp.pad(v, pad), jnp.pad(mask, [(0, 0), (0, extra)])
        hf = self.style == "hf"
        y = lsh_attention(qk, v, m, self.rotations(rngs), chunk=chunk, key_norm=hf,
                          logit_scale=1.0 if hf else self.head_dim ** 0.5, self_mask=hf,
                          mask_keys=hf)[:, :n]
        y = y.reshape(b, n, -1)
        return (y if self.out is None else dense(self.out, y)), mask
