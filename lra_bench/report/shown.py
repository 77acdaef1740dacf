"""The report as a list of `Shown` tables, and its renderings. Every format renders all of them
(csv/json from the frames, markdown/latex/table from the display rows), so no table is
silently dropped."""

from __future__ import annotations

import pandas as pd

from lra_bench.report.cells import accuracy_rows, efficiency_rows
from lra_bench.report.formats import latex, markdown, to_csv, to_json
from lra_bench.report.published import protocols, published_blocks
from lra_bench.report.runs import BASELINE, SELECTIONS
from lra_bench.report.tables import accuracy_table, efficiency_table


class Shown(tuple):
    """(name, title, header, rows, frame): one table of the report."""

    def __new__(cls, name, title, header, rows, frame):
        return super().__new__(cls, (name, title, header, rows, frame))

    name = property(lambda self: self[0])
    title = property(lambda self: self[1])
    header = property(lambda self: self[2])
    rows = property(lambda self: self[3])
    frame = property(lambda self: self[4])


def leaderboard(runs: pd.DataFrame, selection: str = "run", published: bool = False
                ) -> list[Shown]:
    """The plain report: accuracy (with each preset's majority-class row and both averages),
    efficiency and, with `published`, one block per protocol."""
    acc = accuracy_table(runs, selection)
    if acc.empty:
        return []
    rule = SELECTIONS[selection][2]
    eff = efficiency_table(runs)
    shown = [Shown("accuracy", f"Test accuracy (%) of the {rule}; mean ± std over seeds (the "
                   "latest run of each seed; diverged runs are counted, never averaged); "
                   f"'{BASELINE}' = always guessing the test split's most frequent class",
                   *accuracy_rows(acc), acc),
             Shown("efficiency", "Efficiency (median step time, peak memory)",
                   *efficiency_rows(eff), eff)]
    if published:
        blocks = published_blocks(runs, None if selection == "run" else selection)
        shown += [Shown(name, title, header, rows, frame)
                  for name, title, frame, (header, rows) in blocks]
        alone = sorted(set(acc["preset"]) - set(protocols().index))
        if alone:
            shown[-1] = Shown(shown[-1].name, shown[-1].title + f". Runs of presets "
                              f"{', '.join(alone)} have no published counterpart (see the "
                              "accuracy table)", *shown[-1][2:])
    return shown


def to_csv_all(shown: list[Shown]) -> str:
    """Every table as CSV, each after a `# <name>: <title>` line, separated by a blank line."""
    return "\n".join(f"# {t.name}: {t.title}\n{to_csv(t.frame)}" for t in shown)


def to_json_all(shown: list[Shown]) -> str:
    return to_json({t.name: t.frame for t in shown})


def render(shown: list[Shown], format: str) -> str:
    """csv, json, markdown or latex text of every table (`table` is drawn by rich instead)."""
    if format == "csv":
        return to_csv_all(shown)
    if format == "json":
        return to_json_all(shown) + "\n"
    if format == "latex":
        return "\n\n".join(latex(t.title, t.header, t.rows) for t in shown) + "\n"
    return "\n".join(f"### {t.title}\n\n{markdown(t.header, t.rows)}\n" for t in shown)
