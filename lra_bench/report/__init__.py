"""`lra report`: leaderboards from every run summary, the LRA paper's Table 1 layout.

    runs        every run summary as one frame: loaded, normalised, filtered; the run list
    tables      the accuracy table (majority-class rows, averages) and the efficiency table
    cells       the tables as display rows (header, text cells)
    published   the published figures and protocols, the `--published` blocks
    formats     rich, markdown, LaTeX, CSV and JSON text; the saved tables
    shown       the report as a list of `Shown` tables (`leaderboard`) and `render`
    curves      the learning curves (`--curves`) and their majority-class lines
    html_page   the HTML pages' template, tables and inline charts (`--html`)
    html_site   the report as a static site (`--html DIR`)

Each module imports only those listed above it (and the modules beside this package: `published`
`reproduced`, `html_site` `plots`, `sweep` and `sweep_report`), so `from lra_bench import report`
gives every name below.
"""

from lra_bench.report.runs import (BASELINE, KEYS, NEUTRAL_SETTINGS, SELECTIONS, TASK_ORDER,
                                   best_eval, experiment, filter_runs, finished_runs, load_runs,
                                   normalise, runs_table)
from lra_bench.report.tables import (AVERAGES, FAIL_SCORE, accuracy_table, add_averages,
                                     average_cell, baseline_rows, efficiency_table,
                                     majority_shares)
from lra_bench.report.cells import (_fmt, _int, accuracy_cell, accuracy_rows, efficiency_rows,
                                    run_rows)
from lra_bench.report.published import (PUBLISHED, protocols, published_accuracy,
                                        published_blocks, published_rows)
from lra_bench.report.formats import (FORMATS, latex, latex_escape, markdown, read_csv_tables,
                                      rich_table, save_tables, to_csv, to_json)
from lra_bench.report.shown import Shown, leaderboard, render, to_csv_all, to_json_all
from lra_bench.report.curves import chance_lines, learning_curves
from lra_bench.report.html_site import check_target, reproduce_command, write_site

__all__ = ["AVERAGES", "BASELINE", "FAIL_SCORE", "FORMATS", "KEYS", "NEUTRAL_SETTINGS",
           "PUBLISHED", "SELECTIONS", "TASK_ORDER", "Shown", "_fmt", "_int", "accuracy_cell",
           "accuracy_rows", "accuracy_table", "add_averages", "average_cell", "baseline_rows",
           "best_eval", "chance_lines", "check_target", "efficiency_rows", "efficiency_table",
           "experiment", "filter_runs", "finished_runs", "latex", "latex_escape", "leaderboard",
           "learning_curves", "load_runs", "majority_shares", "markdown", "normalise",
           "protocols", "published_accuracy", "published_blocks", "published_rows",
           "read_csv_tables", "render", "reproduce_command", "rich_table", "run_rows",
           "runs_table", "save_tables", "to_csv", "to_csv_all", "to_json", "to_json_all",
           "write_site"]
