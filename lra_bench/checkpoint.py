"""A run's checkpoints: everything it needs to continue as if it had never stopped.

    runs/<run-id>/checkpoints/<step>/state        params, rest, optimiser state, step, RNG key
    runs/<run-id>/checkpoints/<step>/best_params  the best-validation parameters so far
    runs/<run-id>/checkpoints/<step>/progress     JSON: data-stream position, best val accuracy
                                                  and step, every evaluation, step times

orbax's CheckpointManager writes each step into a temporary folder and renames it when complete,
so a process killed mid-save leaves the previous checkpoint intact; it keeps the newest `KEEP`.
Saves are synchronous: the train step donates its state buffers, and an asynchronous save could
still be reading a buffer that the next step overwrites.

Typed PRNG keys cannot be serialised as such: they are stored as their raw key data
(`jax.random.key_data`) and re-wrapped with the template's implementation on restore.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from lra_bench.errors import UserError

KEEP = 2


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def keys_to_data(tree):
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def data_to_keys(tree, template):
    return jax.tree.map(
        lambda x, t: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x,
        tree, template)


@jax.jit
def all_finite(tree) -> jax.Array:
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


def check_progress(p, directory: Path, step: int) -> dict:
    """A checkpoint's progress JSON, refused in one line when its shape is not what `save` wrote
    (a damaged or crafted run folder must not crash training with a traceback)."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    ok = (isinstance(p, dict)
          and isinstance(p.get("position"), list) and len(p["position"]) == 2
          and all(isinstance(v, int) and v >= 0 for v in p["position"])
          and number(p.get("best_accuracy")) and isinstance(p.get("best_step"), int)
          and isinstance(p.get("evals"), list) and all(isinstance(e, dict) for e in p["evals"])
          and all(isinstance(p.get(k), list) and all(number(v) for v in p[k])
                  for k in ("step_times", "data_waits"))
          # The training-loss window since the last record (absent in older checkpoints).
          and (p.get("window") is None or (isinstance(p["window"], dict) and all(
              number(p["window"].get(k)) for k in ("loss", "accuracy", "count")))))
    if not ok:
        raise UserError(f"{directory}/{step}/progress is malformed; the run cannot be resumed "
                        "from it (delete that checkpoint folder to resume from an older one, or "
                        "start a new run)")
    return p


def newest_saved_step(run_path: Path) -> int | None:
    """The newest complete checkpoint's step, read from the folder names alone (orbax renames a
    step's folder to its bare number once written): for a run killed before it could say so."""
    folder = Path(run_path) / "checkpoints"
    steps = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] \
        if folder.is_dir() else []
    return max(steps, default=None)


class Checkpoints:
    """The checkpoints of one run folder."""

    def __init__(self, run_path: Path, keep: int = KEEP):
        import orbax.checkpoint as ocp  # slow to import; only runs need it

        self._ocp = ocp
        self.directory = (Path(run_path) / "checkpoints").absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=False))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: dict, best_params, progress: dict) -> None:
        step = int(state["step"])
        if step in self.manager.all_steps():
            return
        args = self._ocp.args
        self.manager.save(step, args=args.Composite(
            state=args.StandardSave(keys_to_data(state)),
            best_params=args.StandardSave(best_params),
            progress=args.JsonSave(progress)))
        self.manager.wait_until_finished()

    def progress(self, step: int) -> dict:
        """The JSON part of a checkpoint alone (no arrays, no template needed)."""
        args = self._ocp.args
        return check_progress(self.manager.restore(
            step, args=args.Composite(progress=args.JsonRestore()))["progress"], self.directory, step)

    def restore(self, template: dict) -> tuple[dict, Any, dict] | None:
        """(state, best params, progress) of the newest checkpoint, shaped like `template` (the
        freshly initialised state); None when the run has none."""
        step = self.manager.latest_step()
        if step is None:
            return None
        args = self._ocp.args
        abstract = lambda tree: jax.tree.map(self._ocp.utils.to_shape_dtype_struct, tree)  # noqa: E731
        out = self.manager.restore(step, args=args.Composite(
            state=args.StandardRestore(abstract(keys_to_data(template))),
            best_params=args.StandardRestore(abstract(template["params"])),
            progress=args.JsonRestore()))
        progress = check_progress(out["progress"], self.directory, step)
        return data_to_keys(out["state"], template), out["best_params"], progress

    def close(self) -> None:
        self.manager.close()
