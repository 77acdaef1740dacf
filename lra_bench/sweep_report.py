"""`lra report --sweep`: a sweep in the LRA paper's Table 2 layout.

One row per model; steps per second at each length with the speed-up over `transformer` in
brackets, then peak memory at each length with its ratio to `transformer` (no brackets when no
transformer was swept). A point that ran out of memory reads OOM. The published Table 2 rows use
the same layout, marked with their source and hardware; `beside_published` puts each measured
point beside the published figure of the same model (matched by `reproduced.PUBLISHED_NAMES`) at
the same length, with both sources' ratios to their own Transformer, the one figure that
compares across machines.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.table import Table

from lra_bench import paths, reproduced, sweep
from lra_bench.errors import UserError
from lra_bench.sizes import format_bytes

BASELINE = "transformer"
PUBLISHED_BASELINE = "Transformer"


def load(results_dir: Path, sweep_id: str | None, models=(), tasks=(),
         presets=()) -> tuple[str, sweep.Settings, pd.DataFrame]:
    """A sweep's id, settings and rows. Without an id, the newest sweep (of one of `tasks` and
    `presets`, where given); `models` keeps those models' rows. A filter that leaves nothing is
    a UserError naming what there is."""
    if sweep_id in (None, "", "latest") and (tasks or presets):
        sweep_id = _newest_matching(results_dir, tasks, presets)
    sweep_id = sweep.resolve_id(results_dir, sweep_id)
    settings, rows = sweep.load(results_dir, sweep_id)
    for option, wanted, value in (("-t", tasks, settings.task), ("--preset", presets,
                                                                   settings.preset)):
        if wanted and value not in wanted:
            raise UserError(f"sweep {sweep_id} is of {option} {value}, not {', '.join(wanted)}; "
                            f"drop {option} or give a sweep of it")
    df = pd.DataFrame(rows, columns=sweep.COLUMNS) if rows else pd.DataFrame(columns=sweep.COLUMNS)
    df["length"] = df["length"].astype(int)
    if models:
        present = list(dict.fromkeys(df["model"]))
        df = df[df["model"].isin(list(models))]
        if df.empty:
            raise UserError(f"sweep {sweep_id} has no {', '.join(models)}; it has "
                            f"{', '.join(present) or 'no points'}")
    return sweep_id, settings, df


def _newest_matching(results_dir: Path, tasks, presets) -> str:
    for candidate in reversed(sweep.list_sweeps(results_dir)):
        settings, _ = sweep.load(results_dir, candidate)
        if (not tasks or settings.task in tasks) and (not presets or settings.preset in presets):
            return candidate
    wanted = " ".join([*(f"-t {t}" for t in tasks), *(f"--preset {p}" for p in presets)])
    raise UserError(f"no sweep of {wanted} in {sweep.sweeps_dir(results_dir)}; run one with: "
                    f"lra sweep {wanted} --models transformer --lengths 512,1024 --batch-size 2 "
                    "--steps 3")


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
    """LRA Table 2's rows, each with the model of ours it is (`registry_model`, None for none)."""
    pub = pd.read_csv(paths.PACKAGE_DIR / "published" / "lra_efficiency.csv")
    return pub.assign(status="ok", registry_model=pub["model"].map(reproduced.registry_model))


def _ratio(value, base) -> float:
    ok = value is not None and base is not None and not pd.isna(value) and not pd.isna(base)
    return float(value) / float(base) if ok and float(base) > 0 else float("nan")


def beside_published(df: pd.DataFrame) -> pd.DataFrame:
    """One row per measured (model, length): its steps/s and peak memory here and LRA Table 2's
    for the same model at the same length, each also as a ratio to the Transformer of its own
    source. The machines differ (TPU v3 there), so only the ratios compare."""
    pub = published_efficiency()
    theirs = {(r["registry_model"], int(r["length"])): r for _, r in pub.iterrows()
              if pd.notna(r["registry_model"])}
    here = {(r["model"], int(r["length"])): r for _, r in df.iterrows()}

    def ok(r, column):
        return float(r[column]) if r is not None and r["status"] == "ok" \
            and not pd.isna(r[column]) else float("nan")

    out = []
    for model in _model_order(df["model"], BASELINE):
        for n in sorted({int(v) for v in df.loc[df["model"] == model, "length"]}):
            r, p = here[(model, n)], theirs.get((model, n))
            base, p_base = here.get((BASELINE, n)), theirs.get((BASELINE, n))
            out.append({
                "model": model, "length": n, "status": r["status"],
                "published_model": None if p is None else p["model"],
                "hardware": None if p is None else p["hardware"],
                "steps_per_second": ok(r, "steps_per_second"),
                "speedup": _ratio(ok(r, "steps_per_second"), ok(base, "steps_per_second")),
                "published_steps_per_second": ok(p, "steps_per_second"),
                "published_speedup": _ratio(ok(p, "steps_per_second"),
                                            ok(p_base, "steps_per_second")),
                "peak_memory_bytes": ok(r, "peak_memory_bytes"),
                "memory_ratio": _ratio(ok(r, "peak_memory_bytes"), ok(base, "peak_memory_bytes")),
                "published_peak_memory_gb": ok(p, "peak_memory_gb"),
                "published_memory_ratio": _ratio(ok(p, "peak_memory_gb"),
                                                 ok(p_base, "peak_memory_gb"))})
    return pd.DataFrame(out)


def beside_table(sweep_id: str, s: sweep.Settings, df: pd.DataFrame
                 ) -> tuple[str, list[str], list[list[str]]]:
    """`beside_published` as a (title, header, rows) table."""
    frame, pub = beside_published(df), published_efficiency()
    kinds = ", ".join(sorted({str(k) for k in df["device_kind"].dropna().unique()})) or "?"
    hardware = "; ".join(str(h) for h in pub["hardware"].unique())
    source = "; ".join(str(v) for v in pub["source"].unique())
    task, batch = ("; ".join(str(v) for v in pub[c].unique()) for c in ("task", "batch_size"))
    title = (f"Sweep {sweep_id} beside {source}: measured here on {kinds}, published on "
             f"{hardware}, different machines: compare the ratios to each source's own "
             f"Transformer at the same length (x), not the figures")
    if (s.task, str(s.batch_size), s.mode) != (task, batch, "train"):
        title += (f"; this sweep timed {s.task}, batch {s.batch_size}, a {s.mode} step, the "
                  f"published rows {task}, batch {batch}, a train step")
    header = ["model", "length", "LRA name", "steps/s here", "steps/s LRA", "speed-up here",
              "speed-up LRA", "memory here", "GB LRA", "memory ratio here", "memory ratio LRA"]

    def num(v, show=_num):
        return "-" if pd.isna(v) else show(v)

    def x(v):
        return "-" if pd.isna(v) else f"{v:.2f}x"

    rows = []
    for _, r in frame.iterrows():
        failed = str(r["status"]) if r["status"] != "ok" else None
        rows.append([r["model"], length_label(int(r["length"])),
                     "-" if pd.isna(r["published_model"]) else str(r["published_model"]),
                     failed or num(r["steps_per_second"]), num(r["published_steps_per_second"]),
                     failed or x(r["speedup"]), x(r["published_speedup"]),
                     failed or num(r["peak_memory_bytes"], format_bytes),
                     num(r["published_peak_memory_gb"]),
                     failed or x(r["memory_ratio"]), x(r["published_memory_ratio"])])
    return title, header, rows


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


LEFT = ("model", "hardware", "status", "memory source", "message", "LRA name")


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
