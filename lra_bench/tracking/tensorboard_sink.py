"""TensorBoard event files (tensorboardX: no TensorFlow needed), one folder per run named by
model, task, preset and seed, so `tensorboard --logdir results/runs` lists every run.

Event files only grow, and a reader shows every value it finds: a resumed run therefore writes
its folder anew from the records kept up to its checkpoint (`replace`), then continues, and its
curves hold each step once, however often it was stopped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tensorboardX import SummaryWriter

from lra_bench.tracking.names import SUMMARY_TAGS, scalars

FLUSH_S = 10  # what a live `tensorboard` sees is at most this old


class TensorBoard:
    def __init__(self, folder: Path, config: dict):
        self.folder, self.config, self._writer = Path(folder), config, None

    def _open(self) -> SummaryWriter:
        if self._writer is None:
            self._writer = SummaryWriter(logdir=str(self.folder), flush_secs=FLUSH_S)
            self._writer.add_text("config", "```\n" + json.dumps(self.config, indent=2) + "\n```")
        return self._writer

    def replace(self, records: list[dict], sent: int | None = None) -> None:
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        for r in records:
            self.record(r)

    def record(self, record: dict) -> None:
        writer = self._open()
        for tag, value in scalars(record).items():
            writer.add_scalar(tag, value, global_step=record["step"], walltime=record.get("time"))

    def finish(self, summary: dict) -> None:
        if summary.get("status") == "completed":
            writer = self._open()
            for tag, value in scalars(summary, SUMMARY_TAGS).items():
                writer.add_scalar(tag, value, global_step=summary["steps"])
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
