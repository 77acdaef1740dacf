"""`lra report --compare A B`: two runs side by side - the config keys that differ, then their
metrics - as report tables, so every output format renders them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from lra_bench import records
from lra_bench.errors import UserError
from lra_bench.sizes import format_bytes
from lra_bench.report import Shown

# (summary key, label, scale or formatter): what a reader compares first.
METRICS = (("status", "status", None), ("test_accuracy", "test accuracy (run's rule) %", 100.0),
           ("selection", "selection rule", None),
           ("test_accuracy_best_val", "test accuracy, best-val params %", 100.0),
           ("test_accuracy_last", "test accuracy, last params %", 100.0),
           ("val_accuracy", "best val accuracy %", 100.0), ("best_step", "best step", None),
           ("test_majority", "majority class of test split %", 100.0),
           ("final_train_loss", "final train loss", None), ("steps", "steps", None),
           ("step_time_ms", "median step ms", None), ("wall_time_s", "wall time s", None),
           ("peak_memory_bytes", "peak memory", format_bytes), ("params", "parameters", None),
           ("device_kind", "device", None), ("git_commit", "commit", None),
           ("started_at", "started", None))


def find_run(results_dir: Path, ref: str) -> Path:
    """A run folder by id or unique id prefix."""
    runs = Path(results_dir) / "runs"
    if "/" in ref or ref in ("", ".", ".."):
        raise UserError(f"no run '{ref}' in {runs}; see `lra report --runs` for run ids")
    exact = runs / ref
    if (exact / "config.json").is_file():
        return exact
    hits = sorted(p for p in runs.glob(f"{ref}*") if (p / "config.json").is_file())
    if len(hits) == 1:
        return hits[0]
    what = "matches several runs" if hits else "is not a run"
    raise UserError(f"'{ref}' {what} in {runs}; give a run id from `lra report --runs`")


def _read(path: Path, schema) -> dict:
    """A run's config.json or summary.json, checked (records); a missing file reads as {} (a run
    that has not written it yet), a damaged one is refused naming it."""
    if not path.exists():
        return {}
    doc, why = records.read(path, schema)
    if why is not None:
        raise UserError(f"{path} {why}; compare another run (`lra report --runs` lists them)")
    return doc


def _cell(v, scale=None) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "-"
    if callable(scale):
        return scale(v)
    if scale is not None and isinstance(v, (int, float)) and not isinstance(v, bool):
        v = v * scale
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-2 or abs(v) >= 1e5 else f"{v:.2f}"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def compare(results_dir: Path, a: str, b: str) -> list[Shown]:
    runs = [find_run(results_dir, ref) for ref in (a, b)]
    names = [p.name for p in runs]
    configs = [records.flatten(_read(p / "config.json", records.CONFIG)) for p in runs]
    summaries = [_read(p / "summary.json", records.SUMMARY) for p in runs]
    keys = sorted(set(configs[0]) | set(configs[1]))
    differ = [k for k in keys if configs[0].get(k, "<unset>") != configs[1].get(k, "<unset>")]
    config_rows = [[k, _cell(configs[0].get(k, "<unset>")), _cell(configs[1].get(k, "<unset>"))]
                   for k in differ]
    metric_rows = [[label, _cell(summaries[0].get(key), scale), _cell(summaries[1].get(key), scale)]
                   for key, label, scale in METRICS
                   if key in summaries[0] or key in summaries[1]]
    header = ["", f"A: {names[0]}", f"B: {names[1]}"]
    same = len(keys) - len(differ)
    return [
        Shown("config_diff", f"Config keys that differ ({len(differ)}; {same} identical keys "
              "not shown)", header, config_rows,
              pd.DataFrame(config_rows, columns=["key", "a", "b"])),
        Shown("metrics", "Metrics", header, metric_rows,
              pd.DataFrame(metric_rows, columns=["metric", "a", "b"])),
    ]
