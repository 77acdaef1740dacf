"""S5, the simplified state space layer (Smith, Warrington & Linderman 2023, "Simplified State
Space Layers for Sequence Modeling"): one MIMO diagonal system over all H features, run as a
parallel scan.

Reference: lindermanlab/S5 @ 3c18fdb: s5/ssm.py (S5SSM, discretize_zoh / _bilinear, apply_ssm),
s5/ssm_init.py (make_DPLR_HiPPO, init_VinvB, init_CV, trunc_standard_normal, init_log_steps),
s5/train.py:76-90 (the block-diagonal initialisation) and s5/layers.py (SequenceLayer's
activations). With P the state size and J blocks:

    Lambda = J copies of the first P/(2J) eigenvalues of HiPPO-LegS's normal part (P/J each
             without conjugate symmetry), V = blockdiag(V_b, ..., V_b) their eigenvectors
    B_tilde = V^{-1} B, B ~ lecun_normal (P, H);   C_tilde = C V, C ~ C_init (H, P)
    Lambda_bar, B_bar = ZOH (or bilinear) with Delta = exp(log_step) per mode
    x_k = Lambda_bar x_{k-1} + B_bar u_k  (jax.lax.associative_scan over k)
    y_k = 2 Re(C_tilde x_k) (conj_sym; Re(...) without) + D u_k

`bidirectional` runs a second scan backward over the same (Lambda_bar, B_bar) and reads it with
a second C. The layer's activation (s5/layers.py) follows: gelu, half_glu1 (x sigmoid(W gelu(x))
on gelu(x)), half_glu2 (x sigmoid(W gelu(x)) on the SSM output x) or full_glu (W1 g sigmoid(W2 g),
g = gelu(x)), the first dropout (tied along the sequence) inside; the block's dropout is the
second. Padding: padded inputs are zeroed before the scans, so no pad reaches a real position's
state in either direction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lra_bench.errors import UserError
from lra_bench.mixers import MixerSpec
from lra_bench.mixers._precision import island
from lra_bench.mixers._projections import dense, sigmoid
from lra_bench.mixers._ssm import DISCRETIZATIONS, TiedDropout, diagonal_scan, hippo_legs_normal

ACTIVATIONS = ("gelu", "half_glu1", "half_glu2", "full_glu")
C_INITS = ("trunc_standard_normal", "lecun_normal", "complex_normal")


def block_diagonal_init(state_size: int, blocks: int, conj_sym: bool):
    """(Lambda (P',), V (P, P'), Vinv (P', P)) with P' = P/2 under conjugate symmetry, float64
    (s5/train.py:76-90)."""
    block = state_size // blocks
    lam, v, _ = hippo_legs_normal(block)
    keep = block // 2 if conj_sym else block
    lam, v = lam[:keep], v[:, :keep]
    eye = np.eye(blocks)  # kron(I_J, V_b) = blockdiag(V_b, ..., V_b)
    return np.tile(lam, blocks), np.kron(eye, v), np.kron(eye, v.conj().T)


def real_matmul(x, w, dtype):
    """x @ w for real x (..., n) and real w (n, m), in `dtype` with a float32 accumulator."""
    return jnp.matmul(x.astype(dtype), w.astype(dtype),
                      preferred_element_type=jnp.promote_types(dtype, jnp.float32))


def s5_ssm(u, mask, Lambda_bar, B_bar, C, D, *, conj_sym: bool, bidirectional: bool,
           dtype=None):
    """The SSM of the layer (s5/ssm.py apply_ssm + D u), batched.

    u: (batch, L, H) real; mask: (batch, L) bool; Lambda_bar: (P',) complex; B_bar: (P', H)
    complex; C: (directions, H, P') complex; D: (H,). Padded u is zeroed first.
    The projections into and out of the state are real matrix products (real and imaginary
    parts apart) in `dtype` (default: u's), like any projection under the mixed-precision rule;
    the scan, the long recurrence, runs in complex64 at least.
    """
    dtype = dtype or u.dtype
    u = jnp.where(mask[..., None], u, 0.0)
    bu = real_matmul(u, B_bar.real.T, dtype) + 1j * real_matmul(u, B_bar.imag.T, dtype)
    bu = bu.astype(Lambda_bar.dtype)

    def read(c, x):  # Re(c x) = Re(c) Re(x) - Im(c) Im(x)
        return real_matmul(x.real, c.real.T, dtype) - real_matmul(x.imag, c.imag.T, dtype)

    y = read(C[0], diagonal_scan(Lambda_bar, bu))
    if bidirectional:
        y = y + read(C[1], diagonal_scan(Lambda_bar, bu, reverse=True))
    return (2.0 if conj_sym else 1.0) * y + u * D


class Mixer(nnx.Module):
    """S5 SSM -> the layer's activation (gelu / GLU variants) with its first (tied) dropout."""

    def __init__(self, spec: MixerSpec, *, rngs: nnx.Rngs, state_size: int = 256,
                 blocks: int = 8, conj_sym: bool = True, bidirectional: bool = True,
                 discretization: str = "zoh", C_init: str = "lecun_normal",
                 dt_min: float = 0.001, dt_max: float = 0.1, clip_eigs: bool = False,
                 activation: str = "half_glu1", tie_dropout: bool = True):
        if discretization not in DISCRETIZATIONS:
            raise UserError(f"mixer.discretization must be zoh or bilinear, got '{discretization}'")
        if activation not in ACTIVATIONS:
            raise UserError(f"mixer.activation must be one of {', '.join(ACTIVATIONS)}, "
                            f"got '{activation}'")
        if C_init not in C_INITS:
            raise UserError(f"mixer.C_init must be one of {', '.join(C_INITS)}, got '{C_init}'")
        block = state_size // blocks if blocks > 0 else 0
        if blocks < 1 or state_size % blocks or block < 2 or (conj_sym and block % 2):
            raise UserError(f"mixer.state_size ({state_size}) must split into mixer.blocks "
                            f"({blocks}) blocks of an even size >= 2")
        if not 0.0 < dt_min <= dt_max:
            raise UserError(f"mixer.dt_min ({dt_min}) and dt_max ({dt_max}) need 0 < min <= max")
        h = spec.dim
        self.conj_sym, self.bidirectional = bool(conj_sym), bool(bidirectional)
        self.discretization, self.clip_eigs, self.activation = discretization, clip_eigs, activation
        lam, v, vinv = block_diagonal_init(state_size, blocks, conj_sym)
        p = lam.shape[0]
        self.Lambda_re = nnx.Param(jnp.asarray(lam.real, jnp.float32))
        self.Lambda_im = nnx.Param(jnp.asarray(lam.imag, jnp.float32))
        lecun = jax.nn.initializers.lecun_normal()
        b = lecun(rngs.params(), (state_size, h))  # init_VinvB
        b_tilde = jnp.asarray(vinv, jnp.complex64) @ b.astype(jnp.complex64)
        self.B = nnx.Param(jnp.stack([b_tilde.real, b_tilde.imag], axis=-1))
        directions = 2 if self.bidirectional else 1
        if C_init == "complex_normal":  # sampled directly, not multiplied by V
            c = jax.random.normal(rngs.params(), (directions, h, p, 2)) * np.sqrt(0.5)
        else:
            # lecun_normal on (H, P, 2): fan_in = P * H (jax counts H as receptive field);
            # trunc_standard_normal samples each row as (1, P, 2): fan_in = P.
            c = lecun(rngs.params(), (directions, h, state_size, 2))
            if C_init == "trunc_standard_normal":
                c = c * np.sqrt(h)
            c = (c[..., 0] + 1j * c[..., 1]) @ jnp.asarray(v, jnp.complex64)  # init_CV
            c = jnp.stack([c.real, c.imag], axis=-1)
        self.C = nnx.Param(c)
        self.D = nnx.Param(jax.random.normal(rngs.params(), (h,)))
        self.log_step = nnx.Param(np.log(dt_min) + jax.random.uniform(rngs.params(), (p, 1)) * (
            np.log(dt_max) - np.log(dt_min)))  # init_log_steps
        self.dropout = TiedDropout(spec.attention_dropout, tie_dropout)
        kw = dict(dtype=spec.dtype, rngs=rngs)
        self.out1 = nnx.Linear(h, h, **kw) if activation == "full_glu" else None
        self.out2 = nnx.Linear(h, h, **kw) if "glu" in activation else None

    def discretized(self, dtype):
        """(Lambda_bar, B_bar, C_tilde) in the island's complex type."""
        f = island(dtype)
        c_type = jnp.promote_types(f, jnp.complex64)
        complex_ = lambda p: (p[...][..., 0] + 1j * p[...][..., 1]).astype(c_type)  # noqa: E731
        re = self.Lambda_re[...].astype(f)
        if self.clip_eigs:  # the left half-plane condition
            re = jnp.minimum(re, -1e-4)
        Lambda = (re + 1j * self.Lambda_im[...].astype(f)).astype(c_type)
        step = jnp.exp(self.log_step[...][:, 0].astype(f))
        Lambda_bar, B_bar = DISCRETIZATIONS[self.discretization](Lambda, complex_(self.B), step)
        return Lambda_bar, B_bar, complex_(self.C)

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        f = island(x.dtype)  # the scan and its sums run in complex64 at least
        Lambda_bar, B_bar, C = self.discretized(x.dtype)
        y = s5_ssm(x.astype(f), mask, Lambda_bar, B_bar, C, self.D[...].astype(f),
                   conj_sym=self.conj_sym, bidirectional=self.bidirectional,
                   dtype=x.dtype).astype(x.dtype)
        drop = lambda t: self.dropout(t, deterministic=deterministic, rngs=rngs)  # noqa: E731
        g = drop(jax.nn.gelu(y))  # flax nn.gelu: the tanh form
        if self.activation == "gelu":
            return g, mask
        gate = sigmoid(dense(self.out2, g))
        if self.activation == "full_glu":
            return dense(self.out1, g) * gate, mask
        return (g if self.activation == "half_glu1" else y) * gate, mask  # half_glu1 | 2
