"""Linformer (Wang et al. 2020): softmax attention over k learnt projections of the sequence.

References, both selectable (`projection`):
  "lra"     google-research/long-range-arena `lra_benchmarks/models/linformer/linformer_attention.py`
            (ad0ff01, Mar 2021): one (max_len, k) kernel per layer, shared by keys and values and
            by every head, xavier_uniform (the block's kernel_init), sliced to the input length;
            K' = E^T K, V' = E^T V over the sequence axis. No padding mask anywhere: pad tokens
            are projected into K' and V' like real ones (its TODO: "Does Linformer care about
            masks?"). Attention dropout on the k weights. LRA's encoder never passes
            `low_rank_features`, so k = 16 on every task (text's config sets a top-level
            `low_rank_features = 32` that train.py does not read).
  "nystrom" mlpen/Nystromformer `LRA/code/attention_linformer.py` (5689313): one (heads, k,
            max_len) matrix E ~ N(0, 0.02), K' = E (K * mask), V' = E (V * mask); no attention
            dropout. The official E is a class attribute shared by every layer of the model;
            here each layer has its own (docs/fidelity.md).
Both: out = softmax(Q K'^T / sqrt(d)) V', computed by the shared `attention` (k keys, all real).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lra_bench.errors import UserError
from lra_bench.mixers import MixerSpec
from lra_bench.mixers._attention import attention
from lra_bench.mixers._projections import HeadProjections

PROJECTIONS = ("lra", "nystrom")


def project_sequence(x, e):
    """Low-rank projection along the sequence: (batch, n, heads, d) -> (batch, k, heads, d).

    e: (max_len, k) shared by the heads (LRA) or (heads, k, max_len) one per head (Nyströmformer),
    cut to the first n positions. A product with a learnt matrix, like a projection: it runs in
    x's dtype (bf16 under mixed precision; XLA's CPU dots reject bf16 x bf16 -> f32 here).
    """
    n = x.shape[1]
    if e.ndim == 2:
        return jnp.einsum("bnhd,nk->bkhd", x, e[:n].astype(x.dtype))
    return jnp.einsum("bnhd,hkn->bkhd", x, e[:, :, :n].astype(x.dtype))


def linformer_attention(q, k, v, mask, e, *, mask_keys: bool, dropout_rate: float = 0.0,
                        dropout_rng=None):
    """softmax(Q (E^T K)^T / sqrt(d)) (E^T V); q, k, v: (batch, n, heads, d), mask: (batch, n).

    mask_keys: zero pad keys and values before projecting (Nyströmformer); LRA projects them.
    """
    if mask_keys:
        keep = mask[:, :, None, None]
        k, v = jnp.where(keep, k, 0), jnp.where(keep, v, 0)
    k_low, v_low = project_sequence(k, e), project_sequence(v, e)
    every = jnp.ones(k_low.shape[:2], bool)
    return attention(q, k_low, v_low, every, dropout_rate=dropout_rate, dropout_rng=dropout_rng)


class Mixer(HeadProjections):
    def __init__(self, spec: MixerSpec, *, rngs: nnx.Rngs, k: int = 16, projection: str = "lra"):
        if projection not in PROJECTIONS:
            raise UserError(f"mixer.projection must be one of {', '.join(PROJECTIONS)}, "
                            f"got '{projection}'")
        if k < 1:
            raise UserError(f"mixer.k (projected length) must be at least 1, got {k}")
        self.spec, self.projection = spec, projection
        self.init_projections(spec, rngs, lra_init=spec.init == "lra")
        n = spec.max_length
        if projection == "lra":
            # flax's xavier_uniform on (max_len, k): fan_in = max_len, fan_out = k.
            e = nnx.initializers.xavier_uniform()(rngs.params(), (n, k))
        else:
            e = 0.02 * jax.random.normal(rngs.params(), (self.heads, k, n))
        self.e = nnx.Param(e)

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        q, k, v = self.qkv(x)
        rate = 0.0 if (deterministic or self.projection == "nystrom") else \
            self.spec.attention_dropout
        rng = rngs.dropout() if (rate > 0.0 and rngs is not None) else None
        y = linformer_attention(q, k, v, mask, self.e[...], mask_keys=self.projection == "nystrom",
                                dropout_rate=rate, dropout_rng=rng)
        return self.merge(y), mask
