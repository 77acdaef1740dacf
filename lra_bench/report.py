"""`lra report`: leaderboards from every run summary, the LRA paper's Table 1 layout."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
from rich.table import Table

from lra_bench import paths, results

TASK_ORDER = ["listops", "text", "retrieval", "image", "pathfinder", "pathx"]
FORMATS = ("table", "markdown", "csv", "json")


def load_runs(results_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    summaries, warnings = results.read_summaries(results_dir)
    for s in summaries:  # runs from before train.selection tested the best-val parameters
        if "test_accuracy" in s and "test_accuracy_best_val" not in s:
            s["test_accuracy_best_val"] = s["test_accuracy"]
    return pd.DataFrame(summaries), warnings


def _task_columns(tasks) -> list[str]:
    known = [t for t in TASK_ORDER if t in set(tasks)]
    return known + sorted(set(tasks) - set(known))


SELECTIONS = {"best": ("test_accuracy_best_val", "best-val", "best-validation parameters on test"),
              "last": ("test_accuracy_last", "last", "last parameters on test")}
KEYS = ["preset", "model", "task"]


def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Completed and diverged runs, one per (preset, model, task, seed): the latest started, so
    re-running a seed replaces it and `n` counts seeds, not runs."""
    if runs.empty or "status" not in runs:
        return runs.iloc[0:0]
    done = runs[runs["status"].isin(["completed", "diverged"])]
    if "started_at" in done:
        done = done.sort_values("started_at", kind="stable", na_position="first")
    return done.drop_duplicates([*KEYS, "seed"] if "seed" in done else KEYS, keep="last")


def accuracy_table(runs: pd.DataFrame, selection: str = "best") -> pd.DataFrame:
    """One row per (preset, model), one column per task: mean test accuracy (%) over seeds.

    selection: `best` = the best-validation parameters on test, `last` = the final parameters.
    Diverged runs have no accuracy: they are counted in `<task>_diverged`, never averaged in; a
    task whose runs all diverged has no mean (NaN), and neither has the row's `avg`.
    """
    column, label, _ = SELECTIONS[selection]
    finished = finished_runs(runs)
    if finished.empty:
        return pd.DataFrame()
    completed = finished[finished["status"] == "completed"]
    values = completed[column] if column in completed else pd.Series(dtype=float)
    agg = values.groupby([completed[k] for k in KEYS]).agg(["mean", "std", "count"])
    diverged = finished[finished["status"] == "diverged"].groupby(KEYS).size().rename("diverged")
    agg = agg.join(diverged, how="outer").reset_index()
    agg[["count", "diverged"]] = agg[["count", "diverged"]].fillna(0).astype(int)
    agg["mean"] = agg["mean"].astype(float) * 100.0
    agg["std"] = agg["std"].astype(float).fillna(0.0) * 100.0
    tasks = _task_columns(agg["task"].unique())
    wide = {v: agg.pivot(index=["preset", "model"], columns="task", values=v)[tasks]
            for v in ("mean", "std", "count", "diverged")}
    table = wide["mean"].copy()
    table["avg"] = table[tasks].mean(axis=1, skipna=False)
    for t in tasks:
        table[f"{t}_std"] = wide["std"][t]
        table[f"{t}_n"] = wide["count"][t].fillna(0).astype(int)
        table[f"{t}_diverged"] = wide["diverged"][t].fillna(0).astype(int)
    table["selection"] = label
    return table.reset_index()


def runs_table(runs: pd.DataFrame, selection: str = "best", results_dir: Path | None = None
               ) -> pd.DataFrame:
    """Every run, one row each, whatever its status; accuracy only where the run completed."""
    if runs.empty:
        return pd.DataFrame()
    column, label, _ = SELECTIONS[selection]
    out = runs.copy()
    for c in ("seed", "started_at", "val_accuracy", "best_step", column, "diverged_step",
              "interrupted_step", "checkpoint_step", "step_time_ms", "steps"):
        if c not in out:
            out[c] = None
    completed = out["status"] == "completed"
    out["test_accuracy"] = out[column].where(completed) * 100.0
    out["val_accuracy"] = out["val_accuracy"].where(completed) * 100.0
    out["step_time_ms"] = out["step_time_ms"].where(completed)
    if results_dir is not None:
        # A run that stopped before its end has no summary accuracy, but its evaluations so far
        # are in metrics.jsonl: show the best of them.
        for i in out.index[~completed]:
            best = best_eval(Path(results_dir) / "runs" / str(out.at[i, "run_id"]))
            if best is not None:
                out.at[i, "val_accuracy"] = 100.0 * best["val_accuracy"]
                out.at[i, "best_step"] = best["step"]
        live = [results.is_active(Path(results_dir) / "runs" / str(r)) for r in out["run_id"]]
        stopped = (out["status"] == "running") & ~pd.Series(live, index=out.index, dtype=bool)
        out.loc[stopped, "status"] = "stopped"
    out["selection"] = label
    cols = ["run_id", "preset", "model", "task", "seed", "status", "steps", "diverged_step",
            "interrupted_step", "checkpoint_step", "best_step", "val_accuracy", "test_accuracy",
            "step_time_ms", "selection", "started_at"]
    return out[cols].sort_values([*KEYS, "seed", "started_at"], na_position="first",
                                 kind="stable").reset_index(drop=True)


def best_eval(run_path: Path) -> dict | None:
    """The evaluation with the highest validation accuracy in a run's metrics.jsonl, if any."""
    try:
        lines = (run_path / "metrics.jsonl").read_text().splitlines()
        evals = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError):
        return None
    evals = [e for e in evals if isinstance(e, dict) and "val_accuracy" in e and "step" in e]
    return max(evals, key=lambda e: e["val_accuracy"]) if evals else None


def efficiency_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Median step time, peak memory and size per (preset, model, task)."""
    done = runs[runs.get("status") == "completed"] if len(runs) else runs
    # A summary without step time or size (written by hand, or damaged) has no efficiency row.
    if done.empty or not {"step_time_ms", "params"} <= set(done):
        return pd.DataFrame()
    done = done.dropna(subset=["step_time_ms", "params"]).copy()
    for c in ("peak_memory_bytes", "compile_time_s"):
        done[c] = pd.to_numeric(done[c], errors="coerce") if c in done else float("nan")
    for c in ("memory_source", "device_kind"):
        done[c] = done[c].fillna("") if c in done else ""
    if done.empty:
        return pd.DataFrame()
    cols = {"step_time_ms": "median", "peak_memory_bytes": "max", "compile_time_s": "median",
            "params": "first", "flops_per_step": "first", "memory_source": "first",
            "device_kind": "first", "batch_size": "first", "max_length": "first",
            "run_id": "count"}
    cols = {k: v for k, v in cols.items() if k in done}
    out = done.groupby(["preset", "model", "task"]).agg(cols).rename(columns={"run_id": "runs"})
    out["peak_memory_mb"] = out["peak_memory_bytes"] / 2**20
    return out.drop(columns=["peak_memory_bytes"]).reset_index()


def published_accuracy() -> pd.DataFrame:
    return pd.read_csv(paths.PACKAGE_DIR / "published" / "lra_accuracy.csv")


def _fmt(v, digits=2) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _int(v) -> str:
    return "-" if v is None or pd.isna(v) else str(int(v))


def accuracy_cell(mean, std, n: int, diverged: int) -> str:
    """'37.00 ± 1.41 (n=2)'; diverged runs are named, never shown as a number."""
    if n == 0:
        return ("diverged" + (f" (n={diverged})" if diverged > 1 else "")) if diverged else "-"
    text = f"{mean:.2f}"
    notes = [f"n={n}"] if n > 1 or diverged else []
    if n > 1:
        text += f" ± {std:.2f}"
    if diverged:
        notes.append(f"+{diverged} diverged")
    return text + (f" ({', '.join(notes)})" if notes else "")


def accuracy_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    tasks = [c for c in table.columns if c not in ("preset", "model", "avg", "selection")
             and not c.endswith(("_std", "_n", "_diverged"))]
    header = ["preset", "model", *tasks, "avg"]
    rows = []
    for _, r in table.iterrows():
        cells = [r["preset"], r["model"]]
        for t in tasks:
            cells.append(accuracy_cell(r[t], r[f"{t}_std"], int(r[f"{t}_n"]),
                                       int(r.get(f"{t}_diverged", 0))))
        cells.append(_fmt(r["avg"]))
        rows.append(cells)
    return header, rows


def run_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["run", "preset", "model", "task", "seed", "status", "val acc", "test acc",
              "best step", "step ms"]
    rows = []
    for _, r in table.iterrows():
        status = r["status"]
        if status == "diverged":
            status = f"diverged at step {_int(r['diverged_step'])}"
        elif status == "interrupted":
            status = f"interrupted at step {_int(r['interrupted_step'])}"
        elif status == "stopped":
            status = f"stopped (checkpoint step {_int(r['checkpoint_step'])})"
        if r["status"] == "completed":
            accs = [_fmt(r["val_accuracy"]), _fmt(r["test_accuracy"]), _int(r["best_step"]),
                    _fmt(r["step_time_ms"])]
        else:
            accs = ["diverged" if r["status"] == "diverged" else "-"] * 2 + ["-", "-"]
        rows.append([r["run_id"], r["preset"], r["model"], r["task"], _int(r["seed"]), status,
                     *accs])
    return header, rows


def published_rows(tasks: list[str]) -> tuple[list[str], list[list[str]]]:
    pub = published_accuracy()
    header = ["source", "model", *tasks, "avg"]
    rows = [[r["source"], r["model"], *[_fmt(r.get(t)) for t in tasks], _fmt(r["avg"])]
            for _, r in pub.iterrows()]
    return header, rows


def efficiency_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["preset", "model", "task", "step ms", "peak MiB", "memory source", "params",
              "compile s", "device"]
    rows = [[r["preset"], r["model"], r["task"], _fmt(r["step_time_ms"]),
             _fmt(r["peak_memory_mb"], 1), r["memory_source"], f"{int(r['params']):,}",
             _fmt(r["compile_time_s"]), r["device_kind"]] for _, r in table.iterrows()]
    return header, rows


def rich_table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    t = Table(title=title, title_justify="left")
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i < 2 else "right")
    for r in rows:
        t.add_row(*r)
    return t


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def to_csv(df: pd.DataFrame) -> str:
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.4f")
    return buf.getvalue()


def save_tables(results_dir: Path, tables: dict[str, pd.DataFrame]) -> None:
    """Keep the latest tables beside the runs (results/tables/<name>.csv), written atomically."""
    folder = Path(results_dir) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        tmp = folder / f".{name}.csv.tmp"
        tmp.write_text(to_csv(df))
        tmp.replace(folder / f"{name}.csv")


def to_json(tables: dict[str, pd.DataFrame]) -> str:
    return json.dumps({k: json.loads(v.to_json(orient="records")) for k, v in tables.items()},
                      indent=2)
