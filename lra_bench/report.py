"""`lra report`: leaderboards from every run summary, the LRA paper's Table 1 layout."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
from rich.table import Table

from lra_bench import paths, records, reproduced, results

TASK_ORDER = ["listops", "text", "retrieval", "image", "pathfinder", "pathx"]
FORMATS = ("table", "markdown", "csv", "json", "latex")


# Settings that do not change what a run computes: how often it checkpoints or logs, where its
# cache lives, and gradient accumulation (the same mean gradient over the same batch).
NEUTRAL_SETTINGS = {"train.grad_accum", "train.checkpoint_every", "train.log_every",
                    "data.variant"}


def experiment(preset: str, overrides) -> str:
    """What a run is an instance of: its preset, with the settings it changed (`--set`, `--steps`,
    `--dtype`, ...; not the NEUTRAL_SETTINGS). Runs are averaged and compared only within one
    experiment, so a 20-step check never stands in for the preset's own result."""
    changed = sorted(o for o in overrides or ()
                     if o.split("=", 1)[0].strip() not in NEUTRAL_SETTINGS)
    if not changed:
        return preset
    return f"{preset} [{', '.join(changed)}]"


def load_runs(results_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    summaries, warnings = results.read_summaries(results_dir)
    for s in summaries:  # runs from before train.selection tested the best-val parameters
        if "test_accuracy" in s and "test_accuracy_best_val" not in s:
            s["test_accuracy_best_val"] = s["test_accuracy"]
        if isinstance(s.get("preset"), str):
            # `--preset` filters on the preset itself; every table shows the experiment
            s["base_preset"] = s["preset"]
            s["preset"] = experiment(s["preset"], s.get("overrides"))
    return pd.DataFrame(summaries), warnings


def _task_columns(tasks) -> list[str]:
    known = [t for t in TASK_ORDER if t in set(tasks)]
    return known + sorted(set(tasks) - set(known))


# Which parameters are tested. `run`: each run's own rule (summary `selection`; runs that predate
# the field tested the best-validation parameters as `test_accuracy`).
SELECTIONS = {"run": ("test_accuracy", "run's rule", "parameters each run's own rule selects"),
              "best": ("test_accuracy_best_val", "best_val", "best-validation parameters"),
              "last": ("test_accuracy_last", "last", "last parameters")}
KEYS = ["preset", "model", "task"]
BASELINE = "majority class"  # the model name of the chance row


def normalise(runs: pd.DataFrame) -> pd.DataFrame:
    """Fill the selection fields that older summaries lack: `selection` (best_val then) and
    `test_accuracy_best_val` (their `test_accuracy`)."""
    if runs.empty:
        return runs
    runs = runs.copy()
    for c in ("selection", "test_accuracy", "test_accuracy_best_val", "test_accuracy_last",
              "test_majority"):
        if c not in runs:
            runs[c] = None
    legacy = runs["selection"].isna()
    runs["selection"] = runs["selection"].where(~legacy, "best_val")
    fill = runs["test_accuracy_best_val"].isna() & (runs["selection"] == "best_val")
    runs.loc[fill, "test_accuracy_best_val"] = runs.loc[fill, "test_accuracy"]
    for c in ("test_accuracy", "test_accuracy_best_val", "test_accuracy_last", "test_majority"):
        runs[c] = pd.to_numeric(runs[c], errors="coerce")
    return runs


def filter_runs(runs: pd.DataFrame, models=(), tasks=(), presets=()) -> pd.DataFrame:
    """The report's filters (empty = all)."""
    preset = "base_preset" if "base_preset" in runs else "preset"
    for column, wanted in (("model", models), ("task", tasks), (preset, presets)):
        if wanted and not runs.empty and column in runs:
            runs = runs[runs[column].isin(list(wanted))]
    return runs


def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Completed and diverged runs, one per (preset, model, task, seed): the latest started, so
    re-running a seed replaces it and `n` counts seeds, not runs."""
    if runs.empty or "status" not in runs:
        return runs.iloc[0:0]
    done = runs[runs["status"].isin(["completed", "diverged"])]
    if "started_at" in done:
        done = done.sort_values("started_at", kind="stable", na_position="first")
    return done.drop_duplicates([*KEYS, "seed"] if "seed" in done else KEYS, keep="last")


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


def runs_table(runs: pd.DataFrame, selection: str = "run", results_dir: Path | None = None
               ) -> pd.DataFrame:
    """Every run, one row each, whatever its status; accuracy only where the run completed."""
    if runs.empty:
        return pd.DataFrame()
    column, label, _ = SELECTIONS[selection]
    out = normalise(runs)
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
        # A killed run never wrote its last checkpoint step into its summary: read the folder.
        from lra_bench.checkpoint import newest_saved_step

        for i in out.index[stopped]:
            out.at[i, "checkpoint_step"] = newest_saved_step(
                Path(results_dir) / "runs" / str(out.at[i, "run_id"]))
    if selection != "run":
        out["selection"] = label
    out["test_majority"] = out["test_majority"] * 100.0
    cols = ["run_id", "preset", "model", "task", "seed", "status", "steps", "diverged_step",
            "interrupted_step", "checkpoint_step", "best_step", "val_accuracy", "test_accuracy",
            "step_time_ms", "test_majority", "selection", "started_at"]
    return out[cols].sort_values([*KEYS, "seed", "started_at"], na_position="first",
                                 kind="stable").reset_index(drop=True)


def best_eval(run_path: Path) -> dict | None:
    """The evaluation with the highest validation accuracy in a run's metrics.jsonl, if any."""
    evals, _ = records.read_lines(run_path / "metrics.jsonl", records.METRICS_LINE)
    evals = [e for e in evals if e.get("val_accuracy") is not None]
    return max(evals, key=lambda e: e["val_accuracy"]) if evals else None


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


PUBLISHED = paths.PACKAGE_DIR / "published"


def published_accuracy() -> pd.DataFrame:
    """Every published accuracy row (LRA Table 1, the Nystromformer re-run, later results), each
    with its protocol, and the averages recomputed the same way as for our runs (`avg` is the
    paper's own)."""
    paper = pd.read_csv(PUBLISHED / "lra_accuracy.csv", dtype={"pathx": str})
    later = pd.read_csv(PUBLISHED / "lra_frontier.csv", dtype={"pathx": str})
    paper["attention_based"], paper["checked"] = "yes", "read from the paper"
    return add_averages(pd.concat([paper, later], ignore_index=True))


def protocols() -> pd.DataFrame:
    """protocol -> name, selection rule, whether our runs of the same preset are comparable."""
    return pd.read_csv(PUBLISHED / "protocols.csv").set_index("protocol")


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


def _published_cell(v) -> str:
    if isinstance(v, str) and v.strip().upper() == "FAIL":
        return "FAIL"
    return _fmt(_score(v, ""))


def published_rows(tasks: list[str], pub: pd.DataFrame | None = None
                   ) -> tuple[list[str], list[list[str]]]:
    pub = published_accuracy() if pub is None else pub
    header = ["source", "model", *tasks, *_average_headers(), "paper avg", "attention-based",
              "checked"]
    rows = [[r["source"], r["model"], *[_published_cell(r.get(t)) for t in tasks],
             *_average_cells(r), _fmt(r["avg"]), str(r["attention_based"]), str(r["checked"])]
            for _, r in pub.iterrows()]
    return header, rows


def published_blocks(runs: pd.DataFrame, selection: str | None = None
                     ) -> list[tuple[str, str, pd.DataFrame, tuple[list[str], list[list[str]]]]]:
    """`--published`: one block per protocol with comparable runs possible (lra, nystrom): its
    published rows, then our runs of the preset of the same name, tested under the protocol's
    selection rule (or `selection` when given), then that preset's majority-class row. Then one
    block of later results, each under its own protocol, beside which no run of ours stands.
    Returns (name, title, frame, (header, rows)) per block."""
    pub, prot = published_accuracy(), protocols()
    tasks = TASK_ORDER
    blocks = []
    for protocol, info in prot[prot["runs_comparable"] == "yes"].iterrows():
        rule = selection or ("best" if info["selection"] == "best_val" else "last")
        ours = accuracy_table(filter_runs(runs, presets=[protocol]), rule)
        mine = pub[pub["protocol"] == protocol]
        header, rows = published_rows(tasks, mine)
        frame = mine.assign(kind="published")
        if not ours.empty:
            for t in tasks:
                if t not in ours:
                    ours[t], ours[f"{t}_std"], ours[f"{t}_n"] = float("nan"), 0.0, 0
            ours = add_averages(ours)
            _, our_rows = accuracy_rows(ours[["preset", "model", *tasks,
                                              *[c for c in ours.columns if c not in tasks]]])
            width = len(header)
            for (_, r), cells in zip(ours.iterrows(), our_rows):
                label = "lra-bench (majority class of our test split)" if r["kind"] == "baseline" \
                    else f"lra-bench, --preset {protocol}"
                rows.append([label, r["model"], *cells[2:2 + len(tasks) + len(AVERAGES)], "-",
                             "-" if r["kind"] == "baseline" else "yes", "measured here"][:width])
            frame = pd.concat([frame, ours.assign(source="lra-bench")], ignore_index=True)
        rule_text = SELECTIONS[rule][2]
        title = (f"Protocol `{protocol}`: {info['name']}; test accuracy (%) of the {rule_text}"
                 f" (runs of --preset {protocol} only)")
        blocks.append((f"published_{protocol}", title, frame, (header, rows)))
        if not ours.empty:
            c_header, c_rows, c_frame, notes = reproduced.comparison(ours, mine, protocol)
            if c_rows:
                c_title = (f"Protocol `{protocol}`: our runs beside the published figure; inside "
                           f"the spread = within {reproduced.SPREAD:g} sd of our seeds"
                           + "".join(f". {n}" for n in notes))
                blocks.append((f"reproduced_{protocol}", c_title, c_frame, (c_header, c_rows)))
    later = pub[pub["protocol"].isin(prot[prot["runs_comparable"] != "yes"].index)]
    title = ("Later results, each under its own protocol (none comparable with a run here; "
             "attention-based says which are not attention models; `checked` says how far each "
             "figure was verified against a stored source)")
    blocks.append(("published_later", title, later.assign(kind="published"),
                   published_rows(tasks, later)))
    return blocks


def efficiency_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["preset", "model", "task", "step ms", "wall s", "peak MiB", "memory source",
              "params", "compile s", "device"]
    rows = [[r["preset"], r["model"], r["task"], _fmt(r.get("step_time_ms")),
             _fmt(r.get("wall_time_s"), 0),
             _fmt(r.get("peak_memory_mb"), 1), _fmt(r.get("memory_source")),
             "-" if pd.isna(r.get("params")) else f"{int(r['params']):,}",
             _fmt(r.get("compile_time_s")), _fmt(r.get("device_kind"))]
            for _, r in table.iterrows()]
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


# ---- the report as a list of tables, and its renderings --------------------------------------
# A report is a list of `Shown` tables; every format renders all of them (csv/json from the
# frames, markdown/latex/table from the display rows), so no table is silently dropped.

class Shown(tuple):
    """(name, title, header, rows, frame): one table of the report."""

    def __new__(cls, name, title, header, rows, frame):
        return super().__new__(cls, (name, title, header, rows, frame))

    name = property(lambda self: self[0])
    title = property(lambda self: self[1])
    header = property(lambda self: self[2])
    rows = property(lambda self: self[3])
    frame = property(lambda self: self[4])


def leaderboard(runs: pd.DataFrame, selection: str = "run", published: bool = False
                ) -> list[Shown]:
    """The plain report: accuracy (with each preset's majority-class row and both averages),
    efficiency and, with `published`, one block per protocol."""
    acc = accuracy_table(runs, selection)
    if acc.empty:
        return []
    rule = SELECTIONS[selection][2]
    eff = efficiency_table(runs)
    shown = [Shown("accuracy", f"Test accuracy (%) of the {rule}; mean ± std over seeds (the "
                   "latest run of each seed; diverged runs are counted, never averaged); "
                   f"'{BASELINE}' = always guessing the test split's most frequent class",
                   *accuracy_rows(acc), acc),
             Shown("efficiency", "Efficiency (median step time, peak memory)",
                   *efficiency_rows(eff), eff)]
    if published:
        blocks = published_blocks(runs, None if selection == "run" else selection)
        shown += [Shown(name, title, header, rows, frame)
                  for name, title, frame, (header, rows) in blocks]
        alone = sorted(set(acc["preset"]) - set(protocols().index))
        if alone:
            shown[-1] = Shown(shown[-1].name, shown[-1].title + f". Runs of presets "
                              f"{', '.join(alone)} have no published counterpart (see the "
                              "accuracy table)", *shown[-1][2:])
    return shown


def to_csv_all(shown: list[Shown]) -> str:
    """Every table as CSV, each after a `# <name>: <title>` line, separated by a blank line."""
    return "\n".join(f"# {t.name}: {t.title}\n{to_csv(t.frame)}" for t in shown)


def to_json_all(shown: list[Shown]) -> str:
    return to_json({t.name: t.frame for t in shown})


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", "±": r"$\pm$", "ö": r"\"o"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(c, c) for c in str(text))


def latex(title: str, header: list[str], rows: list[list[str]]) -> str:
    """A booktabs table (\\usepackage{booktabs}) with the title as its caption."""
    spec = "ll" + "r" * (len(header) - 2)
    lines = [r"\begin{table}[ht]", r"\centering", r"\small",
             rf"\caption{{{latex_escape(title)}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def render(shown: list[Shown], format: str) -> str:
    """csv, json, markdown or latex text of every table (`table` is drawn by rich instead)."""
    if format == "csv":
        return to_csv_all(shown)
    if format == "json":
        return to_json_all(shown) + "\n"
    if format == "latex":
        return "\n\n".join(latex(t.title, t.header, t.rows) for t in shown) + "\n"
    return "\n".join(f"### {t.title}\n\n{markdown(t.header, t.rows)}\n" for t in shown)


# ---- learning curves -------------------------------------------------------------------------

def learning_curves(runs: pd.DataFrame, results_dir: Path,
                    warnings: list[str] | None = None) -> pd.DataFrame:
    """Every evaluation of the finished runs (metrics.jsonl): preset, model, task, seed, step,
    train_loss, val_accuracy (%). A damaged line is skipped, with a warning added to
    `warnings`."""
    done = finished_runs(normalise(runs))
    done = done[done["status"] == "completed"] if not done.empty else done
    frames = []
    for _, r in done.iterrows():
        path = Path(results_dir) / "runs" / str(r["run_id"]) / "metrics.jsonl"
        # a run without readable metrics has no curve; the tables still show it
        lines, skipped = records.read_lines(path, records.METRICS_LINE)
        if warnings is not None:
            warnings.extend(skipped)
        if lines:
            f = pd.DataFrame(lines)
            f = f[[c for c in ("step", "train_loss", "val_accuracy") if c in f]]
            frames.append(f.assign(preset=r["preset"], model=r["model"], task=r["task"],
                                   seed=r.get("seed")))
    if not frames:
        return pd.DataFrame(columns=["preset", "model", "task", "seed", "step", "train_loss",
                                     "val_accuracy"])
    out = pd.concat(frames, ignore_index=True)
    out["val_accuracy"] = out["val_accuracy"] * 100.0
    return out


def read_csv_tables(text: str) -> dict[str, pd.DataFrame]:
    """Parse `--format csv` output back into {name: table}."""
    tables, name, lines = {}, None, []
    for line in text.splitlines() + ["# "]:
        if line.startswith("# "):
            if name is not None:
                tables[name] = pd.read_csv(io.StringIO("\n".join(lines)))
            name, lines = line[2:].split(":", 1)[0], []
        elif line.strip():
            lines.append(line)
    return tables
