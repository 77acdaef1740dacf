"""What `lra --version` and `lra list` show: versions and devices, and the registered tasks and
models as plain rows (one dict per row), which the CLI prints as a table, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from typing import Any

from rich.table import Table

from lra_bench import __version__, config, plugins

LIST_FORMATS = ("table", "json", "csv")


def versions() -> str:
    """lra-bench, jax and flax versions, the git commit, and the devices jax sees."""
    # jax and flax (and measure, which imports jax): only --version needs them, while `lra --help`
    # and `lra list` import this module
    import flax
    import jax

    from lra_bench.measure import git_commit

    devices = Counter(d.device_kind if d.device_kind == d.platform else
                      f"{d.platform} {d.device_kind}" for d in jax.devices())
    listed = ", ".join(f"{n} x {kind}" for kind, n in devices.items())
    return (f"lra-bench {__version__} (commit {git_commit()})\njax {jax.__version__}\n"
            f"flax {flax.__version__}\ndevices: {listed}")


def listing(kinds: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
    """{"tasks": [...], "models": [...]}: each TOML read (and checked) before anything prints."""
    out: dict[str, list[dict[str, Any]]] = {}
    if "tasks" in kinds:
        out["tasks"] = []
        for name, entry in config.available("tasks").items():
            doc = config.load_spec("tasks", name)
            out["tasks"].append({"task": name, "length": doc["data"]["max_length"],
                                 "classes": doc["data"]["num_classes"],
                                 "presets": sorted(doc.get("presets", {})),
                                 "description": doc.get("description", ""),
                                 "source": entry.source})
    if "models" in kinds:
        out["models"] = []
        for name, entry in config.available("models").items():
            doc = config.load_spec("models", name)
            mixer = dict(doc["mixer"])
            if entry.path is None:  # an entry point's model: its mixer's own defaults
                mixer.update(plugins.declared_defaults(mixer["kind"]))
            out["models"].append({"model": name, "mixer": mixer.pop("kind"), "options": mixer,
                                  "description": doc.get("description", ""),
                                  "source": entry.source})
    return out


def cell(value: Any) -> str:
    """A row value as table and CSV text: lists comma-separated, options as key=value."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def to_json(tables: dict[str, list[dict]]) -> str:
    return json.dumps(tables, indent=2) + "\n"


def to_csv(tables: dict[str, list[dict]]) -> str:
    """One CSV block per listing, an empty line between them."""
    blocks = []
    for kind, rows in tables.items():
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [kind[:-1]],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: cell(v) for k, v in row.items()} for row in rows)
        blocks.append(buf.getvalue())
    return "\n".join(blocks)


def rich_tables(tables: dict[str, list[dict]]) -> list:
    out = []
    for kind, rows in tables.items():
        t = Table(title=kind, title_justify="left")
        for c in (rows[0] if rows else [kind[:-1]]):
            t.add_column(c)
        for row in rows:
            t.add_row(*(cell(v) for v in row.values()))
        out.append(t)
    return out
