"""`lra sweep`: steps/s and peak memory of models across sequence lengths (LRA Table 2)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import List, Optional

import typer

from lra_bench import interruption, paths, progress
from lra_bench import sweep as sw
from lra_bench.cli.common import QUIET, err, preset_help, print_tables, user_errors


@user_errors
def sweep(
    task: str = typer.Option("text", "--task", "-t", help="whose model config to time"),
    models: str = typer.Option("all", "--models", "-m", help="comma-separated names, or all"),
    lengths: str = typer.Option("1024,2048,3072,4096", help="comma-separated; 1K = 1024"),
    batch_size: int = typer.Option(32, help="sequences per step (LRA Table 2: 32)"),
    steps: int = typer.Option(10, help="timed steps per point (the median is reported)"),
    warmup: int = typer.Option(2, help="untimed steps after compilation"),
    mode: str = typer.Option("train", help="train (forward + backward + update) or forward"),
    preset: str = typer.Option("lra", help=preset_help("the task preset whose model config is "
                                                       "timed")),
    set_: List[str] = typer.Option([], "--set", metavar="SECTION.KEY=VALUE",
                                   help="override a config value (repeatable)"),
    timeout: float = typer.Option(900.0, help="seconds per point before it counts as a timeout"),
    memory_limit: Optional[str] = typer.Option(None, help="treat the device as having this much "
                                               "memory, e.g. 16GiB (default: all of it)"),
    resume: Optional[str] = typer.Option(None, help="continue sweep ID with its stored settings"),
    results_dir: Optional[Path] = typer.Option(None, help="default: $LRA_RESULTS_DIR or ./results"),
    quiet: bool = QUIET,
):
    """Steps/s and peak memory of each model at each length, each point in a fresh process, on
    synthetic batches of the task's shapes (LRA Table 2). Writes results/sweeps/<id>.csv/.json."""
    from lra_bench import sweep_report as sr  # pandas: loaded when the command runs

    progress.set_quiet(quiet)
    rdir = paths.results_dir(results_dir)
    if resume:
        sweep_id = sw.resolve_id(rdir, resume)
        settings, rows = sw.load(rdir, sweep_id)
        err.print(f"resuming sweep {sweep_id} with its stored settings ({len(rows)} of its points done)",
                  highlight=False)
    else:
        settings = sw.plan(task, models, lengths, preset, batch_size, steps, warmup, mode, set_,
                           timeout, memory_limit)
        sweep_id, rows = sw.new_sweep_id(settings), []
    try:
        sw.run_sweep(settings, rdir, sweep_id, rows)
    except KeyboardInterrupt as e:
        err.print(f"{interruption.signal_name(e)}: stopped; finished points are kept; continue "
                  f"with: lra sweep --resume {sweep_id}"
                  + (f" --results-dir {shlex.quote(str(results_dir))}" if results_dir else ""),
                  highlight=False)
        raise typer.Exit(interruption.exit_code(e)) from None
    err.print(f"wrote {sw.sweeps_dir(rdir) / sweep_id}.csv and .json", highlight=False)
    _, _, df = sr.load(rdir, sweep_id)
    print_tables([(sr.title(sweep_id, settings, df), *sr.measured_table(df))], "table")
