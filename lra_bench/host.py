"""Host (CPU-side) process settings that make step times honest on CPU.

`tune_malloc`: XLA on CPU allocates each step's temporary buffers afresh. glibc serves every
block above its mmap threshold (32 MiB at most) with a new mmap, so a long sequence's buffers are
page-faulted in again on every step: at 8K tokens that made the linear-time mixers 1.2-1.4x
slower than their PyTorch references (docs/kernels.md). Raising the mmap and trim thresholds to
1 GiB keeps those blocks in the heap, reused from step to step. The cost is that up to 1 GiB of
freed heap may stay mapped. Linux/glibc only; elsewhere, or with LRA_MALLOC_TUNING=0, a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
THRESHOLD = 1 << 30


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True if it took effect."""
    if os.environ.get("LRA_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, THRESHOLD))
