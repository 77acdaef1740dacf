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
    return pd.DataFrame(summaries), warnings


def _task_columns(tasks) -> list[str]:
    known = [t for t in TASK_ORDER if t in set(tasks)]
    return known + sorted(set(tasks) - set(known))


def accuracy_table(runs: pd.DataFrame, selection: str = "best") -> pd.DataFrame:
    """One row per (preset, model), one column per task: mean test accuracy (%) over seeds.

    selection: `best` = the best-validation parameters on test, `last` = the final parameters.
    """
    column = "test_accuracy" if selection == "best" else "test_accuracy_last"
    done = runs[runs.get("status") == "completed"] if len(runs) else runs
    if done.empty:
        return pd.DataFrame()
    grouped = done.groupby(["preset", "model", "task"])[column]
    agg = grouped.agg(["mean", "std", "count"]).reset_index()
    agg["mean"] *= 100.0
    agg["std"] = agg["std"].fillna(0.0) * 100.0
    tasks = _task_columns(agg["task"].unique())
    table = agg.pivot(index=["preset", "model"], columns="task", values="mean")[tasks]
    table["avg"] = table[tasks].mean(axis=1, skipna=False)
    seeds = agg.pivot(index=["preset", "model"], columns="task", values="count")[tasks]
    std = agg.pivot(index=["preset", "model"], columns="task", values="std")[tasks]
    for t in tasks:
        table[f"{t}_std"] = std[t]
        table[f"{t}_n"] = seeds[t]
    return table.reset_index()


def efficiency_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Median step time, peak memory and size per (preset, model, task)."""
    done = runs[runs.get("status") == "completed"] if len(runs) else runs
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


def accuracy_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    tasks = [c for c in table.columns if c not in ("preset", "model", "avg")
             and not c.endswith(("_std", "_n"))]
    header = ["preset", "model", *tasks, "avg"]
    rows = []
    for _, r in table.iterrows():
        cells = [r["preset"], r["model"]]
        for t in tasks:
            if pd.isna(r[t]):
                cells.append("-")
            elif r[f"{t}_n"] > 1:
                cells.append(f"{r[t]:.2f} ± {r[f'{t}_std']:.2f} (n={int(r[f'{t}_n'])})")
            else:
                cells.append(f"{r[t]:.2f}")
        cells.append(_fmt(r["avg"]))
        rows.append(cells)
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
