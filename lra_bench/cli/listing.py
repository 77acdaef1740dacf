"""`lra list`: the registered tasks and models."""

from __future__ import annotations

import sys

import typer

from lra_bench import about
from lra_bench.cli.common import out, user_errors
from lra_bench.errors import UserError


@user_errors
def list_cmd(
    what: str = typer.Argument("all", help="tasks, models or all"),
    format: str = typer.Option("table", "--format", "-f", help="table, json or csv"),
):
    """Show the registered tasks and models with their key settings."""
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
