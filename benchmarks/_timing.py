"""The timing loop shared by the benchmarks: compile once, warm up, time repeated calls."""

from __future__ import annotations

import platform
import statistics
import sys
import time

import jax


def compile_timed(fn, *args):
    """(compiled, seconds to lower and compile) for a jitted fn at these arguments."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def time_calls(compiled, args, repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of `repeats` calls after `warmup` untimed ones, each waited for."""
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return times


def summary_ms(times: list[float]) -> dict:
    return {"median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times)}


def versions() -> dict:
    import flax
    import jaxlib
    return {"python": sys.version.split()[0], "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "flax": flax.__version__,
            "machine": platform.machine()}
