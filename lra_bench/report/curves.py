"""`lra report --curves`: every evaluation of the finished runs, from their metrics.jsonl, and
the majority-class line drawn beside them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lra_bench import records
from lra_bench.report.runs import finished_runs, normalise
from lra_bench.report.tables import majority_shares


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


def chance_lines(runs: pd.DataFrame) -> dict[tuple[str, str], tuple[float, str]]:
    """(preset, task) -> (majority-class share (%), its split): the dashed line of a validation
    panel. The validation split's majority, or, for runs older than that field, the test
    split's (the panel says which)."""
    done = finished_runs(normalise(runs))
    chance = {}
    for split in ("test", "val"):
        for _, r in majority_shares(done, split).iterrows():
            chance[(r["preset"], r["task"])] = (100.0 * r[f"{split}_majority"],
                                                "validation" if split == "val" else "test")
    return chance
