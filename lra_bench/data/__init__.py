"""Task data: each task's [data] `loader` names a module here. Most turn a source into the
prepared cache that runs read (`build` and friends: see `lra_bench.data.prepare`; the format is
in `lra_bench.data.cache`); a loader whose data costs nothing to make (random tokens) may instead
define `load(rc, data_dir)` and return the splits directly.

`load(rc, data_dir)` returns the three splits, {"train"|"val"|"test": {"inputs", "labels"}}, as
memory-mapped arrays: inputs of integer token ids, shape (n, max_length) (or (n, 2, max_length)
for paired documents), pad id 0; labels int32 of shape (n,). The input pipeline widens inputs to
int32 batch by batch. Missing or malformed data raises `UserError` naming the fix.
"""

from __future__ import annotations

import pkgutil
from pathlib import Path

import numpy as np

from lra_bench.config import RunConfig
from lra_bench.errors import UserError

Split = dict[str, np.ndarray]
SPLITS = ("train", "val", "test")
# Modules of this package that are machinery, not loaders.
HELPERS = frozenset({"pipeline", "cache", "prepare", "download", "pathfinder_gen",
                     "pathfinder_separated"})


def loaders() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")
                  and m.name not in HELPERS)


def load(rc: RunConfig, data_dir: Path, log=None) -> dict[str, Split]:
    from lra_bench.data import prepare

    module = prepare.loader_module(rc.data["loader"])
    if not hasattr(module, "build"):  # made on the fly, no cache
        splits = module.load(rc, Path(data_dir))
        check_splits(splits, rc)
        return splits
    kwargs = {"log": log} if log is not None else {}
    splits, manifest = prepare.load(rc, Path(data_dir), **kwargs)
    check_splits(splits, rc, manifest)
    return splits


def check_splits(splits: dict[str, Split], rc: RunConfig, manifest: dict | None = None) -> None:
    for split in SPLITS:
        if split not in splits or len(splits[split]["labels"]) == 0:
            raise UserError(f"task '{rc.task_name}': split '{split}' is missing or empty")
        s = splits[split]
        if s["inputs"].shape[-1] != rc.data["max_length"] or len(s["inputs"]) != len(s["labels"]):
            raise UserError(
                f"task '{rc.task_name}': split '{split}' has inputs {s['inputs'].shape} and "
                f"{len(s['labels'])} labels; expected length {rc.data['max_length']}"
            )
        if bool(rc.data.get("dual", False)) != (s["inputs"].ndim == 3):
            raise UserError(f"task '{rc.task_name}': split '{split}' has inputs {s['inputs'].shape}, "
                            f"which does not fit data.dual = {rc.data.get('dual', False)}")
        bad = (s["labels"] < 0) | (s["labels"] >= rc.data["num_classes"])
        if bad.any():
            raise UserError(f"task '{rc.task_name}': split '{split}' has labels outside "
                            f"[0, {rc.data['num_classes']})")
        # The manifest knows each split's largest id; scanning a memory-mapped Path-X would not pay.
        max_id = (prepared_max_id(manifest, split) if manifest is not None
                  else int(s["inputs"].max(initial=0)))
        if max_id >= rc.data["vocab_size"]:
            raise UserError(f"task '{rc.task_name}': split '{split}' has token ids >= "
                            f"data.vocab_size ({rc.data['vocab_size']})")


def prepared_max_id(manifest: dict, split: str) -> int:
    from lra_bench.data.cache import split_info

    return int(split_info(manifest, split)["max_id"])
