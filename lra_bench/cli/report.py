"""`lra report`: the leaderboard of finished runs, a list of runs, two runs compared, a grid's
runs, or a sweep in the LRA Table 2 layout (`--sweep`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional, Tuple

import typer

from lra_bench import paths
from lra_bench import sweep as sw
from lra_bench.cli.common import err, out, preset_help, print_tables, user_errors
from lra_bench.errors import UserError


@user_errors
def report(
    results_dir: Optional[Path] = typer.Option(None, help="default: $LRA_RESULTS_DIR or ./results"),
    format: str = typer.Option("table", "--format", "-f", help="table, markdown, csv, json or "
                               "latex (every format holds every table)"),
    selection: str = typer.Option("run", help="which parameters' test accuracy: run (each run's "
                                  "own rule), best (best-val) or last"),
    published: bool = typer.Option(False, help="show the published accuracy rows too, one block "
                                   "per protocol beside runs of the same preset (with --sweep: "
                                   "the whole of LRA Table 2 too; each swept model is shown "
                                   "beside its Table 2 row either way)"),
    runs_: bool = typer.Option(False, "--runs", help="list every run (any status) instead of "
                               "the leaderboard"),
    models: List[str] = typer.Option([], "--model", "-m", help="only this model (repeatable)"),
    tasks: List[str] = typer.Option([], "--task", "-t", help="only this task (repeatable)"),
    presets: List[str] = typer.Option([], "--preset", help=preset_help("only this preset "
                                                                       "(repeatable)")),
    curves: Optional[Path] = typer.Option(None, help="also draw validation accuracy and training "
                                          "loss against step into this .png"),
    compare: Optional[Tuple[str, str]] = typer.Option(None, help="show two runs side by side: "
                                                      "the config keys that differ, the metrics"),
    sweep: bool = typer.Option(False, "--sweep", help="report a sweep (ID, default the latest; "
                               "with -t/--preset the latest of them, with -m only those models) "
                               "in the LRA Table 2 layout instead of the leaderboard"),
    sweep_id: Optional[str] = typer.Argument(None, metavar="ID", help="with --sweep: which sweep"),
    plot: Optional[Path] = typer.Option(None, help="with --sweep: also draw time and memory "
                                        "against length into this .png"),
    grid: Optional[str] = typer.Option(None, "--grid", help="only grid ID's runs (`latest`: the "
                                       "newest grid), missing cells marked"),
    html: Optional[Path] = typer.Option(None, "--html", metavar="DIR", help="also write the "
                                        "report as a static site into DIR (open DIR/index.html "
                                        "in a browser; an earlier report there is replaced)"),
):
    """Leaderboard of every finished run (one row per model, one column per task, a majority-class
    row per preset), or with --sweep [ID] the efficiency of a sweep (LRA Table 2)."""
    from lra_bench import report as rep  # pandas: loaded when the command runs

    if format not in rep.FORMATS:
        raise UserError(f"unknown format '{format}'; choose one of: {', '.join(rep.FORMATS)}")
    if compare and any(ref.startswith("-") for ref in compare):
        raise UserError(f"--compare takes two run ids, got {' '.join(compare)}; write --compare "
                        "A B, then the other options")
    modes = [name for name, given in (("--compare", bool(compare)), ("--grid", grid is not None),
                                      ("--sweep", sweep or sweep_id is not None or plot is not None),
                                      ("--runs", runs_)) if given]
    if len(modes) > 1:
        raise UserError(f"{' and '.join(modes)} show different reports; give one of them")
    if html is not None and modes:
        raise UserError(f"--html writes the whole report (leaderboard, runs, sweeps); give it "
                        f"without {modes[0]}")
    if html is not None:  # a folder that cannot hold the site is refused before any output
        rep.check_target(html)
    # An image path that cannot be written is refused before any table is printed.
    for option, image in (("--plot", plot), ("--curves", curves)):
        if image is None:
            continue
        if image.expanduser().is_dir():
            raise UserError(f"{option} {image} is a folder; give a .png file path, e.g. "
                            f"{option} {image / 'curves.png'}")
        if image.suffix.lower() != ".png":
            raise UserError(f"{option} {image}: give a .png path, e.g. {option} curves.png")
        if not image.expanduser().absolute().parent.is_dir():
            raise UserError(f"{option} {image}: the folder {image.parent} does not exist; create "
                            "it or write the image elsewhere")
    if sweep or sweep_id is not None or plot is not None:
        return _sweep_report(paths.results_dir(results_dir), sweep_id, format, published, plot,
                             (models, tasks, presets))
    if selection not in rep.SELECTIONS:
        raise UserError(f"unknown selection '{selection}'; choose run, best or last")
    rdir = paths.results_dir(results_dir)
    if compare:
        from lra_bench.compare import compare as compare_runs  # pandas, as above

        return _show(compare_runs(rdir, *compare), format)
    runs, warnings = rep.load_runs(rdir)
    for w in warnings:
        err.print(f"warning: {w}", highlight=False, markup=False)
    runs = rep.filter_runs(runs, models, tasks, presets)
    filters = " ".join([*(f"-m {m}" for m in models), *(f"-t {t}" for t in tasks),
                        *(f"--preset {p}" for p in presets)])
    if grid is not None:
        from lra_bench.grid import report as grid_report  # submitit: for --grid only

        ((title, header, rows),), frames, grid_warnings = grid_report(rdir, grid, selection)
        for w in [w for w in grid_warnings if w not in warnings]:
            err.print(f"warning: {w}", highlight=False, markup=False)
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
    if curves is not None:  # read (damaged lines skipped with a warning) before any output
        curve_warnings: list[str] = []
        data = rep.learning_curves(runs, rdir, curve_warnings)
        for w in curve_warnings:
            err.print(f"warning: {w}", highlight=False, markup=False)
    if grid is None and not runs_ and not filters:
        rep.save_tables(rdir, {t.name: t.frame for t in shown[:2]})
    _show(shown, format)
    if curves is not None:
        from lra_bench.plots import plot_curves  # matplotlib: for --curves only

        title = "Learning curves: mean over seeds, band = min-max over seeds" + (
            f" ({filters})" if filters else "")
        written = plot_curves(data, curves, title, rep.chance_lines(runs))
        err.print(f"curves written to {written}", highlight=False)
    if html is not None:
        index, site_warnings = rep.write_site(runs, rdir, html, selection, filters, models,
                                              tasks, presets)
        for w in [w for w in site_warnings if w not in warnings]:
            err.print(f"warning: {w}", highlight=False, markup=False)
        err.print(f"HTML report written to {index}", highlight=False, markup=False)


def _show(shown, format: str) -> None:
    from lra_bench import report as rep  # pandas: loaded when the command runs

    if format == "table":
        for t in shown:
            out.print(rep.rich_table(t.title, t.header, t.rows))
    else:
        sys.stdout.write(rep.render(shown, format))


def _sweep_report(results_dir: Path, sweep_id: Optional[str], format: str, published: bool,
                  plot: Optional[Path], filters: tuple = ((), (), ())) -> None:
    """filters: (models, tasks, presets): -t / --preset pick the newest sweep of them (or check
    the given one), -m keeps those models' rows."""
    from lra_bench import sweep_report as sr  # pandas: loaded when the command runs

    sweep_id, settings, df = sr.load(results_dir, sweep_id, *filters)
    if plot is not None:
        from lra_bench.plots import plot_sweep  # matplotlib: for --plot only

        plot_sweep(df, plot, sr.title(sweep_id, settings, df).split(";")[0])
        err.print(f"plot written to {plot}", highlight=False)
    if format == "csv":
        sys.stdout.write(sw.rows_csv(df.to_dict("records")))
        return
    if format == "json":
        from lra_bench import report as rep  # pandas, as above

        tables = {"sweep": df, "beside_published": sr.beside_published(df)}
        if published:
            tables["published"] = sr.published_efficiency()
        sys.stdout.write(rep.to_json(tables) + "\n")
        return
    tables = [(sr.title(sweep_id, settings, df), *sr.measured_table(df)),
              sr.beside_table(sweep_id, settings, df),
              ("Every point", *sr.points_table(df))]
    if published:
        tables.append(sr.published_table())
    print_tables(tables, format)
