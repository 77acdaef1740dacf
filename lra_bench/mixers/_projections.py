"""The q/k/v/out projections and head split shared by softmax, linear, SIKF and Nyströmformer.

A mixer that subclasses `HeadProjections` and calls `init_projections` first gets the parameters
`query`, `key`, `value`, `out` (nnx.Linear, compute dtype `spec.dtype`, created in that order, so
their initial values do not depend on which mixer holds them), `qkv(x)` giving (batch, length,
heads, head_dim) arrays and `merge(y)` applying the output projection to such an array.
"""

from __future__ import annotations

from flax import nnx

from lra_bench.mixers import MixerSpec


class HeadProjections(nnx.Module):
    def init_projections(self, spec: MixerSpec, rngs: nnx.Rngs) -> None:
        d, h = spec.qkv_dim, spec.num_heads
        self.heads, self.head_dim = h, d // h
        self.query = nnx.Linear(spec.dim, d, dtype=spec.dtype, rngs=rngs)
        self.key = nnx.Linear(spec.dim, d, dtype=spec.dtype, rngs=rngs)
        self.value = nnx.Linear(spec.dim, d, dtype=spec.dtype, rngs=rngs)
        self.out = nnx.Linear(d, spec.dim, dtype=spec.dtype, rngs=rngs)

    def qkv(self, x):
        split = lambda t: t.reshape(*t.shape[:2], self.heads, self.head_dim)  # noqa: E731
        return split(self.query(x)), split(self.key(x)), split(self.value(x))

    def merge(self, y):
        return self.out(y.reshape(*y.shape[:2], -1))
