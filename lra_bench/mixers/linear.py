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
    keep = mask[:, :, None, None]
    phi_k = jnp.where(keep, phi_k.astype(acc), 0.0)
    v32 = jnp.where(keep, v.astype(acc), 0.0)
    phi_q = phi_q.astype(acc)
    kv = jnp.einsum("bshf,bshd->bhfd", phi_k, v32)
    normalizer = jnp.einsum("blhf,bhf->blh", phi_q, phi_k.sum(axis=1)) + eps
    out = jnp.einsum("blhf,bhfd->blhd", phi_q, kv) / normalizer[..., None]
    return out.astype(v.dtype)


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
        return self.merge(elu_linear_attention(q, k, v, mask, eps=self.eps)), mask
