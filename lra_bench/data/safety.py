"""The checks every loader applies to data it did not make (docs/security.md says why).

Archives and data folders come from mirrors, colleagues and old buckets, so they are read as if
crafted: a tar member may name a path outside the target folder, be a link or a device, or claim
(or decompress to) far more bytes than the data set has. `TarGuard` decides member by member
what may be read or written, skipping and counting what is unsafe and refusing what is absurdly
large before its bytes arrive. The caps are data, in `limits.toml`.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tomllib
from collections import Counter
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Callable

from lra_bench.errors import UserError
from lra_bench.sizes import format_bytes

LIMITS_FILE = Path(__file__).with_name("limits.toml")


@cache
def _all_limits() -> dict:
    with open(LIMITS_FILE, "rb") as f:
        return tomllib.load(f)


def limits(source: str) -> dict[str, int]:
    return dict(_all_limits()[source])


def unsafe_name(name: str) -> str | None:
    """Why a member name may not be used as a relative path, or None when it may."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "'..' in path"
    if "\0" in name:
        return "NUL in path"
    return None


def unsafe_member(m: tarfile.TarInfo) -> str | None:
    """Why a tar member must be skipped (links, devices, escaping names), or None."""
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hard link"
    if m.ischr() or m.isblk() or m.isfifo():
        return "device or fifo"
    if not m.isfile():
        return "special member"
    return unsafe_name(m.name)


def ensure_free(folder: Path, nbytes: int, what: str) -> None:
    """Refuse a write of nbytes into folder that would leave less than the reserve free."""
    reserve = _all_limits()["disk"]["min_free_bytes"]
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if nbytes + reserve > free:
        raise UserError(f"{what} needs {format_bytes(nbytes)} but {folder} has {format_bytes(free)} free (and "
                        f"{format_bytes(reserve)} must stay free); free some space or choose another "
                        "folder (--data-dir / --to)")


class TarGuard:
    """What of an untrusted tar archive may be read or written, member by member.

    `admit(m)` returns the member's name when its bytes may be used: directories silently and
    links, devices and escaping names with a count (in `skipped`) return None; a member whose
    declared size, or position in the decompressed stream, passes the source's caps ends the
    whole read with a UserError before its bytes are decompressed (tar headers carry sizes, and
    tarfile never yields more bytes than a header declares).
    """

    def __init__(self, archive: Path, source: str):
        self.archive, self.source = Path(archive), source
        self.limits = limits(source)
        self.skipped: Counter[str] = Counter()
        self.taken = 0

    def check_archive(self) -> int:
        size = self.archive.stat().st_size
        if size > self.limits["archive_bytes"]:
            raise UserError(f"{self.archive} is {format_bytes(size)}, more than any real {self.source} "
                            f"archive (cap {format_bytes(self.limits['archive_bytes'])}); is it the right file?")
        return size

    def _refuse(self, m: tarfile.TarInfo, what: str, cap: int) -> None:
        raise UserError(f"{self.archive}: member {m.name[:200]!r} {what} (cap {format_bytes(cap)} for "
                        f"{self.source}); refusing the archive as a decompression bomb or "
                        "damaged file")

    def admit(self, m: tarfile.TarInfo) -> str | None:
        end = m.offset_data + max(m.size, 0)
        if end > self.limits["expanded_bytes"]:
            self._refuse(m, f"would expand the archive past {format_bytes(end)}",
                         self.limits["expanded_bytes"])
        if m.isdir():
            return None
        reason = unsafe_member(m)
        if reason is not None:
            self.skipped[reason] += 1
            return None
        return m.name

    def take(self, m: tarfile.TarInfo) -> None:
        """Call before reading or writing a member's bytes."""
        if m.size > self.limits["member_bytes"]:
            self._refuse(m, f"declares {format_bytes(m.size)}", self.limits["member_bytes"])
        self.taken += m.size
        if self.taken > self.limits["taken_bytes"]:
            self._refuse(m, f"brings what is read to {format_bytes(self.taken)}", self.limits["taken_bytes"])

    def report(self, log: Callable[[str], None]) -> dict[str, int]:
        """The skipped counts (for the manifest), logged once when there are any."""
        if self.skipped:
            log(f"warning: {self.archive.name}: skipped "
                + ", ".join(f"{n} {k}" for k, n in sorted(self.skipped.items()))
                + " (never extracted or read; see docs/security.md)")
        return dict(sorted(self.skipped.items()))


def inside(root: Path, rel: str) -> Path | None:
    """root/rel when it names a regular file below root reached without any symlink (real path
    equal to the lexical one), else None. `root` itself may sit behind symlinks."""
    if unsafe_name(rel) is not None:
        return None
    base = os.path.realpath(root)
    lexical = os.path.normpath(os.path.join(base, rel))
    if os.path.realpath(lexical) != lexical or not lexical.startswith(base + os.sep):
        return None
    return Path(lexical)


def data_filter_ok(m: tarfile.TarInfo, dest: Path) -> bool:
    """Python's own extraction rule (`filter="data"`, PEP 706) agrees the member is safe."""
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None:  # Python builds before the filters were backported
        return True
    try:
        data_filter(m, str(dest))
        return True
    except tarfile.FilterError:
        return False
