"""The runs a report reads: every run summary as one frame, normalised, filtered, the finished
run of each seed, and the list of every run (`--runs`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lra_bench import records, results


TASK_ORDER = ["listops", "text", "retrieval", "image", "pathfinder", "pathx"]


# Settings that do not change what a run computes: how often it checkpoints or logs, where its
# cache lives, and gradient accumulation (the same mean gradient over the same batch).
NEUTRAL_SETTINGS = {"train.grad_accum", "train.checkpoint_every", "train.log_every",
                    "train.log_to", "data.variant"}


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
        # (jax, through checkpoint: loaded only when a stopped run is listed)
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
