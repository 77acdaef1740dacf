"""The float32 islands of the mixed-precision rule (see `lra_bench.mixers`)."""

from __future__ import annotations

import jax.numpy as jnp


def island(dtype):
    """The dtype a numerically delicate step runs in: at least float32, float64 stays float64."""
    return jnp.promote_types(dtype, jnp.float32)
