"""Watching a run: the progress display (live on a terminal, plain lines with the time remaining
elsewhere, nothing with --quiet), the TensorBoard event files written from metrics.jsonl's records
and continued across a resume without a step twice, and the optional trackers (W&B offline, MLflow's
file store) with the one-line error when their extra is missing."""

import glob
import importlib.util
import io
import json
import shutil
import struct
import time
from pathlib import Path

import pytest
from rich.console import Console
from tensorboardX.proto import event_pb2
from typer.testing import CliRunner

from lra_bench import progress, results, run
from lra_bench.cli import app

pytestmark = pytest.mark.usefixtures("fast_compile_module")

# A tiny run: a record every step, an evaluation and a checkpoint every 3 steps.
TINY = ["train.eval_every=3", "train.log_every=1", "train.checkpoint_every=3",
        "train.batch_size=8", "train.eval_batches=1", "model.num_layers=1"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def tfrecords(path: Path):
    """The payloads of a TFRecord file (length, its CRC, data, its CRC), which is what an event
    file is: read with the protobuf classes tensorboardX ships, no TensorFlow needed."""
    data, pos = path.read_bytes(), 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        yield data[pos + 12:pos + 12 + length]
        pos += 12 + length + 4


def scalars(folder: Path) -> dict[str, list[int]]:
    """tag -> the steps it has a value at, over every event file in `folder`."""
    out = {}
    for f in sorted(folder.glob("events.out.tfevents.*")):
        for payload in tfrecords(f):
            event = event_pb2.Event.FromString(payload)
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, []).append(event.step)
    return out


def test_plain_lines_say_the_time_remaining(monkeypatch, capsys):
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    with progress.Display("job", 100, every=25, unit="step", interactive=False) as bar:
        for step in range(1, 101):
            now[0] = float(step)  # one second a step
            bar.update(step, f"loss {1 / step:.3f}")
    lines = capsys.readouterr().err.splitlines()
    # every 25 steps, the pace measured from the first update: 1 step/s
    assert lines == ["job step 25/100  loss 0.040  eta 0:01:15",
                     "job step 50/100  loss 0.020  eta 0:00:50",
                     "job step 75/100  loss 0.013  eta 0:00:25",
                     "job step 100/100  loss 0.010"]


def test_a_terminal_gets_the_live_display_with_the_best_so_far(monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=screen, force_terminal=True, width=160))
    bar = progress.TrainingProgress(50, "transformer/listops", log_every=10)
    assert bar.display.mode == "live"
    bar.step(20, {"loss": 1.5, "acc": 0.25, "steps/s": 12.0, "val_acc": 0.4, "best": 0.45,
                  "best_step": 10})
    bar.close()
    text = screen.getvalue()
    assert "transformer/listops" in text and "20/50" in text
    assert "loss 1.5" in text and "val_acc 0.4" in text and "best 0.45 @ 10" in text


def test_quiet_silences_progress_and_nothing_else(monkeypatch, capsys):
    monkeypatch.setattr(progress, "_quiet", True)
    with progress.Display("job", 10, interactive=True) as bar:
        assert bar.mode == "quiet"
        bar.update(10, line="a line")
        bar.say("a note")
    assert capsys.readouterr().err == ""
    # and a user error still says what is wrong
    r = invoke("run", "--model", "transformer", "--task", "listops", "--log-to", "comet",
               "--quiet")
    assert r.exit_code == 2 and r.output.startswith("error: ") and "train.log_to" in r.output


def test_a_missing_tracker_extra_is_one_error_line_before_anything_runs(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    r = invoke("run", "--model", "transformer", "--task", "listops", "--log-to", "wandb",
               "--data-dir", tmp_path / "data", "--results-dir", tmp_path / "results")
    assert r.exit_code == 2
    assert r.output.splitlines() == [
        "error: logging to wandb (--log-to / train.log_to) needs the wandb package: "
        "pip install 'lra-bench[wandb]'"]
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


def test_tensorboard_and_the_trackers_continue_a_resumed_run_without_a_step_twice(
        data_dir, results_dir, monkeypatch):
    # (~6 s on 2 quiet cores: two segments of a run, compiled twice, is what a resume is;
    # MLflow and W&B (offline) ride along on the same run rather than costing one of their own)
    pytest.importorskip("mlflow", reason="the [mlflow] extra is not installed")
    trackers = ["mlflow", *(["wandb"] if importlib.util.find_spec("wandb") else [])]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    [first] = run.start("transformer", "listops", "smoke", [0],
                        ["train.steps=6", f"train.log_to={json.dumps(trackers)}", *TINY],
                        data_dir, results_dir)
    folder = results_dir / "runs" / first["run_id"]
    tb = folder / "tb" / "transformer-listops-smoke-seed0"
    assert sorted(scalars(tb)["train/loss"]) == [1, 2, 3, 4, 5, 6]
    # A run killed after step 5 with its newest checkpoint at 3 (what SIGKILL leaves): its
    # records of steps 4 and 5 are in metrics.jsonl and the event files, and will be redone.
    rd = results.RunDir.open(results_dir, first["run_id"])
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    (folder / "metrics.jsonl").write_text("\n".join(lines[:5]) + "\n")
    shutil.rmtree(folder / "checkpoints" / "6")
    rd.write("summary.json", {**first, "status": "running"})

    resumed = run.resume(first["run_id"], data_dir, results_dir)
    assert resumed["status"] == "completed" and resumed["resumed_from_steps"] == [3]
    steps = [json.loads(x)["step"] for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    tags = scalars(tb)
    assert tags["train/loss"] == steps  # each step once, in order, however often it ran
    assert tags["val/accuracy"] == [3, 6] and tags["train/steps_per_second"] == steps
    assert tags["test/accuracy"] == [6]

    # MLflow: one run, continued; the config as parameters, the summary as an artifact; the
    # redone steps (4-6: this first attempt sent them all) are not sent again
    [run_folder] = glob.glob(str(results_dir / "mlruns" / "*" / resumed["mlflow_run_id"]))
    run_folder = Path(run_folder)
    assert first["mlflow_run_id"] == resumed["mlflow_run_id"]
    assert (run_folder / "params" / "train.steps").read_text() == "6"

    def mlflow_steps(*tag):
        lines = (run_folder / "metrics" / Path(*tag)).read_text().splitlines()
        return [int(line.split()[2]) for line in lines]

    assert mlflow_steps("train", "loss") == [1, 2, 3, 4, 5, 6]
    assert mlflow_steps("val", "accuracy") == [3, 6]
    saved = json.loads((run_folder / "artifacts" / "summary.json").read_text())
    assert saved["test_accuracy"] == resumed["test_accuracy"]
    assert "status: 3" in (run_folder / "meta.yaml").read_text()  # FINISHED
    if "wandb" not in trackers:
        return
    # W&B offline: each attempt a folder of the same run id; the second sends the steps after
    # metrics.jsonl's last (5), not the redone 4 and 5 again (offline, W&B cannot say its own).
    # (Step 6 is in both only because this first attempt completed before the simulated kill.)
    segments = sorted(folder.glob("wandb/offline-run-*/*.wandb"), key=lambda p: p.parent.name)
    assert len(segments) == 2
    history = [[json.loads(i.value_json) for r in _wandb_log(log).get("history", [])
                for i in r.history.item if (i.key or "/".join(i.nested_key)) == "_step"]
               for log in segments]
    assert history == [[1, 2, 3, 4, 5, 6], [6]]


def _wandb_log(log: Path) -> dict:
    """record type -> the records of an offline W&B run, once its exit record is written."""
    deadline, records = time.monotonic() + 60, {}
    while "exit" not in records and time.monotonic() < deadline:
        time.sleep(0.2)
        records = {}
        for r in wandb_records(log):
            records.setdefault(r.WhichOneof("record_type"), []).append(r)
    return records


def wandb_records(path: Path):
    """The records of an offline W&B run's .wandb file: a LevelDB-style log of 32 KiB blocks,
    each record a 7-byte header (CRC, length, type: 1 whole, 2 first, 3 middle, 4 last part)
    and a protobuf `Record`; the file starts with the 7-byte header ':W&B' ..."""
    from wandb.proto import wandb_internal_pb2  # the optional wandb package (skipped without)

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 or pos + 7 + length > len(data):  # the end, or a record still being written
            break
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield wandb_internal_pb2.Record.FromString(parts)
            parts = b""


def test_wandb_offline_gets_the_config_the_records_and_the_summary(data_dir, results_dir,
                                                                   monkeypatch):
    pytest.importorskip("wandb", reason="the [wandb] extra is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    [summary] = run.start("transformer", "listops", "smoke", [0],
                          ["train.steps=3", "train.log_to=[\"wandb\"]", *TINY], data_dir,
                          results_dir)
    folder = results_dir / "runs" / summary["run_id"]
    [log] = folder.glob("wandb/offline-run-*/*.wandb")  # W&B's files inside the run folder
    # W&B's service process writes the file behind the run; its last record is the run's exit
    records = _wandb_log(log)
    [started] = [r.run for r in records["run"]]
    assert started.run_id == summary["wandb_run_id"] == summary["run_id"]
    assert started.display_name == "transformer-listops-smoke-seed0"
    config = {i.key: json.loads(i.value_json) for i in started.config.update}
    assert config["train"]["steps"] == 3 and config["preset"] == "smoke"
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records["history"]]
    assert [h["_step"] for h in history] == [1, 2, 3]
    assert history[-1]["test/accuracy"] == pytest.approx(summary["test_accuracy"])
    updates = {i.key: json.loads(i.value_json) for r in records["summary"]
               for i in r.summary.update}
    assert updates["status"] == "completed" and updates["run_id"] == summary["run_id"]


def test_a_grids_live_table_lists_its_jobs_by_state():
    from lra_bench.grid.executors import jobs_table  # submitit: only this test needs the grid

    rows = [{"key": k, "state": s, "run_id": f"r{i}", "test_accuracy": a}
            for i, (k, s, a) in enumerate([("a", "completed", 0.5), ("b", "pending", None),
                                           ("c", "running", None)])]
    screen = Console(file=io.StringIO(), width=100)
    screen.print(jobs_table(rows))
    text = screen.file.getvalue()
    assert "1 pending, 1 running, 1 completed" in text
    assert text.index(" c ") < text.index(" b ") < text.index(" a ")  # running first
    assert "50.00" in text
