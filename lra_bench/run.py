"""`lra run`, top to bottom: resolve the config, check the model, find the data, check that the
step fits, load the data, then train and record (`start` for new runs, one per seed; `execute`
for one). Nothing is written until the config and the data have been checked, so a user error
leaves no trace in the results folder.

`resume` continues a run from its newest checkpoint with the config saved in its folder. The run
folder's lock (see `results.RunDir.lock`) keeps two processes from training one run at once.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Callable

import flax
import numpy as np
import jax

from lra_bench import config, data, distributed, interruption, measure, results, tracking
from lra_bench.checkpoint import Checkpoints
from lra_bench.config import RunConfig
from lra_bench.data.pipeline import evaluated_rows
from lra_bench.errors import UserError
from lra_bench.interruption import StopOnSignal
from lra_bench.model import check as check_model
from lra_bench.preflight import ensure_fits
from lra_bench.progress import TrainingProgress
from lra_bench.trainer import Diverged, Interrupted, train_and_evaluate


class StoppedAtOnce(KeyboardInterrupt):
    """A second signal ended the run between checkpoints; `summary` says where it can resume."""

    def __init__(self, summary: dict, signum: int = signal.SIGINT):
        super().__init__(summary.get("run_id"))
        self.summary, self.signum = summary, signum


# Fields of a previous segment's outcome that a resumed segment replaces.
_OUTCOME = ("error", "diverged_step", "interrupted_step", "signal", "ended_at")


def majority_share(labels) -> float:
    """The share of the most frequent class: the accuracy of always guessing it."""
    counts = np.bincount(np.asarray(labels).astype(np.int64).ravel())
    return float(counts.max() / counts.sum()) if counts.sum() else float("nan")


def start(model: str, task: str, preset: str, seeds: list[int], overrides: list[str],
          data_dir: Path, results_dir: Path, *, preflight: bool = True,
          memory_limit: str | None = None, run_id: str | None = None,
          on_summary: Callable[[dict], None] = lambda summary: None) -> list[dict]:
    """New runs of `model` on `task`, one per seed, one after another; every seed's config and
    the data are checked before the first run writes anything. The summaries, in order (the
    seeds after an interrupted one do not start); `on_summary` sees each as its run ends."""
    rcs = [config.resolve(model, task, preset, seed=s, overrides=overrides) for s in seeds]
    tracking.check_installed(rcs[0].train["log_to"])  # a missing extra fails before anything runs
    # The seeds share the step's shapes and the data: one check and one load serve them all.
    splits = checked_data(rcs[0], data_dir, preflight=preflight, memory_limit=memory_limit)
    summaries = []
    for rc in rcs:
        summaries.append(execute(rc, data_dir, results_dir, splits=splits, run_id=run_id))
        on_summary(summaries[-1])
        if summaries[-1]["status"] == "interrupted":
            break  # the user asked to stop: the remaining seeds do not start
    return summaries


def checked_data(rc: RunConfig, data_dir: Path, *, preflight: bool = True,
                 memory_limit: str | None = None, log=None) -> dict:
    """Every check a new run passes before anything is written, cheapest first, and its data."""
    check_model(rc)  # a bad model config fails before any data is made or read
    # Reading a prepared cache costs nothing, so missing data is reported before the step is
    # compiled; generating a preset's data costs minutes, so that waits until the step fits.
    task_data = data.find(rc, data_dir, log)
    if preflight:
        ensure_fits(rc, memory_limit)
    return task_data.load()


def execute(rc: RunConfig, data_dir: Path, results_dir: Path, interactive: bool | None = None,
            log=None, splits: dict | None = None, preflight: bool = True,
            run_id: str | None = None) -> dict:
    """One new run. `splits`: the data, when the caller has run `checked_data` already."""
    if splits is None:
        splits = checked_data(rc, data_dir, preflight=preflight, log=log)
    rd, summary = _new_run(rc, splits, results_dir, run_id)
    return _train(rc, splits, rd, summary, interactive, resuming=False)


def _new_run(rc: RunConfig, splits: dict, results_dir: Path,
             run_id: str | None) -> tuple[results.RunDir, dict]:
    """The run's folder with its config and first summary."""
    # Multi-host: process 0 alone writes the run folder; the others learn its id from it.
    if distributed.is_primary():
        rd = results.RunDir.create(results_dir, rc.model_name, rc.task_name, run_id)
        rd.lock()
        distributed.from_primary(rd.run_id)
    else:
        run_id = distributed.from_primary("")
        rd = results.NullRunDir(run_id, Path(results_dir) / "runs" / run_id)
    rd.write("config.json", rc.to_dict())
    summary = {
        "run_id": rd.run_id, "model": rc.model_name, "task": rc.task_name, "preset": rc.preset,
        "seed": rc.seed, "status": "running", "started_at": results.utc_now(),
        "jax_version": jax.__version__, "flax_version": flax.__version__,
        "git_commit": measure.git_commit(), "dtype": rc.model["dtype"],
        "batch_size": rc.train["batch_size"], "max_length": rc.data["max_length"],
        "train_examples": int(len(splits["train"]["labels"])),
        # Chance on this run's test split, so every leaderboard can show it beside the scores.
        "test_majority": majority_share(evaluated_rows(splits["test"], rc.train)["labels"]),
        # ... and on its validation split, the dashed line of the validation learning curve.
        "val_majority": majority_share(evaluated_rows(splits["val"], rc.train)["labels"]),
        "overrides": list(rc.overrides),
        # A downsampled image task is not the LRA task: say so wherever its scores travel.
        **({"downsample": rc.data["downsample"]} if rc.data.get("downsample", 1) != 1 else {}),
        **measure.device_info(),
    }
    rd.write("summary.json", summary)
    return rd, summary


def resume(ref: str, data_dir: Path, results_dir: Path, interactive: bool | None = None,
           check_config: Callable[[str, RunConfig], None] | None = None) -> dict:
    """Continue run `ref` (a run id or `latest`). Every check comes before the first write."""
    rd = results.RunDir.open(results_dir, ref)
    rc, summary = _saved(rd)
    tracking.check_installed(rc.train["log_to"])
    if not distributed.is_primary():
        # a multi-host run's other processes: the same run (`latest` read from the same
        # folder), read, never written; process 0 checks and writes
        splits = data.load(rc, data_dir)
        return _train(rc, splits, results.NullRunDir(rd.run_id, rd.path), summary, interactive,
                      resuming=True)
    if check_config is not None:
        check_config(rd.run_id, rc)
    if not rd.lock():
        raise UserError(f"run {rd.run_id} is still running in another process; wait for it, or "
                        "stop it (Ctrl-C / kill) and resume again")
    try:
        status = summary.get("status")
        if status == "completed":
            raise UserError(f"run {rd.run_id} already completed; nothing to resume (start a new "
                            "run with lra run --model ... --task ...)")
        if status == "diverged":
            raise UserError(f"run {rd.run_id} diverged at step {summary.get('diverged_step')}; "
                            "resuming it would diverge again: start a new run with a lower "
                            "train.learning_rate or a train.grad_clip")
        splits = data.load(rc, data_dir)
    except BaseException:
        rd.unlock()
        raise
    return _train(rc, splits, rd, summary, interactive, resuming=True)


def _saved(rd: results.RunDir) -> tuple[RunConfig, dict]:
    """A run's saved config and summary, each checked."""
    try:
        saved, summary = rd.read("config.json"), rd.read("summary.json")
    except (OSError, ValueError) as e:
        raise UserError(f"run {rd.run_id} cannot be resumed: its config.json or summary.json is "
                        f"unreadable ({type(e).__name__}: {e})") from None
    problem = results.summary_problem(summary)
    if problem:
        raise UserError(f"run {rd.run_id} cannot be resumed: its summary.json is malformed "
                        f"({problem})")
    return results.saved_config(saved, rd.run_id), summary


def _train(rc: RunConfig, splits: dict, rd: results.RunDir, summary: dict,
           interactive: bool | None, resuming: bool) -> dict:
    t0 = time.time()
    earlier_wall = summary.get("wall_time_s", 0.0) if resuming else 0.0
    reporter = ckpt = sinks = None
    with StopOnSignal() as stop:
        try:
            # Every process of a multi-host run saves and restores together (orbax synchronises
            # them; the run folder must be on a filesystem they share).
            ckpt = Checkpoints(rd.checkpoints) if rd.checkpoints is not None else None
            # metrics.jsonl, TensorBoard and the trackers: every record goes to all of them
            sinks = tracking.open_sinks(rd, rc.to_dict(), summary)
            summary.update(sinks.ids())
            step = None
            if resuming:
                step = ckpt.latest_step() if ckpt is not None else None
                # The evaluations after the newest checkpoint are redone: keep those before it.
                sinks.replace(ckpt.progress(step)["evals"] if step is not None else [])
                summary["resumed_from_steps"] = [*summary.get("resumed_from_steps", []), step or 0]
                for key in _OUTCOME:
                    summary.pop(key, None)
                summary["status"] = "running"
            rd.write("summary.json", summary)
            if rd.path is not None:
                reporter = TrainingProgress(rc.train["steps"], f"{rc.model_name}/{rc.task_name}",
                                            rc.train["log_every"], interactive, done=step or 0)
            summary.update(train_and_evaluate(rc, splits, on_eval=sinks.record,
                                              reporter=reporter, checkpoints=ckpt,
                                              should_stop=stop.requested))
            summary["status"] = "completed"
        except Diverged as e:
            summary.update(status="diverged", diverged_step=e.step, error=str(e))
        except Interrupted as e:
            # (no signal here: another process of a multi-host run got one, and all stopped)
            summary.update(status="interrupted", interrupted_step=e.step,
                           signal=stop.name or "another process's signal")
        except UserError:  # found once training starts (batch vs devices, out of memory)
            if not resuming:  # a new run's user error leaves nothing behind
                rd.discard()
                rd = results.NullRunDir(rd.run_id)
            raise
        except KeyboardInterrupt as e:  # a second signal: stopped at once, without a checkpoint
            summary.update(status="interrupted", signal=interruption.signal_name(e))
            raise StoppedAtOnce(summary, getattr(e, "signum", signal.SIGINT)) from None
        except BaseException as e:
            summary.update(status="failed", error=f"{type(e).__name__}: {e}")
            raise
        finally:
            if reporter is not None:
                reporter.close()
            if ckpt is not None:
                summary["checkpoint_step"] = ckpt.latest_step()
                ckpt.close()
            summary["ended_at"] = results.utc_now()
            summary["wall_time_s"] = round(earlier_wall + time.time() - t0, 3)
            rd.write("summary.json", summary)
            rd.unlock()
            if sinks is not None:  # the trackers get the outcome that summary.json holds
                sinks.finish(summary)
    return summary
