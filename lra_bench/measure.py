"""What a compiled step costs: peak memory, FLOPs, and where each figure comes from."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import jax


def xla_cost_flops(compiled) -> float | None:
    """FLOPs of one call from XLA's cost analysis (a dict, or a list of one, by jax version): a
    loop's body counted once."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def cost_flops(compiled) -> float | None:
    """FLOPs of one call: XLA's cost analysis plus the loop iterations it leaves out (each while
    loop's body counted trip-count times over the compiled HLO, `lra_bench.hlo_flops`)."""
    flops = xla_cost_flops(compiled)
    if flops is None:
        return None
    try:
        from lra_bench import hlo_flops  # small, pure text parsing

        repeated, once = hlo_flops.loop_flops(compiled.as_text())
    except Exception:  # no HLO text on this backend: XLA's figure as it is
        return flops
    if flops >= 0.9 * repeated:  # an XLA that already counts loops in full: nothing to add
        return flops
    return flops + max(0.0, repeated - once)


def compiled_memory_estimate(compiled) -> int | None:
    """XLA's own peak estimate for one call: temporaries + arguments + outputs - aliased
    (donated) buffers."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
               - m.alias_size_in_bytes)


def device_peak_bytes() -> int | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return int(stats["peak_bytes_in_use"]) if "peak_bytes_in_use" in stats else None


def peak_memory(compiled) -> tuple[int | None, str]:
    """(bytes, source): the device's measured peak where it keeps one, else XLA's estimate."""
    measured = device_peak_bytes()
    if measured is not None:
        return measured, "device peak_bytes_in_use"
    return compiled_memory_estimate(compiled), "xla compiled estimate"


def device_info() -> dict:
    d = jax.devices()[0]
    return {
        "device_kind": d.device_kind,
        "platform": d.platform,
        "device_count": jax.device_count(),
        "host": platform.node(),
    }


def git_commit() -> str:
    """The short commit of the package's checkout, "-dirty" when tracked files differ from it (a
    run from an edited tree, or a copy whose git metadata lags its files, as on a machine the
    tree was copied to), "unknown" outside git."""
    here = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                              cwd=here).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        if commit and git("status", "--porcelain", "--untracked-files=no", "--", "."):
            commit += "-dirty"
        return commit or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
