"""Sinkhorn Transformer attention (Tay et al. 2020), as LRA runs it.

Reference: google-research/long-range-arena
`lra_benchmarks/models/sinkhorn_transformer/sinkhorn_attention.py` (SinkhornAttention, ad0ff01),
with its defaults as LRA's encoders call it: block_size = 50, max_num_blocks = 25,
sort_activation = "softmax" (the Sinkhorn operator and its iterations are never reached).
Two attentions, summed:

  - local: LRA's local attention (the strided groups of `lra_bench.mixers.local`, layout "lra");
  - "sorted": the sort net (a Dense from head_dim to max_num_blocks, no bias) scores each group's
    key sum, softmax gives a (groups x blocks) "permutation" P, and the keys become
    einsum('bskhd,bnhl->bsnhd', K, P). Its letters sum k and l apart, so every sorted block is
    the SUM of all groups' keys (sum_l P = 1): the sort has no effect on the output (and its
    weights get no gradient). Each query then attends these block_size summed keys/values, under
    the mask sum_k mask_k[s] mask_k[j] > 0 (the same einsum on the padding mask).

sorting = "lra" (default) computes exactly that (without the no-op sort net's work; its kernel is
kept, so the parameters are LRA's); sorting = "sinkhorn" is the paper's block sorting: P from
`sinkhorn_iterations` of Sinkhorn normalisation at `temperature`, K_sorted[n] = sum_k P[n, k] K[k].

LRA does not pad (its reshape needs N divisible by block_size); this mixer pads to the next
multiple with masked tokens, which changes nothing when N already divides.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lra_bench.errors import UserError
from lra_bench.mixers import MixerSpec, _dropout_mask
from lra_bench.mixers._attention import attention
from lra_bench.mixers._precision import island
from lra_bench.mixers._projections import HeadProjections
from lra_bench.mixers.local import local_attention, pad_tokens, strided_groups, ungroup_strided

SORTINGS = ("lra", "sinkhorn")


# Rows of at most this many logits per head (Np x block_size) take the one-problem form; longer
# ones the batched form, whose query blocks keep no (Np x block_size) array (docs/kernels.md).
ONE_PROBLEM_LOGITS = 2**16


def summed_key_attention(q, k, v, mask, *, block_size: int, dropout_rate: float = 0.0,
                         dropout_rng=None):
    """LRA's "sorted" branch: every query at group position s attends the block_size keys
    K_sum[j] = sum_g K[group g, position j] under mask sum_g m_g[s] m_g[j] > 0, where m_g is the
    contiguous block g of the padding mask (LRA's view, as in local attention).
    q, k, v: (batch, Np, heads, d); mask: (batch, Np). Returns (batch, Np, heads, d).

    Two layouts of the same attention, with the same dropout bits. Batched: the nb queries at
    group position s (tokens s * nb + g) form one problem, batch * block_size problems against
    copies of the summed keys, under the CPU's query blocks. One problem: every query of a
    batch row shares the row's block_size keys, so they attend them in their own order, one
    (Np x block_size) product per row and head, under the per-position mask as a pattern. Up to
    1K tokens the layer ran 1.3-1.4x faster with the second (1.4-1.5x local attention's time,
    not 2.0-2.3x); it keeps the (Np x block_size) weights, so at 2K it held 10% more memory for
    7-12% less time, at 4K-8K a quarter to a third more for none (one thread, 2026-12-07;
    docs/kernels.md)."""
    b, n, h, d = q.shape
    nb = n // block_size
    acc = island(k.dtype)
    ksum, vsum = (t.reshape(b, block_size, nb, h, d).astype(acc).sum(2).astype(t.dtype)
                  for t in (k, v))
    mb = mask.reshape(b, nb, block_size)
    pair = jnp.einsum("bgs,bgj->bsj", mb.astype(jnp.int32), mb.astype(jnp.int32)) > 0
    if n * block_size > ONE_PROBLEM_LOGITS:
        qs = q.reshape(b * block_size, nb, h, d)  # row b * block_size + s: position s's queries
        ks, vs = (jnp.repeat(t, block_size, axis=0) for t in (ksum, vsum))
        y = attention(qs, ks, vs, pair.reshape(b * block_size, block_size),
                      dropout_rate=dropout_rate, dropout_rng=dropout_rng)
        return y.reshape(b, n, h, d)
    pattern = jnp.repeat(pair, nb, axis=1)[:, None]  # (b, 1, Np, block_size): query s * nb + g
    keep = None
    if dropout_rate > 0.0 and dropout_rng is not None:
        # the batched layout's bits: weight (b, h, s * nb + g, j) is its (b * bs + s, h, g, j)
        rows, cols = _dropout_mask.words(dropout_rng, (b * block_size, h, nb), block_size)
        rows = rows.reshape(b, block_size, h, nb, 1).swapaxes(1, 2).reshape(b, h, n, 1)
        keep = _dropout_mask.keep(rows, cols, dropout_rate)
    return attention(q, ksum, vsum, jnp.ones((b, block_size), bool), pair_mask=pattern,
                     keep=keep, dropout_rate=dropout_rate)


def sinkhorn_normalise(log_p, iterations: int, temperature: float):
    """Sinkhorn's alternating row / column normalisation in log space; (..., n, n) -> P."""
    log_p = log_p / temperature
    for _ in range(iterations):
        log_p = log_p - jax.nn.logsumexp(log_p, axis=-1, keepdims=True)
        log_p = log_p - jax.nn.logsumexp(log_p, axis=-2, keepdims=True)
    return jnp.exp(log_p)


def sorted_block_attention(q, k, v, mask, scores, *, block_size: int, iterations: int,
                           temperature: float, dropout_rate: float = 0.0, dropout_rng=None):
    """The paper's sorted branch on LRA's groups: P = sinkhorn(scores) (batch, heads, nb, nb),
    group n's keys = sum_k P[n, k] K[group k]; each group attends its sorted keys under the
    sorted group's key mask (P-weighted, > 0.5 counts as real)."""
    b, n, h, d = q.shape
    acc = island(q.dtype)
    p = sinkhorn_normalise(scores.astype(acc), iterations, temperature)
    kg, vg = (strided_groups(t, block_size).reshape(b, -1, block_size, h, d) for t in (k, v))
    ks, vs = (jnp.einsum("bhnk,bkshd->bnshd", p.astype(t.dtype), t) for t in (kg, vg))
    mg = strided_groups(mask, block_size).reshape(b, -1, block_size)
    ms = jnp.einsum("bhnk,bks->bnhs", p, mg.astype(acc)).mean(2) > 0.5
    qg = strided_groups(q, block_size)
    y = attention(qg, ks.reshape(qg.shape), vs.reshape(qg.shape), ms.reshape(-1, block_size),
                  dropout_rate=dropout_rate, dropout_rng=dropout_rng)
    return ungroup_strided(y, b)


class Mixer(HeadProjections):
    def __init__(self, spec: MixerSpec, *, rngs: nnx.Rngs, block_size: int = 50,
                 max_num_blocks: int = 25, sorting: str = "lra", sinkhorn_iterations: int = 5,
                 temperature: float = 0.75):
        if sorting not in SORTINGS:
            raise UserError(f"sinkhorn: sorting must be one of {SORTINGS}, not {sorting!r}")
        if block_size < 1 or max_num_blocks < 1:
            raise UserError("sinkhorn: block_size and max_num_blocks must be positive")
        nb = -(-spec.max_length // block_size)
        if sorting == "sinkhorn" and nb > max_num_blocks:
            raise UserError(f"sinkhorn: {nb} blocks of {block_size} tokens need "
                            f"max_num_blocks >= {nb} for sorting = 'sinkhorn'")
        self.spec, self.block_size, self.sorting = spec, int(block_size), sorting
        self.iterations, self.temperature = int(sinkhorn_iterations), float(temperature)
        self.init_projections(spec, rngs, lra_init=spec.init == "lra")
        kw = dict(dtype=spec.dtype, rngs=rngs)
        if spec.init == "lra":
            kw.update(kernel_init=nnx.initializers.xavier_uniform(), use_bias=False)
        self.sort = nnx.Linear(spec.qkv_dim // spec.num_heads, max_num_blocks, **kw)

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        n = x.shape[1]
        xp, mp = pad_tokens(x, mask, -n % self.block_size, pad_is_real=False)
        q, k, v = self.qkv(xp)
        rate = 0.0 if deterministic else self.spec.attention_dropout
        rng = rngs.dropout() if (rate > 0.0 and rngs is not None) else None
        args = dict(block_size=self.block_size, dropout_rate=rate, dropout_rng=rng)
        y = local_attention(q, k, v, mp, layout="lra", **args)
        if self.sorting == "lra":
            y = y + summed_key_attention(q, k, v, mp, **args)
        else:
            b, npad, h, d = k.shape
            nb = npad // self.block_size
            key_sums = k.reshape(b, self.block_size, nb, h, d).sum(1)  # (b, nb, h, d)
            scores = self.sort(key_sums)[..., :nb].transpose(0, 2, 1, 3)  # (b, h, nb, nb)
            y = y + sorted_block_attention(q, k, v, mp, scores, iterations=self.iterations,
                                           temperature=self.temperature, **args)
        return self.merge(y)[:, :n], mask
