"""Multi-head softmax attention, the LRA baseline (Vaswani et al. 2017)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lra_bench.mixers import MixerSpec


def softmax_attention(q, k, v, mask, *, dropout_rate: float = 0.0, dropout_rng=None,
                      mask_queries: bool = False):
    """Scaled dot-product attention with key-padding masking.

    q, k, v: (batch, length, heads, head_dim); mask: (batch, length) bool, True at real tokens.
    mask_queries: mask pad queries as well, as LRA's attention does (its padding mask is query &
    key): a pad query's logits are all masked, so it averages every value uniformly. It changes
    only pad rows, which matter only where pooling reads pads (model.pad_pooling = "include").
    Without attention dropout this is `jax.nn.dot_product_attention`, which lets XLA pick a fused
    kernel (cuDNN flash attention on GPUs). That API has no dropout, so with dropout the same math
    runs explicitly, as that API does it: logits accumulated and kept in float32, softmax in
    float32, weights cast back to the compute dtype for the product with v.
    """
    key_mask = mask[:, None, None, :]  # (B, 1, 1, S) broadcasts over heads and queries
    if mask_queries:
        key_mask = key_mask & mask[:, None, :, None]
    if dropout_rate == 0.0 or dropout_rng is None:
        return jax.nn.dot_product_attention(q, k, v, mask=key_mask)
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(key_mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class Mixer(nnx.Module):
    def __init__(self, spec: MixerSpec, *, rngs: nnx.Rngs):
        self.spec = spec
        d, h = spec.qkv_dim, spec.num_heads
        self.heads, self.head_dim = h, d // h
        # LRA's nn.SelfAttention: xavier_uniform kernels, no biases (bias=False).
        lra = dict(kernel_init=nnx.initializers.xavier_uniform(), use_bias=False)
        kw = dict(dtype=spec.dtype, rngs=rngs, **(lra if spec.init == "lra" else {}))
        self.query = nnx.Linear(spec.dim, d, **kw)
        self.key = nnx.Linear(spec.dim, d, **kw)
        self.value = nnx.Linear(spec.dim, d, **kw)
        self.out = nnx.Linear(d, spec.dim, **kw)

    def _split(self, t):
        return t.reshape(*t.shape[:2], self.heads, self.head_dim)

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        q, k, v = (self._split(f(x)) for f in (self.query, self.key, self.value))
        rate = 0.0 if deterministic else self.spec.attention_dropout
        rng = rngs.dropout() if (rate > 0.0 and rngs is not None) else None
        y = softmax_attention(q, k, v, mask, dropout_rate=rate, dropout_rng=rng,
                              mask_queries=self.spec.mask_pad_queries)
        return self.out(y.reshape(*y.shape[:2], -1)), mask
