"""`lra report --sweep`: a sweep in the LRA paper's Table 2 layout.

One row per model; steps per second at each length with the speed-up over `transformer` in
brackets, then peak memory at each length with its ratio to `transformer` (no brackets when no
transformer was swept). A point that ran out
of memory reads OOM. The published Table 2 rows use the same layout, marked with their source
and hardware.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.table import Table

from lra_bench import paths, sweep
from lra_bench.sizes import format_bytes

BASELINE = "transformer"
PUBLISHED_BASELINE = "Transformer"


def load(results_dir: Path, sweep_id: str | None) -> tuple[str, sweep.Settings, pd.DataFrame]:
    sweep_id = sweep.resolve_id(results_dir, sweep_id)
    settings, rows = sweep.load(results_dir, sweep_id)
    df = pd.DataFrame(rows, columns=sweep.COLUMNS) if rows else pd.DataFrame(columns=sweep.COLUMNS)
    df["length"] = df["length"].astype(int)
    return sweep_id, settings, df


def length_label(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _num(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def _model_order(models, baseline: str) -> list[str]:
    seen = list(dict.fromkeys(models))
    return ([baseline] if baseline in seen else []) + [m for m in seen if m != baseline]


def table2_rows(df: pd.DataFrame, speed: str, memory: str, baseline: str,
                memory_unit: str, extra: tuple[str, ...] = (),
                memory_format=None) -> tuple[list[str], list[list[str]]]:
    """df: one row per (model, length) with columns model, length, status, `speed`, `memory`
    (in `memory_unit`, or bytes shown by `memory_format`) and the `extra` columns, shown
    first."""
    lengths = sorted(df["length"].unique())
    header = ["model", *extra, *[f"steps/s {length_label(n)}" for n in lengths],
              *[f"{memory_unit} {length_label(n)}" for n in lengths]]
    by = {(r["model"], int(r["length"])): r for _, r in df.iterrows()}

    def cell(model, n, column, show=_num):
        r = by.get((model, n))
        if r is None:
            return "-"
        if r["status"] != "ok" or pd.isna(r[column]):
            return str(r["status"]) if r["status"] != "ok" else "-"
        text = show(float(r[column]))
        base = by.get((baseline, n))
        if model != baseline and base is not None and base["status"] == "ok" \
                and not pd.isna(base[column]) and float(base[column]) > 0:
            text += f" ({float(r[column]) / float(base[column]):.2f}x)"
        return text

    rows = []
    for model in _model_order(df["model"], baseline):
        first = df[df["model"] == model].iloc[0]
        rows.append([model, *[str(first[e]) for e in extra],
                     *[cell(model, n, speed) for n in lengths],
                     *[cell(model, n, memory, memory_format or _num) for n in lengths]])
    return header, rows


def measured_table(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    view = df.assign(memory=pd.to_numeric(df["peak_memory_bytes"], errors="coerce"))
    return table2_rows(view, "steps_per_second", "memory", BASELINE, "memory",
                       memory_format=format_bytes)


def points_table(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Every measure of every point, for reading beyond Table 2."""
    header = ["model", "length", "status", "step ms", "tokens/s", "GFLOP/step", "compile s",
              "peak memory", "memory source", "XLA estimate", "message"]

    def f(v, scale=1.0, digits=3):
        if v is None or pd.isna(v):
            return "-"
        v = float(v) / scale
        return f"{v:,.0f}" if abs(v) >= 10**digits else f"{v:.{digits}g}"

    order = {m: i for i, m in enumerate(_model_order(df["model"], BASELINE))}
    rows = []
    for _, r in df.sort_values(["model", "length"], key=lambda c: c.map(order)
                               if c.name == "model" else c).iterrows():
        rows.append([r["model"], str(int(r["length"])), str(r["status"]), f(r["step_time_ms"]),
                     "-" if pd.isna(r["tokens_per_second"]) else f"{r['tokens_per_second']:,.0f}",
                     f(r["flops_per_step"], 1e9, 4),
                     f(r["compile_time_s"]), _bytes(r["peak_memory_bytes"]),
                     "-" if pd.isna(r["memory_source"]) else str(r["memory_source"]),
                     _bytes(r["xla_estimate_bytes"]),
                     "" if pd.isna(r["message"]) else str(r["message"])[:120]])
    return header, rows


def _bytes(v) -> str:
    return "-" if v is None or pd.isna(v) else format_bytes(float(v))


def published_efficiency() -> pd.DataFrame:
    pub = pd.read_csv(paths.PACKAGE_DIR / "published" / "lra_efficiency.csv")
    return pub.assign(status="ok")


def published_table() -> tuple[str, list[str], list[list[str]]]:
    pub = published_efficiency()
    source, task, batch = ("; ".join(str(v) for v in pub[c].unique())
                           for c in ("source", "task", "batch_size"))
    title = (f"PUBLISHED, not measured here: {source}, {task} task, batch {batch}, hardware as "
             f"listed; steps/s (speed-up over {PUBLISHED_BASELINE}), peak memory GB per device "
             "(ratio)")
    header, rows = table2_rows(pub, "steps_per_second", "peak_memory_gb", PUBLISHED_BASELINE, "GB",
                               extra=("hardware",))
    return title, header, rows


LEFT = ("model", "hardware", "status", "memory source", "message")


def rich_table(title: str, header: list[str], rows: list[list[str]]):
    t = Table(title=title, title_justify="left")
    for h in header:
        t.add_column(h, justify="left" if h in LEFT else "right")
    for r in rows:
        t.add_row(*r)
    return t


def title(sweep_id: str, s: sweep.Settings, df: pd.DataFrame) -> str:
    kinds = ", ".join(sorted({str(k) for k in df["device_kind"].dropna().unique()})) or "?"
    sources = ", ".join(sorted({str(k) for k in df["memory_source"].dropna().unique()})) or "-"
    # the brackets are relative to the baseline: named only when it was swept
    ratios = BASELINE in set(df["model"])
    speed = f"steps/s (speed-up over {BASELINE})" if ratios else "steps/s"
    return (f"Sweep {sweep_id}: {s.task} ({s.preset} preset), {s.mode} step, batch {s.batch_size}, "
            f"median of {s.steps} timed steps, on {kinds}; {speed}, peak memory"
            f"{' (ratio)' if ratios else ''}; memory source: {sources}"
            + ("" if ratios else f"; no {BASELINE} in this sweep, so no speed-ups or ratios"))
