"""The q/k/v/out projections and head split shared by softmax, linear, SIKF and Nyströmformer.

A mixer that subclasses `HeadProjections` and calls `init_projections` first gets the parameters
`query`, `key`, `value`, `out` (nnx.Linear, compute dtype `spec.dtype`, created in that order, so
their initial values do not depend on which mixer holds them), `qkv(x)` giving (batch, length,
heads, head_dim) arrays and `merge(y)` applying the output projection to such an array.
`dense` applies any of these layers (or any affine map over the last axis) the fast way on CPU;
`glu` and `sigmoid` gate a layer's output (S4D's output GLU, S5's gates, the block's
`model.mlp = "glu"`), one implementation for all three.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lra_bench.mixers import MixerSpec
from lra_bench.mixers._precision import island


def dense(layer, x):
    """layer(x) with x flattened to a matrix (batch * length, features), then reshaped back.

    Why: for a (batch, length, features) input, XLA on CPU computes the weight gradient from a
    transposed copy of the cotangent and a dot with both operands transposed (the slow Eigen
    path); on a matrix it is one canonical product. One (2, 2048, 64) layer's forward + backward
    ran 2.0x faster this way (jax 0.10, one thread). The maths is the same.
    """
    y = layer(x.reshape(-1, x.shape[-1]))
    return y.reshape(*x.shape[:-1], y.shape[-1])


def sigmoid(x):
    """The gate, in a float32 island (an exp), back in x's dtype."""
    return jax.nn.sigmoid(x.astype(island(x.dtype))).astype(x.dtype)


def glu(y):
    """PyTorch's nn.GLU(dim=-1), as state-spaces/s4 uses it (src/models/nn/activation.py,
    Activation('glu')): the features split in halves [a, g], out = a * sigmoid(g). (B, L, 2F) ->
    (B, L, F); after a Linear(H, 2F) it is (x W_a + b_a) * sigmoid(x W_g + b_g)."""
    a, g = jnp.split(y, 2, axis=-1)
    return a * sigmoid(g)


class HeadProjections(nnx.Module):
    def init_projections(self, spec: MixerSpec, rngs: nnx.Rngs, *, lra_init: bool = False) -> None:
        """lra_init: LRA's nn.SelfAttention initialisers, xavier_uniform kernels and no biases
        (model.init = "lra"); otherwise flax's lecun_normal kernels with zero biases."""
        d, h = spec.qkv_dim, spec.num_heads
        self.heads, self.head_dim = h, d // h
        lra = dict(kernel_init=nnx.initializers.xavier_uniform(), use_bias=False)
        kw = dict(dtype=spec.dtype, rngs=rngs, **(lra if lra_init else {}))
        self.query = nnx.Linear(spec.dim, d, **kw)
        self.key = nnx.Linear(spec.dim, d, **kw)
        self.value = nnx.Linear(spec.dim, d, **kw)
        self.out = nnx.Linear(d, spec.dim, **kw)

    def qkv(self, x):
        split = lambda t: t.reshape(*t.shape[:2], self.heads, self.head_dim)  # noqa: E731
        return (split(dense(self.query, x)), split(dense(self.key, x)),
                split(dense(self.value, x)))

    def merge(self, y):
        return dense(self.out, y.reshape(*y.shape[:2], -1))
