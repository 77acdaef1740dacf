"""Task data: each task's [data] `loader` names a module here. Most turn a source into the
prepared cache that runs read (`build` and friends: see `lra_bench.data.prepare`; the format is
in `lra_bench.data.cache`); a loader whose data costs nothing to make (random tokens) may instead
define `load(rc, data_dir)` and return the splits directly.

A run's data, in one place: `find(rc, data_dir)` resolves the loader, keys the cache by the
run's [data] settings and reads it, or says how to prepare it; `TaskData.load()` then hands back
the splits, generating them first when the preset does (`data.generate = true`). `load(rc,
data_dir)` is the two at once.

The splits are {"train"|"val"|"test": {"inputs", "labels"}}, memory-mapped: inputs of integer
token ids, shape (n, max_length) (or (n, 2, max_length) for paired documents), pad id 0; labels
int32 of shape (n,). The input pipeline widens inputs to int32 batch by batch. Missing or
malformed data raises `UserError` naming the fix.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lra_bench.config import RunConfig
from lra_bench.data import prepare
from lra_bench.data.cache import DamagedCache, prep_config, read, read_manifest, split_info
from lra_bench.data.prepare import Log, loader_module, stderr_log
from lra_bench.errors import UserError

Split = dict[str, np.ndarray]
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TaskData:
    """A run's data, found: its splits when they are there to read (a current cache, or data
    made on the fly), else what generating them takes (a preset that generates its data)."""

    rc: RunConfig
    data_dir: Path
    log: Log
    splits: dict[str, Split] | None = None

    def load(self) -> dict[str, Split]:
        """The splits, checked; a generated preset's are made first (minutes, for Pathfinder)."""
        if self.splits is not None:
            return self.splits
        rc = self.rc
        with _rebuild_hint(rc, self.data_dir):
            dest, manifest, _ = prepare.prepare(rc.task_name, rc.preset, rc.data, self.data_dir,
                                                log=self.log)
            splits = read(dest, manifest)
        check_splits(splits, rc, manifest)
        return splits


def find(rc: RunConfig, data_dir: Path, log: Log | None = None) -> TaskData:
    """What a run reads, found without making anything: data that costs nothing (a prepared
    cache, data made on the fly) is read and checked now, so a missing or damaged cache is a
    UserError naming the command that makes it; a preset that generates its data and has none
    yet leaves that to `TaskData.load()`."""
    data_dir, log = Path(data_dir), log or stderr_log
    module = loader_module(rc.data["loader"])
    if not hasattr(module, "build"):  # made on the fly, no cache
        splits = module.load(rc, data_dir)
        check_splits(splits, rc)
        return TaskData(rc, data_dir, log, splits)
    dest = prepare.cache_path(data_dir, rc.task_name,
                              prepare.cache_name(rc.task_name, rc.preset, rc.data))
    want = prep_config(rc.data)
    with _rebuild_hint(rc, data_dir):
        manifest = read_manifest(dest)
        if manifest is not None and manifest["config"] == want:
            splits = read(dest, manifest)
        elif rc.data.get("generate", False):  # a generated preset (smoke): made by load()
            return TaskData(rc, data_dir, log)
        else:
            raise _not_prepared(rc, data_dir, module, dest, manifest, want)
    check_splits(splits, rc, manifest)
    return TaskData(rc, data_dir, log, splits)


def load(rc: RunConfig, data_dir: Path, log: Log | None = None) -> dict[str, Split]:
    """The splits of a run's task preset, generated first when the preset generates them."""
    return find(rc, data_dir, log).load()


def _not_prepared(rc: RunConfig, data_dir: Path, module, dest: Path, manifest: dict | None,
                  want: dict) -> UserError:
    cmd = prepare.prepare_command(rc.task_name, rc.preset, data_dir, rc.overrides)
    if manifest is None:
        return UserError(f"{rc.task_name} data ({rc.preset}) is not prepared in {dest}; "
                         f"run: {cmd}  ({module.SOURCE_HINT})")
    changed = ", ".join(f"{k} {manifest['config'].get(k)!r} -> {want.get(k)!r}"
                        for k in sorted(set(want) | set(manifest["config"]))
                        if want.get(k) != manifest["config"].get(k))
    return UserError(f"{dest} was prepared with other data settings ({changed}); "
                     f"run: {cmd}  (or set data.variant to keep both)")


@contextlib.contextmanager
def _rebuild_hint(rc: RunConfig, data_dir: Path):
    """A damaged cache ends with the command that rebuilds it."""
    try:
        yield
    except DamagedCache as e:
        raise UserError(f"{e.problem}; run: "
                        f"{prepare.prepare_command(rc.task_name, rc.preset, data_dir, rc.overrides)} "
                        "--force") from None


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
    return int(split_info(manifest, split)["max_id"])
