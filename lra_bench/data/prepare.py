"""`lra data prepare`: turn a source into a prepared cache, and name the folder each
configuration's cache (and generated source) lives in. What a run reads, and when it is made, is
`lra_bench.data.find`.

A loader module `lra_bench.data.<loader>` provides:

    SOURCE_HINT                   where its source comes from, for error messages
    default_source(data, data_dir) -> str      the source used when --source is not given
    fingerprint(source, data) -> dict          identifies the source (UserError if it is missing)
    build(source, data, writer, log) -> dict   writes the three splits into a CacheWriter and
                                               returns manifest extras ("protocol", "skipped", ...)
    generate_source(data, out, log)            optional: writes a source into `out` (--generate)
    GENERATOR_KEYS                             the [data] keys the generated source depends on
    GENERATOR_VERSION                          optional: bumped when the generator's output
                                               changes; older generated sources and caches
                                               are then made again, never reused

Preparing is idempotent: when the cache's settings and source fingerprint match, nothing is done.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lra_bench import interruption
from lra_bench.config import LOADERS, check_generated_length, resolve_data
from lra_bench.data.cache import CacheWriter, DamagedCache, prep_config, read_manifest, sha256_file
from lra_bench.errors import UserError
from lra_bench.paths import folder_name, made_dirs

PREPARED = "prepared"
Log = Callable[[str], None]


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def loader_module(name: str):
    if name not in LOADERS:
        raise UserError(f"unknown data loader '{name}'; choose one of: {', '.join(LOADERS)}")
    return importlib.import_module(f"lra_bench.data.{name}")


def cache_path(data_dir: Path, task: str, variant: str) -> Path:
    return Path(data_dir) / PREPARED / folder_name(task, "task") / folder_name(variant, "data.variant")


def cache_name(task: str, preset: str, data: dict[str, Any], keys=None) -> str:
    """The folder a configuration's cache (or, with the generator's `keys`, its generated source)
    lives in: the variant for the preset's own settings, else the variant plus a hash of the
    settings, so an override (--set data.max_length=64) never replaces another configuration's
    cache. A variant the user names (--set data.variant=...) is used as it is."""
    base = resolve_data(task, preset)

    def settings(d: dict) -> dict:
        return prep_config(d) if keys is None else {k: d.get(k) for k in sorted(keys)}

    if data["variant"] != base.get("variant") or settings(data) == settings(base):
        return data["variant"]
    digest = hashlib.sha256(json.dumps(settings(data), sort_keys=True).encode()).hexdigest()
    return f"{data['variant']}-{digest[:8]}"


def generated_path(data_dir: Path, task: str, variant: str) -> Path:
    """Where --generate writes a source (ListOps TSVs, Pathfinder PNGs): where
    `python -m lra_bench.data.listops --out` has always put them."""
    return Path(data_dir) / folder_name(task, "task") / folder_name(variant, "data.variant")


@contextlib.contextmanager
def one_preparer(data_dir: Path, log: Log):
    """Hold an exclusive lock on the data folder while preparing: runs started together (seeds in
    parallel, a sweep, a grid) on a preset whose data is generated would otherwise draw and swap
    the same folders at once. The lock is a flock on the folder itself, so no lock file is left
    behind, and a process that dies releases it."""
    with made_dirs(data_dir):
        fd = os.open(data_dir, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                log(f"waiting for another process preparing data in {data_dir}")
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def prepare(task: str, preset: str, data: dict[str, Any], data_dir: Path, *,
            source: str | None = None, generate: bool = False, force: bool = False,
            log: Log = stderr_log) -> tuple[Path, dict, bool]:
    """Prepare one task preset; returns (cache path, manifest, whether anything was written).

    The source is `source`, else the generator when `generate` is set or the preset says
    `data.generate = true`, else the loader's default source. One process prepares at a time
    per data folder; the next finds the work done (preparing is idempotent)."""
    module = loader_module(data["loader"])
    with one_preparer(Path(data_dir), log):
        return _prepare(module, task, preset, data, data_dir, source=source, generate=generate,
                        force=force, log=log)


def _prepare(module, task: str, preset: str, data: dict[str, Any], data_dir: Path, *,
             source: str | None, generate: bool, force: bool, log: Log) -> tuple[Path, dict, bool]:
    dest = cache_path(data_dir, task, cache_name(task, preset, data))
    want = prep_config(data)
    damaged = False
    try:
        current = read_manifest(dest)
    except DamagedCache:
        if not force:
            raise
        current, damaged = None, True  # a cache of ours, damaged: --force replaces it
    if generate and source is not None:
        raise UserError("--source and --generate exclude each other; give one")
    if generate or (source is None and data.get("generate", False)):
        if not hasattr(module, "generate_source"):
            raise UserError(f"task '{task}' has no generator; prepare it from a source "
                            f"({module.SOURCE_HINT})")
        if (not force and current is not None and current["config"] == want
                and current["source"].get("generated") and not stale_generated(module, current)):
            return dest, current, False
        check_generated_length(data)
        source = str(generated_source(module, task, preset, data, data_dir, force, log))
        fingerprint = {**module.fingerprint(source, data), "generated": True,
                       **generator_version(module)}
    else:
        source = str(source) if source is not None else module.default_source(data, Path(data_dir))
        fingerprint = module.fingerprint(source, data)
        if (not force and current is not None and current["config"] == want
                and current["source"] == fingerprint):
            return dest, current, False
    if dest.exists() and current is None and not damaged and any(dest.iterdir()):
        raise UserError(f"{dest} exists but is not a prepared cache; move it away first "
                        "(preparing replaces the whole folder)")
    log(f"{task}/{data['variant']}: preparing from {source}")
    with CacheWriter(dest) as writer:
        extras = module.build(source, data, writer, log)
        empty = writer.empty_splits()
        if empty:
            raise UserError(f"{source}: no examples for split(s) {', '.join(empty)}; check the source")
        manifest = writer.commit({"task": task, "variant": data["variant"], "preset": preset,
                                  "loader": data["loader"], "config": want,
                                  "source": fingerprint, **extras})
    return dest, manifest, True


def generator_version(module) -> dict:
    """{"generator_version": N} for a loader whose generator declares one, else {} (records
    written before versions existed stay equal for the generators that never changed)."""
    version = getattr(module, "GENERATOR_VERSION", None)
    return {} if version is None else {"generator_version": version}


def stale_generated(module, manifest: dict) -> bool:
    """Was this cache built from a source drawn by another version of the generator?"""
    src = manifest["source"]
    return bool(src.get("generated")) and \
        src.get("generator_version") != generator_version(module).get("generator_version")


def generated_source(module, task: str, preset: str, data: dict, data_dir: Path, force: bool,
                     log: Log) -> Path:
    """Run the loader's generator into <data_dir>/<task>/<variant>, atomically; reuse what is
    there when it was generated with the same settings (files without our stamp are made again:
    generation is deterministic)."""
    out = generated_path(data_dir, task, cache_name(task, preset, data, module.GENERATOR_KEYS))
    # Only the generator's own settings count: a new max_length must not redraw 200,000 images.
    stamp = {"generator": module.__name__,
             "config": {k: data[k] for k in sorted(module.GENERATOR_KEYS)},
             **generator_version(module)}
    marker = out / "generated.json"
    if not force and marker.exists():
        try:
            if json.loads(marker.read_text()) == stamp:
                return out
        except (OSError, ValueError):  # unreadable, not JSON or not UTF-8: generate again
            pass
    if out.exists():
        log(f"{out} will be replaced: it was not generated with these settings")
    with made_dirs(out.parent):
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        try:
            module.generate_source(data, tmp, log)
            (tmp / "generated.json").write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@contextlib.contextmanager
def stop_cleanly():
    """Ctrl-C or SIGTERM (KeyboardInterrupt; `interruption.Stopped` from the CLI's handlers) while
    preparing: the temporary folders unwind away on the way out; then one line and exit
    130 / 143 instead of a traceback."""
    try:
        yield
    except KeyboardInterrupt as e:
        code = interruption.exit_code(e)
        what = "terminated (SIGTERM)" if code == 128 + signal.SIGTERM else "interrupted (SIGINT)"
        print(f"{what}: nothing partial was kept; run the command again to prepare",
              file=sys.stderr, flush=True)
        raise SystemExit(code) from None
    except SystemExit as e:
        if e.code == 128 + signal.SIGTERM:
            print("terminated (SIGTERM): nothing partial was kept; run the command again to "
                  "prepare", file=sys.stderr, flush=True)
        raise


def prepare_command(task: str, preset: str, data_dir: Path, overrides=()) -> str:
    cmd = f"lra data prepare {task} --preset {preset}"
    cmd += "".join(f" --set {o}" for o in overrides if o.strip().startswith("data."))
    if Path(data_dir) != Path("data"):
        cmd += f" --data-dir {data_dir}"
    return cmd


# Helpers shared by the loader modules.

def files_fingerprint(paths: list[Path], root: Path | None = None) -> dict:
    """Identify source files cheaply by name, size and modification time (hashing a 7 GB
    release on every `prepare` would make the idempotence check cost as much as the work)."""
    entries = []
    for p in paths:
        try:
            st = Path(p).stat()
        except FileNotFoundError:
            raise UserError(f"{p} not found") from None
        name = str(Path(p).relative_to(root)) if root is not None else str(Path(p).resolve())
        entries.append([name, st.st_size, st.st_mtime_ns])
    out = {"files": entries}
    if root is not None:
        out["root"] = str(Path(root).resolve())
    return out


def archive_record(path: Path, size: int, official_sha256: str, official_bytes: int,
                   log: Log) -> dict:
    """What the manifest records of a source archive: its size and SHA-256, and whether they are
    the official release's (a different archive is still read, with every check, and said so)."""
    digest = sha256_file(path)
    official = digest == official_sha256 and size == official_bytes
    if not official:
        log(f"note: {Path(path).name} is not the official archive (sha256 {digest[:12]}..., "
            f"official {official_sha256[:12]}...); it is read with the same checks and its hash "
            "is recorded in the manifest")
    return {"file": Path(path).name, "bytes": size, "sha256": digest,
            "official_sha256": official_sha256, "official": official}


def subset_rows(n: int, limit: int, seed: int) -> np.ndarray:
    """All rows (limit 0) or a seeded random `limit` of them, in their original order."""
    if limit <= 0 or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def fraction_boundary(n: int, fraction: float) -> int:
    """Where tfds's percent slicing puts `fraction` of n examples (train[:90%])."""
    return int(round(n * fraction))
