"""Linear attention with the elu(x) + 1 feature map (Katharopoulos et al. 2020).

Reference: idiap/fast-transformers `fast_transformers/attention/linear_attention.py`. There is no
1/sqrt(d) scaling and no attention dropout (there are no attention weights to drop).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lra_bench.mixers import MixerSpec


def elu_feature_map(x):
    return jax.nn.elu(x) + 1.0


def normalized_linear_attention(phi_q, phi_k, v, mask, *, eps: float = 1e-6):
    """out_i = phi(q_i)^T (sum_s phi(k_s) v_s^T) / (phi(q_i)^T sum_s phi(k_s) + eps).

    phi_q, phi_k: (batch, length, heads, feature) non-negative features; v: (batch, length,
    heads, head_dim); mask: (batch, length) bool, True at real tokens. Padded keys are dropped
    with `where`, not a product, so even non-finite padded content cannot leak in. The sums run
    in float32: a bfloat16 sum over thousands of keys would lose most of its digits.
    """
    keep = mask[:, :, None, None]
    phi_k = jnp.where(keep, phi_k.astype(jnp.float32), 0.0)
    v32 = jnp.where(keep, v.astype(jnp.float32), 0.0)
    phi_q = phi_q.astype(jnp.float32)
    kv = jnp.einsum("bshf,bshd->bhfd", phi_k, v32)
    normalizer = jnp.einsum("blhf,bhf->blh", phi_q, phi_k.sum(axis=1)) + eps
    out = jnp.einsum("blhf,bhfd->blhd", phi_q, kv) / normalizer[..., None]
    return out.astype(v.dtype)


class Mixer(nnx.Module):
    def __init__(self, spec: MixerSpec, *, rngs: nnx.Rngs, eps: float = 1e-6):
        self.eps = float(eps)
        d, h = spec.qkv_dim, spec.num_heads
        self.heads, self.head_dim = h, d // h
        self.query = nnx.Linear(spec.dim, d, dtype=spec.dtype, rngs=rngs)
        self.key = nnx.Linear(spec.dim, d, dtype=spec.dtype, rngs=rngs)
        self.value = nnx.Linear(spec.dim, d, dtype=spec.dtype, rngs=rngs)
        self.out = nnx.Linear(d, spec.dim, dtype=spec.dtype, rngs=rngs)

    def _split(self, t):
        return t.reshape(*t.shape[:2], self.heads, self.head_dim)

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        q, k, v = (self._split(f(x)) for f in (self.query, self.key, self.value))
        phi_q, phi_k = (elu_feature_map(t.astype(jnp.float32)) for t in (q, k))
        y = normalized_linear_attention(phi_q, phi_k, v, mask, eps=self.eps)
        return self.out(y.reshape(*y.shape[:2], -1)), mask
