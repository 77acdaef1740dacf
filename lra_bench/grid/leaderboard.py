"""`lra report --grid ID`: a grid's runs as a leaderboard, missing cells marked."""

from __future__ import annotations

from pathlib import Path

from lra_bench.grid.record import Grid, counts, status


def report(results_dir: Path, ref: str | None, selection: str):
    """`lra report --grid ID`: the grid's runs as mean ± std over seeds per (model, task), each
    cell with its count; cells still short of seeds are marked `missing k/N`."""
    # pandas (here and through the report module): only `lra report --grid` loads it, not the
    # other grid commands
    import pandas as pd

    from lra_bench import report as rep

    grid = Grid.open(results_dir, ref)
    runs, warnings = rep.load_runs(Path(grid.plan["results_dir"]))
    ids = {j["run_id"] for j in grid.jobs}
    runs = runs[runs["run_id"].isin(ids)] if not runs.empty else runs
    acc = rep.accuracy_table(runs, selection)
    seeds, tasks = len(grid.plan["seeds"]), grid.plan["tasks"]
    header = ["preset", "model", *tasks, "avg"]
    rows, records = [], []
    for model in grid.plan["models"]:
        r = acc[acc["model"] == model].iloc[0] if not acc.empty and model in set(acc["model"]) \
            else None
        cells, means = [grid.plan["preset"], model], []
        for t in tasks:
            have = r is not None and t in r.index and not pd.isna(r.get(f"{t}_n"))
            n = int(r[f"{t}_n"]) if have else 0
            div = int(r.get(f"{t}_diverged", 0)) if have else 0
            mean = float(r[t]) if have and n else float("nan")
            std = float(r[f"{t}_std"]) if have and n else float("nan")
            text = rep.accuracy_cell(mean, std, n, div) if n or div else ""
            if n + div < seeds:
                text = (text + " " if text else "") + f"missing {seeds - n - div}/{seeds}"
            cells.append(text)
            means.append(mean)
            records.append({"preset": grid.plan["preset"], "model": model, "task": t,
                            "mean": mean, "std": std, "n": n, "diverged": div,
                            "missing": seeds - n - div})
        avg = float("nan") if any(pd.isna(m) for m in means) else sum(means) / len(means)
        cells.append(rep._fmt(avg))
        rows.append(cells)
    title = (f"Grid {grid.grid_id}: test accuracy (%), {rep.SELECTIONS[selection][2]}; mean ± std "
             f"over {seeds} seed(s) ({counts(status(grid))})")
    return [(title, header, rows)], {"grid": pd.DataFrame(records)}, warnings + grid.warnings
