"""The prepared-data cache: what `lra data prepare` writes and every run reads.

    <data_dir>/prepared/<task>/<variant>/
        manifest.json          source, settings, protocol choices, counts, checksums
        <split>.inputs.npy     token ids, (n, max_length) or (n, 2, max_length), pad id 0
        <split>.labels.npy     (n,) int32

Token ids are stored in the narrowest unsigned type that holds them (uint8 or uint16) and
memory-mapped at load, so a run reads only the rows it batches and Path-X fits on disk; the
input pipeline widens each batch to int32. A split may be recorded as the same data as another
(`"same_as"`), e.g. IMDB's validation split under the LRA protocol, so it is stored once.

A cache is written into a temporary sibling folder and renamed into place only once complete,
so a failed or interrupted prepare leaves the previous cache (or none), never half of one.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import stat
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from lra_bench.data.safety import ensure_free
from lra_bench.errors import UserError
from lra_bench.paths import mkdirs, remove_empty
from lra_bench.results import utc_now, write_json_atomic

FORMAT = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
# [data] keys that describe how a run uses the data, not how it was prepared: changing them does
# not call for a new cache.
RUNTIME_KEYS = frozenset({"loader", "variant", "vocab_size", "num_classes", "grid", "dual",
                          "generate", "black_is_padding"})


# Settings added after caches existed, at the value every earlier cache was built with: left out
# of the key at that value, so those caches stay valid.
IMPLICIT = {"downsample": 1, "tokens": "whitespace"}


def prep_config(data: dict[str, Any]) -> dict[str, Any]:
    """The [data] settings a cache is built from; a cache serves a run only if they match."""
    return {k: data[k] for k in sorted(data) if k not in RUNTIME_KEYS
            and not (k in IMPLICIT and data[k] == IMPLICIT[k])}


def token_dtype(max_id: int) -> np.dtype:
    return np.dtype(np.uint8 if max_id < 2**8 else np.uint16 if max_id < 2**16 else np.int32)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class CacheWriter:
    """Builds a cache in a temporary folder; `commit` checksums it and renames it into place.

    Use as a context manager: leaving the block without `commit` (an exception, Ctrl-C) deletes
    the temporary folder.
    """

    def __init__(self, dest: Path):
        self.dest = Path(dest)
        self._new_dirs = mkdirs(self.dest.parent)
        self.tmp = Path(tempfile.mkdtemp(dir=self.dest.parent, prefix=f".{self.dest.name}.tmp-"))
        self._splits: dict[str, dict] = {}
        self._committed = False

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc) -> None:
        if not self._committed:
            shutil.rmtree(self.tmp, ignore_errors=True)
            remove_empty(self._new_dirs)

    def _room(self, shape: tuple[int, ...], dtype, what: str) -> None:
        # A source can make arrays far bigger than itself (a short line -> a max_length row):
        # refuse one that would fill the disk before the file is made.
        ensure_free(self.tmp, math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize,
                    f"{self.dest.name}: {what} {tuple(shape)}")

    def empty_inputs(self, split: str, shape: tuple[int, ...], dtype) -> np.memmap:
        """A zero-filled inputs array on disk, to be filled in place (for data larger than RAM)."""
        self._room(shape, dtype, f"{split} inputs")
        return np.lib.format.open_memmap(self.tmp / f"{split}.inputs.npy", mode="w+",
                                         dtype=dtype, shape=shape)

    def scratch(self, name: str, shape: tuple[int, ...], dtype) -> np.memmap:
        """A working array on disk that is deleted before the cache is committed."""
        self._room(shape, dtype, f"scratch {name}")
        return np.lib.format.open_memmap(self.tmp / f"scratch.{name}.npy", mode="w+",
                                         dtype=dtype, shape=shape)

    def put(self, split: str, labels: np.ndarray, inputs: np.ndarray | None = None) -> None:
        """Record a split; `inputs` None means the array from `empty_inputs(split, ...)`."""
        path = self.tmp / f"{split}.inputs.npy"
        if inputs is None:
            inputs = np.load(path, mmap_mode="r+", allow_pickle=False)
            inputs.flush()
        else:
            self._room(inputs.shape, inputs.dtype, f"{split} inputs")
            np.save(path, np.ascontiguousarray(inputs), allow_pickle=False)
        labels = np.asarray(labels, np.int32)
        if len(labels) != len(inputs):
            raise ValueError(f"{split}: {len(inputs)} inputs but {len(labels)} labels")
        np.save(self.tmp / f"{split}.labels.npy", labels, allow_pickle=False)
        self._splits[split] = {
            "count": int(len(labels)),
            "max_id": int(inputs.max(initial=0)),
            "label_counts": np.bincount(labels).tolist() if len(labels) else [],
        }

    def empty_splits(self) -> list[str]:
        return [s for s, info in self._splits.items() if info.get("count", 1) == 0]

    def alias(self, split: str, same_as: str) -> None:
        self._splits[split] = {"same_as": same_as}

    def commit(self, manifest: dict[str, Any]) -> dict[str, Any]:
        missing = [s for s in SPLITS if s not in self._splits]
        if missing:
            raise ValueError(f"cache for {self.dest} lacks splits {missing}")
        for scratch in self.tmp.glob("scratch.*.npy"):
            scratch.unlink()
        for split, info in self._splits.items():
            if "same_as" in info:
                continue
            for part in ("inputs", "labels"):
                path = self.tmp / f"{split}.{part}.npy"
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
                info[part] = {"file": path.name, "shape": list(arr.shape), "dtype": str(arr.dtype),
                              "bytes": path.stat().st_size, "sha256": sha256_file(path)}
                del arr
        manifest = {"format": FORMAT, "created": utc_now(), **manifest, "splits": self._splits}
        write_json_atomic(self.tmp / MANIFEST, manifest)
        old = None
        if self.dest.exists():
            old = self.dest.with_name(f".{self.dest.name}.old-{uuid.uuid4().hex[:8]}")
            self.dest.rename(old)
        self.tmp.rename(self.dest)
        self._committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return manifest


class DamagedCache(UserError):
    """A cache that cannot be used as it is: rebuilt with `lra data prepare ... --force`."""

    def __init__(self, problem: str):
        super().__init__(f"{problem}; re-prepare it with --force")
        self.problem = problem


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of the cache at `path`, or None when there is no complete cache there."""
    try:
        with open(Path(path) / MANIFEST) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise DamagedCache(f"{path}/{MANIFEST} is unreadable ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise DamagedCache(f"{path} was prepared by another version of lra-bench (format "
                           f"{found}, expected {FORMAT})")
    problem = manifest_problem(manifest)
    if problem:
        raise DamagedCache(f"{path}/{MANIFEST} is malformed ({problem})")
    return manifest


def manifest_problem(m: dict) -> str | None:
    """What is wrong with a manifest's shape, or None. Every value later used as a path, a key or
    a number is checked here, so a crafted manifest cannot point a read outside its folder."""
    for key, kind in (("config", dict), ("source", dict), ("splits", dict)):
        if not isinstance(m.get(key), kind):
            return f"'{key}' must be a {kind.__name__}"
    for key in ("task", "variant", "created", "preset"):
        if key in m and not isinstance(m[key], str):
            return f"'{key}' must be a str"
    src = m["source"]
    if not all(isinstance(src.get(k), (str, type(None))) for k in ("kind", "root", "data_dir")):
        return "source kind, root and data_dir must be text"
    files = src.get("files", [])
    if not isinstance(files, list) or not all(
            isinstance(f, list) and len(f) == 3 and isinstance(f[0], str) for f in files):
        return "source files must be [name, size, mtime] entries"
    splits = m["splits"]
    for split in SPLITS:
        info = splits.get(split)
        if not isinstance(info, dict):
            return f"split '{split}' is missing"
        if "same_as" in info:
            target = splits.get(info["same_as"]) if isinstance(info["same_as"], str) else None
            if not isinstance(target, dict) or "same_as" in target:
                return f"split '{split}' is the same as an unknown split"
            continue
        if not isinstance(info.get("count"), int):
            return f"split '{split}' has no count"
        for part in ("inputs", "labels"):
            meta = info.get(part)
            if not isinstance(meta, dict):
                return f"split '{split}' has no {part}"
            if meta.get("file") != f"{split}.{part}.npy":
                return f"{split} {part} file must be {split}.{part}.npy"
            shape = meta.get("shape")
            if (not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape)
                    or not isinstance(meta.get("bytes"), int) or not isinstance(meta.get("dtype"), str)
                    or not isinstance(meta.get("sha256"), str)):
                return f"{split} {part}: shape, bytes, dtype and sha256 must be given"
    return None


def split_info(manifest: dict, split: str) -> dict:
    info = manifest["splits"][split]
    return manifest["splits"][info["same_as"]] if "same_as" in info else info


def read(path: Path, manifest: dict) -> dict[str, dict[str, np.ndarray]]:
    """Memory-map the splits, checking each file against the manifest's shape and size."""
    out = {}
    for split in SPLITS:
        info = split_info(manifest, split)
        arrays = {}
        for part in ("inputs", "labels"):
            meta = info[part]
            file = Path(path) / meta["file"]
            try:
                if not stat.S_ISREG(file.lstat().st_mode):  # no symlink or device in a cache
                    raise OSError("not a regular file")
                size = file.stat().st_size
                arr = np.load(file, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DamagedCache(f"{file}: cannot read ({e})") from None
            if size != meta["bytes"] or list(arr.shape) != meta["shape"] or str(arr.dtype) != meta["dtype"]:
                raise DamagedCache(f"{file} does not match its manifest")
            arrays[part] = arr
        out[split] = arrays
    return out


def verify(path: Path, manifest: dict) -> list[str]:
    """Re-hash every file; the names of those whose checksum differs from the manifest."""
    bad = []
    for split in SPLITS:  # the names read_manifest has checked
        info = manifest["splits"][split]
        for part in ("inputs", "labels"):
            if part in info and sha256_file(Path(path) / info[part]["file"]) != info[part]["sha256"]:
                bad.append(info[part]["file"])
    return bad


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def find_all(data_dir: Path) -> tuple[list[tuple[Path, dict]], list[tuple[Path, str]]]:
    """Every complete cache under data_dir as (path, manifest), and every damaged one as (path,
    problem)."""
    out, damaged = [], []
    for m in sorted((Path(data_dir) / "prepared").glob(f"*/*/{MANIFEST}")):
        if m.parent.name.startswith("."):
            continue
        try:
            manifest = read_manifest(m.parent)
        except DamagedCache as e:
            damaged.append((m.parent, e.problem))
            continue
        if manifest is not None and all(k in manifest for k in ("task", "variant", "created")):
            out.append((m.parent, manifest))
    return out, damaged
