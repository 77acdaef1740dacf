"""MLflow (the [mlflow] extra, `--log-to mlflow`): the resolved config as parameters, every
record under the same names as TensorBoard, the summary at the end (its numbers as metrics, the
whole as the artifact summary.json).

Without MLFLOW_TRACKING_URI the run goes to a file store beside the runs,
`<results>/mlruns` (`MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri <results>/mlruns`
shows it), which needs no server, database or network. The MLflow run id is kept in
summary.json (`mlflow_run_id`), so a resumed run continues the same MLflow run. MLflow cannot
delete a point and keeps every value sent for a step: the steps a resumed run redoes after a
hard kill keep what the first attempt sent and are not sent again (`skip_through`), so each step
is there once.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

from lra_bench import records
from lra_bench.tracking.names import SUMMARY_TAGS, TAGS, run_name, scalars

BATCH = 100  # MLflow takes at most 100 parameters in one call
VALUE_CHARS = 6000  # ... each at most this long


def flat(config: dict) -> dict[str, str]:
    """section.key -> value as text, what MLflow's parameters hold."""
    return {key: (value if isinstance(value, str) else json.dumps(value))[:VALUE_CHARS]
            for key, value in records.flatten(config).items()}


class MLflow:
    def __init__(self, run_path: Path, config: dict, summary: dict):
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (Path(run_path).resolve().parent.parent / "mlruns").as_uri()
            # MLflow 3 keeps the file store (no server, no database package) behind this switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client, self.skip_through = MlflowClient(tracking_uri=uri), None
        self.run_id = summary.get("mlflow_run_id")
        if self.run_id is not None:  # a resumed run
            self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            return
        run = self.client.create_run(
            self._experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "lra-bench")),
            run_name=run_name(config),
            tags={"lra.run_id": summary["run_id"], "lra.model": config["model_name"],
                  "lra.task": config["task_name"], "lra.preset": config["preset"],
                  "lra.seed": str(config["seed"])})
        self.run_id = run.info.run_id
        params = [Param(k, v) for k, v in flat(config).items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + BATCH])

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # noqa: BLE001 - a parallel run created it first
            return self.client.get_experiment_by_name(name).experiment_id

    def ids(self) -> dict:
        return {"mlflow_run_id": self.run_id}

    def replace(self, records: list[dict], sent: int | None = None) -> None:
        held = max((m.step for tag in TAGS.values()
                    for m in self.client.get_metric_history(self.run_id, tag)), default=0)
        self.skip_through = max(held, sent or 0) or None

    def _log(self, values: dict[str, float], step: int, seconds: float | None) -> None:
        ms = int(1000 * seconds) if seconds is not None else int(1000 * time.time())
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, ms, step)
                                                    for k, v in values.items()])

    def record(self, record: dict) -> None:
        if self.skip_through is None or record["step"] > self.skip_through:
            self._log(scalars(record), record["step"], record.get("time"))

    def finish(self, summary: dict) -> None:
        status = summary.get("status")
        if status == "completed":
            self._log(scalars(summary, SUMMARY_TAGS), summary["steps"], None)
        self.client.log_dict(self.run_id, summary, "summary.json")
        self.client.set_terminated(self.run_id, RunStatus.to_string(
            RunStatus.FINISHED if status == "completed"
            else RunStatus.KILLED if status == "interrupted" else RunStatus.FAILED))
