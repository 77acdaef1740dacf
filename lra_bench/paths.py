"""Where lra-bench finds its declarative configs and where it reads and writes data.

`tasks/` and `models/` live at the project root. The package resolves them from, in order,
$LRA_HOME, the source tree the package was imported from (editable installs and `PYTHONPATH=.`
runs), and the current directory, so `lra` works from any working directory after install.
"""

from __future__ import annotations

import contextlib
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


def data_dir(explicit: str | Path | None = None, option: str = "--data-dir") -> Path:
    """--data-dir (or the `option` that gave `explicit`), else $LRA_DATA_DIR, else ./data."""
    return _folder(explicit, option, "LRA_DATA_DIR", "data")


def results_dir(explicit: str | Path | None = None) -> Path:
    """--results-dir, else $LRA_RESULTS_DIR, else ./results."""
    return _folder(explicit, "--results-dir", "LRA_RESULTS_DIR", "results")


def _folder(explicit, option: str, env: str, default: str) -> Path:
    """The folder, checked up front: a file on its path would otherwise fail only when the
    first write comes, after minutes of work."""
    if explicit:
        path, named = Path(explicit).expanduser(), option
    elif os.environ.get(env):
        path, named = Path(os.environ[env]).expanduser(), f"${env}"
    else:
        path, named = Path(default), f"the default {option}"
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                where = "is a file" if p == path else f"is below the file {p}"
                raise UserError(f"{named} {path} {where}, not a folder; give a folder path "
                                "(it is created when missing)")
            break
    return path


@contextlib.contextmanager
def made_dirs(path: Path):
    """mkdir -p `path`; if the block fails, remove the folders this made that are still empty,
    so a refused or interrupted command leaves no empty folders behind."""
    new = mkdirs(path)
    try:
        yield Path(path)
    except BaseException:
        remove_empty(new)
        raise


def mkdirs(path: Path) -> list[Path]:
    """mkdir -p `path`; returns the folders it created, deepest first."""
    path = Path(path)
    new = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    return new


def remove_empty(folders: list[Path]) -> None:
    """Remove these folders (deepest first) while they are empty."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:
            break  # not empty (or gone): its parents are not empty either
