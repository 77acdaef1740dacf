"""Weights & Biases (the [wandb] extra, `--log-to wandb`): the resolved config as the run's
config, every record under the same names as TensorBoard, the summary at the end.

W&B keeps its files in the run folder (`<run>/wandb/`); with WANDB_MODE=offline nothing leaves
the machine and `wandb sync <run>/wandb/offline-run-*` uploads it later. The W&B run id is the
run's own, so a resumed run continues the same W&B run. W&B takes a step once (its steps only
increase) and cannot delete one: the steps a resumed run redoes after a hard kill keep what the
first attempt sent, and are not sent again (`skip_through`), so each step is there once.
(W&B's `resume_from` rewind would drop them, but it is a private preview, refused by most
servers and meaningless offline.)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import wandb

from lra_bench.tracking.names import SUMMARY_TAGS, run_name, scalars


def wandb_id(run_id: str) -> str:
    """The run id in the characters W&B accepts, at most 64 (the random suffix kept)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", run_id)[-64:]


class WandB:
    def __init__(self, run_path: Path, config: dict, summary: dict):
        self.id, self.skip_through = wandb_id(summary["run_id"]), None
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "lra-bench"), id=self.id,
            name=run_name(config), dir=str(run_path), config=config, resume="allow",
            group=f"{config['model_name']}-{config['task_name']}-{config['preset']}",
            tags=[config["model_name"], config["task_name"], config["preset"],
                  f"seed{config['seed']}"], job_type="train", reinit="create_new")

    def ids(self) -> dict:
        return {"wandb_run_id": self.id}

    def replace(self, records: list[dict], sent: int | None = None) -> None:
        # Online, W&B says where the run it resumed had got to; offline, only metrics.jsonl does.
        held = (self.run.starting_step or 1) - 1
        self.skip_through = max(held, sent or 0) or None

    def record(self, record: dict) -> None:
        if self.skip_through is None or record["step"] > self.skip_through:
            self.run.log(scalars(record), step=record["step"])

    def finish(self, summary: dict) -> None:
        if summary.get("status") == "completed":
            self.run.log(scalars(summary, SUMMARY_TAGS), step=summary["steps"])
        self.run.summary.update({k: v for k, v in summary.items()
                                 if isinstance(v, (int, float, str, bool))})
        self.run.finish(exit_code=0 if summary.get("status") == "completed" else 1)
