"""What the sinks share: a run's name, and metrics.jsonl's and summary.json's numbers under the
names every tracker shows them by, so TensorBoard, W&B and MLflow agree."""

from __future__ import annotations

# metrics.jsonl's fields as every tracker names them (step and time are the axes)
TAGS = {"train_loss": "train/loss", "train_accuracy": "train/accuracy",
        "learning_rate": "train/learning_rate", "steps_per_second": "train/steps_per_second",
        "val_loss": "val/loss", "val_accuracy": "val/accuracy"}
# summary.json's results, logged at the last step
SUMMARY_TAGS = {"test_accuracy": "test/accuracy", "test_accuracy_last": "test/accuracy_last",
                "test_accuracy_best_val": "test/accuracy_best_val", "test_loss": "test/loss",
                "val_accuracy": "val/best_accuracy"}


def scalars(record: dict, tags: dict = TAGS) -> dict[str, float]:
    """The numbers of `record` under their tracker names (a missing or None one is left out)."""
    return {tag: float(record[k]) for k, tag in tags.items()
            if isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool)}


def run_name(config: dict) -> str:
    """model-task-preset-seed: how a run is named in TensorBoard, W&B and MLflow."""
    return f"{config['model_name']}-{config['task_name']}-{config['preset']}-seed{config['seed']}"
