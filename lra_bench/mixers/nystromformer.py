"""Nyströmformer (Xiong et al. 2021): softmax attention through m landmarks.

Reference: mlpen/Nystromformer `LRA/code/attention_nystrom.py`. Q and K are masked and scaled by
d^(-1/4) each; the landmarks Q~, K~ are the means of m equal segments of the sequence;
  F = softmax(Q K~^T),  A = softmax(Q~ K~^T),  B = softmax(Q~ K^T + key mask)
  out = F A^+ (B V) + depthwise_conv(V * mask)
with A^+ from the iterative Moore-Penrose scheme (6 steps of
Z <- 1/4 Z (13 I - A Z (15 I - A Z (7 I - A Z)))). The sequence is padded up to a multiple of m
here (the official code needs the length divisible by m and pads inputs to a power of two).
Like the official code (AMP disabled around attention), the whole attention runs in float32, and
the pseudo-inverse's matmuls ask for full float32 precision even where XLA would use TF32/bf16.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from lra_bench.errors import UserError
from lra_bench.mixers import MixerSpec

PINV_INITS = ("per_matrix", "global")
PINV_METHODS = ("iterative", "exact")
HIGHEST = jax.lax.Precision.HIGHEST


def pad_to_multiple(x, multiple: int, axis: int = 1):
    extra = -x.shape[axis] % multiple
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


def segment_means(x, num_segments: int):
    """(batch, length, ...) -> (batch, num_segments, ...): means of equal consecutive segments."""
    b, n = x.shape[:2]
    if n % num_segments:
        raise ValueError(f"length {n} is not a multiple of {num_segments} landmarks; pad it first")
    return x.reshape(b, num_segments, n // num_segments, *x.shape[2:]).mean(axis=2)


def iterative_pinv(a, iterations: int = 6, init: str = "per_matrix"):
    """Moore-Penrose inverse of a (..., m, m) by the iteration of Razavi et al. 2014, in float32.

    Z0 = A^T / (max column sum * max row sum) makes ||I - A Z0|| < 1. "per_matrix" takes the
    maxima per matrix; "global" (the official default) over every matrix of the batch and heads,
    which makes one sample's Z0, and so its output, depend on the others.
    """
    a = a.astype(jnp.float32)
    col, row = a.sum(axis=-2).max(axis=-1), a.sum(axis=-1).max(axis=-1)
    if init == "global":
        col, row = col.max(), row.max()
    z = jnp.swapaxes(a, -1, -2) / (col * row)[..., None, None]
    eye = jnp.eye(a.shape[-1], dtype=jnp.float32)
    mm = lambda x, y: jnp.matmul(x, y, precision=HIGHEST)  # noqa: E731
    for _ in range(iterations):
        az = mm(a, z)
        z = 0.25 * mm(z, 13 * eye - mm(az, 15 * eye - mm(az, 7 * eye - az)))
    return z


def depthwise_sequence_conv(v, kernel):
    """Per-head convolution along the sequence, one kernel per head shared by its features.

    v: (batch, length, heads, head_dim); kernel: (heads, width), width odd; 'same' zero padding,
    cross-correlation like torch's Conv2d((width, 1), groups=heads).
    """
    b, n, h, dh = v.shape
    width = kernel.shape[-1]
    rhs = jnp.repeat(kernel.T.astype(v.dtype), dh, axis=1)[:, None, :]  # (width, 1, heads * dh)
    y = jax.lax.conv_general_dilated(
        v.reshape(b, n, h * dh), rhs, window_strides=(1,), padding=[(width // 2, width // 2)],
        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=h * dh)
    return y.reshape(b, n, h, dh)


def nystrom_attention(q, k, v, mask, *, num_landmarks: int, pinv_iterations: int = 6,
                      pinv_init: str = "per_matrix", pinv: str = "iterative", conv_kernel=None):
    """q, k, v: (batch, length, heads, head_dim); mask: (batch, length). Returns (b, l, h, d)."""
    n, dtype = q.shape[1], v.dtype
    q, k, v = (pad_to_multiple(t.astype(jnp.float32), num_landmarks) for t in (q, k, v))
    mask = pad_to_multiple(mask, num_landmarks)
    keep = mask[:, :, None, None]
    scale = q.shape[-1] ** -0.25
    q = jnp.where(keep, q, 0.0) * scale
    k = jnp.where(keep, k, 0.0) * scale
    v = jnp.where(keep, v, 0.0)
    q_land, k_land = segment_means(q, num_landmarks), segment_means(k, num_landmarks)

    f = jax.nn.softmax(jnp.einsum("bnhd,bmhd->bhnm", q, k_land), axis=-1)
    a = jax.nn.softmax(jnp.einsum("bmhd,bkhd->bhmk", q_land, k_land), axis=-1)
    b_logits = jnp.einsum("bmhd,bnhd->bhmn", q_land, k)
    b_logits = jnp.where(mask[:, None, None, :], b_logits, jnp.finfo(jnp.float32).min)
    bmat = jax.nn.softmax(b_logits, axis=-1)

    if pinv == "exact":
        a_inv = jnp.linalg.pinv(a)
    else:
        a_inv = iterative_pinv(a, pinv_iterations, pinv_init)
    bv = jnp.einsum("bhmn,bnhd->bhmd", bmat, v)
    f_ainv = jnp.einsum("bhnm,bhmk->bhnk", f, a_inv, precision=HIGHEST)
    out = jnp.einsum("bhnk,bhkd->bnhd", f_ainv, bv)
    if conv_kernel is not None:
        out = out + depthwise_sequence_conv(v, conv_kernel.astype(jnp.float32))
    return out[:, :n].astype(dtype)


class Mixer(nnx.Module):
    def __init__(self, spec: MixerSpec, *, rngs: nnx.Rngs, num_landmarks: int = 64,
                 conv_kernel: int = 35, pinv_iterations: int = 6, pinv_init: str = "per_matrix",
                 pinv: str = "iterative"):
        if not 1 <= num_landmarks <= spec.max_length:
            raise UserError(f"mixer.num_landmarks ({num_landmarks}) must be between 1 and the "
                            f"sequence length ({spec.max_length} tokens); set "
                            f"mixer.num_landmarks={min(64, spec.max_length)} or lower")
        if conv_kernel < 0 or (conv_kernel and conv_kernel % 2 == 0):
            raise UserError(f"mixer.conv_kernel must be odd (or 0 for no conv), got {conv_kernel}")
        if pinv_init not in PINV_INITS:
            raise UserError(f"mixer.pinv_init must be one of {', '.join(PINV_INITS)}, "
                            f"got '{pinv_init}'")
        if pinv not in PINV_METHODS:
            raise UserError(f"mixer.pinv must be one of {', '.join(PINV_METHODS)}, got '{pinv}'")
        self.options = dict(num_landmarks=num_landmarks, pinv_iterations=pinv_iterations,
                            pinv_init=pinv_init, pinv=pinv)
        d, h = spec.qkv_dim, spec.num_heads
        self.heads, self.head_dim = h, d // h
        self.query = nnx.Linear(spec.dim, d, dtype=spec.dtype, rngs=rngs)
        self.key = nnx.Linear(spec.dim, d, dtype=spec.dtype, rngs=rngs)
        self.value = nnx.Linear(spec.dim, d, dtype=spec.dtype, rngs=rngs)
        self.out = nnx.Linear(d, spec.dim, dtype=spec.dtype, rngs=rngs)
        if conv_kernel:
            # torch's Conv2d default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = width.
            bound = 1.0 / math.sqrt(conv_kernel)
            self.conv = nnx.Param(jax.random.uniform(
                rngs.params(), (h, conv_kernel), minval=-bound, maxval=bound))
        else:
            self.conv = None

    def _split(self, t):
        return t.reshape(*t.shape[:2], self.heads, self.head_dim)

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        q, k, v = (self._split(f(x)) for f in (self.query, self.key, self.value))
        conv = self.conv[...] if self.conv is not None else None
        y = nystrom_attention(q, k, v, mask, conv_kernel=conv, **self.options)
        return self.out(y.reshape(*y.shape[:2], -1)), mask
