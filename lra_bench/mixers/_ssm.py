"""What S4D and S5 share: the HiPPO-LegS diagonal initialisation, discretisation of a diagonal
continuous-time system, the diagonal linear recurrence as a parallel scan, and tied dropout.

Conventions. A diagonal system has state x (P complex modes), input u (H real features):

    x'(t) = Lambda x(t) + B u(t),    y(t) = C x(t) + D u(t)

discretised with step Delta to x_k = Lambda_bar x_{k-1} + B_bar u_k, y_k = C x_k + D u_k. With
conjugate symmetry only one mode of each conjugate pair is kept and y = 2 Re(C x) + D u.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def hippo_legs(n: int) -> np.ndarray:
    """The HiPPO-LegS matrix (Gu et al. 2020): A_nk = -sqrt(2n+1) sqrt(2k+1) for n > k, -(n+1)
    on the diagonal, 0 above. (state-spaces/s4 src/models/hippo/hippo.py transition('legs'),
    lindermanlab/S5 s5/ssm_init.py make_HiPPO.)"""
    p = np.sqrt(1.0 + 2.0 * np.arange(n))
    a = p[:, None] * p[None, :]
    return -(np.tril(a) - np.diag(np.arange(n)))


def hippo_legs_normal(n: int):
    """Diagonalise the normal part of HiPPO-LegS, in float64.

    S = A + p p^T with p_n = sqrt(n + 1/2) is -1/2 I plus a skew-symmetric matrix, so its
    eigenvalues are -1/2 + i w with w from `eigh(-i S)` (ascending). Returns (Lambda (n,) complex,
    V (n, n) unitary eigenvectors, B (n,) = V^* b with b_n = sqrt(2n + 1)): S = V diag(Lambda) V^*.
    As S5's make_DPLR_HiPPO and S4's hippo.nplr('legs') (which sorts by the imaginary part, the
    order eigh already gives, then keeps the first half: the negative imaginary parts).
    """
    a = hippo_legs(n)
    p = np.sqrt(np.arange(n) + 0.5)
    s = a + p[:, None] * p[None, :]
    real = np.mean(np.diagonal(s))
    imag, v = np.linalg.eigh(s * -1j)
    b = v.conj().T @ np.sqrt(2.0 * np.arange(n) + 1.0)
    return real + 1j * imag, v, b


def discretize_zoh(Lambda, B, step):
    """Zero-order hold: Lambda_bar = exp(Lambda Delta), B_bar = (Lambda_bar - 1) / Lambda * B.
    Lambda, step: (P,); B: (P, ...). (S5 s5/ssm.py discretize_zoh; S4D ssm.py disc='zoh'.)"""
    lambda_bar = jnp.exp(Lambda * step)
    scale = (lambda_bar - 1.0) / Lambda
    return lambda_bar, scale.reshape(scale.shape + (1,) * (B.ndim - scale.ndim)) * B


def discretize_bilinear(Lambda, B, step):
    """Bilinear (Tustin): Lambda_bar = (1 + Delta Lambda / 2) / (1 - Delta Lambda / 2),
    B_bar = Delta / (1 - Delta Lambda / 2) * B. (S5 discretize_bilinear; S4D disc='bilinear'.)"""
    inv = 1.0 / (1.0 - step * Lambda / 2.0)
    lambda_bar = inv * (1.0 + step * Lambda / 2.0)
    scale = inv * step
    return lambda_bar, scale.reshape(scale.shape + (1,) * (B.ndim - scale.ndim)) * B


DISCRETIZATIONS = {"zoh": discretize_zoh, "bilinear": discretize_bilinear}


def _combine(left, right):
    """The associative operator of x_k = a_k x_{k-1} + b_k: (a_i, b_i) then (a_j, b_j)."""
    a_i, b_i = left
    a_j, b_j = right
    return a_j * a_i, a_j * b_i + b_j


def diagonal_scan(lambda_bar, bu, *, reverse: bool = False):
    """x_k = lambda_bar * x_{k-1} + bu_k from x_{-1} = 0 (or x_{L} = 0 and k running down with
    `reverse`), all k at once by `jax.lax.associative_scan` (S5's parallel scan).
    lambda_bar: (P,); bu: (batch, L, P) complex -> x: (batch, L, P)."""
    a = jnp.broadcast_to(lambda_bar, bu.shape)
    _, x = jax.lax.associative_scan(_combine, (a, bu), reverse=reverse, axis=1)
    return x


class TiedDropout(nnx.Module):
    """Dropout with one mask per (example, feature), shared along the sequence: S4's
    tie_dropout (DropoutNd) and S5's nn.Dropout(broadcast_dims=[0]) on (L, H) inputs."""

    def __init__(self, rate: float, tied: bool = True):
        self.dropout = nnx.Dropout(rate, broadcast_dims=(1,) if tied else ())

    def __call__(self, x, *, deterministic: bool, rngs: nnx.Rngs | None):
        return self.dropout(x, deterministic=deterministic, rngs=rngs)
