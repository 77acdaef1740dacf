"""Where lra-bench finds its declarative configs and where it reads and writes data.

Configs (`tasks/*.toml`, `models/*.toml`) are searched in config roots, first match by name wins:

  1. `lra --config-dir DIR` (repeatable, in the order given)       source: DIR
  2. $LRA_CONFIG_PATH, colon-separated folders                     source: the folder
  3. the built-in set, one of (first that exists):
     - $LRA_HOME, a checkout or any folder with tasks/ and models/  source: LRA_HOME
     - the checkout this package was imported from (editable installs, `PYTHONPATH=.`)
     - the copy shipped inside the installed package (`lra_bench/configs/`, packed by setup.py's
       build step and read with importlib.resources), so a wheel works from any directory
                                                                    source: built-in
A user folder may hold tasks/, models/ or both; a file named like a built-in one replaces it.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lra_bench.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent
BUILTIN = "built-in"

# Set by the CLI's --config-dir; searched before $LRA_CONFIG_PATH.
_cli_config_dirs: list[Path] = []


@dataclass(frozen=True)
class ConfigRoot:
    source: str  # what `lra list` shows
    path: Any  # a Path, or an importlib.resources Traversable for the packaged copy


def set_config_dirs(dirs) -> None:
    """The CLI's --config-dir folders (replacing any set before)."""
    _cli_config_dirs[:] = [Path(d).expanduser() for d in dirs]


def user_config_dirs() -> list[Path]:
    """--config-dir folders, then $LRA_CONFIG_PATH's, absolute and checked, duplicates dropped."""
    return [root.path for root in _user_roots()]


def _user_roots() -> list[ConfigRoot]:
    env = [p for p in os.environ.get("LRA_CONFIG_PATH", "").split(os.pathsep) if p.strip()]
    out: list[ConfigRoot] = []
    for given, where in [(str(d), "--config-dir") for d in _cli_config_dirs] + \
                        [(d, "$LRA_CONFIG_PATH") for d in env]:
        folder = Path(given).expanduser()
        if not folder.is_dir():
            raise UserError(f"{where} {folder}: no such folder; give a folder that holds tasks/ "
                            "and/or models/")
        if not (folder / "tasks").is_dir() and not (folder / "models").is_dir():
            raise UserError(f"{where} {folder} has neither tasks/ nor models/; give the folder "
                            "that holds them")
        folder = folder.resolve()
        if all(folder != root.path for root in out):
            out.append(ConfigRoot(given, folder))  # `lra list` shows the folder as given
    return out


def _has_configs(root) -> bool:
    return (root / "tasks").is_dir() and (root / "models").is_dir()


def checkout() -> Path | None:
    """The source checkout this package was imported from, if it was (not a wheel install)."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() and _has_configs(root) else None


def builtin_root() -> ConfigRoot:
    if os.environ.get("LRA_HOME"):
        home = Path(os.environ["LRA_HOME"]).expanduser()
        if not _has_configs(home):
            raise UserError(f"LRA_HOME={home} has no tasks/ and models/ folders; point it at an "
                            "lra-bench checkout, or unset it to use the installed configs")
        return ConfigRoot("LRA_HOME", home)
    if checkout() is not None:
        return ConfigRoot(BUILTIN, checkout())
    packaged = resources.files("lra_bench") / "configs"
    if _has_configs(packaged):
        return ConfigRoot(BUILTIN, packaged)
    raise UserError("cannot find the built-in tasks/ and models/ configs (a broken install?); "
                    "reinstall lra-bench or set LRA_HOME to an lra-bench checkout")


def config_roots() -> list[ConfigRoot]:
    """Every folder searched for tasks/ and models/, first match wins."""
    return _user_roots() + [builtin_root()]


def project_root():
    """The folder holding the built-in tasks/ and models/."""
    return builtin_root().path


def tasks_dir():
    """The built-in tasks/ folder."""
    return builtin_root().path / "tasks"


def models_dir():
    """The built-in models/ folder."""
    return builtin_root().path / "models"


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
    try:  # can it be made? (permissions, a read-only disk, /proc): made and removed again
        remove_empty(mkdirs(path))
    except OSError as e:
        raise UserError(f"{named} {path} cannot be created ({e.strerror}); give a folder you "
                        "can write") from None
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


def folder_name(value, what: str) -> str:
    """A task or variant name used as one folder name: never a path (`..`, `/`, hidden)."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}", value):
        raise UserError(f"{what} {value!r} cannot name a folder: use letters, digits, '_', '-', "
                        "'.' and '+' (not starting with '.', at most 100)")
    return value
