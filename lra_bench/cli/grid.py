"""`lra grid`: start a grid of (model, task, seed) jobs, on this machine or on SLURM, and follow
it up (`status`, `resume`, `cancel`); see `lra_bench.grid` and docs/grid.md."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from lra_bench import interruption, paths, progress
from lra_bench.cli.common import QUIET, err, log, out, parse_seeds, preset_help, user_errors
from lra_bench.errors import UserError


app = typer.Typer(no_args_is_help=True, invoke_without_command=True,
                       help="Run every (model, task, seed) as one job, on this machine or on SLURM "
                       "through submitit: `lra grid --models ... --tasks ... --seeds ...` starts "
                       "a grid; `lra grid status|resume|cancel [ID]` follow it up.")


@app.callback()
@user_errors
def grid_cmd(
    ctx: typer.Context,
    models: Optional[str] = typer.Option(None, "--models", "-m", help="comma-separated, or all"),
    tasks: Optional[str] = typer.Option(None, "--tasks", "-t", help="comma-separated, or all"),
    seeds: str = typer.Option("0", help="comma-separated seeds, e.g. 0,1,2"),
    preset: str = typer.Option("smoke", help=preset_help("the tasks' preset (`lra list tasks`)")),
    set_: List[str] = typer.Option([], "--set", help="override a config value in every job: "
                                   "section.key=value"),
    executor: str = typer.Option("local", help="local (this machine) or slurm"),
    parallel: Optional[int] = typer.Option(None, help="local: jobs at a time (default 1)"),
    retries: int = typer.Option(0, help="rerun a failed job up to this many times"),
    gpus_per_job: Optional[int] = typer.Option(None, help="GPUs per node of a job (local: each "
                                               "running job gets its own)"),
    cpus_per_job: Optional[int] = typer.Option(None, help="slurm: CPUs per task"),
    mem: Optional[str] = typer.Option(None, help="slurm: memory per node, e.g. 64G"),
    time: Optional[str] = typer.Option(None, "--time", help="time limit per job: minutes or "
                                       "[D-]HH:MM:SS; at the limit the job checkpoints and is "
                                       "requeued"),
    partition: Optional[str] = typer.Option(None, help="slurm: partition"),
    account: Optional[str] = typer.Option(None, help="slurm: account"),
    qos: Optional[str] = typer.Option(None, help="slurm: quality of service"),
    array_parallelism: Optional[int] = typer.Option(None, help="slurm: jobs of the array "
                                                    "running at once (default 256)"),
    nodes: Optional[int] = typer.Option(None, help="slurm: nodes per job (one multi-host run)"),
    tasks_per_node: Optional[int] = typer.Option(None, help="slurm: processes per node "
                                                 "(usually one per GPU or one per node)"),
    slurm_opt: List[str] = typer.Option([], "--slurm-opt", help="slurm: extra #SBATCH "
                                        "--KEY=VALUE (repeatable)"),
    preflight: bool = typer.Option(True, "--preflight/--no-preflight",
                                   help="each run first checks that its train step fits"),
    dry_run: bool = typer.Option(False, help="print the plan (and sbatch script) and write "
                                 "nothing"),
    data_dir: Optional[Path] = typer.Option(None, help="default: $LRA_DATA_DIR or ./data"),
    results_dir: Optional[Path] = typer.Option(None, help="default: $LRA_RESULTS_DIR or ./results"),
    quiet: bool = QUIET,
):
    """Start a grid (with --models/--tasks), or follow one up with a subcommand."""
    progress.set_quiet(quiet)
    if ctx.invoked_subcommand is not None:
        return
    from lra_bench import grid  # submitit: loaded by the grid commands only

    if models is None or tasks is None:
        raise UserError("--models and --tasks are required to start a grid, e.g. lra grid "
                        "--models transformer,linear --tasks listops --seeds 0,1")
    resources = grid.Resources(
        executor=executor, parallel=parallel, gpus_per_job=gpus_per_job, cpus_per_job=cpus_per_job,
        mem=mem, time=time, partition=partition, account=account, qos=qos,
        array_parallelism=array_parallelism, nodes=nodes, tasks_per_node=tasks_per_node,
        slurm_opts=list(slurm_opt))
    plan = grid.plan(models, tasks, parse_seeds(seeds), preset, list(set_), resources, retries,
                     paths.data_dir(data_dir), paths.results_dir(results_dir), preflight)
    if dry_run:
        return _grid_dry_run(plan)
    grid.check_data(plan, log)
    g = grid.create(plan)
    keys = [j["key"] for j in plan["jobs"]]
    err.print(f"grid {g.grid_id}: {len(keys)} jobs, record in {g.path}", highlight=False)
    _grid_submit(g, keys, results_dir)


def _follow(g, command: str, results_dir: Optional[Path]) -> str:
    """`lra grid COMMAND ID` as the user must type it: with --results-dir when one was given."""
    where = f" --results-dir {shlex.quote(g.plan['results_dir'])}" if results_dir else ""
    return f"lra grid {command} {g.grid_id}{where}"


def _grid_submit(g, keys: list, results_dir: Optional[Path]) -> None:
    from lra_bench import grid  # submitit: loaded by the grid commands only

    if g.plan["resources"]["executor"] == "slurm":
        ids = grid.submit_slurm(g, keys)
        err.print(f"submitted {len(ids)} SLURM jobs ({ids[0].split('_')[0] if ids else '-'}); "
                  f"follow with: {_follow(g, 'status', results_dir)}", highlight=False)
        return
    try:
        stopped_by = grid.run_local(g, keys, g.plan["resources"]["parallel"] or 1)
    except KeyboardInterrupt as e:
        stopped_by = interruption.signal_name(e)
    if stopped_by is not None:
        err.print(f"grid {g.grid_id} interrupted ({stopped_by}); continue it with: "
                  f"{_follow(g, 'resume', results_dir)}", highlight=False)
        raise typer.Exit(143 if stopped_by == "SIGTERM" else 130)
    _grid_status_table(g)
    rows = grid.status(g)
    if any(r["state"] not in grid.DONE for r in rows):
        err.print(f"not every job completed; rerun the rest with: "
                  f"{_follow(g, 'resume', results_dir)}", highlight=False)
        raise typer.Exit(1)


def _grid_dry_run(plan: dict) -> None:
    from lra_bench import grid  # submitit: loaded by the grid commands only

    r = plan["resources"]
    slurm = r["executor"] == "slurm"
    if slurm:
        params = grid.slurm_parameters(plan)
        res = ", ".join(f"{k}={v}" for k, v in params.items() if k != "job_name")
    else:
        res = f"local, {r['parallel'] or 1} at a time" + (
            f", {r['gpus_per_job']} GPU(s) each" if r["gpus_per_job"] else "")
    t = Table(title=f"grid {plan['grid_id']} (dry run: nothing written): {len(plan['jobs'])} "
              f"jobs, {res}", title_justify="left")
    for c in ("job", "run id", "command"):
        t.add_column(c)
    for j in plan["jobs"]:
        t.add_row(j["key"], j["run_id"], "lra " + " ".join(grid.run_command(plan, j, False)))
    out.print(t)
    if slurm:
        folder = grid.grids_dir(Path(plan["results_dir"])) / plan["grid_id"] / "logs"
        out.print("sbatch script (one job array):\n" + grid.sbatch_text(plan, folder,
                  len(plan["jobs"])), highlight=False, markup=False)


def _grid_status_table(g) -> None:
    from lra_bench import grid  # submitit: loaded by the grid commands only

    rows = grid.status(g)
    for w in g.warnings:
        err.print(f"warning: {w}", highlight=False, markup=False)
    where = g.plan["resources"]["executor"]
    t = Table(title=f"grid {g.grid_id} ({g.plan['preset']} preset, {where}): {grid.counts(rows)}",
              title_justify="left")
    for c in ("job", "state", "run id", "test acc", "attempts", "job id", "error / log"):
        t.add_column(c)
    for r in rows:
        acc = r["test_accuracy"]
        t.add_row(r["key"], r["state"], r["run_id"],
                  f"{100 * acc:.2f}" if acc is not None and r["state"] == "completed" else "-",
                  str(r["attempts"]), r["job_id"] or "-", r["error"] or r["log"] or "")
    out.print(t)


@app.command("status")
@user_errors
def grid_status(
    grid_id: Optional[str] = typer.Argument(None, metavar="[ID]", help="default: the latest"),
    results_dir: Optional[Path] = typer.Option(None, help="default: $LRA_RESULTS_DIR or ./results"),
):
    """Each job's state (pending, running, completed, diverged, failed, interrupted, cancelled)
    with its run id."""
    from lra_bench import grid  # submitit: loaded by the grid commands only

    _grid_status_table(grid.Grid.open(paths.results_dir(results_dir), grid_id))


@app.command("resume")
@user_errors
def grid_resume(
    grid_id: str = typer.Argument(..., metavar="ID"),
    results_dir: Optional[Path] = typer.Option(None, help="default: $LRA_RESULTS_DIR or ./results"),
    quiet: bool = QUIET,
):
    """Submit again every job that has not completed: interrupted runs continue from their
    newest checkpoint (lra run --resume), failed and cancelled ones run again."""
    progress.set_quiet(quiet or progress.quiet())  # (`lra grid --quiet resume` too)
    from lra_bench import grid  # submitit: loaded by the grid commands only

    g = grid.Grid.open(paths.results_dir(results_dir), grid_id)
    keys = grid.resume(g)
    if not keys:
        err.print(f"grid {g.grid_id}: nothing to resume", highlight=False)
        return _grid_status_table(g)
    err.print(f"grid {g.grid_id}: resuming {len(keys)} job(s): {', '.join(keys)}", highlight=False)
    _grid_submit(g, keys, results_dir)


@app.command("cancel")
@user_errors
def grid_cancel(
    grid_id: str = typer.Argument(..., metavar="ID"),
    results_dir: Optional[Path] = typer.Option(None, help="default: $LRA_RESULTS_DIR or ./results"),
):
    """Cancel what is queued or running (running runs stop with a checkpoint); `lra grid resume`
    continues them."""
    from lra_bench import grid  # submitit: loaded by the grid commands only

    g = grid.Grid.open(paths.results_dir(results_dir), grid_id)
    hit = grid.cancel(g)
    err.print(f"grid {g.grid_id}: cancelled {len(hit)} job(s)" + (f": {', '.join(hit)}" if hit
              else ""), highlight=False)
    _grid_status_table(g)
