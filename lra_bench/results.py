"""The results store: one folder per run under <results>/runs/, written atomically.

    runs/<run-id>/config.json     the fully resolved config
    runs/<run-id>/metrics.jsonl   one line per evaluation
    runs/<run-id>/summary.json    the run's outcome (see `lra_bench.trainer`)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id(model: str, task: str) -> str:
    # Time for humans, a random suffix so runs started in the same second never collide.
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{model}-{task}-{uuid.uuid4().hex[:8]}"


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


class RunDir:
    def __init__(self, results_dir: Path, run_id: str):
        self.run_id = run_id
        self.path = Path(results_dir) / "runs" / run_id
        self.path.mkdir(parents=True, exist_ok=False)

    def write(self, name: str, obj: Any) -> None:
        write_json_atomic(self.path / name, obj)

    def append_metrics(self, record: dict) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def read_summaries(results_dir: Path) -> tuple[list[dict], list[str]]:
    """Every run's summary, and a warning for each one that cannot be read (never an exception)."""
    summaries, warnings = [], []
    for path in sorted(Path(results_dir).glob("runs/*/summary.json")):
        try:
            with open(path) as f:
                s = json.load(f)
            if not isinstance(s, dict) or "model" not in s or "task" not in s:
                raise ValueError("not a run summary")
            summaries.append(s)
        except (OSError, ValueError) as e:
            warnings.append(f"skipped {path}: {e}")
    return summaries, warnings


class NullRunDir:
    """A run folder that writes nothing: what every process but 0 of a multi-host run gets."""

    def __init__(self, run_id: str):
        self.run_id, self.path = run_id, None

    def write(self, name: str, obj: Any) -> None:
        pass

    def append_metrics(self, record: dict) -> None:
        pass

    def discard(self) -> None:
        pass
