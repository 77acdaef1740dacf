"""`lra run`: resolve -> load data -> train -> record. Nothing is written until the config and
the data have been checked, so a user error leaves no trace in the results folder."""

from __future__ import annotations

import time
from pathlib import Path

import flax
import jax

from lra_bench import data, distributed, measure, results
from lra_bench.config import RunConfig
from lra_bench.errors import UserError
from lra_bench.progress import ProgressReporter
from lra_bench.trainer import Diverged, train_and_evaluate


def execute(rc: RunConfig, data_dir: Path, results_dir: Path, interactive: bool | None = None,
            log=None) -> dict:
    splits = data.load(rc, data_dir)
    run_id = results.new_run_id(rc.model_name, rc.task_name)
    # Multi-host: process 0 alone writes results.
    primary = distributed.is_primary()
    rd = results.RunDir(results_dir, run_id) if primary else results.NullRunDir(run_id)
    rd.write("config.json", rc.to_dict())
    summary = {
        "run_id": run_id, "model": rc.model_name, "task": rc.task_name, "preset": rc.preset,
        "seed": rc.seed, "status": "running", "started_at": results.utc_now(),
        "jax_version": jax.__version__, "flax_version": flax.__version__,
        "git_commit": measure.git_commit(), "dtype": rc.model["dtype"],
        "batch_size": rc.train["batch_size"], "max_length": rc.data["max_length"],
        "train_examples": int(len(splits["train"]["labels"])),
        **measure.device_info(),
    }
    rd.write("summary.json", summary)
    reporter = ProgressReporter(rc.train["steps"], f"{rc.model_name}/{rc.task_name}",
                                rc.train["log_every"], interactive) if primary else None
    t0 = time.time()
    try:
        summary.update(train_and_evaluate(rc, splits, on_eval=rd.append_metrics, reporter=reporter))
        summary["status"] = "completed"
    except Diverged as e:
        summary.update(status="diverged", diverged_step=e.step, error=str(e))
    except UserError:  # found once training starts (batch vs devices, out of memory)
        rd.discard()
        rd = results.NullRunDir(run_id)  # a user error leaves nothing behind
        raise
    except KeyboardInterrupt:
        summary["status"] = "interrupted"
        raise
    except BaseException as e:
        summary.update(status="failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        if reporter is not None:
            reporter.close()
        summary["ended_at"] = results.utc_now()
        summary["wall_time_s"] = round(time.time() - t0, 3)
        rd.write("summary.json", summary)
    return summary
