"""Where a run's records go: metrics.jsonl, TensorBoard event files in the run folder, and the
trackers the run asks for (`train.log_to`: W&B, MLflow).

One fan-out: the trainer hands each record to `Sinks.record`, which writes it to every sink, so
every curve, wherever it is read, holds the same numbers. A sink has three calls:
`replace(records, sent)` (a resumed run: the records kept up to its checkpoint, the later ones to
be redone; `sent`: the last step the earlier attempts sent, read from metrics.jsonl before it is
cut back), `record(r)` (one line of metrics.jsonl) and `finish(summary)` (the run's outcome).
The files are rewritten from the kept records; the trackers, which cannot delete a point, skip
the redone steps they already hold (docs/runs.md). The trackers' own packages
are optional extras: `check_installed` refuses a run that asks for a missing one before anything
runs, and their modules are imported only for a run that uses them.
"""

from __future__ import annotations

import importlib.util

from lra_bench import records as schemas
from lra_bench.errors import UserError
from lra_bench.tracking.names import run_name

# tracker -> (the module it needs, the pip install that brings it)
EXTRAS = {"wandb": ("wandb", "pip install 'lra-bench[wandb]'"),
          "mlflow": ("mlflow", "pip install 'lra-bench[mlflow]'")}


def check_installed(names) -> None:
    """A UserError naming the pip install for the first tracker in `names` that is missing."""
    for name in names:
        module, install = EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"logging to {name} (--log-to / train.log_to) needs the {module} "
                            f"package: {install}")


class MetricsFile:
    """metrics.jsonl, through the run folder (which writes nothing on a multi-host run's other
    processes)."""

    def __init__(self, run_dir):
        self.run_dir = run_dir

    def sent(self) -> int | None:
        """The last step in metrics.jsonl: every sink was sent each record after this file."""
        if self.run_dir.path is None:
            return None
        lines, _ = schemas.read_lines(self.run_dir.path / "metrics.jsonl", schemas.METRICS_LINE)
        return max((line["step"] for line in lines), default=None)

    def replace(self, records: list[dict], sent: int | None = None) -> None:
        self.run_dir.rewrite_metrics(records)

    def record(self, record: dict) -> None:
        self.run_dir.append_metrics(record)

    def finish(self, summary: dict) -> None:
        pass


class Sinks:
    """Every sink of one run; each call goes to all of them, metrics.jsonl first."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    def replace(self, records: list[dict]) -> None:
        sent = self.sinks[0].sent()  # metrics.jsonl, before it is cut back to `records`
        for s in self.sinks:
            s.replace(records, sent)

    def record(self, record: dict) -> None:
        for s in self.sinks:
            s.record(record)

    def finish(self, summary: dict) -> None:
        """Every sink finishes, even when one fails (the first failure is raised after)."""
        failed = None
        for s in self.sinks:
            try:
                s.finish(summary)
            except Exception as e:  # noqa: BLE001 - the others still close their files
                failed = failed or e
        if failed is not None:
            raise failed

    def ids(self) -> dict:
        """What the trackers call this run (`mlflow_run_id`, ...), for summary.json: a resumed run
        continues the same tracker run."""
        return {k: v for s in self.sinks for k, v in getattr(s, "ids", dict)().items()}


def open_sinks(run_dir, config: dict, summary: dict) -> Sinks:
    """The sinks of a run: metrics.jsonl always; where this process writes the run folder, the
    TensorBoard event files and each tracker in config["train"]["log_to"]."""
    sinks = [MetricsFile(run_dir)]
    if run_dir.path is None:
        return Sinks(sinks)
    # tensorboardX (and protobuf): loaded when a run starts, not by `lra --help`
    from lra_bench.tracking.tensorboard_sink import TensorBoard

    sinks.append(TensorBoard(run_dir.path / "tb" / run_name(config), config))
    for name in config["train"].get("log_to", []):
        if name == "wandb":
            from lra_bench.tracking.wandb_sink import WandB  # the optional wandb package

            sinks.append(WandB(run_dir.path, config, summary))
        elif name == "mlflow":
            from lra_bench.tracking.mlflow_sink import MLflow  # the optional mlflow package

            sinks.append(MLflow(run_dir.path, config, summary))
    return Sinks(sinks)
