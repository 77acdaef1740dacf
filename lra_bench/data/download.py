"""`lra data download`: fetch the official LRA release archive and extract what the tasks read.

The archive (`lra_release.gz`, a gzipped tar of about 7.7 GB, URL from the LRA README) is
downloaded to `<to>/lra_release.gz.part` and renamed once its size matches what the server
announced. An interrupted transfer resumes from the bytes already on disk (HTTP Range), within
the same call (a few retries) and across calls. Extraction streams through the archive once and
writes only the members below into `<to>/lra_release/`, through a temporary folder renamed into
place, so a failed extraction leaves nothing half-written.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Callable

from lra_bench.errors import UserError
from lra_bench.paths import made_dirs

OFFICIAL_URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
ARCHIVE = "lra_release.gz"
RELEASE = "lra_release"
MARKER = "extracted.json"
# Top-level folders of the release (however deeply the archive nests them)...
RELEASE_ROOTS = ("listops-1000", "tsv_data", "pathfinder32", "pathfinder64", "pathfinder128",
                 "pathfinder256")
# ...and the parts the tasks read: ListOps, the AAN pairs, Pathfinder and Path-X at the LRA
# difficulty. `--include` adds others (e.g. pathfinder32/curv_baseline/).
NEEDED = ("listops-1000/", "tsv_data/new_aan_pairs.", "pathfinder32/curv_contour_length_14/",
          "pathfinder128/curv_contour_length_14/")
CHUNK = 1 << 20
BACKOFF_S = 2.0  # wait before retry k: k * BACKOFF_S seconds
Log = Callable[[str], None]


class ByteProgress:
    """A rich bar on a terminal, a log line every 10% otherwise."""

    def __init__(self, label: str, total: int | None, done: int = 0, log: Log | None = None):
        from rich.console import Console

        self.label, self.total, self.done, self.log = label, total, done, log
        self._bar = None
        self._next_pct = 10
        console = Console(stderr=True)
        if console.is_terminal:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TimeRemainingColumn,
                                       TransferSpeedColumn)

            self._bar = Progress("[bold]{task.description}", BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), console=console)
            self._task = self._bar.add_task(label, total=total, completed=done)
            self._bar.start()

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        elif self.total and self.log and 100 * self.done >= self._next_pct * self.total:
            self.log(f"{self.label}: {100 * self.done // self.total}% "
                     f"({self.done / 2**20:.1f} of {self.total / 2**20:.1f} MiB)")
            self._next_pct = 100 * self.done // self.total // 10 * 10 + 10

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); 'bytes */1000' -> (None, 1000)."""
    m = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
             socket.timeout)


def fetch(url: str, dest: Path, *, retries: int = 5, timeout: float = 60,
          log: Log = lambda m: None) -> int:
    """Download url to dest, resuming `dest.part`; returns the verified size in bytes."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    with made_dirs(dest.parent):  # a download that gets nothing leaves no empty folder
        return _fetch(url, dest, part, retries, timeout, log)


def _fetch(url: str, dest: Path, part: Path, retries: int, timeout: float, log: Log) -> int:
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "lra-bench", **({"Range": f"bytes={have}-"} if have else {})}
        total = None
        progress = None
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                        timeout=timeout) as resp:
                if resp.status == 206:
                    start, total = _content_range(resp.headers.get("Content-Range"))
                    if start != have:  # a server that resumes elsewhere: start over
                        part.unlink()
                        continue
                    mode = "ab"
                else:  # 200: the server ignored the Range header, or there was none
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    have, mode = 0, "wb"
                if have:
                    log(f"resuming {dest.name} at {have / 2**20:.1f} MiB")
                progress = ByteProgress(dest.name, total, have, log)
                with open(part, mode) as f:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        progress.advance(len(chunk))
            size = part.stat().st_size
            if total is not None and size != total:
                raise http.client.IncompleteRead(b"", total - size)
            if total is None:
                log(f"warning: the server did not announce a size; {size} bytes were received")
            break
        except urllib.error.HTTPError as e:
            if e.code == 416:  # nothing left to send: the part may be the whole file
                _, total = _content_range(e.headers.get("Content-Range"))
                if total is not None and have == total:
                    break
                part.unlink(missing_ok=True)
                failures += 1
            elif e.code in (401, 403, 404):
                raise UserError(f"{url}: HTTP {e.code} {e.reason}; the official bucket has refused "
                                "access before: pass a mirror with --url, or put the archive at "
                                f"{dest}") from None
            else:
                failures += 1
            error = f"HTTP {e.code}"
        except TRANSIENT as e:
            failures += 1
            error = f"{type(e).__name__}: {e}"
        finally:
            if progress is not None:
                progress.close()
        if failures > retries:
            got = part.stat().st_size if part.exists() else 0
            kept = (f"{got} bytes are kept in {part}: run the same command to resume" if got
                    else "check the network (or --url), then run the same command")
            raise UserError(f"downloading {url} failed {failures} times (last: {error}); {kept}")
        log(f"transfer interrupted ({error}); retrying ({failures}/{retries})")
        time.sleep(BACKOFF_S * failures)
    part.rename(dest)
    return dest.stat().st_size


def release_path(member: str, include: tuple[str, ...]) -> str | None:
    """The member's path relative to the release root if it is wanted, else None."""
    parts = [p for p in member.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    for i, p in enumerate(parts):
        if p in RELEASE_ROOTS:
            rel = "/".join(parts[i:])
            return rel if any(rel.startswith(prefix) for prefix in include) else None
    return None


class _CountingReader:
    def __init__(self, f, progress: ByteProgress):
        self.f, self.progress = f, progress

    def read(self, n=-1):
        b = self.f.read(n)
        self.progress.advance(len(b))
        return b


def extract(archive: Path, out: Path, include: tuple[str, ...] = NEEDED,
            log: Log = lambda m: None) -> dict:
    """Stream through the archive once, writing the wanted members into `out` atomically."""
    archive, out = Path(archive), Path(out)
    stamp = {"archive_bytes": archive.stat().st_size, "include": sorted(include)}
    marker = out / MARKER
    if marker.exists():
        try:
            done = json.loads(marker.read_text())
            if {k: done.get(k) for k in stamp} == stamp:
                log(f"{out} is already extracted")
                return done
        except (OSError, json.JSONDecodeError):
            pass
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    progress = ByteProgress(f"extracting {archive.name}", stamp["archive_bytes"], 0, log)
    counts: dict[str, int] = {}
    try:
        with open(archive, "rb") as raw, tarfile.open(
                fileobj=_CountingReader(raw, progress), mode="r|*") as tar:
            for m in tar:
                rel = release_path(m.name, include) if m.isfile() else None
                if rel is None:
                    continue
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                top = "/".join(rel.split("/")[:2]) if rel.startswith("pathfinder") else rel.split("/")[0]
                counts[top] = counts.get(top, 0) + 1
        if not counts:
            raise UserError(f"{archive} holds none of {', '.join(include)}; is it the LRA release?")
        result = {**stamp, "files": counts}
        (tmp / MARKER).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
        return result
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise UserError(f"{archive} is damaged ({type(e).__name__}: {e}); delete it and run "
                        "`lra data download` again") from None
    finally:
        progress.close()
        shutil.rmtree(tmp, ignore_errors=True)


def download(to: Path, url: str = OFFICIAL_URL, include: tuple[str, ...] = (),
             keep_archive: bool = True, retries: int = 5,
             log: Log = lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """Fetch (or reuse) the archive under `to`, then extract what the tasks need."""
    to = Path(to)
    archive = to / ARCHIVE
    release = to / RELEASE
    wanted = tuple(dict.fromkeys(NEEDED + tuple(include)))
    marker = release / MARKER
    if marker.exists() and not archive.exists():
        done = json.loads(marker.read_text())
        if set(wanted) <= set(done.get("include", ())):
            log(f"{release} is already extracted")
            return done
    if archive.exists():
        log(f"using {archive} ({archive.stat().st_size / 2**20:.1f} MiB)")
    else:
        log(f"downloading {url} to {archive}")
        fetch(url, archive, retries=retries, log=log)
    result = extract(archive, release, wanted, log)
    if not keep_archive:
        archive.unlink()
    return result
