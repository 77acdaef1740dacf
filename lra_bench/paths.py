"""Where lra-bench finds its declarative configs and where it reads and writes data.

`tasks/` and `models/` live at the project root. The package resolves them from, in order,
$LRA_HOME, the source tree the package was imported from (editable installs and `PYTHONPATH=.`
runs), and the current directory, so `lra` works from any working directory after install.
"""

from __future__ import annotations

import os
from pathlib import Path

from lra_bench.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent


def _candidates() -> list[Path]:
    out = []
    if os.environ.get("LRA_HOME"):
        out.append(Path(os.environ["LRA_HOME"]).expanduser())
    out += [PACKAGE_DIR.parent, Path.cwd()]
    return out


def project_root() -> Path:
    for root in _candidates():
        if (root / "tasks").is_dir() and (root / "models").is_dir():
            return root
    raise UserError(
        "cannot find the tasks/ and models/ config folders; set LRA_HOME to the lra-bench checkout"
    )


def tasks_dir() -> Path:
    return project_root() / "tasks"


def models_dir() -> Path:
    return project_root() / "models"


def data_dir(explicit: str | Path | None = None) -> Path:
    """--data-dir, else $LRA_DATA_DIR, else ./data."""
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("LRA_DATA_DIR", "data")).expanduser()


def results_dir(explicit: str | Path | None = None) -> Path:
    """--results-dir, else $LRA_RESULTS_DIR, else ./results."""
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("LRA_RESULTS_DIR", "results")).expanduser()
