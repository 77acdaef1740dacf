"""The `lra` command line. Commands parse their options and call library functions; results go
to stdout, progress and logs to stderr, and user errors end with one line and exit code 2."""

from __future__ import annotations

import errno
import functools
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import typer
from rich.console import Console

from lra_bench import config, paths
from lra_bench.errors import UserError

# Plain (click) help: options as --flag/--no-flag without type labels, paragraphs re-wrapped.
app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  context_settings={"max_content_width": 100},
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
            # One line, whatever the message quotes (a library's multi-line exception text).
            typer.echo("error: " + " ".join(line.strip() for line in str(e).splitlines()), err=True)
            raise typer.Exit(2) from None
        except OSError as e:
            # Permissions, a read-only or full disk: the user's environment, not a bug (a missing
            # file is not caught here: the folders are checked up front, see paths._folder).
            if e.filename is None or e.errno not in _ENVIRONMENT_ERRNOS:
                raise
            typer.echo(f"error: {e.filename}: {e.strerror}; check that folder's permissions and "
                       "free space, or give another (--data-dir, --results-dir, --to)", err=True)
            raise typer.Exit(2) from None

    return wrapper


_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def _version(value: bool) -> None:
    if value:
        from lra_bench.about import versions

        out.print(versions(), highlight=False, markup=False)
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Show the versions of lra-bench, jax and flax and the "
                                 "devices, then exit."),
    config_dir: List[Path] = typer.Option(
        [], "--config-dir", metavar="DIR", help="also search DIR/tasks and DIR/models for configs, "
        "before $LRA_CONFIG_PATH and the built-in ones (repeatable; a file named like a built-in "
        "replaces it)"),
):
    paths.set_config_dirs(config_dir)


@app.command("list")
@user_errors
def list_cmd(
    what: str = typer.Argument("all", help="tasks, models or all"),
    format: str = typer.Option("table", "--format", "-f", help="table, json or csv"),
):
    """Show the registered tasks and models with their key settings."""
    from lra_bench import about

    if what not in ("tasks", "models", "all"):
        raise UserError(f"unknown listing '{what}'; choose one of: tasks, models, all")
    if format not in about.LIST_FORMATS:
        raise UserError(f"unknown format '{format}'; choose one of: "
                        f"{', '.join(about.LIST_FORMATS)}")
    # Every TOML is read before anything is printed, so a broken one prints nothing but the error.
    tables = about.listing(("tasks", "models") if what == "all" else (what,))
    if format == "table":
        for table in about.rich_tables(tables):
            out.print(table)
    else:
        sys.stdout.write(about.to_json(tables) if format == "json" else about.to_csv(tables))


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
                 "--seed": rc.seed, "--steps": rc.train["steps"], "--dtype": rc.model["dtype"],
                 "--grad-accum": rc.train["grad_accum"], "--set": list(rc.overrides)}
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
            f"peak {mem / 2**20 if mem else float('nan'):.1f} MiB ({summary['memory_source']})"
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


@app.command()
@user_errors
def run(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="a name from `lra list models`"),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="a name from `lra list tasks`"),
    preset: Optional[str] = typer.Option(None, help="the task's preset (a whole protocol): smoke "
                                         "(default), quick, lra or nystrom; `lra list tasks` "
                                         "shows each task's"),
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
):
    """Train MODEL on TASK, then record accuracy, step time and peak memory."""
    import signal

    from lra_bench import data, distributed, results
    from lra_bench import run as runner

    # the options as given: what --resume checks against the run's saved config
    given = {"--model": model, "--task": task, "--preset": preset, "--seed": seed,
             "--steps": steps, "--dtype": dtype, "--grad-accum": grad_accum, "--set": list(set_),
             "--seeds": seeds}
    # The shortcuts are settings like any --set: recorded with the run, so the report keeps a
    # changed run apart from its preset's own (a 20-step check is not the preset's result).
    set_ = list(set_)
    if steps is not None:
        set_.append(f"train.steps={steps}")
    if dtype is not None:
        set_.append(f'model.dtype="{dtype}"')
    if grad_accum is not None:
        set_.append(f"train.grad_accum={grad_accum}")
    ddir, rdir = paths.data_dir(data_dir), paths.results_dir(results_dir)
    if memory_limit is not None:
        from lra_bench.preflight import parse_bytes

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
        raise typer.Exit(130) from None
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
    grid: Optional[str] = typer.Option(None, "--grid", help="only grid ID's runs (`latest`: the "
                                       "newest grid), missing cells marked"),
):
    """Leaderboard of every finished run (one row per model, one column per task, a majority-class
    row per preset), or with --sweep [ID] the efficiency of a sweep (LRA Table 2)."""
    from lra_bench import report as rep

    if format not in rep.FORMATS:
        raise UserError(f"unknown format '{format}'; choose one of: {', '.join(rep.FORMATS)}")
    # An image path that cannot be written is refused before any table is printed.
    for option, image in (("--plot", plot), ("--curves", curves)):
        if image is None:
            continue
        if image.suffix.lower() != ".png":
            raise UserError(f"{option} {image}: give a .png path, e.g. {option} curves.png")
        if not image.expanduser().absolute().parent.is_dir():
            raise UserError(f"{option} {image}: the folder {image.parent} does not exist; create "
                            "it or write the image elsewhere")
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
    if grid is not None:
        from lra_bench.grid import report as grid_report

        ((title, header, rows),), frames, _ = grid_report(rdir, grid, selection)
        shown = [rep.Shown("grid", title, header, rows, frames["grid"])]
    elif runs_:
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
        # The validation panel's chance line is the validation split's majority (older runs
        # recorded only the test split's: that one then, and the plot says which).
        done = rep.finished_runs(rep.normalise(runs))
        chance = {}
        for split in ("test", "val"):
            for _, r in rep.majority_shares(done, split).iterrows():
                chance[(r["preset"], r["task"])] = (100.0 * r[f"{split}_majority"],
                                                    "validation" if split == "val" else "test")
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
    task: Optional[str] = typer.Argument(
        None, help="text or image: the task's original archive (IMDB, CIFAR-10); any other task, "
        "or none: the LRA release (ListOps, AAN, Pathfinder, Path-X)"),
    to: Optional[Path] = typer.Option(None, "--to", help="where the archives and lra_release/ go "
                                      "(default: the data directory, $LRA_DATA_DIR or ./data)"),
    url: str = typer.Option(None, help="the archive's URL (default: the official one)"),
    include: List[str] = typer.Option([], help="also extract this release path, e.g. "
                                      "pathfinder32/curv_baseline/"),
    keep_archive: bool = typer.Option(True, help="keep lra_release.gz after extracting"),
    retries: int = typer.Option(5, help="resume attempts within this call"),
    insecure: bool = typer.Option(False, help="allow a plain-http --url"),
    sha256: Optional[str] = typer.Option(None, help="the release archive's expected SHA-256 "
                                         "(checked before extraction)"),
):
    """Fetch the LRA release archive (resumable), check it and extract the parts the tasks read;
    or, for text and image, the original IMDB / CIFAR-10 archive."""
    from lra_bench.data import download

    where = paths.data_dir(to, "--to")
    if task is not None:
        from lra_bench.data.prepare import loader_module

        spec = config.load_spec("tasks", task)  # an unknown name ends here, with the choices
        original = getattr(loader_module(spec["data"]["loader"]), "ORIGINAL", None)
        if original is not None:
            if include or sha256:
                raise UserError(f"--include and --sha256 are for the LRA release; {task}'s "
                                f"archive has a pinned SHA-256 (drop them, or omit '{task}')")
            archive = download.download_original(original, where, url, retries, _log, insecure)
            out.print(f"{archive}: `lra run -t {task}` and `lra data prepare {task}` read it "
                      "from there", highlight=False)
            return
    result = download.download(where, url or download.OFFICIAL_URL, tuple(include),
                               keep_archive=keep_archive, retries=retries, log=_log,
                               insecure=insecure, sha256=sha256)
    files = ", ".join(f"{k}: {v}" for k, v in sorted(result["files"].items()))
    out.print(f"extracted to {where / download.RELEASE} ({files})", highlight=False)


@data_app.command("prepare")
@user_errors
def data_prepare(
    task: str = typer.Argument(..., help="a name from `lra list tasks`"),
    preset: List[str] = typer.Option([], help="prepare only this preset (repeatable; default: all)"),
    source: Optional[str] = typer.Option(None, help="a file, a folder, 'tfds' or 'tfds:DIR' "
                                         "(default: the task's usual source)"),
    generate: bool = typer.Option(False, help="generate the source (ListOps, Pathfinder, Path-X)"),
    set_: List[str] = typer.Option([], "--set", metavar="data.KEY=VALUE",
                                   help="override a data setting (repeatable)"),
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
        with prepare.stop_cleanly():
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

    from rich.table import Table

    from lra_bench.data import cache, download

    ddir = paths.data_dir(data_dir)
    found, damaged = cache.find_all(ddir)
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
        t.add_row(m["task"], path.name, *counts, size, f"{what} {where or ''}".strip(),
                  m["created"])
    out.print(t if found else f"nothing prepared in {ddir}; see `lra data prepare --help`")
    for path, problem in damaged:  # unusable caches: said, and the exit status says it too
        err.print(f"damaged: {problem}; rebuild it: lra data prepare {path.parent.name} "
                  f"--data-dir {ddir} --force", highlight=False, markup=False)
        bad_any = True
    marker = ddir / download.RELEASE / download.MARKER
    done = download.read_marker(marker.parent)
    if done is not None:
        files = done["files"]
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
    set_: List[str] = typer.Option([], "--set", metavar="SECTION.KEY=VALUE",
                                   help="override a config value (repeatable)"),
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
    preset: str = typer.Option("smoke", help="the task's preset: smoke, quick, lra or nystrom "
                                "(`lra list tasks`)"),
    set_: List[str] = typer.Option([], "--set", metavar="SECTION.KEY=VALUE",
                                   help="override a config value (repeatable)"),
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
        f"softmax attention      {pf.describe_attention(step.attention)}",
        f"available              {pf.format_bytes(capacity.bytes)} ({capacity.source})",
        f"verdict                {verdict}",
    ]
    if fits is False:
        lines.append(f"to fit: {pf.what_to_change(rc, step, capacity)}")
    out.print("\n".join(lines), highlight=False, markup=False)
    if fits is False:
        raise typer.Exit(1)


# ---- lra grid: models x tasks x seeds through submitit (see lra_bench/grid.py, docs/grid.md) --

grid_app = typer.Typer(no_args_is_help=True, invoke_without_command=True,
                       help="Run every (model, task, seed) as one job, on this machine or on SLURM "
                       "through submitit: `lra grid --models ... --tasks ... --seeds ...` starts "
                       "a grid; `lra grid status|resume|cancel [ID]` follow it up.")
app.add_typer(grid_app, name="grid")


@grid_app.callback()
@user_errors
def grid_cmd(
    ctx: typer.Context,
    models: Optional[str] = typer.Option(None, "--models", "-m", help="comma-separated, or all"),
    tasks: Optional[str] = typer.Option(None, "--tasks", "-t", help="comma-separated, or all"),
    seeds: str = typer.Option("0", help="comma-separated seeds, e.g. 0,1,2"),
    preset: str = typer.Option("smoke", help="the tasks' preset: smoke, quick, lra or nystrom "
                                "(`lra list tasks`)"),
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
):
    """Start a grid (with --models/--tasks), or follow one up with a subcommand."""
    if ctx.invoked_subcommand is not None:
        return
    from lra_bench import grid

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
    grid.check_data(plan, _log)
    g = grid.create(plan)
    keys = [j["key"] for j in plan["jobs"]]
    err.print(f"grid {g.grid_id}: {len(keys)} jobs, record in {g.path}", highlight=False)
    _grid_submit(g, keys)


def _grid_submit(g, keys: list) -> None:
    from lra_bench import grid

    if g.plan["resources"]["executor"] == "slurm":
        ids = grid.submit_slurm(g, keys)
        err.print(f"submitted {len(ids)} SLURM jobs ({ids[0].split('_')[0] if ids else '-'}); "
                  f"follow with: lra grid status {g.grid_id}", highlight=False)
        return
    try:
        stopped_by = grid.run_local(g, keys, g.plan["resources"]["parallel"] or 1, _log)
    except KeyboardInterrupt:
        stopped_by = "SIGINT"
    if stopped_by is not None:
        err.print(f"grid {g.grid_id} interrupted ({stopped_by}); continue it with: "
                  f"lra grid resume {g.grid_id}", highlight=False)
        raise typer.Exit(143 if stopped_by == "SIGTERM" else 130)
    _grid_status_table(g)
    rows = grid.status(g)
    if any(r["state"] not in grid.DONE for r in rows):
        err.print(f"not every job completed; rerun the rest with: lra grid resume {g.grid_id}",
                  highlight=False)
        raise typer.Exit(1)


def _grid_dry_run(plan: dict) -> None:
    from rich.table import Table

    from lra_bench import grid

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
    from rich.table import Table

    from lra_bench import grid

    rows = grid.status(g)
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


@grid_app.command("status")
@user_errors
def grid_status(
    grid_id: Optional[str] = typer.Argument(None, metavar="[ID]", help="default: the latest"),
    results_dir: Optional[Path] = typer.Option(None, help="default: $LRA_RESULTS_DIR or ./results"),
):
    """Each job's state (pending, running, completed, diverged, failed, interrupted, cancelled)
    with its run id."""
    from lra_bench import grid

    _grid_status_table(grid.Grid.open(paths.results_dir(results_dir), grid_id))


@grid_app.command("resume")
@user_errors
def grid_resume(
    grid_id: str = typer.Argument(..., metavar="ID"),
    results_dir: Optional[Path] = typer.Option(None, help="default: $LRA_RESULTS_DIR or ./results"),
):
    """Submit again every job that has not completed: interrupted runs continue from their
    newest checkpoint (lra run --resume), failed and cancelled ones run again."""
    from lra_bench import grid

    g = grid.Grid.open(paths.results_dir(results_dir), grid_id)
    keys = grid.resume(g)
    if not keys:
        err.print(f"grid {g.grid_id}: nothing to resume", highlight=False)
        return _grid_status_table(g)
    err.print(f"grid {g.grid_id}: resuming {len(keys)} job(s): {', '.join(keys)}", highlight=False)
    _grid_submit(g, keys)


@grid_app.command("cancel")
@user_errors
def grid_cancel(
    grid_id: str = typer.Argument(..., metavar="ID"),
    results_dir: Optional[Path] = typer.Option(None, help="default: $LRA_RESULTS_DIR or ./results"),
):
    """Cancel what is queued or running (running runs stop with a checkpoint); `lra grid resume`
    continues them."""
    from lra_bench import grid

    g = grid.Grid.open(paths.results_dir(results_dir), grid_id)
    hit = grid.cancel(g)
    err.print(f"grid {g.grid_id}: cancelled {len(hit)} job(s)" + (f": {', '.join(hit)}" if hit
              else ""), highlight=False)
    _grid_status_table(g)


def main() -> None:
    import signal

    # A terminated command unwinds like Ctrl-C, so temporary folders (caches being prepared,
    # archives being extracted) are removed on the way out instead of left behind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    from lra_bench import host

    host.tune_malloc()
    try:
        code = app(standalone_mode=False)
    except Exception as e:  # noqa: BLE001 - click's own errors, matched by shape below
        sys.exit(_click_error(e))
    sys.exit(code if isinstance(code, int) else 0)


def _click_error(e: Exception) -> int:
    """Report an error raised by the CLI parser itself (unknown option or command, bad value) in
    one `error:` line, like every other user error, instead of click's usage block. Matched by
    shape: typer vendors its own click, so its exception classes are not importable stably."""
    name = type(e).__name__
    if name == "Abort":
        print("aborted", file=sys.stderr)
        return 1
    if not (hasattr(e, "format_message") and hasattr(e, "exit_code") and hasattr(e, "show")):
        raise e
    if name == "NoArgsIsHelpError" or not hasattr(e, "ctx"):  # `lra data`: the help itself
        e.show()
        return e.exit_code
    command = e.ctx.command_path if e.ctx is not None else "lra"
    message = " ".join(e.format_message().split()).rstrip(".")
    print(f"error: {message}; see: {command} --help", file=sys.stderr)
    return e.exit_code
