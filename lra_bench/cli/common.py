"""What every `lra` command shares: the two consoles (results to stdout; progress, logs and
errors to stderr), the one-line user error with exit code 2, and the printers and option parsers
that more than one command uses."""

from __future__ import annotations

import errno
import functools
import shlex
import sys
from pathlib import Path

import typer
from rich.console import Console

from lra_bench import interruption, progress, protocols
from lra_bench.errors import UserError

# `--quiet` on every command that shows progress: none of it; errors and results still
QUIET = typer.Option(False, "--quiet", "-q", help="no progress display or progress lines "
                     "(errors and results still print)")

# Piped output is read by people and scripts alike: do not squeeze tables to 80 columns.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)


def preset_help(lead: str) -> str:
    """A --preset option's help: `lead`, then each preset the task TOMLs define with its
    one-line description (the protocol's title or the preset's `description`), read from the
    data when the CLI is built, so a preset added there is listed without touching the CLI."""
    listed = "; ".join(f"{name}: {text}" if text else name
                       for name, text in protocols.preset_descriptions().items())
    return f"{lead}. {listed or '(none defined)'}"


def user_errors(fn):
    """Turn a UserError into one line on stderr and exit code 2, and a stop signal that the
    command did not handle itself into one line and exit 130 / 143."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt as e:  # interruption.Stopped: SIGINT or SIGTERM
            typer.echo(stopped_line(e), err=True)
            raise typer.Exit(interruption.exit_code(e)) from None
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


def stopped_line(e: BaseException) -> str:
    """What a command stopped by a signal says, when it keeps no work to continue (a run, a
    sweep and a grid print their own resume command): the command to start it again, as typed."""
    name = interruption.signal_name(e)
    if Path(sys.argv[0]).name in ("lra", "__main__.py"):
        return (f"stopped by {name} before it finished; start it again with: "
                f"lra {shlex.join(sys.argv[1:])}")
    return f"stopped by {name} before it finished; run the same command again to start over"


_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def log(message: str) -> None:
    """A library's progress line, on stderr as it is (no markup); none with --quiet."""
    if not progress.quiet():
        err.print(message, highlight=False, markup=False)


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


def print_tables(tables, format: str) -> None:
    """(title, header, rows) tables as rich tables, or as markdown with `format` markdown."""
    # pandas, through the report modules: only the commands that print tables load it
    from lra_bench import report as rep
    from lra_bench import sweep_report as sr

    for title, header, rows in tables:
        if format == "markdown":
            out.print(f"### {title}\n\n{rep.markdown(header, rows)}\n", highlight=False, markup=False)
        else:
            out.print(sr.rich_table(title, header, rows))
