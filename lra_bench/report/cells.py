"""The tables as display rows: (header, rows) of text cells, as every format prints them."""

from __future__ import annotations

import pandas as pd

from lra_bench.report.tables import AVERAGES, average_cell
from lra_bench.sizes import format_bytes


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


def _task_names(table: pd.DataFrame) -> list[str]:
    skip = {"preset", "model", "selection", "kind", *AVERAGES, *(f"{a}_tasks" for a in AVERAGES)}
    return [c for c in table.columns if c not in skip
            and not c.endswith(("_std", "_n", "_diverged"))]


def _average_headers() -> list[str]:
    return [label for label, _ in AVERAGES.values()]


def _average_cells(r) -> list[str]:
    return [average_cell(r[a], int(r[f"{a}_tasks"]), len(over)) for a, (_, over) in AVERAGES.items()]


def accuracy_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    tasks = _task_names(table)
    header = ["preset", "model", *tasks, *_average_headers(), "selection"]
    rows = []
    for _, r in table.iterrows():
        cells = [r["preset"], r["model"]]
        for t in tasks:
            if r.get("kind") == "baseline":
                cells.append(_fmt(r[t]))
                continue
            cells.append(accuracy_cell(r[t], r[f"{t}_std"], int(r[f"{t}_n"]),
                                       int(r.get(f"{t}_diverged", 0))))
        cells += [*_average_cells(r), str(r.get("selection", "-"))]
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


def _peak(mb) -> str:
    """The table keeps MiB (its CSV column); shown as every size is (lra_bench.sizes)."""
    return "-" if mb is None or pd.isna(mb) else format_bytes(float(mb) * 2**20)


def efficiency_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["preset", "model", "task", "step ms", "wall s", "peak memory", "memory source",
              "params", "compile s", "device"]
    rows = [[r["preset"], r["model"], r["task"], _fmt(r.get("step_time_ms")),
             _fmt(r.get("wall_time_s"), 0),
             _peak(r.get("peak_memory_mb")), _fmt(r.get("memory_source")),
             "-" if pd.isna(r.get("params")) else f"{int(r['params']):,}",
             _fmt(r.get("compile_time_s")), _fmt(r.get("device_kind"))]
            for _, r in table.iterrows()]
    return header, rows
