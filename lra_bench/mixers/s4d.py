"""S4D, the diagonal state space layer (Gu, Gupta, Goel & Ré 2022, "On the Parameterization and
Initialization of Diagonal State Space Models"), as a convolution computed by FFT.

Reference: state-spaces/s4 @ e757cef: models/s4/s4d.py (the minimal layer) and the full layer its
LRA runs use, src/models/sequence/kernels/ssm.py (SSMKernelDiag: `disc` zoh | bilinear, the
`init` diag-lin | legs, `dt_transform` exp | softplus), kernels/fftconv.py (the two-sided kernel of
`bidirectional`, the D skip) and modules/s4block.py (GELU, dropout tied along the sequence,
Linear(H, 2H) + GLU). Per feature h (H = spec.dim), with N/2 complex modes kept of each conjugate
pair:

    dt_h = exp(log_dt_h) (or softplus),  A = -exp(A_real) - i A_imag,  dtA = dt_h A
    ZOH:      K_h[l] = 2 Re sum_n C_hn B_n (exp(dtA_n) - 1) / A_n * exp(dtA_n)^l
    bilinear: K_h[l] = 2 Re sum_n C_hn B_n dt_h / (1 - dtA_n / 2) * ((1 + dtA_n/2) / (1 - dtA_n/2))^l
    y = K * u (causal convolution, by FFT of length 2L) + D u

the kernel being a Vandermonde product (modes x powers). `bidirectional` gives C two channels:
K0 runs forward, K1 backward (y_t += sum_{s>t} K1[s - t - 1] u_s: the official two-sided kernel
[K0, flip(K1)], whose backward half starts at lag 1, an off-by-one fftconv.py keeps on purpose).

Padding: padded inputs are zeroed before the convolution (as S4Block does with `lengths`), so no
pad content reaches a real position in either direction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lra_bench.errors import UserError
from lra_bench.mixers import MixerSpec
from lra_bench.mixers._precision import island
from lra_bench.mixers._projections import dense, glu
from lra_bench.mixers._ssm import TiedDropout, hippo_legs_normal

INITS = ("lin", "legs")


def s4d_init(init: str, half_state: int):
    """(A (N/2,) complex, B (N/2,) complex) of S4D-Lin or S4D-LegS, float64.

    lin:  A_n = -1/2 - i pi n, B_n = 1 (dplr.py init='lin', B_init='constant')
    legs: the diagonal part of HiPPO-LegS's normal-plus-low-rank form, B = V^* b with its imaginary
          part clipped to [-2, 2] (hippo.nplr('legs', N, B_clip=2.0)); the first N/2 modes, those
          with negative imaginary part.
    """
    if init == "lin":
        return -0.5 - 1j * np.pi * np.arange(half_state), np.ones(half_state, np.complex128)
    lam, _, b = hippo_legs_normal(2 * half_state)
    b = b.real + 1j * np.clip(b.imag, -2.0, 2.0)
    return lam[:half_state], b[:half_state]


def inverse_softplus(y):
    return y + jnp.log(-jnp.expm1(-y))


def step_sizes(log_dt, dt_transform: str):
    return jnp.exp(log_dt) if dt_transform == "exp" else jax.nn.softplus(log_dt)


def s4d_kernel(dt, A, B, C, length: int, disc: str = "zoh"):
    """The convolution kernel by a Vandermonde product: (channels, H, length), real.

    dt: (H,) step sizes; A: (H or 1, N/2) complex; B: (H or 1, N/2) complex; C: (channels, H, N/2)
    complex. Runs in the complex type of the inputs (complex64 from float32 parameters).
    """
    dtA = dt[:, None] * A  # (H, N/2)
    if disc == "zoh":
        coefficients = C * B * (jnp.exp(dtA) - 1.0) / A
        log_base = dtA
    else:  # bilinear
        coefficients = C * B * dt[:, None] / (1.0 - dtA / 2.0)
        log_base = jnp.log((1.0 + dtA / 2.0) / (1.0 - dtA / 2.0))
    powers = jnp.exp(log_base[..., None] * jnp.arange(length))  # (H, N/2, L)
    return 2.0 * jnp.einsum("chn,hnl->chl", coefficients, powers).real


def fft_convolution(u, kernel, bidirectional: bool):
    """y_t = sum_{s<=t} K0[t - s] u_s (+ sum_{s>t} K1[s - t - 1] u_s when bidirectional).

    u: (batch, L, H) real; kernel: (1 or 2, H, L). Both zero-padded to 2L, so the circular FFT
    convolution is the linear one (fftconv.py: rfft of n = l_kernel + L).
    """
    length = u.shape[1]
    k = kernel[0]
    if bidirectional:
        k = jnp.concatenate([k, kernel[1][:, ::-1]], axis=-1)  # [K0, flip(K1)]: length 2L
    k_f = jnp.fft.rfft(k, n=2 * length, axis=-1)  # (H, L + 1)
    u_f = jnp.fft.rfft(u, n=2 * length, axis=1)  # (B, L + 1, H)
    return jnp.fft.irfft(u_f * k_f.T, n=2 * length, axis=1)[:, :length]


def s4d_ssm(u, mask, kernel, D, bidirectional: bool):
    """The state space part of the layer: (K * u + D u), with padded u zeroed first.
    u: (batch, L, H); mask: (batch, L) bool; kernel (1 or 2, H, L); D: (H,)."""
    u = jnp.where(mask[..., None], u, 0.0)
    return fft_convolution(u, kernel, bidirectional) + u * D


class Mixer(nnx.Module):
    """S4D: kernel (Vandermonde) -> FFT convolution + D -> GELU -> tied dropout -> Linear + GLU."""

    def __init__(self, spec: MixerSpec, *, rngs: nnx.Rngs, d_state: int = 64, init: str = "lin",
                 disc: str = "zoh", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_transform: str = "exp", bidirectional: bool = True, shared_ssm: bool = False,
                 glu: bool = True, tie_dropout: bool = True):
        if init not in INITS:
            raise UserError(f"mixer.init must be one of {', '.join(INITS)}, got '{init}'")
        if disc not in ("zoh", "bilinear"):
            raise UserError(f"mixer.disc must be zoh or bilinear, got '{disc}'")
        if dt_transform not in ("exp", "softplus"):
            raise UserError(f"mixer.dt_transform must be exp or softplus, got '{dt_transform}'")
        if d_state < 2 or d_state % 2:
            raise UserError(f"mixer.d_state must be an even number >= 2, got {d_state}")
        if not 0.0 < dt_min <= dt_max:
            raise UserError(f"mixer.dt_min ({dt_min}) and dt_max ({dt_max}) need 0 < min <= max")
        h, n2 = spec.dim, d_state // 2
        self.disc, self.dt_transform, self.bidirectional = disc, dt_transform, bool(bidirectional)
        self.dtype = spec.dtype
        # ssm.py init_dt: log dt ~ U[log dt_min, log dt_max], then the inverse of the transform.
        log_dt = np.log(dt_min) + jax.random.uniform(rngs.params(), (h,)) * (
            np.log(dt_max) - np.log(dt_min))
        self.log_dt = nnx.Param(log_dt if dt_transform == "exp"
                                else inverse_softplus(jnp.exp(log_dt)))
        a, b = s4d_init(init, n2)
        copies = 1 if shared_ssm else h  # n_ssm: one (A, B) for every feature, or one each
        tile = lambda t: jnp.asarray(np.tile(t, (copies, 1)), jnp.float32)  # noqa: E731
        self.A_real = nnx.Param(tile(np.log(-a.real)))  # real_transform 'exp'
        self.A_imag = nnx.Param(tile(-a.imag))  # imag_transform 'none'
        self.B = nnx.Param(jnp.stack([tile(b.real), tile(b.imag)], axis=-1))
        # torch.randn(..., dtype=cfloat): real and imaginary parts N(0, 1/2) each.
        channels = 2 if self.bidirectional else 1
        self.C = nnx.Param(jax.random.normal(rngs.params(), (channels, h, n2, 2)) * np.sqrt(0.5))
        self.D = nnx.Param(jax.random.normal(rngs.params(), (h,)))
        self.dropout = TiedDropout(spec.attention_dropout, tie_dropout)
        self.output_linear = nnx.Linear(h, 2 * h if glu else h, dtype=spec.dtype, rngs=rngs)
        self.glu = bool(glu)

    def kernel(self, length: int, dtype):
        f = island(dtype)
        real = lambda p: p[...].astype(f)  # noqa: E731
        complex_ = lambda p: (p[...][..., 0] + 1j * p[...][..., 1]).astype(  # noqa: E731
            jnp.promote_types(f, jnp.complex64))
        A = -jnp.exp(real(self.A_real)) - 1j * real(self.A_imag)
        dt = step_sizes(real(self.log_dt), self.dt_transform)
        return s4d_kernel(dt, A, complex_(self.B), complex_(self.C), length, self.disc)

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        f = island(x.dtype)  # the kernel, the FFTs and the sums over the sequence
        y = s4d_ssm(x.astype(f), mask, self.kernel(x.shape[1], x.dtype), self.D[...].astype(f),
                    self.bidirectional)
        y = self.dropout(jax.nn.gelu(y, approximate=False).astype(x.dtype),
                         deterministic=deterministic, rngs=rngs)
        y = dense(self.output_linear, y)
        return (glu(y) if self.glu else y), mask
