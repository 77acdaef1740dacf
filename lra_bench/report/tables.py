"""The accuracy table (mean ± std over seeds, each preset's majority-class row), the averages
over tasks, and the efficiency table."""

from __future__ import annotations

import pandas as pd

from lra_bench.report.runs import (BASELINE, KEYS, SELECTIONS, TASK_ORDER, _task_columns,
                                  finished_runs, normalise)


def accuracy_table(runs: pd.DataFrame, selection: str = "run", baseline: bool = True
                   ) -> pd.DataFrame:
    """One row per (preset, model), one column per task: mean test accuracy (%) over seeds.

    selection: `run` = each run's own rule, `best` = the best-validation parameters, `last` =
    the final parameters. Diverged runs have no accuracy: they are counted in `<task>_diverged`,
    never averaged in; a task whose runs all diverged has no mean (NaN). With `baseline`, each
    preset gets a `majority class` row: the share of the test split's most frequent class, as
    its runs recorded it (`test_majority`). Averages: see `add_averages`.
    """
    column, label, _ = SELECTIONS[selection]
    finished = finished_runs(normalise(runs))
    if finished.empty:
        return pd.DataFrame()
    completed = finished[finished["status"] == "completed"]
    values = completed[column] if column in completed else pd.Series(dtype=float)
    agg = values.groupby([completed[k] for k in KEYS]).agg(["mean", "std", "count"])
    diverged = finished[finished["status"] == "diverged"].groupby(KEYS).size().rename("diverged")
    agg = agg.join(diverged, how="outer").reset_index()
    agg[["count", "diverged"]] = agg[["count", "diverged"]].fillna(0).astype(int)
    agg["mean"] = agg["mean"].astype(float) * 100.0
    # one seed has no spread: its std stays empty (NaN) in the exports, not 0
    agg["std"] = agg["std"].astype(float) * 100.0
    tasks = _task_columns(agg["task"].unique())
    wide = {v: agg.pivot(index=["preset", "model"], columns="task", values=v)[tasks]
            for v in ("mean", "std", "count", "diverged")}
    table = wide["mean"].copy()
    for t in tasks:
        table[f"{t}_std"] = wide["std"][t]
        table[f"{t}_n"] = wide["count"][t].fillna(0).astype(int)
        table[f"{t}_diverged"] = wide["diverged"][t].fillna(0).astype(int)
    rules = (completed.groupby(["preset", "model"])["selection"]
             .agg(lambda s: "+".join(sorted(set(s)))) if selection == "run" else None)
    table["selection"] = rules.reindex(table.index).fillna("-") if rules is not None else label
    table["kind"] = "run"
    table = table.reset_index()
    if baseline:
        table = pd.concat([table, baseline_rows(finished, tasks)], ignore_index=True)
        table = table.sort_values(["preset", "kind"], kind="stable", key=lambda c: c if
                                  c.name == "preset" else (c == "baseline")).reset_index(drop=True)
    return add_averages(table, tasks)


def majority_shares(runs: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """(preset, task) -> a split's majority-class share (0-1), from the runs' summaries (every run
    of one preset and task reads the same splits; the latest recorded wins)."""
    column = f"{split}_majority"
    if runs.empty or column not in runs:
        return pd.DataFrame(columns=["preset", "task", column])
    known = runs.assign(**{column: pd.to_numeric(runs[column], errors="coerce")})
    known = known.dropna(subset=[column])
    return known.groupby(["preset", "task"], as_index=False)[column].last()


def baseline_rows(finished: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    shares = majority_shares(finished)
    rows = []
    for preset, group in shares.groupby("preset"):
        row = {"preset": preset, "model": BASELINE, "selection": "-", "kind": "baseline"}
        for _, r in group.iterrows():
            if r["task"] in tasks:
                row.update({r["task"]: 100.0 * r["test_majority"], f"{r['task']}_std": 0.0,
                            f"{r['task']}_n": 1, f"{r['task']}_diverged": 0})
        rows.append(row)
    return pd.DataFrame(rows)


# LRA's average is over its five tasks (Path-X failed for every model); later papers average all
# six, a failed Path-X counted as 50 (chance). Each is taken over the tasks a row has, and the
# count says over how many, so a one-task mean is never mistaken for a five-task one.
AVERAGES = {"avg_lra": ("avg LRA (5 tasks, no Path-X)", TASK_ORDER[:5]),
            "avg_6": ("avg 6 (Path-X FAIL = 50)", TASK_ORDER)}
FAIL_SCORE = 50.0


def _score(v, task: str) -> float:
    if isinstance(v, str):
        if v.strip().upper() == "FAIL":
            return FAIL_SCORE if task == "pathx" else float("nan")
        v = pd.to_numeric(v, errors="coerce")
    return float(v) if v is not None and not pd.isna(v) else float("nan")


def add_averages(table: pd.DataFrame, tasks: list[str] | None = None) -> pd.DataFrame:
    """Add `avg_lra`/`avg_6` and `avg_lra_tasks`/`avg_6_tasks` (how many tasks each averages)."""
    table = table.copy()
    for name, (_, over) in AVERAGES.items():
        cols = [t for t in over if t in table.columns]
        scores = pd.DataFrame({t: [_score(v, t) for v in table[t]] for t in cols},
                              index=table.index)
        table[name] = scores.mean(axis=1, skipna=True) if cols else float("nan")
        table[f"{name}_tasks"] = scores.notna().sum(axis=1) if cols else 0
    return table


def average_cell(value, n: int, of: int) -> str:
    if not n:
        return "-"
    return f"{value:.2f}" + ("" if n == of else f" ({n}/{of} tasks)")


def efficiency_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Median step time and wall time (whole run: data, compile, training, evaluation), peak
    memory and size per (preset, model, task)."""
    done = runs[runs.get("status") == "completed"] if len(runs) else runs
    # A summary without step time or size (written by hand, or damaged) has no efficiency row.
    if done.empty or not {"step_time_ms", "params"} <= set(done):
        return pd.DataFrame()
    done = done.dropna(subset=["step_time_ms", "params"]).copy()
    for c in ("peak_memory_bytes", "compile_time_s", "wall_time_s"):
        done[c] = pd.to_numeric(done[c], errors="coerce") if c in done else float("nan")
    for c in ("memory_source", "device_kind"):
        done[c] = done[c].fillna("") if c in done else ""
    if done.empty:
        return pd.DataFrame()
    cols = {"step_time_ms": "median", "wall_time_s": "median", "peak_memory_bytes": "max",
            "compile_time_s": "median",
            "params": "first", "flops_per_step": "first", "memory_source": "first",
            "device_kind": "first", "batch_size": "first", "max_length": "first",
            "run_id": "count"}
    cols = {k: v for k, v in cols.items() if k in done}
    out = done.groupby(["preset", "model", "task"]).agg(cols).rename(columns={"run_id": "runs"})
    if "peak_memory_bytes" in out:
        out["peak_memory_mb"] = out.pop("peak_memory_bytes") / 2**20
    return out.reset_index()
