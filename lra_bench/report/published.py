"""The published figures (LRA Table 1, the Nystromformer re-run, later results) and their
protocols; `--published`: one block per protocol, our runs of its preset beside its rows."""

from __future__ import annotations

import pandas as pd

from lra_bench import paths, reproduced
from lra_bench.report.cells import _average_cells, _average_headers, _fmt, accuracy_rows
from lra_bench.report.runs import SELECTIONS, TASK_ORDER, filter_runs
from lra_bench.report.tables import AVERAGES, _score, accuracy_table, add_averages


PUBLISHED = paths.PACKAGE_DIR / "published"


def published_accuracy() -> pd.DataFrame:
    """Every published accuracy row (LRA Table 1, the Nystromformer re-run, later results), each
    with its protocol, and the averages recomputed the same way as for our runs (`avg` is the
    paper's own)."""
    paper = pd.read_csv(PUBLISHED / "lra_accuracy.csv", dtype={"pathx": str})
    later = pd.read_csv(PUBLISHED / "lra_frontier.csv", dtype={"pathx": str})
    paper["attention_based"], paper["checked"] = "yes", "read from the paper"
    return add_averages(pd.concat([paper, later], ignore_index=True))


def protocols() -> pd.DataFrame:
    """protocol -> name, selection rule, whether our runs of the same preset are comparable."""
    return pd.read_csv(PUBLISHED / "protocols.csv").set_index("protocol")


def _published_cell(v) -> str:
    if isinstance(v, str) and v.strip().upper() == "FAIL":
        return "FAIL"
    return _fmt(_score(v, ""))


def published_rows(tasks: list[str], pub: pd.DataFrame | None = None
                   ) -> tuple[list[str], list[list[str]]]:
    pub = published_accuracy() if pub is None else pub
    header = ["source", "model", *tasks, *_average_headers(), "paper avg", "attention-based",
              "checked"]
    rows = [[r["source"], r["model"], *[_published_cell(r.get(t)) for t in tasks],
             *_average_cells(r), _fmt(r["avg"]), str(r["attention_based"]), str(r["checked"])]
            for _, r in pub.iterrows()]
    return header, rows


def published_blocks(runs: pd.DataFrame, selection: str | None = None
                     ) -> list[tuple[str, str, pd.DataFrame, tuple[list[str], list[list[str]]]]]:
    """`--published`: one block per protocol with comparable runs possible (protocols.csv's
    runs_comparable: lra, nystrom, s4, s5): its published rows, then our runs of the preset of
    the same name, tested under the protocol's selection rule (or `selection` when given), then
    that preset's majority-class row, and the `reproduced_<protocol>` comparison. Then one
    block of later results, each under its own protocol, beside which no run of ours stands.
    Returns (name, title, frame, (header, rows)) per block."""
    pub, prot = published_accuracy(), protocols()
    tasks = TASK_ORDER
    blocks = []
    for protocol, info in prot[prot["runs_comparable"] == "yes"].iterrows():
        rule = selection or ("best" if info["selection"] == "best_val" else "last")
        ours = accuracy_table(filter_runs(runs, presets=[protocol]), rule)
        mine = pub[pub["protocol"] == protocol]
        header, rows = published_rows(tasks, mine)
        frame = mine.assign(kind="published")
        if not ours.empty:
            for t in tasks:
                if t not in ours:
                    ours[t], ours[f"{t}_std"], ours[f"{t}_n"] = float("nan"), 0.0, 0
            ours = add_averages(ours)
            _, our_rows = accuracy_rows(ours[["preset", "model", *tasks,
                                              *[c for c in ours.columns if c not in tasks]]])
            width = len(header)
            for (_, r), cells in zip(ours.iterrows(), our_rows):
                label = "lra-bench (majority class of our test split)" if r["kind"] == "baseline" \
                    else f"lra-bench, --preset {protocol}"
                rows.append([label, r["model"], *cells[2:2 + len(tasks) + len(AVERAGES)], "-",
                             "-" if r["kind"] == "baseline" else "yes", "measured here"][:width])
            frame = pd.concat([frame, ours.assign(source="lra-bench")], ignore_index=True)
        rule_text = SELECTIONS[rule][2]
        title = (f"Protocol `{protocol}`: {info['name']}; test accuracy (%) of the {rule_text}"
                 f" (runs of --preset {protocol} only)")
        blocks.append((f"published_{protocol}", title, frame, (header, rows)))
        if not ours.empty:
            c_header, c_rows, c_frame, notes = reproduced.comparison(ours, mine, protocol)
            if c_rows:
                c_title = (f"Protocol `{protocol}`: our runs beside the published figure; inside "
                           f"the spread = within {reproduced.SPREAD:g} sd of our seeds"
                           + "".join(f". {n}" for n in notes))
                blocks.append((f"reproduced_{protocol}", c_title, c_frame, (c_header, c_rows)))
    later = pub[pub["protocol"].isin(prot[prot["runs_comparable"] != "yes"].index)]
    title = ("Later results, each under its own protocol (none comparable with a run here; "
             "attention-based says which are not attention models; `checked` says how far each "
             "figure was verified against a stored source)")
    blocks.append(("published_later", title, later.assign(kind="published"),
                   published_rows(tasks, later)))
    return blocks
