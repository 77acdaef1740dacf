"""`lra run`: train a model on a task (one run per seed), or continue a run (`--resume`)."""

from __future__ import annotations

import functools
import json
import signal
from pathlib import Path
from typing import List, Optional

import typer

from lra_bench import config, interruption, paths, progress, results
from lra_bench.cli.common import QUIET, err, out, parse_seeds, preset_help, user_errors
from lra_bench.errors import UserError
from lra_bench.sizes import format_bytes, parse_bytes


def resume_conflicts(given: dict):
    """A check that the options given alongside --resume agree with the run's saved config."""

    def check(run_id: str, rc: config.RunConfig) -> None:
        saved = {"--model": rc.model_name, "--task": rc.task_name, "--preset": rc.preset,
                 "--seed": rc.seed, "--steps": rc.train["steps"], "--dtype": rc.model["dtype"],
                 "--grad-accum": rc.train["grad_accum"], "--set": list(rc.overrides),
                 "--log-to": rc.train["log_to"]}
        if given.get("--seeds") is not None:
            raise UserError("--seeds starts new runs; it cannot be combined with --resume")
        for option, value in given.items():
            if option == "--set":  # each setting given must be one the run has
                value = [o for o in value if o not in saved["--set"]] or None
            if option in saved and value not in (None, []) and value != saved[option]:
                raise UserError(
                    f"--resume {run_id} continues the run with its saved config: {option} {value} "
                    f"conflicts with its {option} {saved[option]}; drop {option}, or start a new "
                    "run to change it")

    return check


def _print_outcome(summary: dict, folders: list[str] = ()) -> None:
    status, run_id = summary["status"], summary["run_id"]
    if status == "completed":
        mem = summary["peak_memory_bytes"]
        resumed = summary.get("resumed_from_steps")
        out.print(
            f"{run_id}  test acc {100 * summary['test_accuracy']:.2f}% "
            f"({summary.get('selection', 'best_val')}; best val "
            f"{100 * summary['val_accuracy']:.2f}% @ step {summary['best_step']}, last "
            f"{100 * summary['test_accuracy_last']:.2f}%)  step {summary['step_time_ms']:.1f} ms  "
            f"peak {format_bytes(mem)} ({summary['memory_source']})"
            + (f"  resumed from step {resumed[-1]}" if resumed else ""),
            highlight=False,
        )
    elif status == "interrupted":
        err.print(f"run {run_id} interrupted by {summary.get('signal')} after step "
                  f"{summary.get('interrupted_step')} (checkpoint saved); continue it with: "
                  f"lra run --resume {' '.join([run_id, *folders])}", highlight=False)
    elif status == "diverged":
        err.print(f"run {run_id} diverged: {summary.get('error')}; last good checkpoint: step "
                  f"{summary.get('checkpoint_step')}", highlight=False)
    else:
        err.print(f"run {run_id} {status}: {summary.get('error', '')}", highlight=False)


@user_errors
def run(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="a name from `lra list models`"),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="a name from `lra list tasks`"),
    preset: Optional[str] = typer.Option(None, help=preset_help(
        "the task's preset (a whole protocol; default smoke; `lra list tasks` shows each task's)")),
    steps: Optional[int] = typer.Option(None, help="override train.steps"),
    seed: Optional[int] = typer.Option(None, help="seed for parameters, dropout and data order "
                                       "(default 0)"),
    seeds: Optional[str] = typer.Option(None, help="run once per seed, one after another: 0,1,2"),
    set_: List[str] = typer.Option([], "--set", metavar="SECTION.KEY=VALUE",
                                   help="override a config value (repeatable)"),
    resume: Optional[str] = typer.Option(None, help="continue run RUN_ID (or `latest`) from its "
                                         "newest checkpoint, with its saved config"),
    run_id: Optional[str] = typer.Option(None, help="start the run under this id instead of a "
                                         "drawn one (what `lra grid` does to find its runs)"),
    data_dir: Optional[Path] = typer.Option(None, help="default: $LRA_DATA_DIR or ./data"),
    results_dir: Optional[Path] = typer.Option(None, help="default: $LRA_RESULTS_DIR or ./results"),
    preflight: bool = typer.Option(True, "--preflight/--no-preflight",
                                   help="first check that the train step fits in memory"),
    dtype: Optional[str] = typer.Option(None, help="compute dtype, float32 or bfloat16 "
                                        "(model.dtype); parameters stay float32"),
    grad_accum: Optional[int] = typer.Option(None, help="micro-batches per optimiser step "
                                             "(train.grad_accum)"),
    coordinator: Optional[str] = typer.Option(None, help="multi-host: host:port of process 0"),
    num_processes: Optional[int] = typer.Option(None, help="multi-host: number of processes"),
    process_id: Optional[int] = typer.Option(None, help="multi-host: this process's index"),
    memory_limit: Optional[str] = typer.Option(None, help="preflight against this much memory, "
                                               "e.g. 16GiB (default: $LRA_MEMORY_LIMIT, else the "
                                               "device's)"),
    log_to: List[str] = typer.Option([], "--log-to", metavar="TRACKER",
                                     help="also log to wandb or mlflow (repeatable; "
                                     "train.log_to); needs its extra, e.g. pip install "
                                     "'lra-bench[wandb]'"),
    quiet: bool = QUIET,
):
    """Train MODEL on TASK, then record accuracy, step time and peak memory."""
    # jax (the run, the trainer): loaded when a run starts, so `lra --help` answers at once
    from lra_bench import distributed
    from lra_bench import run as runner

    # the options as given: what --resume checks against the run's saved config
    progress.set_quiet(quiet)
    given = {"--model": model, "--task": task, "--preset": preset, "--seed": seed,
             "--steps": steps, "--dtype": dtype, "--grad-accum": grad_accum, "--set": list(set_),
             "--seeds": seeds, "--log-to": list(log_to) or None}
    # The shortcuts are settings like any --set: recorded with the run, so the report keeps a
    # changed run apart from its preset's own (a 20-step check is not the preset's result).
    set_ = list(set_)
    if steps is not None:
        set_.append(f"train.steps={steps}")
    if dtype is not None:
        set_.append(f'model.dtype="{dtype}"')
    if grad_accum is not None:
        set_.append(f"train.grad_accum={grad_accum}")
    if log_to:
        set_.append(f"train.log_to={json.dumps(list(log_to))}")
    ddir, rdir = paths.data_dir(data_dir), paths.results_dir(results_dir)
    if memory_limit is not None:
        parse_bytes(memory_limit)  # a typo fails now, not after the data is made
    distributed.initialize(coordinator, num_processes, process_id)
    folders = [f"--{k.replace('_', '-')} {v}" for k, v in
               (("data_dir", data_dir), ("results_dir", results_dir)) if v is not None]
    show = (functools.partial(_print_outcome, folders=folders) if distributed.is_primary()
            else (lambda summary: None))
    if run_id is not None:
        if resume is not None or seeds is not None:
            raise UserError("--run-id names one new run; it cannot be combined with --resume or "
                            "--seeds")
        if distributed.is_primary():  # the others never create the folder
            results.check_new_run_id(rdir, run_id)
    try:
        summaries = _run_or_resume(runner, resume, given, set_, ddir, rdir, memory_limit,
                                   preflight, run_id, show)
    except runner.StoppedAtOnce as e:
        s = e.summary
        if distributed.is_primary():
            step = s.get("checkpoint_step")
            err.print(f"run {s.get('run_id')} stopped at once by a second signal; continue it "
                      f"from {f'its checkpoint at step {step}' if step else 'the start'} with: "
                      f"lra run --resume {' '.join([str(s.get('run_id')), *folders])}",
                      highlight=False)
        raise typer.Exit(interruption.exit_code(e)) from None
    # (said of the preset as it is: a smoke run with changed settings may well learn)
    if (summaries and summaries[0].get("preset") == "smoke" and not summaries[0].get("overrides")
            and distributed.is_primary()):
        err.print("note: smoke is a seconds-long plumbing check (tiny model, few steps): its "
                  "accuracy sits near the majority class by design and says nothing about the "
                  "model. For a run that learns on a laptop use --preset quick (docs/quick.md).",
                  highlight=False)
    interrupted = [s for s in summaries if s["status"] == "interrupted"]
    if interrupted:
        name = interrupted[0].get("signal") or "SIGINT"
        raise typer.Exit(128 + int(getattr(signal, name, signal.SIGINT)))
    if any(s["status"] != "completed" for s in summaries):
        raise typer.Exit(1)


def _run_or_resume(runner, resume, given, set_, ddir, rdir, memory_limit, preflight, run_id,
                   show) -> list[dict]:
    """`lra run`'s work: resume one run, or check every seed's config and the data, then train
    the seeds one after another (`given`: the options as given; `set_`: every setting, the
    shortcuts included). The summaries, in order."""
    model, task, preset, seed, seeds = (given[k] for k in ("--model", "--task", "--preset",
                                                           "--seed", "--seeds"))

    if resume is not None:
        summary = runner.resume(resume, ddir, rdir, check_config=resume_conflicts(given))
        show(summary)
        return [summary]
    if model is None or task is None:
        raise UserError("--model and --task are required (or --resume RUN_ID to continue a "
                        "run); see `lra list`")
    if seed is not None and seeds is not None:
        raise UserError("give --seed or --seeds, not both")
    seed_list = parse_seeds(seeds) if seeds is not None else [seed or 0]
    summaries = runner.start(model, task, preset or "smoke", seed_list, set_, ddir, rdir,
                             preflight=preflight, memory_limit=memory_limit, run_id=run_id,
                             on_summary=show)
    if len(seed_list) > 1:
        done = sum(s["status"] == "completed" for s in summaries)
        err.print(f"{done}/{len(seed_list)} seeds completed; `lra report` aggregates them, "
                  "`lra report --runs` lists each", highlight=False)
    return summaries
