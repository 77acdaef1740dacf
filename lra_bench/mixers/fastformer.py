"""Fastformer additive attention (Wu et al. 2021), as the official `FastSelfAttention` does it.

Reference: wuch15/Fastformer `Fastformer.ipynb`. Per head h, with q = x Wq + b and k = x Wk + b
(q doubles as the value; there is no value projection):
  alpha = softmax_n(query_att(q) / sqrt(dh))      query_att: Linear(D, H) over all of q
  g_q   = sum_n alpha_n q_n,h                      global query
  p     = k * g_q
  beta  = softmax_n(key_att(p) / sqrt(dh))
  g_k   = sum_n beta_n p_n,h                       global key (it pools p, not k)
  out   = transform(g_k * q) + q
then the output projection (the official BertSelfOutput dense; its residual and LayerNorm are the
shared pre-LN block's). Padded tokens are excluded from both softmaxes exactly. `fastformer`
is the whole official `FastSelfAttention.forward` as one pure function of its layers.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from lra_bench.mixers import MixerSpec
from lra_bench.mixers._precision import island
from lra_bench.mixers._projections import dense


def masked_sequence_softmax(scores, mask):
    """Softmax over the sequence (axis 1) of scores (batch, length, heads) in `island` precision
    (float32 for bf16), padding -> 0."""
    acc = island(scores.dtype)
    scores = jnp.where(mask[..., None], scores.astype(acc), jnp.finfo(acc).min)
    return jax.nn.softmax(scores, axis=1)


def additive_attention(q, k, mask, query_att: Callable, key_att: Callable, num_heads: int):
    """u = g_k * q per head; q, k: (batch, length, heads * head_dim), mask: (batch, length)."""
    b, n, d = q.shape
    dh = d // num_heads
    scale = dh ** -0.5
    heads = lambda t: t.reshape(b, n, num_heads, dh)  # noqa: E731

    alpha = masked_sequence_softmax(dense(query_att, q) * scale, mask)
    # Multiply-and-sum, not a dot: a pooling to one row per head is a reduction, and as a dot
    # XLA would first transpose q and p to heads-major copies.
    global_q = (alpha.astype(q.dtype)[..., None] * heads(q)).sum(axis=1)
    p = k * global_q.reshape(b, 1, d)
    beta = masked_sequence_softmax(dense(key_att, p) * scale, mask)
    global_k = (beta.astype(p.dtype)[..., None] * heads(p)).sum(axis=1)
    return (heads(q) * global_k[:, None]).reshape(b, n, d)


def fastformer(x, mask, *, query: Callable, key: Callable, query_att: Callable,
               key_att: Callable, transform: Callable, num_heads: int):
    """The official FastSelfAttention layer: transform(g_k * q) + q, with q, k = query(x), key(x).
    x: (batch, length, dim); each layer argument is a callable (an nnx.Linear, or any affine map)."""
    q, k = dense(query, x), dense(key, x)
    return dense(transform, additive_attention(q, k, mask, query_att, key_att, num_heads)) + q


class Mixer(nnx.Module):
    def __init__(self, spec: MixerSpec, *, rngs: nnx.Rngs, init_std: float = 0.02):
        d, h = spec.qkv_dim, spec.num_heads
        self.heads = h
        # The official model initialises every Linear with N(0, initializer_range) and zero bias.
        linear = lambda i, o: nnx.Linear(  # noqa: E731
            i, o, dtype=spec.dtype, kernel_init=nnx.initializers.normal(init_std), rngs=rngs)
        self.query = linear(spec.dim, d)
        self.key = linear(spec.dim, d)
        self.query_att = linear(d, h)
        self.key_att = linear(d, h)
        self.transform = linear(d, d)
        self.out = linear(d, spec.dim)

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        def layer(x):
            y = fastformer(x, mask, query=self.query, key=self.key, query_att=self.query_att,
                           key_att=self.key_att, transform=self.transform, num_heads=self.heads)
            return dense(self.out, y)

        # Why a checkpoint that saves everything (so recomputes nothing and changes no value):
        # XLA's buffer plan for the layer's forward + backward is one (batch, length, dim) array
        # smaller with it (6.13 -> 5.69 MiB at 1K, 48.6 -> 45.1 MiB at 8K, batch 2, width 64;
        # benchmarks/against_reference.py), the same time, and below the official layer's peak.
        return jax.checkpoint(layer, policy=jax.checkpoint_policies.everything_saveable)(x), mask
