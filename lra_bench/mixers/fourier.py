"""Fourier Transformer (He et al. 2023): shorten the sequence with a DCT low-pass, then attend.

Official code: LUMIA-Group/FourierTransformer, LRA/code/attention_dct.py and model.py. In the
chosen layers (`filter_layers`, official LRA script: layer 0) the block's normalised input h is
filtered along the sequence: orthonormal DCT-II, keep the first ceil(T * keep_ratio)
coefficients, inverse DCT at that truncated length. The result is a shorter sequence (a
low-passed, resampled signal), not a reconstruction at length T. Softmax attention runs on it,
and the residual adds to the filtered h, not to x (`residual_stream`), as the official block
does. Every later layer, the final LN and the pooling work on the short sequence.

Beyond the official code, which drops the padding mask after the filter: padded positions are
zeroed before the DCT, so real outputs do not depend on pad content, and the short sequence gets
a mask (`downsampled_mask`): output sample j covers input positions [j T/m, (j+1) T/m) of the
DCT-II grid and is real iff that span holds a real token.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lra_bench.errors import UserError
from lra_bench.mixers import MixerSpec, softmax


def dct_ortho(x, axis: int = 1):
    """DCT-II with orthonormal scaling (= scipy.fft.dct(type=2, norm='ortho'))."""
    return jax.scipy.fft.dct(x, type=2, axis=axis, norm="ortho")


def idct_ortho(x, axis: int = 1):
    """Inverse of `dct_ortho` (= scipy.fft.idct(type=2, norm='ortho'))."""
    return jax.scipy.fft.idct(x, type=2, axis=axis, norm="ortho")


def kept_coefficients(length: int, keep_ratio: float) -> int:
    """Length of the filtered sequence: ceil(T * p), computed as the official code does."""
    return math.ceil(length * keep_ratio)


def dct_downsample(x, keep: int):
    """(B, T, D) -> (B, keep, D): DCT along the sequence, keep the lowest `keep` frequencies,
    inverse DCT at length `keep`. Runs in at least float32 whatever the compute dtype: bf16 has
    too few mantissa bits for a length-T transform."""
    coefficients = dct_ortho(x.astype(jnp.promote_types(x.dtype, jnp.float32)))[:, :keep]
    return idct_ortho(coefficients).astype(x.dtype)


def downsampled_mask(mask, keep: int):
    """(B, T) -> (B, keep): output j is real iff input span [j T/keep, (j+1) T/keep) has a real
    token. For right-padded input with n real tokens that is j < ceil(n keep / T), never empty."""
    length = mask.shape[1]
    j = np.arange(keep + 1)
    bounds = -(-(j * length) // keep)  # ceil(j T / keep): first input position of span j
    reals_before = jnp.concatenate(
        [jnp.zeros_like(mask[:, :1], jnp.int32), jnp.cumsum(mask, axis=1, dtype=jnp.int32)], axis=1)
    counts = reals_before[:, bounds]
    return counts[:, 1:] > counts[:, :-1]


def fourier_filter(x, mask, keep_ratio: float, has_cls: bool):
    """The filter of one Fourier layer: (B, T(+1), D), mask -> (B, ceil(T p)(+1), D), mask.

    A CLS token at position 0 is split off first and put back after, unfiltered, so T counts the
    other tokens. Pads are zeroed before the DCT.
    """
    if has_cls:
        cls, cls_mask, x, mask = x[:, :1], mask[:, :1], x[:, 1:], mask[:, 1:]
    keep = kept_coefficients(x.shape[1], keep_ratio)
    x = dct_downsample(jnp.where(mask[..., None], x, 0), keep)
    mask = downsampled_mask(mask, keep)
    if has_cls:
        x, mask = jnp.concatenate([cls, x], axis=1), jnp.concatenate([cls_mask, mask], axis=1)
    return x, mask


def check_options(spec: MixerSpec, keep_ratio: float, filter_layers) -> None:
    if not 0.0 < keep_ratio <= 1.0:
        raise UserError(f"mixer.keep_ratio must be in (0, 1], got {keep_ratio}")
    bad = [i for i in filter_layers if not (isinstance(i, int) and 0 <= i < spec.num_layers)]
    if bad:
        raise UserError(f"mixer.filter_layers {list(filter_layers)}: layers {bad} do not exist; "
                        f"the model has layers 0..{spec.num_layers - 1} (model.num_layers)")


class Mixer(nnx.Module):
    """Softmax attention; in `filter_layers` it attends over the DCT-filtered sequence."""

    def __init__(self, spec: MixerSpec, *, rngs: nnx.Rngs, keep_ratio: float = 0.2,
                 filter_layers=(0,)):
        check_options(spec, keep_ratio, filter_layers)
        self.filters = spec.layer in filter_layers
        self.keep_ratio, self.has_cls = float(keep_ratio), spec.has_cls
        self.attention = softmax.Mixer(spec, rngs=rngs)

    def shorten(self, x, mask):
        if not self.filters:
            return x, mask
        return fourier_filter(x, mask, self.keep_ratio, self.has_cls)

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        x, mask = self.shorten(x, mask)
        return self.attention(x, mask, deterministic=deterministic, rngs=rngs)

    def residual_stream(self, x, h, mask):
        # Official block: X = dropout(attn(filtered)) + filtered, with filtered = filter(LN(x)).
        return self.shorten(h, mask)[0] if self.filters else x

    def mix(self, x, h, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        """`residual_stream` and `__call__` from one filter: its backward then runs once (the
        cotangents of both uses add up before the transposed DCTs) instead of once per use."""
        if not self.filters:
            return (x, *self.attention(h, mask, deterministic=deterministic, rngs=rngs))
        h, short = self.shorten(h, mask)
        return (h, *self.attention(h, short, deterministic=deterministic, rngs=rngs))
