"""The results store: one folder per run under <results>/runs/, written atomically.

    runs/<run-id>/config.json     the fully resolved config
    runs/<run-id>/metrics.jsonl   one line per log step and evaluation
    runs/<run-id>/summary.json    the run's outcome (see `lra_bench.trainer`)
    runs/<run-id>/checkpoints/    orbax checkpoints (see `lra_bench.checkpoint`)
    runs/<run-id>/.lock           held (flock) by the process running it; free once it ends
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lra_bench import config
from lra_bench.records import summary_problem  # noqa: F401 - the readers' name for it
from lra_bench.errors import UserError
from lra_bench.paths import folder_name


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id(model: str, task: str) -> str:
    # Time for humans, a random suffix so runs started in the same second never collide.
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{model}-{task}-{uuid.uuid4().hex[:8]}"


RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_new_run_id(results_dir: Path, run_id: str) -> None:
    """A run id chosen by the caller (`lra run --run-id`, `lra grid`) must be a plain folder name
    that no run has taken yet."""
    if not RUN_ID.fullmatch(run_id):
        raise UserError(f"--run-id '{run_id}': use letters, digits, '.', '_' and '-' only")
    if (Path(results_dir) / "runs" / run_id).exists():
        raise UserError(f"run {run_id} already exists in {Path(results_dir) / 'runs'}; continue "
                        f"it with: lra run --resume {run_id}")


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def try_flock(path: Path) -> int | None:
    """An exclusive flock on `path` (created if missing), without waiting: the open descriptor,
    or None when another process holds it. Closing the descriptor, or the holder's death (even
    by SIGKILL), releases it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


class RunDir:
    """One run's folder. `create` makes a new one; `open` an existing one (to resume it)."""

    def __init__(self, results_dir: Path, run_id: str, *, exists: bool = False):
        self.run_id = run_id
        self.path = Path(results_dir) / "runs" / run_id
        self.checkpoints = self.path  # where every process of the run saves its checkpoints
        if not exists:
            self.path.mkdir(parents=True, exist_ok=False)  # atomic: one process gets a name
        self._lock_fd: int | None = None

    @classmethod
    def create(cls, results_dir: Path, model: str, task: str, run_id: str | None = None
               ) -> "RunDir":
        """A new run folder; a drawn id that is already taken is drawn again. A given `run_id`
        is used as it is (taken: a UserError)."""
        if run_id is not None:
            check_new_run_id(results_dir, run_id)
            try:
                return cls(results_dir, run_id)
            except FileExistsError:
                check_new_run_id(results_dir, run_id)  # another process took it just now
        for _ in range(100):
            try:
                return cls(results_dir, new_run_id(model, task))
            except FileExistsError:
                continue
        raise RuntimeError(f"could not create a new run folder under {results_dir}")

    @classmethod
    def open(cls, results_dir: Path, ref: str) -> "RunDir":
        """An existing run by id, or `latest`: the most recently started run."""
        runs = Path(results_dir) / "runs"
        if ref == "latest":
            started = [(s.get("started_at") or "", _mtime(path.parent / "config.json"), path.parent.name)
                       for path, s in _summaries(results_dir)[0]]
            if not started:
                raise UserError(f"no runs to resume in {runs}; start one with: lra run --model "
                                "transformer --task listops")
            return cls(results_dir, max(started)[2], exists=True)
        if "/" in ref or ref in ("", ".", "..") or not (runs / ref / "config.json").is_file():
            raise UserError(f"no run '{ref}' in {runs}; see `lra report --runs` for run ids, or "
                            "use --resume latest")
        return cls(results_dir, ref, exists=True)

    def lock(self) -> bool:
        """Take the run's lock for this process's lifetime; False when another process holds it.
        The kernel drops the lock when its holder dies, even by SIGKILL."""
        fd = try_flock(self.path / ".lock")
        if fd is None:
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def write(self, name: str, obj: Any) -> None:
        write_json_atomic(self.path / name, obj)

    def read(self, name: str) -> Any:
        with open(self.path / name) as f:
            return json.load(f)

    def append_metrics(self, record: dict) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()

    def rewrite_metrics(self, records: list[dict]) -> None:
        """Replace metrics.jsonl (on resume: the evaluations up to the restored checkpoint)."""
        path = self.path / "metrics.jsonl"
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".metrics.jsonl.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in records)
        os.replace(tmp, path)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def is_active(run_path: Path) -> bool:
    """Whether a live process holds the run's lock (i.e. it is really running)."""
    try:
        fd = os.open(Path(run_path) / ".lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def read_summaries(results_dir: Path) -> tuple[list[dict], list[str]]:
    """Every run's summary, and a warning naming each file that cannot be read and why (never an
    exception: one damaged file must not hide the other runs)."""
    found, warnings = _summaries(results_dir)
    return [s for _, s in found], warnings


def _summaries(results_dir: Path) -> tuple[list[tuple[Path, dict]], list[str]]:
    found, warnings = [], []
    for path in sorted(Path(results_dir).glob("runs/*/summary.json")):
        try:
            text = path.read_text()
            if not text.strip():
                raise ValueError("the file is empty")
            s = json.loads(text)
            problem = summary_problem(s)
            if problem:
                raise ValueError(problem)
            s["run_id"] = path.parent.name  # the folder is the id, whatever the file says
            found.append((path, s))
        except json.JSONDecodeError as e:
            warnings.append(f"skipped {path}: truncated or corrupt JSON ({e})")
        except UnicodeDecodeError as e:
            warnings.append(f"skipped {path}: not UTF-8 text ({e.reason} at byte {e.start})")
        except (OSError, ValueError) as e:
            warnings.append(f"skipped {path}: {e}")
    return found, warnings


def saved_config(doc: Any, run_id: str):
    """The RunConfig in a run's config.json, checked as strictly as a fresh one: known model,
    task and preset, exactly the keys their TOMLs declare with the same types, then the value
    checks of `config.validate`. A crafted file cannot name a path or smuggle a type."""
    where = f"run {run_id}: config.json"

    def bad(msg: str) -> UserError:
        return UserError(f"{where} {msg}; the run cannot be resumed (start a new run)")

    if not isinstance(doc, dict):
        raise bad("is not a JSON object")
    for key in ("model_name", "task_name", "preset"):
        if not isinstance(doc.get(key), str):
            raise bad(f"has no text '{key}'")
    seed, overrides = doc.get("seed"), doc.get("overrides", [])
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise bad("has no seed >= 0")
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise bad("has overrides that are not a list of text")
    try:
        fresh = config.resolve(doc["model_name"], doc["task_name"], doc["preset"])
    except UserError as e:
        raise bad(f"names what this checkout lacks ({e})") from None
    sections = {}
    for section in config.SECTIONS:
        saved, want = doc.get(section), getattr(fresh, section)
        if isinstance(saved, dict):  # a run saved before a key was added: its default
            saved = {**{k: v for (s, k), v in config.ADDED_KEYS.items() if s == section}, **saved}
        if not isinstance(saved, dict) or set(saved) != set(want):
            diff = sorted(set(saved or {}) ^ set(want)) if isinstance(saved, dict) else []
            raise bad(f"has another [{section}] than this checkout declares"
                      + (f" (keys {', '.join(map(str, diff[:5]))})" if diff else ""))
        for key, value in saved.items():
            if not _same_kind(want[key], value):
                raise bad(f"has {section}.{key} = {str(value)[:40]!r}, expected a "
                          f"{type(want[key]).__name__}")
        sections[section] = dict(saved)
    rc = config.RunConfig(doc["model_name"], doc["task_name"], doc["preset"], seed,
                          overrides=tuple(overrides), **sections)
    try:
        config.validate(rc)
        if "variant" in rc.data:
            folder_name(rc.data["variant"], "data.variant")
    except UserError as e:
        raise bad(f"holds values this checkout refuses ({e})") from None
    return rc


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _same_kind(want: Any, value: Any) -> bool:
    """`value` could stand where `want` stands: bool, int, float (an int is a float), str, or a
    list of such, element by element."""
    if isinstance(want, bool) or isinstance(value, bool):
        return isinstance(want, bool) and isinstance(value, bool)
    if isinstance(want, float):
        return _number(value)
    if isinstance(want, list):
        return isinstance(value, list) and (not want or all(_same_kind(want[0], v) for v in value))
    if isinstance(want, (int, str)):
        return isinstance(value, type(want))
    return False  # nothing else is declared in a TOML this project reads


class NullRunDir:
    """A run folder that writes nothing: what every process but 0 of a multi-host run gets.
    `checkpoints` is the run folder process 0 writes (on a shared filesystem): every process
    takes part in writing and reading the checkpoints there (None: no checkpoints)."""

    def __init__(self, run_id: str, checkpoints: Path | None = None):
        self.run_id, self.path, self.checkpoints = run_id, None, checkpoints

    def write(self, name: str, obj: Any) -> None:
        pass

    def append_metrics(self, record: dict) -> None:
        pass

    def discard(self) -> None:
        pass

    def lock(self) -> None:
        pass

    def __getattr__(self, name):  # any other writer (checkpoints, metrics rewrites) is a no-op
        return lambda *args, **kwargs: None
