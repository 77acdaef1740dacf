"""Memory sizes as users write them (`--memory-limit 16GiB`) and as every command prints them:
`format_bytes` is the one way a size is shown (a preflight estimate, a run's or a sweep point's
peak, a cache on disk), in the unit that keeps the figure between 1 and 1024 (1.37 MiB, not
0.00137 GiB). Imports nothing heavy: the sweep's parent and `lra list` use it."""

from __future__ import annotations

import math
import re

from lra_bench.errors import UserError

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
          "t": 1e12, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
BINARY = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def parse_bytes(text: str) -> int:
    """'512MB', '1.5GiB', '2g', '1000000' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise UserError(f"cannot read memory size '{text}'; write e.g. 512MB, 16GiB or 2e9")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def unit_for(n: float) -> tuple[str, int]:
    """The binary unit that shows `n` bytes as a figure of at least 1: ('MiB', 2**20)."""
    for unit, size in BINARY:
        if abs(n) >= size:
            return unit, size
    return "B", 1


def format_bytes(n: float | None) -> str:
    """1436549 -> '1.37 MiB'; None or NaN (not measured) -> 'unknown'."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "unknown"
    unit, size = unit_for(n)
    return f"{int(n)} B" if size == 1 else f"{n / size:.2f} {unit}"
