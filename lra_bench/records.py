"""The schema of every JSON record the CLI reads back from the results folder, and the one
function that checks a parsed record against it.

A record is written by this package, but it may be damaged (a crash, a full disk) or edited by
hand, so every reader checks it here before it reaches arithmetic, an index or a path:

    runs/<id>/summary.json        SUMMARY      (`lra report`, `--compare`, `--resume`, grids)
    runs/<id>/config.json         CONFIG       (`--compare`; `--resume` checks it further)
    runs/<id>/metrics.jsonl       METRICS_LINE (one per line: `--runs`, `--curves`)
    grids/<id>/plan.json          PLAN         (`lra grid status|resume|cancel`, `--grid`)
    grids/<id>/submissions.json   SUBMISSIONS
    grids/<id>/jobs/<key>.json    JOB_STATE
    sweeps/<id>.json              SWEEP        (`lra report --sweep`, `lra sweep --resume`)

`problem(value, schema)` is None when the record fits, else one phrase saying where it does not
("'jobs' must be a list, found str"). A reader either skips the record with a warning naming the
file (reports) or refuses it with a UserError naming the file and what to do (resume, grids).

A schema is a type (`str`, `int`, `float`: a number, `bool`, `dict`: any object, `list`: any list), `Opt(schema)` (None allowed), a
one-element list `[schema]` (a list of such), `Text(pattern)` (text matching a regex), `Map(schema)`
(an object of any keys, each value such) or a dict {key: schema} (an object with those keys, where
a key wrapped in `Opt` may be missing or null; other keys are allowed).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Opt:
    schema: Any


@dataclass(frozen=True)
class Text:
    pattern: str

    def __hash__(self):
        return hash(self.pattern)


@dataclass(frozen=True)
class Map:
    schema: Any


def _name(t) -> str:
    return {str: "text", int: "a whole number", float: "a number", bool: "true or false",
            list: "a list", dict: "an object"}.get(t, type(t).__name__)


def _found(v) -> str:
    return "null" if v is None else type(v).__name__


def problem(value: Any, schema: Any, where: str = "") -> str | None:
    """Why `value` does not fit `schema` (one phrase naming the key), or None."""
    at = f"'{where}' " if where else ""
    if isinstance(schema, Opt):
        return None if value is None else problem(value, schema.schema, where)
    if isinstance(schema, Text):
        if not isinstance(value, str) or not re.fullmatch(schema.pattern, value):
            return f"{at}must be text matching {schema.pattern}, found {str(value)[:40]!r}"
        return None
    if schema is bool:
        ok = isinstance(value, bool)
    elif schema is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif schema is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif schema in (str, dict, list):
        ok = isinstance(value, schema)
    elif isinstance(schema, list):
        if not isinstance(value, list):
            return f"{at}must be a list, found {_found(value)}"
        for i, item in enumerate(value):
            p = problem(item, schema[0], f"{where}[{i}]")
            if p:
                return p
        return None
    elif isinstance(schema, Map):
        if not isinstance(value, dict):
            return f"{at}must be an object, found {_found(value)}"
        for k, item in value.items():
            p = problem(item, schema.schema, f"{where}.{k}" if where else str(k))
            if p:
                return p
        return None
    elif isinstance(schema, dict):
        if not isinstance(value, dict):
            return f"{at or 'the record '}must be an object, found {_found(value)}"
        for key, sub in schema.items():
            optional = isinstance(key, Opt)
            key = key.schema if optional else key
            inner = f"{where}.{key}" if where else key
            if key not in value:
                if optional:
                    continue
                return f"'{inner}' is missing"
            p = problem(value[key], Opt(sub) if optional else sub, inner)
            if p:
                return p
        return None
    else:  # pragma: no cover - a schema this module does not define
        raise TypeError(f"not a schema: {schema!r}")
    return None if ok else f"{at}must be {_name(schema)}, found {_found(value)}"


def read(path: Path, schema: Any) -> tuple[Any, str | None]:
    """A JSON file parsed and checked: (value, None), or (None, why it cannot be used)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except IsADirectoryError:
        return None, "is a folder, not a file"
    except UnicodeDecodeError as e:
        return None, f"is not UTF-8 text ({e.reason} at byte {e.start})"
    except OSError as e:
        return None, e.strerror or str(e)
    if not text.strip():
        return None, "is empty"
    try:
        value = json.loads(text)
    except ValueError as e:
        return None, f"is truncated or corrupt JSON ({e})"
    why = problem(value, schema)
    return (value, None) if why is None else (None, why)


def read_lines(path: Path, schema: Any) -> tuple[list, list[str]]:
    """A JSON-lines file: every line that fits `schema`, and a warning naming the file and line
    of each that does not (a missing file: no lines, no warning)."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return [], []
    except OSError as e:
        return [], [f"skipped {path}: {e.strerror or e}"]
    good, warnings = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            warnings.append(f"skipped {path}:{n}: not a JSON line")
            continue
        why = problem(value, schema)
        if why:
            warnings.append(f"skipped {path}:{n}: {why}")
        else:
            good.append(value)
    return good, warnings


# ---- the records ------------------------------------------------------------------------------

ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}"  # a run, grid or job id: a plain folder name

# What report, resume and the CLI read from a summary, by type: a summary where any of them has
# another type is skipped by `lra report` (with a warning) and refused by `--resume`, so a damaged
# or crafted file never reaches arithmetic or a path.
SUMMARY_TEXT = ("run_id", "model", "task", "status", "preset", "started_at", "ended_at", "error",
                "signal", "memory_source", "device_kind", "dtype", "selection", "git_commit")
SUMMARY_NUMBERS = ("seed", "steps", "val_accuracy", "best_step", "test_accuracy",
                   "test_accuracy_last", "test_accuracy_best_val", "test_majority", "test_loss",
                   "final_train_loss", "step_time_ms", "data_wait_ms", "compile_time_s",
                   "peak_memory_bytes", "flops_per_step", "params", "diverged_step",
                   "interrupted_step", "checkpoint_step", "wall_time_s", "batch_size",
                   "max_length", "train_examples")
SUMMARY = {"model": str, "task": str, "status": str,
           **{Opt(k): str for k in SUMMARY_TEXT if k not in ("model", "task", "status")},
           **{Opt(k): float for k in SUMMARY_NUMBERS}, Opt("resumed_from_steps"): [float]}
# what `lra report` averages for every completed run (efficiency fields may be missing: such a
# run has no efficiency row)
COMPLETED = ("test_accuracy", "test_accuracy_last", "preset")


def summary_problem(s: Any) -> str | None:
    """Why a parsed summary.json cannot be used, or None."""
    if not isinstance(s, dict):
        return f"expected a JSON object, found {type(s).__name__}"
    missing = [k for k in ("model", "task", "status") if k not in s]
    if missing:
        return f"not a run summary (no {', '.join(missing)})"
    why = problem(s, SUMMARY)
    if why:
        return why
    if s["status"] == "completed":
        absent = [k for k in COMPLETED if s.get(k) is None]
        if absent:
            return f"a completed run without {', '.join(absent)}"
    return None


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """A nested record as `section.key -> value` (what `--compare` lines up and what MLflow takes
    as parameters)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# config.json: what `--compare` flattens (`--resume` checks every key against the TOMLs)
CONFIG = {"model_name": str, "task_name": str, "preset": str, Opt("seed"): int,
          Opt("overrides"): [str], Opt("model"): dict, Opt("mixer"): dict, Opt("data"): dict,
          Opt("train"): dict}

# one line of metrics.jsonl: a log step or an evaluation
METRICS_LINE = {"step": int, Opt("train_loss"): float, Opt("train_accuracy"): float,
                Opt("train_steps"): int, Opt("val_accuracy"): float, Opt("val_loss"): float,
                Opt("learning_rate"): float, Opt("steps_per_second"): float, Opt("time"): float}

RESOURCES = {"executor": Text("local|slurm"), Opt("parallel"): int, Opt("gpus_per_job"): int,
             Opt("cpus_per_job"): int, Opt("mem"): str, Opt("time"): str, Opt("partition"): str,
             Opt("account"): str, Opt("qos"): str, Opt("array_parallelism"): int,
             Opt("nodes"): int, Opt("tasks_per_node"): int, Opt("slurm_opts"): [str]}
GRID_JOB = {"key": Text(ID), "model": str, "task": str, "seed": int, "run_id": Text(ID)}
PLAN = {"grid_id": Text(ID), "preset": str, "models": [str], "tasks": [str], "seeds": [int],
        "overrides": [str], "retries": int, Opt("preflight"): bool, "resources": RESOURCES,
        "data_dir": str, "results_dir": str, "jobs": [GRID_JOB]}
# a job id is the controller's pid (local) or SLURM's id (12345 or 12345_6 in an array)
SUBMISSION = {"job_id": Text(r"\d+(_\d+)?"), Opt("stdout"): str, Opt("stderr"): str,
              Opt("host"): str, Opt("submitted_at"): str}
SUBMISSIONS = Map(SUBMISSION)
JOB_STATE = {Opt("state"): str, Opt("attempts"): int, Opt("error"): str}

# sweeps/<id>.json: the settings `lra sweep --resume` continues with, and one row per finished
# point (lra_bench.sweep.COLUMNS; numbers may be null: a point that failed measured nothing)
SWEEP_TEXT = ("sweep_id", "task", "preset", "mode", "dtype", "memory_source", "device_kind",
              "platform", "host", "jax_version", "git_commit", "message", "started_at",
              "finished_at", "attention")
SWEEP_NUMBERS = ("batch_size", "steps_per_second", "step_time_ms", "step_time_min_ms",
                 "step_time_max_ms", "timed_steps", "tokens_per_second", "compile_time_s",
                 "peak_memory_bytes", "xla_estimate_bytes", "device_memory_bytes",
                 "flops_per_step", "params", "device_count", "wall_time_s")
SWEEP_ROW = {"model": str, "length": int, "status": Text("ok|OOM|error|timeout"),
             **{Opt(k): str for k in SWEEP_TEXT}, **{Opt(k): float for k in SWEEP_NUMBERS}}
# a setting a sweep from an older version lacks takes its default (lra_bench.sweep.Settings)
SWEEP_SETTINGS = {"task": str, "preset": str, "models": [str], "lengths": [int],
                  "batch_size": int, "steps": int, "warmup": int, "mode": Text("train|forward"),
                  "overrides": [str], "timeout_s": float, Opt("memory_limit"): str,
                  Opt("seed"): int, Opt("config_dirs"): [str]}
SWEEP = {"settings": SWEEP_SETTINGS, "rows": [SWEEP_ROW]}
