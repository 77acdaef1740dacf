"""The `lra` command line. Commands parse their options and call library functions; results go
to stdout, progress and logs to stderr, and user errors end with one line and exit code 2."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import List, Optional, Tuple

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


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(x < 0 for x in seeds):
        raise UserError(f"--seeds '{text}': expected comma-separated seeds >= 0, e.g. 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds '{text}' repeats a seed; list each seed once")
    return seeds


def resume_conflicts(given: dict):
    """A check that the options given alongside --resume agree with the run's saved config."""

    def check(run_id: str, rc: config.RunConfig) -> None:
        saved = {"--model": rc.model_name, "--task": rc.task_name, "--preset": rc.preset,
                 "--seed": rc.seed, "--steps": rc.train["steps"], "--set": list(rc.overrides)}
        if given.get("--seeds") is not None:
            raise UserError("--seeds starts new runs; it cannot be combined with --resume")
        for option, value in given.items():
            if option in saved and value not in (None, []) and value != saved[option]:
                raise UserError(
                    f"--resume {run_id} continues the run with its saved config: {option} {value} "
                    f"conflicts with its {option} {saved[option]}; drop {option}, or start a new "
                    "run to change it")

    return check


def _print_outcome(summary: dict) -> None:
    status, run_id = summary["status"], summary["run_id"]
    if status == "completed":
        mem = summary["peak_memory_bytes"]
        resumed = summary.get("resumed_from_steps")
        out.print(
            f"{run_id}  test acc {100 * summary['test_accuracy']:.2f}% (best val "
            f"{100 * summary['val_accuracy']:.2f}% @ step {summary['best_step']}, last "
            f"{100 * summary['test_accuracy_last']:.2f}%)  step {summary['step_time_ms']:.1f} ms  "
            f"peak {mem / 2**20 if mem else float('nan'):.1f} MiB ({summary['memory_source']})"
            + (f"  resumed from step {resumed[-1]}" if resumed else ""),
            highlight=False,
        )
    elif status == "interrupted":
        err.print(f"run {run_id} interrupted by {summary.get('signal')} after step "
                  f"{summary.get('interrupted_step')} (checkpoint saved); continue it with: "
                  f"lra run --resume {run_id}", highlight=False)
    elif status == "diverged":
        err.print(f"run {run_id} diverged: {summary.get('error')}; last good checkpoint: step "
                  f"{summary.get('checkpoint_step')}", highlight=False)
    else:
        err.print(f"run {run_id} {status}: {summary.get('error', '')}", highlight=False)


@app.command()
@user_errors
def run(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="a name from `lra list models`"),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="a name from `lra list tasks`"),
    preset: Optional[str] = typer.Option(None, help="the task's hyperparameter preset: smoke "
                                         "(default) or lra"),
    steps: Optional[int] = typer.Option(None, help="override train.steps"),
    seed: Optional[int] = typer.Option(None, help="seed for parameters, dropout and data order "
                                       "(default 0)"),
    seeds: Optional[str] = typer.Option(None, help="run once per seed, one after another: 0,1,2"),
    set_: List[str] = typer.Option([], "--set", help="override a config value: section.key=value"),
    resume: Optional[str] = typer.Option(None, help="continue run RUN_ID (or `latest`) from its "
                                         "newest checkpoint, with its saved config"),
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
):
    """Train MODEL on TASK, then record accuracy, step time and peak memory."""
    import signal

    from lra_bench import data, distributed
    from lra_bench import run as runner

    set_ = list(set_)
    if dtype is not None:
        set_.append(f'model.dtype="{dtype}"')
    if grad_accum is not None:
        set_.append(f"train.grad_accum={grad_accum}")
    distributed.initialize(coordinator, num_processes, process_id)
    show = _print_outcome if distributed.is_primary() else (lambda summary: None)
    ddir, rdir = paths.data_dir(data_dir), paths.results_dir(results_dir)
    if resume is not None:
        check = resume_conflicts({"--model": model, "--task": task, "--preset": preset,
                                  "--seed": seed, "--steps": steps, "--set": list(set_),
                                  "--seeds": seeds})
        summaries = [runner.resume(resume, ddir, rdir, check_config=check)]
        show(summaries[0])
    else:
        if model is None or task is None:
            raise UserError("--model and --task are required (or --resume RUN_ID to continue a "
                            "run); see `lra list`")
        if seed is not None and seeds is not None:
            raise UserError("give --seed or --seeds, not both")
        # Every seed's config and the data are checked before the first run writes anything.
        rcs = [config.resolve(model, task, preset or "smoke", seed=s, overrides=set_, steps=steps)
               for s in (parse_seeds(seeds) if seeds is not None else [seed or 0])]
        from lra_bench.model import check as check_model

        check_model(rcs[0])  # a bad model config fails before any data is made or read
        splits = data.load(rcs[0], ddir)
        summaries = []
        for rc in rcs:
            summaries.append(runner.execute(rc, ddir, rdir, splits=splits, preflight=preflight))
            show(summaries[-1])
            if summaries[-1]["status"] == "interrupted":
                break  # the user asked to stop: the remaining seeds do not start
        if len(rcs) > 1:
            done = sum(s["status"] == "completed" for s in summaries)
            err.print(f"{done}/{len(rcs)} seeds completed; `lra report` aggregates them, "
                      "`lra report --runs` lists each", highlight=False)
    if summaries and summaries[0].get("preset") == "smoke" and distributed.is_primary():
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


@app.command()
@user_errors
def report(
    results_dir: Optional[Path] = typer.Option(None, help="default: $LRA_RESULTS_DIR or ./results"),
    format: str = typer.Option("table", "--format", "-f", help="table, markdown, csv, json or "
                               "latex (every format holds every table)"),
    selection: str = typer.Option("run", help="which parameters' test accuracy: run (each run's "
                                  "own rule), best (best-val) or last"),
    published: bool = typer.Option(False, help="show the published accuracy rows too, one block "
                                   "per protocol beside runs of the same preset (with --sweep: "
                                   "the LRA Table 2 efficiency rows)"),
    runs_: bool = typer.Option(False, "--runs", help="list every run (any status) instead of "
                               "the leaderboard"),
    models: List[str] = typer.Option([], "--model", "-m", help="only this model (repeatable)"),
    tasks: List[str] = typer.Option([], "--task", "-t", help="only this task (repeatable)"),
    presets: List[str] = typer.Option([], "--preset", help="only this preset (repeatable)"),
    curves: Optional[Path] = typer.Option(None, help="also draw validation accuracy and training "
                                          "loss against step into this .png"),
    compare: Optional[Tuple[str, str]] = typer.Option(None, help="show two runs side by side: "
                                                      "the config keys that differ, the metrics"),
    sweep: bool = typer.Option(False, "--sweep", help="report a sweep (ID, default the latest) "
                               "in the LRA Table 2 layout instead of the leaderboard"),
    sweep_id: Optional[str] = typer.Argument(None, metavar="ID", help="with --sweep: which sweep"),
    plot: Optional[Path] = typer.Option(None, help="with --sweep: also draw time and memory "
                                        "against length into this .png"),
):
    """Leaderboard of every finished run (one row per model, one column per task, a majority-class
    row per preset), or with --sweep [ID] the efficiency of a sweep (LRA Table 2)."""
    from lra_bench import report as rep

    if format not in rep.FORMATS:
        raise UserError(f"unknown format '{format}'; choose one of: {', '.join(rep.FORMATS)}")
    if sweep or sweep_id is not None or plot is not None:
        return _sweep_report(paths.results_dir(results_dir), sweep_id, format, published, plot)
    if selection not in rep.SELECTIONS:
        raise UserError(f"unknown selection '{selection}'; choose run, best or last")
    rdir = paths.results_dir(results_dir)
    if compare:
        from lra_bench.compare import compare as compare_runs

        return _show(compare_runs(rdir, *compare), format)
    runs, warnings = rep.load_runs(rdir)
    for w in warnings:
        err.print(f"warning: {w}", highlight=False, markup=False)
    runs = rep.filter_runs(runs, models, tasks, presets)
    filters = " ".join([*(f"-m {m}" for m in models), *(f"-t {t}" for t in tasks),
                        *(f"--preset {p}" for p in presets)])
    if runs_:
        table = rep.runs_table(runs, selection, rdir)
        if table.empty:
            raise UserError(f"no runs in {rdir}{' match ' + filters if filters else ''}; train "
                            "one with: lra run --model transformer --task listops")
        shown = [rep.Shown("runs", f"Runs: accuracy (%) of the {rep.SELECTIONS[selection][2]}",
                           *rep.run_rows(table), table)]
    else:
        shown = rep.leaderboard(runs, selection, published)
        if not shown:
            raise UserError(f"no completed runs in {rdir}{' match ' + filters if filters else ''}"
                            "; train one with: lra run --model transformer --task listops")
        if not filters:
            rep.save_tables(rdir, {t.name: t.frame for t in shown[:2]})
    _show(shown, format)
    if curves is not None:
        from lra_bench.plots import plot_curves

        data = rep.learning_curves(runs, rdir)
        chance = {(r["preset"], r["task"]): 100.0 * r["test_majority"]
                  for _, r in rep.majority_shares(rep.finished_runs(rep.normalise(runs))).iterrows()}
        title = "Learning curves: mean over seeds, band = min-max over seeds" + (
            f" ({filters})" if filters else "")
        written = plot_curves(data, curves, title, chance)
        err.print(f"curves written to {written}", highlight=False)


def _show(shown, format: str) -> None:
    from lra_bench import report as rep

    if format == "table":
        for t in shown:
            out.print(rep.rich_table(t.title, t.header, t.rows))
    else:
        sys.stdout.write(rep.render(shown, format))


data_app = typer.Typer(no_args_is_help=True, help="Get, prepare and inspect the task data.")
app.add_typer(data_app, name="data")


@data_app.command("download")
@user_errors
def data_download(
    to: Optional[Path] = typer.Option(None, "--to", help="where the archive and lra_release/ go "
                                      "(default: the data directory, $LRA_DATA_DIR or ./data)"),
    url: str = typer.Option(None, help="the archive's URL (default: the official LRA release)"),
    include: List[str] = typer.Option([], help="also extract this release path, e.g. "
                                      "pathfinder32/curv_baseline/"),
    keep_archive: bool = typer.Option(True, help="keep lra_release.gz after extracting"),
    retries: int = typer.Option(5, help="resume attempts within this call"),
):
    """Fetch the LRA release archive (resumable) and extract the parts the tasks read."""
    from lra_bench.data import download

    result = download.download(paths.data_dir(to), url or download.OFFICIAL_URL, tuple(include),
                               keep_archive=keep_archive, retries=retries, log=_log)
    files = ", ".join(f"{k}: {v}" for k, v in sorted(result["files"].items()))
    out.print(f"extracted to {paths.data_dir(to) / download.RELEASE} ({files})", highlight=False)


@data_app.command("prepare")
@user_errors
def data_prepare(
    task: str = typer.Argument(..., help="a name from `lra list tasks`"),
    preset: List[str] = typer.Option([], help="prepare only this preset (repeatable; default: all)"),
    source: Optional[str] = typer.Option(None, help="a file, a folder, 'tfds' or 'tfds:DIR' "
                                         "(default: the task's usual source)"),
    generate: bool = typer.Option(False, help="generate the source (ListOps, Pathfinder, Path-X)"),
    set_: List[str] = typer.Option([], "--set", help="override a data setting: data.key=value"),
    data_dir: Optional[Path] = typer.Option(None, help="default: $LRA_DATA_DIR or ./data"),
    force: bool = typer.Option(False, help="rebuild even if the cache is current"),
):
    """Convert a task's source into the cache runs read (idempotent)."""
    from lra_bench.data import prepare

    doc = config.load_spec("tasks", task)
    presets = preset or sorted(doc.get("presets", {}))
    ddir = paths.data_dir(data_dir)
    for p in presets:
        data = config.resolve_data(task, p, set_)
        dest, manifest, wrote = prepare.prepare(task, p, data, ddir, source=source,
                                                generate=generate, force=force, log=_log)
        counts = "/".join(str(prepare_count(manifest, s)) for s in ("train", "val", "test"))
        state = "prepared" if wrote else "already prepared"
        skipped = sum(manifest.get("skipped", {}).values())
        out.print(f"{task}/{p}: {state} in {dest} (train/val/test {counts}"
                  f"{f', {skipped} skipped' if skipped else ''})", highlight=False)


def prepare_count(manifest: dict, split: str) -> int:
    from lra_bench.data.cache import split_info

    return split_info(manifest, split)["count"]


@data_app.command("info")
@user_errors
def data_info(
    data_dir: Optional[Path] = typer.Option(None, help="default: $LRA_DATA_DIR or ./data"),
    verify: bool = typer.Option(False, help="re-hash every cached file against its manifest"),
):
    """What is prepared, where, how big, and from what."""
    import json

    from rich.table import Table

    from lra_bench.data import cache, download

    ddir = paths.data_dir(data_dir)
    found = cache.find_all(ddir)
    t = Table(title=f"prepared data in {ddir}", title_justify="left")
    for c in ("task", "variant", "train", "val", "test", "size", "source", "created"):
        t.add_column(c)
    bad_any = False
    for path, m in found:
        counts = []
        for s in ("train", "val", "test"):
            info = m["splits"][s]
            counts.append(f"= {info['same_as']}" if "same_as" in info else str(info["count"]))
        src = m["source"]
        what = ("generated" if src.get("generated") else src.get("kind", "")) or "files"
        where = src.get("root") or src.get("data_dir") or (src.get("files") or [[""]])[0][0]
        size = f"{cache.disk_bytes(path) / 2**20:.1f} MiB"
        if verify:
            bad = cache.verify(path, m)
            bad_any |= bool(bad)
            size += " ok" if not bad else f" CHANGED: {', '.join(bad)}"
        t.add_row(m["task"], m["variant"], *counts, size, f"{what} {where or ''}".strip(),
                  m["created"])
    out.print(t if found else f"nothing prepared in {ddir}; see `lra data prepare --help`")
    marker = ddir / download.RELEASE / download.MARKER
    if marker.exists():
        files = json.loads(marker.read_text()).get("files", {})
        out.print(f"release: {marker.parent} ("
                  + ", ".join(f"{k}: {v} files" for k, v in sorted(files.items())) + ")",
                  highlight=False)
    if bad_any:
        raise typer.Exit(1)


def _log(message: str) -> None:
    err.print(message, highlight=False, markup=False)


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
    import signal

    # A terminated command unwinds like Ctrl-C, so temporary folders (caches being prepared,
    # archives being extracted) are removed on the way out instead of left behind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    app()
