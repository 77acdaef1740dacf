"""`lra data download`: fetch the official LRA release archive and extract what the tasks read.

The archive (`lra_release.gz`, a gzipped tar of about 7.7 GB, URL from the LRA README) is
downloaded to `<to>/lra_release.gz.part` and renamed once its size matches what the server
announced. An interrupted transfer resumes from the bytes already on disk (HTTP Range), within
the same call (a few retries) and across calls. Extraction streams through the archive once and
writes only the members below into `<to>/lra_release/`, through a temporary folder renamed into
place, so a failed extraction leaves nothing half-written.

The archive is untrusted (docs/security.md): HTTPS only unless --insecure (redirects too); the
transfer stops at the size cap in limits.toml; its SHA-256 is computed (and checked against
--sha256 when given: no official hash is published) before extraction and recorded with its size
in `extracted.json`; members that are links, devices or name paths outside the release are
skipped and counted, and a member or stream past the caps refuses the archive.
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
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import Callable

from lra_bench.data.cache import sha256_file
from lra_bench.data.safety import TarGuard, data_filter_ok, ensure_free, limits
from lra_bench.sizes import format_bytes
from lra_bench.errors import UserError
from lra_bench.paths import made_dirs
from lra_bench.progress import Display

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


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); 'bytes */1000' -> (None, 1000)."""
    m = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def check_url(url: str, insecure: bool = False) -> None:
    """HTTPS only; plain http with `insecure` (its bytes can be swapped on the way)."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "https" or (scheme == "http" and insecure):
        return
    if scheme == "http":
        raise UserError(f"{url} is plain http, so anyone on the way can change the archive; use "
                        "an https URL, or add --insecure (and --sha256 HEX) if you trust the "
                        "network")
    raise UserError(f"{url}: only https:// URLs are downloaded (put a local archive at "
                    f"<--to>/{ARCHIVE} instead)")


class _SameSchemeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to URLs that `check_url` accepts: no silent https -> http."""

    def __init__(self, insecure: bool):
        self.insecure = insecure

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_url(newurl, self.insecure)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
             socket.timeout)


def fetch(url: str, dest: Path, *, retries: int = 5, timeout: float = 60,
          log: Log = lambda m: None, insecure: bool = False,
          max_bytes: int | None = None) -> int:
    """Download url to dest, resuming `dest.part`; returns the verified size in bytes. More than
    max_bytes (announced or received) ends the download and deletes the part."""
    check_url(url, insecure)
    opener = urllib.request.build_opener(_SameSchemeRedirects(insecure))
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    max_bytes = limits("lra_release")["archive_bytes"] if max_bytes is None else max_bytes
    with made_dirs(dest.parent):  # a download that gets nothing leaves no empty folder
        return _fetch(url, dest, part, retries, timeout, log, opener, max_bytes)


def _fetch(url: str, dest: Path, part: Path, retries: int, timeout: float, log: Log, opener,
           max_bytes: int) -> int:
    def too_big(n: int) -> UserError:
        part.unlink(missing_ok=True)
        return UserError(f"{url} sends {format_bytes(n)} or more, more than the LRA release can be (cap "
                         f"{format_bytes(max_bytes)}); is it the right URL?")

    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "lra-bench", **({"Range": f"bytes={have}-"} if have else {})}
        total = None
        progress = None
        try:
            with opener.open(urllib.request.Request(url, headers=headers),
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
                if total is not None and total > max_bytes:
                    raise too_big(total)
                ensure_free(dest.parent, (total or 0) - have, f"downloading {url}")
                if have:
                    log(f"resuming {dest.name} at {have / 2**20:.1f} MiB")
                progress = Display(dest.name, total, done=have, in_bytes=True)
                with open(part, mode) as f:
                    while chunk := resp.read(CHUNK):
                        if progress.done + len(chunk) > max_bytes:
                            f.close()
                            raise too_big(progress.done + len(chunk))
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
    def __init__(self, f, progress: Display):
        self.f, self.progress = f, progress

    def read(self, n=-1):
        b = self.f.read(n)
        self.progress.advance(len(b))
        return b


def read_marker(out: Path) -> dict | None:
    """extracted.json of a release folder when it is well formed, else None (extract again)."""
    try:
        done = json.loads((Path(out) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    ok = (isinstance(done, dict) and isinstance(done.get("archive_bytes"), int)
          and isinstance(done.get("include"), list)
          and all(isinstance(x, str) for x in done["include"])
          and isinstance(done.get("files"), dict)
          and all(isinstance(k, str) and isinstance(v, int) for k, v in done["files"].items()))
    return done if ok else None


def extract(archive: Path, out: Path, include: tuple[str, ...] = NEEDED,
            log: Log = lambda m: None, record: dict | None = None) -> dict:
    """Stream through the archive once, writing the wanted members into `out` atomically;
    `record` (the archive's hash, URL) joins the marker."""
    archive, out = Path(archive), Path(out)
    guard = TarGuard(archive, "lra_release")
    stamp = {"archive_bytes": guard.check_archive(), "include": sorted(include)}
    done = read_marker(out)
    same_hash = record is None or done is None or done.get("archive_sha256") == record.get(
        "archive_sha256")
    if done is not None and {k: done.get(k) for k in stamp} == stamp and same_hash:
        log(f"{out} is already extracted")
        return done
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    progress = Display(f"extracting {archive.name}", stamp["archive_bytes"], in_bytes=True)
    counts: dict[str, int] = {}
    try:
        with open(archive, "rb") as raw, tarfile.open(
                fileobj=_CountingReader(raw, progress), mode="r|*") as tar:
            for m in tar:
                name = guard.admit(m)
                rel = release_path(name, include) if name is not None else None
                if rel is None:
                    continue
                if not data_filter_ok(m, tmp):  # Python's `filter="data"` rule agrees, too
                    guard.skipped["refused by tarfile's data filter"] += 1
                    continue
                guard.take(m)
                ensure_free(tmp, m.size, f"extracting {m.name[:200]}")
                target = tmp / rel
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(m) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
                except (FileExistsError, NotADirectoryError, IsADirectoryError):
                    guard.skipped["path clash with another member"] += 1
                    continue
                top = "/".join(rel.split("/")[:2]) if rel.startswith("pathfinder") else rel.split("/")[0]
                counts[top] = counts.get(top, 0) + 1
        if not counts:
            raise UserError(f"{archive} holds none of {', '.join(include)}; is it the LRA release?")
        result = {**stamp, **(record or {}), "files": counts,
                  "skipped_members": guard.report(log)}
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


def archive_record(archive: Path, url: str, sha256: str | None, log: Log) -> dict:
    """The archive's size and SHA-256, checked against `sha256` when one is given."""
    log(f"computing the SHA-256 of {archive.name} ({format_bytes(archive.stat().st_size)})")
    digest = sha256_file(archive)
    if sha256 is not None and digest != sha256.lower():
        raise UserError(f"{archive} has SHA-256 {digest}, not the {sha256} given with --sha256; "
                        "it is not the expected archive: delete it and download again")
    return {"url": url, "archive_sha256": digest,
            "sha256_checked": sha256 is not None,
            "sha256_note": "checked against --sha256" if sha256 is not None else
                           "computed here; the LRA release publishes no official SHA-256"}


def download(to: Path, url: str = OFFICIAL_URL, include: tuple[str, ...] = (),
             keep_archive: bool = True, retries: int = 5,
             log: Log = lambda m: print(m, file=sys.stderr, flush=True),
             insecure: bool = False, sha256: str | None = None) -> dict:
    """Fetch (or reuse) the archive under `to`, check it, then extract what the tasks need."""
    to = Path(to)
    archive = to / ARCHIVE
    release = to / RELEASE
    wanted = tuple(dict.fromkeys(NEEDED + tuple(include)))
    check_url(url, insecure)
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise UserError(f"--sha256 {sha256!r}: expected 64 hex digits")
    sha256 = sha256.lower() if sha256 is not None else None
    done = read_marker(release)
    if (done is not None and not archive.exists() and set(wanted) <= set(done["include"])
            and sha256 in (None, done.get("archive_sha256"))):
        log(f"{release} is already extracted")
        return done
    if archive.exists():
        log(f"using {archive} ({archive.stat().st_size / 2**20:.1f} MiB)")
    else:
        log(f"downloading {url} to {archive}")
        fetch(url, archive, retries=retries, log=log, insecure=insecure)
    stamp = {"archive_bytes": TarGuard(archive, "lra_release").check_archive(),
             "include": sorted(wanted)}
    if (done is not None and {k: done.get(k) for k in stamp} == stamp
            and sha256 in (None, done.get("archive_sha256"))):
        log(f"{release} is already extracted")
        result = done
    else:
        result = extract(archive, release, wanted, log, archive_record(archive, url, sha256, log))
    if not keep_archive:
        archive.unlink()
    return result


def download_original(original, to: Path, url: str | None = None, retries: int = 5,
                      log: Log = lambda m: print(m, file=sys.stderr, flush=True),
                      insecure: bool = False) -> Path:
    """Fetch (or reuse) a task's original archive (`lra_bench.data.originals.Original`) into
    `to`, resumable; it must have the official SHA-256 (also from a mirror given as `url`)."""
    dest = Path(to) / original.file
    url = url or original.url
    check_url(url, insecure)
    with made_dirs(dest.parent):  # a refused archive leaves no folder behind
        if not dest.exists():
            log(f"downloading {url} to {dest}")
            fetch(url, dest, retries=retries, log=log, insecure=insecure,
                  max_bytes=limits(original.limits)["archive_bytes"])
        else:
            log(f"checking {dest}")
        digest = sha256_file(dest)
        if digest != original.sha256:
            dest.unlink()
            raise UserError(f"{dest} had SHA-256 {digest[:16]}..., not the official "
                            f"{original.sha256[:16]}...; it was deleted: run the command again, "
                            "or pass another mirror with --url")
    log(f"{dest} is the official {original.file} ({dest.stat().st_size / 1e6:.1f} MB, SHA-256 "
        "checked)")
    return dest
