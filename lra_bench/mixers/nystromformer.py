"""Nyströmformer (Xiong et al. 2021): softmax attention through m landmarks.

Reference: mlpen/Nystromformer `LRA/code/attention_nystrom.py`. Q and K are masked and scaled by
d^(-1/4) each; the landmarks Q~, K~ are the means of m equal segments of the sequence;
  F = softmax(Q K~^T),  A = softmax(Q~ K~^T),  B = softmax(Q~ K^T + key mask)
  out = F A^+ (B V) + depthwise_conv(V * mask)
with A^+ from the iterative Moore-Penrose scheme (6 steps of
Z <- 1/4 Z (13 I - A Z (15 I - A Z (7 I - A Z)))). The sequence is padded up to a multiple of m
here (the official code needs the length divisible by m and pads inputs to a power of two).
Like the official code (AMP disabled around attention), the attention runs in float32 (the
`island` dtype: float64 inputs stay float64), and the pseudo-inverse's matmuls ask for full
precision even where XLA would use TF32/bf16. The depthwise conv on V, a product with a learnt
kernel like the projections, runs in the compute dtype (bf16 under mixed precision; the official
runs it in float32). The query-landmark (F) and landmark-key (B)
softmaxes are the shared `attention` function without its 1/sqrt(d) (q and k carry d^(-1/4)
each), so their products with A^+ and V never leave it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lra_bench.errors import UserError
from lra_bench.mixers import MixerSpec
from lra_bench.mixers._attention import attention
from lra_bench.mixers._precision import island
from lra_bench.mixers._projections import HeadProjections

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
    """Moore-Penrose inverse of a (..., m, m) by the iteration of Razavi et al. 2014, in float32
    (or float64 for a float64 a).

    Z0 = A^T / (max column sum * max row sum) makes ||I - A Z0|| < 1. "per_matrix" takes the
    maxima per matrix; "global" (the official default) over every matrix of the batch and heads,
    which makes one sample's Z0, and so its output, depend on the others.
    """
    a = a.astype(island(a.dtype))
    col, row = a.sum(axis=-2).max(axis=-1), a.sum(axis=-1).max(axis=-1)
    if init == "global":
        col, row = col.max(), row.max()
    z = jnp.swapaxes(a, -1, -2) / (col * row)[..., None, None]
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    mm = lambda x, y: jnp.matmul(x, y, precision=HIGHEST)  # noqa: E731
    for _ in range(iterations):
        az = mm(a, z)
        z = 0.25 * mm(z, 13 * eye - mm(az, 15 * eye - mm(az, 7 * eye - az)))
    return z


def depthwise_sequence_conv(v, kernel, block: int = 64):
    """Per-head convolution along the sequence, one kernel per head shared by its features.

    v: (batch, length, heads, head_dim); kernel: (heads, width), width odd; 'same' zero padding,
    cross-correlation like torch's Conv2d((width, 1), groups=heads).

    Computed as matrix products: the sequence is cut into blocks of `block` outputs, each the
    product of a (block, block + width - 1) band matrix of the kernel with its input window. XLA's
    CPU convolutions are slow for this shape (one channel, a wide kernel) and the gradient of the
    grouped form over heads * head_dim channels is a dense (h dh) x (h dh) convolution; the band
    products ran 50x faster, forward + backward, at 2K tokens. Like a projection, the products
    run in v's dtype (bf16 under mixed precision, forward and backward).
    """
    b, n, h, dh = v.shape
    width = kernel.shape[-1]
    block = max(block, width - 1)
    blocks = -(-n // block)
    half = width // 2
    padded = jnp.pad(v, [(0, 0), (half, (blocks + 1) * block - n - half), (0, 0), (0, 0)])
    padded = padded.reshape(b, blocks + 1, block, h, dh)
    # window of block j: its own inputs and the first width - 1 of the next block
    windows = jnp.concatenate([padded[:, :-1], padded[:, 1:, :width - 1]], axis=2)
    offset = np.arange(block + width - 1)[None, :] - np.arange(block)[:, None]  # j - i
    inside = (offset >= 0) & (offset < width)
    band = jnp.where(inside, kernel[:, np.clip(offset, 0, width - 1)], 0).astype(v.dtype)
    out = jnp.einsum("hij,bnjhd->bnihd", band, windows)
    return out.reshape(b, blocks * block, h, dh)[:, :n]


def nystrom_attention(q, k, v, mask, *, num_landmarks: int, pinv_iterations: int = 6,
                      pinv_init: str = "per_matrix", pinv: str = "iterative", conv_kernel=None):
    """q, k, v: (batch, length, heads, head_dim); mask: (batch, length). Returns (b, l, h, d)."""
    n, dtype, acc = q.shape[1], v.dtype, island(v.dtype)
    # The conv is a matrix product with a learnt kernel: it takes v in the compute dtype.
    v_conv = pad_to_multiple(jnp.where(mask[:, :, None, None], v, 0), num_landmarks)
    q, k, v = (pad_to_multiple(t.astype(acc), num_landmarks) for t in (q, k, v))
    mask = pad_to_multiple(mask, num_landmarks)
    keep = mask[:, :, None, None]
    scale = q.shape[-1] ** -0.25
    q = jnp.where(keep, q, 0.0) * scale
    k = jnp.where(keep, k, 0.0) * scale
    v = jnp.where(keep, v, 0.0)
    q_land, k_land = segment_means(q, num_landmarks), segment_means(k, num_landmarks)

    a = jax.nn.softmax(jnp.einsum("bmhd,bkhd->bhmk", q_land, k_land), axis=-1)
    if pinv == "exact":
        a_inv = jnp.linalg.pinv(a)
    else:
        a_inv = iterative_pinv(a, pinv_iterations, pinv_init)
    # B V = softmax(Q~ K^T + key mask) V, then F (A^+ B V) = softmax(Q K~^T) (A^+ B V): both are
    # softmax attentions, and this order never forms the n x m product F A^+.
    bv = attention(q_land, k, v, mask, scale=1.0)  # (b, m, h, d)
    ainv_bv = jnp.einsum("bhmk,bkhd->bmhd", a_inv, bv, precision=HIGHEST)
    landmarks = jnp.ones(k_land.shape[:2], bool)
    out = attention(q, k_land, ainv_bv, landmarks, scale=1.0)
    if conv_kernel is not None:
        out = out + depthwise_sequence_conv(v_conv, conv_kernel).astype(acc)
    return out[:, :n].astype(dtype)


class Mixer(HeadProjections):
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
        self.init_projections(spec, rngs)
        if conv_kernel:
            # torch's Conv2d default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = width.
            bound = 1.0 / math.sqrt(conv_kernel)
            self.conv = nnx.Param(jax.random.uniform(
                rngs.params(), (self.heads, conv_kernel), minval=-bound, maxval=bound))
        else:
            self.conv = None

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        q, k, v = self.qkv(x)
        conv = self.conv[...] if self.conv is not None else None
        y = nystrom_attention(q, k, v, mask, conv_kernel=conv, **self.options)
        return self.merge(y), mask
