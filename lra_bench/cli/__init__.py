"""The `lra` command line. Commands parse their options and call library functions; results go
to stdout, progress and logs to stderr, and user errors end with one line and exit code 2.

One module per command group (`listing`, `run`, `report`, `sweep`, `preflight`, `data`, `grid`),
each thin: parse the options, call the library, print. What several commands share (the
consoles, the user-error wrapper, table printing) is in `common`. This module builds the app from
them; the order of registration is the order of `lra --help`.

The command modules import jax-, pandas- or numpy-heavy library modules inside the commands, so
that `lra --help`, `lra list` and a mistyped option answer at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List

import typer

from lra_bench import about, host, interruption, paths
from lra_bench.cli import data, grid, listing, preflight, report, run, sweep
from lra_bench.cli.common import out, stopped_line

# Plain (click) help: options as --flag/--no-flag without type labels, paragraphs re-wrapped.
app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  context_settings={"max_content_width": 100},
                  help="Long Range Arena benchmarks for efficient-attention models in JAX.")


def _version(value: bool) -> None:
    if value:
        out.print(about.versions(), highlight=False, markup=False)
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


app.command("list")(listing.list_cmd)
app.command("run")(run.run)
app.command("report")(report.report)
app.command("sweep")(sweep.sweep)
app.command("preflight")(preflight.preflight_cmd)
app.add_typer(data.app, name="data")
app.add_typer(grid.app, name="grid")


def main() -> None:
    # SIGINT and SIGTERM unwind every command alike (even a background job's, which inherits
    # SIGINT ignored), so temporary folders (caches being prepared, archives being extracted) are
    # removed on the way out instead of left behind.
    interruption.install()
    host.tune_malloc()
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt as e:  # (click turns one inside a command into Abort, below)
        sys.exit(_stopped(e))
    except Exception as e:  # noqa: BLE001 - click's own errors, matched by shape below
        sys.exit(_click_error(e))
    sys.exit(code if isinstance(code, int) else 0)


def _stopped(e: BaseException) -> int:
    """Stopped by a signal outside any command (while starting): one line, exit 130 / 143."""
    print(stopped_line(e), file=sys.stderr, flush=True)
    return interruption.exit_code(e)


def _click_error(e: Exception) -> int:
    """Report an error raised by the CLI parser itself (unknown option or command, bad value) in
    one `error:` line, like every other user error, instead of click's usage block. Matched by
    shape: typer vendors its own click, so its exception classes are not importable stably."""
    name = type(e).__name__
    if name == "Abort":
        cause = e.__cause__ or e.__context__
        if isinstance(cause, KeyboardInterrupt):
            return _stopped(cause)
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
