"""FastRPB: a learned relative positional bias applied to the values in O(N log N).

Zubkov & Gavrilov 2022 (code: maximzubkov/positional-bias `positional_bias/*/fft.py`, used in
maximzubkov/long-range-arena `models/layers/attention.py` as `x = pbv + x`). Per head, a Toeplitz
matrix W (W[i, j] depends on i - j only) multiplies the values, and the product is added to the
attention output, unnormalised. A Toeplitz product is a convolution, so it runs as an FFT.

Diagonals are stored offset-major: `t[..., n - 1 + d]` is the weight at offset d = i - j, for a
sequence of n tokens. Parameters:
  "full":      w[..., 2N - 1], one weight per offset, t = w sliced around its centre;
  "symmetric": w[..., N], W[i, j] = w[|i - j|].
2D (image tasks): W2d[(r1, c1), (r2, c2)] = T[r1, r2] + T[c1, c2] with one T for rows and
columns, so W2d v is two 1D products on the row sums and the column sums of v.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lra_bench.mixers._precision import island

BASE_TYPES = ("full", "symmetric")


def init_bias(key, heads: int, n: int, base_type: str) -> jax.Array:
    """The official near-zero init: base[k] = k * 1e-5 * U(0,1) + 1e-6 * N(0,1), per head.

    It grows slowly with distance and is symmetric; "full" starts symmetric and may learn not to be.
    """
    k_slope, k_offset = jax.random.split(key)
    slope = jax.random.uniform(k_slope, (heads, 1))
    offset = jax.random.normal(k_offset, (heads, 1))
    base = jnp.arange(n)[None, :] * 1e-5 * slope + 1e-6 * offset  # (heads, n)
    if base_type == "symmetric":
        return base
    return jnp.concatenate([base[:, :0:-1], base], axis=-1)  # offsets -(n-1) .. n-1


def param_size(n: int, base_type: str) -> int:
    return 2 * n - 1 if base_type == "full" else n


def toeplitz_diagonals(w, n: int, base_type: str):
    """(heads, 2n - 1) weights by offset for n <= N tokens (N: the length w was made for)."""
    capacity = w.shape[-1] if base_type == "symmetric" else (w.shape[-1] + 1) // 2
    if n > capacity:
        raise ValueError(f"FastRPB: {n} tokens, but the bias was built for at most {capacity}")
    if base_type == "symmetric":
        return jnp.concatenate([w[:, n - 1:0:-1], w[:, :n]], axis=-1)
    centre = (w.shape[-1] - 1) // 2
    return w[:, centre - (n - 1): centre + n]


def toeplitz_fft_matvec(t, x, axis: int = 1):
    """y[i] = sum_j t[n - 1 + i - j] x[j] along `axis` of x, per head.

    t: (heads, 2n - 1); x: (batch, ..., heads, head_dim) with the sequence on `axis` and heads on
    axis -2. Zero-padding both to one FFT size >= 2n - 1 makes the circular convolution a linear one
    over every offset used; the power-of-two size avoids slow prime-length FFTs.
    """
    n = x.shape[axis]
    size = int(2 ** np.ceil(np.log2(2 * n - 1)))
    acc = island(x.dtype)
    xs = jnp.moveaxis(x.astype(acc), axis, -1)  # (..., heads, head_dim, n)
    x_f = jnp.fft.rfft(xs, n=size)
    t_f = jnp.fft.rfft(t.astype(acc), n=size)[:, None, :]  # (heads, 1, freq)
    y = jnp.fft.irfft(x_f * t_f, n=size)[..., n - 1: 2 * n - 1]
    return jnp.moveaxis(y, -1, axis)


def fastrpb(w, v, mask, *, base_type: str, has_cls: bool, grid: tuple[int, int] | None = None):
    """W v for v: (batch, length, heads, head_dim); zero at the CLS token and from padded values.

    A CLS token at position 0 is not part of the sequence's geometry: it gets no bias and gives
    none. Padded values are zeroed first, so they contribute nothing.
    """
    v = jnp.where(mask[:, :, None, None], v.astype(island(v.dtype)), 0.0)
    body = v[:, 1:] if has_cls else v
    n = body.shape[1]
    if grid is None:
        out = toeplitz_fft_matvec(toeplitz_diagonals(w, n, base_type), body)
    else:
        rows, cols = grid
        if rows * cols != n:
            raise ValueError(f"FastRPB 2D: grid {rows}x{cols} does not match {n} tokens")
        img = body.reshape(body.shape[0], rows, cols, *body.shape[2:])
        by_row = toeplitz_fft_matvec(toeplitz_diagonals(w, rows, base_type), img.sum(axis=2))
        by_col = toeplitz_fft_matvec(toeplitz_diagonals(w, cols, base_type), img.sum(axis=1))
        out = (by_row[:, :, None] + by_col[:, None, :]).reshape(body.shape)
    if has_cls:
        out = jnp.concatenate([jnp.zeros_like(out[:, :1]), out], axis=1)
    return out
