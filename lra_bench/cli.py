"""The `lra` command line. Commands parse their options and call library functions; results go
to stdout, progress and logs to stderr, and user errors end with one line and exit code 2."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from lra_bench import config, paths
from lra_bench.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Long Range Arena benchmarks for efficient-attention models in JAX.")
# Piped output is read by people and scripts alike: do not squeeze tables to 80 columns.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)


def user_errors(fn):
    """Turn a UserError into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command("list")
@user_errors
def list_cmd(what: str = typer.Argument("all", help="tasks, models or all")):
    """Show the registered tasks and models with their key settings."""
    from rich.table import Table

    if what not in ("tasks", "models", "all"):
        raise UserError(f"unknown listing '{what}'; choose one of: tasks, models, all")
    if what in ("tasks", "all"):
        t = Table(title="tasks", title_justify="left")
        for c in ("task", "length", "classes", "presets", "description"):
            t.add_column(c)
        for name in config.available("tasks"):
            doc = config.load_spec("tasks", name)
            t.add_row(name, str(doc["data"].get("max_length", "")), str(doc["data"].get("num_classes", "")),
                      ", ".join(sorted(doc.get("presets", {}))), doc.get("description", ""))
        out.print(t)
    if what in ("models", "all"):
        t = Table(title="models", title_justify="left")
        for c in ("model", "mixer", "options", "description"):
            t.add_column(c)
        for name in config.available("models"):
            doc = config.load_spec("models", name)
            mixer = dict(doc.get("mixer", {}))
            kind = mixer.pop("kind", "?")
            t.add_row(name, kind, ", ".join(f"{k}={v}" for k, v in mixer.items()),
                      doc.get("description", ""))
        out.print(t)


@app.command()
@user_errors
def run(
    model: str = typer.Option(..., "--model", "-m", help="a name from `lra list models`"),
    task: str = typer.Option(..., "--task", "-t", help="a name from `lra list tasks`"),
    preset: str = typer.Option("smoke", help="the task's hyperparameter preset: smoke or lra"),
    steps: Optional[int] = typer.Option(None, help="override train.steps"),
    seed: int = typer.Option(0, help="seed for parameters, dropout and data order"),
    set_: List[str] = typer.Option([], "--set", help="override a config value: section.key=value"),
    data_dir: Optional[Path] = typer.Option(None, help="default: $LRA_DATA_DIR or ./data"),
    results_dir: Optional[Path] = typer.Option(None, help="default: $LRA_RESULTS_DIR or ./results"),
    dtype: Optional[str] = typer.Option(None, help="compute dtype, float32 or bfloat16 "
                                        "(model.dtype); parameters stay float32"),
    grad_accum: Optional[int] = typer.Option(None, help="micro-batches per optimiser step "
                                             "(train.grad_accum)"),
    coordinator: Optional[str] = typer.Option(None, help="multi-host: host:port of process 0"),
    num_processes: Optional[int] = typer.Option(None, help="multi-host: number of processes"),
    process_id: Optional[int] = typer.Option(None, help="multi-host: this process's index"),
):
    """Train MODEL on TASK, then record accuracy, step time and peak memory."""
    from lra_bench import distributed
    from lra_bench.run import execute

    set_ = list(set_)
    if dtype is not None:
        set_.append(f'model.dtype="{dtype}"')
    if grad_accum is not None:
        set_.append(f"train.grad_accum={grad_accum}")
    rc = config.resolve(model, task, preset, seed=seed, overrides=set_, steps=steps)
    distributed.initialize(coordinator, num_processes, process_id)
    summary = execute(rc, paths.data_dir(data_dir), paths.results_dir(results_dir))
    status = summary["status"]
    if status != "completed":
        err.print(f"run {summary['run_id']} {status}: {summary.get('error', '')}")
        raise typer.Exit(1)
    if not distributed.is_primary():
        return  # process 0 reports the run
    mem = summary["peak_memory_bytes"]
    out.print(
        f"{summary['run_id']}  test acc {100 * summary['test_accuracy']:.2f}% (best val "
        f"{100 * summary['val_accuracy']:.2f}% @ step {summary['best_step']}, last "
        f"{100 * summary['test_accuracy_last']:.2f}%)  step {summary['step_time_ms']:.1f} ms  "
        f"peak {mem / 2**20 if mem else float('nan'):.1f} MiB ({summary['memory_source']})",
        highlight=False,
    )


@app.command()
@user_errors
def report(
    results_dir: Optional[Path] = typer.Option(None, help="default: $LRA_RESULTS_DIR or ./results"),
    format: str = typer.Option("table", "--format", "-f", help="table, markdown, csv or json"),
    selection: str = typer.Option("best", help="test accuracy of the best-val parameters (best) "
                                  "or of the last ones (last)"),
    published: bool = typer.Option(False, help="show the papers' published accuracy rows too"),
):
    """Leaderboard of every completed run: one row per model, one column per task."""
    from lra_bench import report as rep

    if format not in rep.FORMATS:
        raise UserError(f"unknown format '{format}'; choose one of: {', '.join(rep.FORMATS)}")
    if selection not in ("best", "last"):
        raise UserError(f"unknown selection '{selection}'; choose best or last")
    rdir = paths.results_dir(results_dir)
    runs, warnings = rep.load_runs(rdir)
    for w in warnings:
        err.print(f"warning: {w}", highlight=False)
    acc = rep.accuracy_table(runs, selection)
    if acc.empty:
        raise UserError(f"no completed runs in {rdir}; train one with: lra run --model "
                        "transformer --task listops")
    eff = rep.efficiency_table(runs)
    if format == "csv":
        sys.stdout.write(rep.to_csv(acc))
        return
    if format == "json":
        sys.stdout.write(rep.to_json({"accuracy": acc, "efficiency": eff}) + "\n")
        return
    rule = "best-validation parameters on test" if selection == "best" else "last parameters on test"
    tables = [(f"Test accuracy (%), {rule}; mean ± std over seeds", *rep.accuracy_rows(acc)),
              ("Efficiency (median step time, peak memory)", *rep.efficiency_rows(eff))]
    if published:
        tasks = [c for c in rep.accuracy_rows(acc)[0][2:-1]]
        tables.append(("Published accuracy (%, from the papers; not measured here)",
                       *rep.published_rows(tasks or rep.TASK_ORDER)))
    for title, header, rows in tables:
        if format == "markdown":
            out.print(f"### {title}\n\n{rep.markdown(header, rows)}\n", highlight=False, markup=False)
        else:
            out.print(rep.rich_table(title, header, rows))


def main() -> None:
    app()
