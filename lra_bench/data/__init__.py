"""Task data: each task's [data] `loader` names a module here with a `load(rc, data_dir)`.

A loader returns the three splits as numpy arrays, {"train"|"val"|"test": {"inputs", "labels"}},
inputs int32 of shape (n, max_length) (or (n, 2, max_length) for paired documents), pad id 0,
labels int32 of shape (n,). Missing or malformed data raises `UserError` naming the fix.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import numpy as np

from lra_bench.config import RunConfig
from lra_bench.errors import UserError

Split = dict[str, np.ndarray]
SPLITS = ("train", "val", "test")


def loaders() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")
                  and m.name != "pipeline")


def load(rc: RunConfig, data_dir: Path) -> dict[str, Split]:
    name = rc.data["loader"]
    if name not in loaders():
        raise UserError(f"unknown data loader '{name}'; choose one of: {', '.join(loaders())}")
    splits = importlib.import_module(f"{__name__}.{name}").load(rc, Path(data_dir))
    check_splits(splits, rc)
    return splits


def check_splits(splits: dict[str, Split], rc: RunConfig) -> None:
    for split in SPLITS:
        if split not in splits or len(splits[split]["labels"]) == 0:
            raise UserError(f"task '{rc.task_name}': split '{split}' is missing or empty")
        s = splits[split]
        if s["inputs"].shape[-1] != rc.data["max_length"] or len(s["inputs"]) != len(s["labels"]):
            raise UserError(
                f"task '{rc.task_name}': split '{split}' has inputs {s['inputs'].shape} and "
                f"{len(s['labels'])} labels; expected length {rc.data['max_length']}"
            )
        bad = (s["labels"] < 0) | (s["labels"] >= rc.data["num_classes"])
        if bad.any():
            raise UserError(f"task '{rc.task_name}': split '{split}' has labels outside "
                            f"[0, {rc.data['num_classes']})")
        if s["inputs"].max(initial=0) >= rc.data["vocab_size"]:
            raise UserError(f"task '{rc.task_name}': split '{split}' has token ids >= "
                            f"data.vocab_size ({rc.data['vocab_size']})")
