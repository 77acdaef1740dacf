"""Linear attention with the elu(x) + 1 feature map (Katharopoulos et al. 2020).

Reference: idiap/fast-transformers `fast_transformers/attention/linear_attention.py`. There is no
1/sqrt(d) scaling and no attention dropout (there are no attention weights to drop).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lra_bench.mixers import MixerSpec
from lra_bench.mixers._precision import island
from lra_bench.mixers._projections import HeadProjections


# Most heads computed as one block-diagonal product (normalized_linear_attention). Forward +
# backward of the attention alone, one thread, the same process, 9 interleaved rounds on a loaded
# machine (2026-12-07): block-diagonal / per head 1.00 at (batch 2, 1K, 4 heads of 16), 1.01 at
# (8, 1K, 4 of 64), 0.74 at (2, 4K, 4 of 64), but 1.27 at (2, 2K, 8 heads of 32).
BLOCK_DIAGONAL_HEADS = 4


def elu_feature_map(x):
    return jax.nn.elu(x) + 1.0


def normalized_linear_attention(phi_q, phi_k, v, mask, *, eps: float = 1e-6):
    """out_i = phi(q_i)^T (sum_s phi(k_s) v_s^T) / (phi(q_i)^T sum_s phi(k_s) + eps).

    phi_q, phi_k: (batch, length, heads, feature) non-negative features; v: (batch, length,
    heads, head_dim); mask: (batch, length) bool, True at real tokens. Padded keys are dropped
    with `where`, not a product, so even non-finite padded content cannot leak in. The sums run
    in `island` precision (float32 for bfloat16): a bfloat16 sum over thousands of keys would
    lose most of its digits.
    """
    acc = island(jnp.result_type(phi_q, phi_k))
    b, n, h, f = phi_k.shape
    d = v.shape[-1]
    if h > BLOCK_DIAGONAL_HEADS:
        keep = mask[:, :, None, None]
        phi_k = jnp.where(keep, phi_k.astype(acc), 0.0)
        kv = jnp.einsum("bshf,bshd->bhfd", phi_k, jnp.where(keep, v.astype(acc), 0.0))
        phi_q = phi_q.astype(acc)
        normalizer = jnp.einsum("blhf,bhf->blh", phi_q, phi_k.sum(axis=1)) + eps
        return (jnp.einsum("blhf,bhfd->blhd", phi_q, kv) / normalizer[..., None]).astype(v.dtype)
    # All heads in one (h f) x (h d) product per sample, the other heads' blocks zeroed: h times
    # the multiplies of per-head products, but every operand keeps its (b, n, features) layout,
    # where per-head einsums made XLA copy q, k, v and the output to heads-major and back (the
    # step at 8K tokens, 4 heads of 16, ran in about 0.6x the time, one core, A/B). Past
    # BLOCK_DIAGONAL_HEADS heads the wasted multiplies cost more than the copies.
    keep = mask[:, :, None]
    k_all = jnp.where(keep, phi_k.astype(acc).reshape(b, n, h * f), 0.0)
    v_all = jnp.where(keep, v.astype(acc).reshape(b, n, h * d), 0.0)
    q_all = phi_q.astype(acc).reshape(b, phi_q.shape[1], h * f)
    head_of = jnp.arange(h * f) // f  # the head of each feature column
    kv = jnp.einsum("bsF,bsD->bFD", k_all, v_all)
    kv = jnp.where(head_of[:, None] == (jnp.arange(h * d) // d)[None, :], kv, 0.0)
    k_sum = k_all.sum(axis=1)[..., None]
    k_sum = jnp.where(head_of[:, None] == jnp.arange(h)[None, :], k_sum, 0.0)
    numerator = jnp.einsum("blF,bFD->blD", q_all, kv).reshape(b, -1, h, d)
    normalizer = jnp.einsum("blF,bFh->blh", q_all, k_sum) + eps
    return (numerator / normalizer[..., None]).astype(v.dtype)


def elu_linear_attention(q, k, v, mask, *, eps: float = 1e-6):
    """The whole attention of this mixer: elu(x) + 1 features (in `island` precision) of q, k."""
    acc = island(q.dtype)
    return normalized_linear_attention(elu_feature_map(q.astype(acc)),
                                       elu_feature_map(k.astype(acc)), v, mask, eps=eps)


class Mixer(HeadProjections):
    def __init__(self, spec: MixerSpec, *, rngs: nnx.Rngs, eps: float = 1e-6):
        self.eps = float(eps)
        self.init_projections(spec, rngs)

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        q, k, v = self.qkv(x)
        # Recomputed in the backward pass rather than kept: the features and the two products
        # cost little next to the (b, n, h f) arrays they would pin until then (the step's XLA
        # buffer plan 6.19 -> 5.69 MiB at 1K, 48.8 -> 44.8 MiB at 8K, batch 2, width 64).
        attention = jax.checkpoint(
            lambda q, k, v: elu_linear_attention(q, k, v, mask, eps=self.eps))
        return self.merge(attention(q, k, v)), mask
