"""Linear Transformer with SIKF and FastRPB (Zubkov & Gavrilov 2022).

SIKF, the shift-invariant kernel function: phi(x) = exp(x - c) with c the mean of x over the
sequence and the features, per sample and head (maximzubkov/LinBERT `feature_maps/base.py`,
`exp_`), then the normalised linear attention of `lra_bench.mixers.linear`. Adding a scalar to all
queries (or all keys) moves c by the same amount, so phi, and the output, do not change.
The means are masked, so padding does not move c.

FastRPB (see `_fastrpb.py`) adds W v to the attention output: 1D on sequences, 2D on image
tasks (when the task declares a grid). Options switch each part off for the paper's ablations:
`kernel = "elu"` uses elu(x) + 1 instead of SIKF, `fastrpb = "none"` drops the bias.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from lra_bench.errors import UserError
from lra_bench.mixers import MixerSpec
from lra_bench.mixers import _fastrpb
from lra_bench.mixers._precision import island
from lra_bench.mixers._projections import HeadProjections
from lra_bench.mixers.linear import elu_linear_attention, normalized_linear_attention

KERNELS = ("sikf", "elu")
LAYOUTS = ("auto", "1d", "2d", "none")


def masked_centre(x, mask):
    """Mean of x over the real tokens and the features: (batch, 1, heads, 1)."""
    keep = mask[:, :, None, None]
    count = jnp.maximum(keep.sum(axis=1, keepdims=True), 1) * x.shape[-1]
    return jnp.where(keep, x, 0.0).sum(axis=(1, 3), keepdims=True) / count


def sikf_feature_map(x, mask):
    x = x.astype(island(x.dtype))
    return jnp.exp(x - masked_centre(x, mask))


def sikf_attention(q, k, v, mask, *, eps: float = 1e-6):
    """Normalised linear attention with the SIKF kernel; q, k, v: (batch, length, heads, dim)."""
    return normalized_linear_attention(sikf_feature_map(q, mask), sikf_feature_map(k, mask), v,
                                       mask, eps=eps)


class Mixer(HeadProjections):
    def __init__(self, spec: MixerSpec, *, rngs: nnx.Rngs, kernel: str = "sikf",
                 fastrpb: str = "auto", bias_base: str = "full", eps: float = 1e-6):
        if kernel not in KERNELS:
            raise UserError(f"mixer.kernel must be one of {', '.join(KERNELS)}, got '{kernel}'")
        if fastrpb not in LAYOUTS:
            raise UserError(f"mixer.fastrpb must be one of {', '.join(LAYOUTS)}, got '{fastrpb}'")
        if bias_base not in _fastrpb.BASE_TYPES:
            raise UserError(f"mixer.bias_base must be one of {', '.join(_fastrpb.BASE_TYPES)}, "
                            f"got '{bias_base}'")
        if fastrpb == "2d" and spec.grid is None:
            raise UserError("mixer.fastrpb = '2d' needs an image task (data.grid); "
                            "use 'auto' or '1d'")
        self.spec, self.kernel, self.eps, self.bias_base = spec, kernel, float(eps), bias_base
        self.grid = spec.grid if fastrpb == "2d" or (fastrpb == "auto" and spec.grid) else None
        body = spec.max_length - int(spec.has_cls)  # the CLS token has no position in the bias
        if self.grid is not None and self.grid[0] * self.grid[1] != body:
            raise UserError(f"FastRPB 2D: grid {self.grid[0]}x{self.grid[1]} does not cover the "
                            f"{body} tokens of data.max_length; fix data.grid or use fastrpb='1d'")
        self.init_projections(spec, rngs)
        if fastrpb == "none":
            self.bias = None
        else:
            n = max(self.grid) if self.grid is not None else body
            self.bias = nnx.Param(_fastrpb.init_bias(rngs.params(), self.heads, n, bias_base))

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        q, k, v = self.qkv(x)
        attend = sikf_attention if self.kernel == "sikf" else elu_linear_attention
        y = attend(q, k, v, mask, eps=self.eps)
        if self.bias is not None:
            pbv = _fastrpb.fastrpb(self.bias[...], v, mask, base_type=self.bias_base,
                                   has_cls=self.spec.has_cls, grid=self.grid)
            y = (y.astype(pbv.dtype) + pbv).astype(y.dtype)
        return self.merge(y), mask
