"""Display rows and frames as text: a rich table, markdown, LaTeX (booktabs), CSV and JSON;
the latest tables saved beside the runs, and `--format csv` read back."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
from rich.table import Table


FORMATS = ("table", "markdown", "csv", "json", "latex")


def rich_table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    t = Table(title=title, title_justify="left")
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i < 2 else "right")
    for r in rows:
        t.add_row(*r)
    return t


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def to_csv(df: pd.DataFrame) -> str:
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.4f")
    return buf.getvalue()


def save_tables(results_dir: Path, tables: dict[str, pd.DataFrame]) -> None:
    """Keep the latest tables beside the runs (results/tables/<name>.csv), written atomically."""
    folder = Path(results_dir) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        tmp = folder / f".{name}.csv.tmp"
        tmp.write_text(to_csv(df))
        tmp.replace(folder / f"{name}.csv")


def to_json(tables: dict[str, pd.DataFrame]) -> str:
    return json.dumps({k: json.loads(v.to_json(orient="records")) for k, v in tables.items()},
                      indent=2)


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", "±": r"$\pm$", "ö": r"\"o"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(c, c) for c in str(text))


def latex(title: str, header: list[str], rows: list[list[str]]) -> str:
    """A booktabs table (\\usepackage{booktabs}) with the title as its caption."""
    spec = "ll" + "r" * (len(header) - 2)
    lines = [r"\begin{table}[ht]", r"\centering", r"\small",
             rf"\caption{{{latex_escape(title)}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def read_csv_tables(text: str) -> dict[str, pd.DataFrame]:
    """Parse `--format csv` output back into {name: table}."""
    tables, name, lines = {}, None, []
    for line in text.splitlines() + ["# "]:
        if line.startswith("# "):
            if name is not None:
                tables[name] = pd.read_csv(io.StringIO("\n".join(lines)))
            name, lines = line[2:].split(":", 1)[0], []
        elif line.strip():
            lines.append(line)
    return tables
