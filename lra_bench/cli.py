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
    preflight: bool = typer.Option(True, "--preflight/--no-preflight",
                                   help="first check that the train step fits in memory"),
):
    """Train MODEL on TASK, then record accuracy, step time and peak memory."""
    from lra_bench.run import execute

    rc = config.resolve(model, task, preset, seed=seed, overrides=set_, steps=steps)
    summary = execute(rc, paths.data_dir(data_dir), paths.results_dir(results_dir),
                      preflight=preflight)
    status = summary["status"]
    if status != "completed":
        err.print(f"run {summary['run_id']} {status}: {summary.get('error', '')}")
        raise typer.Exit(1)
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
    published: bool = typer.Option(False, help="show the papers' published accuracy rows too "
                                   "(with --sweep: the LRA Table 2 efficiency rows)"),
    sweep: bool = typer.Option(False, "--sweep", help="report a sweep (ID, default the latest) "
                               "in the LRA Table 2 layout instead of the leaderboard"),
    sweep_id: Optional[str] = typer.Argument(None, metavar="ID", help="with --sweep: which sweep"),
    plot: Optional[Path] = typer.Option(None, help="with --sweep: also draw time and memory "
                                        "against length into this .png"),
):
    """Leaderboard of every completed run (one row per model, one column per task), or with
    --sweep [ID] the efficiency of a sweep (LRA Table 2)."""
    from lra_bench import report as rep

    if format not in rep.FORMATS:
        raise UserError(f"unknown format '{format}'; choose one of: {', '.join(rep.FORMATS)}")
    if sweep or sweep_id is not None or plot is not None:
        return _sweep_report(paths.results_dir(results_dir), sweep_id, format, published, plot)
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


# ---- efficiency: sweep, preflight, the Table 2 report ---------------------------------------

def _print_tables(tables, format: str) -> None:
    from lra_bench import report as rep
    from lra_bench import sweep_report as sr

    for title, header, rows in tables:
        if format == "markdown":
            out.print(f"### {title}\n\n{rep.markdown(header, rows)}\n", highlight=False, markup=False)
        else:
            out.print(sr.rich_table(title, header, rows))


def _sweep_report(results_dir: Path, sweep_id: Optional[str], format: str, published: bool,
                  plot: Optional[Path]) -> None:
    from lra_bench import sweep as sw
    from lra_bench import sweep_report as sr

    sweep_id, settings, df = sr.load(results_dir, sweep_id)
    if plot is not None:
        from lra_bench.plots import plot_sweep

        plot_sweep(df, plot, sr.title(sweep_id, settings, df).split(";")[0])
        err.print(f"plot written to {plot}", highlight=False)
    if format == "csv":
        sys.stdout.write(sw.rows_csv(df.to_dict("records")))
        return
    if format == "json":
        from lra_bench import report as rep

        tables = {"sweep": df}
        if published:
            tables["published"] = sr.published_efficiency()
        sys.stdout.write(rep.to_json(tables) + "\n")
        return
    tables = [(sr.title(sweep_id, settings, df), *sr.measured_table(df)),
              ("Every point", *sr.points_table(df))]
    if published:
        tables.append(sr.published_table())
    _print_tables(tables, format)


@app.command()
@user_errors
def sweep(
    task: str = typer.Option("text", "--task", "-t", help="whose model config to time"),
    models: str = typer.Option("all", "--models", "-m", help="comma-separated names, or all"),
    lengths: str = typer.Option("1024,2048,3072,4096", help="comma-separated; 1K = 1024"),
    batch_size: int = typer.Option(32, help="sequences per step (LRA Table 2: 32)"),
    steps: int = typer.Option(10, help="timed steps per point (the median is reported)"),
    warmup: int = typer.Option(2, help="untimed steps after compilation"),
    mode: str = typer.Option("train", help="train (forward + backward + update) or forward"),
    preset: str = typer.Option("lra", help="the task preset whose model config is timed"),
    set_: List[str] = typer.Option([], "--set", help="override a config value: section.key=value"),
    timeout: float = typer.Option(900.0, help="seconds per point before it counts as a timeout"),
    memory_limit: Optional[str] = typer.Option(None, help="treat the device as having this much "
                                               "memory, e.g. 16GiB (default: all of it)"),
    resume: Optional[str] = typer.Option(None, help="continue sweep ID with its stored settings"),
    results_dir: Optional[Path] = typer.Option(None, help="default: $LRA_RESULTS_DIR or ./results"),
):
    """Steps/s and peak memory of each model at each length, each point in a fresh process, on
    synthetic batches of the task's shapes (LRA Table 2). Writes results/sweeps/<id>.csv/.json."""
    from lra_bench import sweep as sw
    from lra_bench import sweep_report as sr

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
        sw.run_sweep(settings, rdir, sweep_id, rows, err)
    except KeyboardInterrupt:
        err.print(f"interrupted; finished points are kept; continue with: lra sweep --resume "
                  f"{sweep_id}" + (f" --results-dir {results_dir}" if results_dir else ""),
                  highlight=False)
        raise typer.Exit(130) from None
    err.print(f"wrote {sw.sweeps_dir(rdir) / sweep_id}.csv and .json", highlight=False)
    _, _, df = sr.load(rdir, sweep_id)
    _print_tables([(sr.title(sweep_id, settings, df), *sr.measured_table(df))], "table")


@app.command("preflight")
@user_errors
def preflight_cmd(
    model: str = typer.Option(..., "--model", "-m", help="a name from `lra list models`"),
    task: str = typer.Option(..., "--task", "-t", help="a name from `lra list tasks`"),
    preset: str = typer.Option("smoke", help="the task's hyperparameter preset: smoke or lra"),
    set_: List[str] = typer.Option([], "--set", help="override a config value: section.key=value"),
    mode: str = typer.Option("train", help="train or forward"),
    memory_limit: Optional[str] = typer.Option(
        None, help="check against this much memory, e.g. 16GiB (default: the device's, on CPU "
        "free RAM)"),
):
    """Compile the step on abstract shapes (nothing allocated): estimated peak memory, FLOPs per
    step, and whether it fits. Exit 0 when it fits, 1 when it does not."""
    from lra_bench import preflight as pf

    rc = config.resolve(model, task, preset, overrides=set_)
    step = pf.compile_abstract(rc, mode)
    capacity = pf.device_capacity(memory_limit)
    fits = pf.fits(step, capacity)
    verdict = {True: "fits", False: "DOES NOT FIT", None: "unknown (no estimate or capacity)"}[fits]
    b, length = rc.train["batch_size"], rc.data["max_length"]
    flops = f"{step.flops / 1e9:,.2f} GFLOP" if step.flops else "unknown"
    lines = [
        f"{model}/{task} ({preset} preset), {mode} step, batch {b}, length {length}, "
        f"{step.params:,} parameters",
        f"estimated peak memory  {pf.format_bytes(step.peak_bytes)} (XLA compiled estimate: "
        "temp + arguments + outputs - donated)",
        f"FLOPs per step         {flops} (XLA cost analysis)",
        f"available              {pf.format_bytes(capacity.bytes)} ({capacity.source})",
        f"verdict                {verdict}",
    ]
    if fits is False:
        lines.append(f"to fit: {pf.what_to_change(rc)}")
    out.print("\n".join(lines), highlight=False, markup=False)
    if fits is False:
        raise typer.Exit(1)


def main() -> None:
    app()
