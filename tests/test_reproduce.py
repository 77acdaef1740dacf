"""benchmarks/reproduce.py: the driver of the reproduction runs (issue 27) starts a run under a
fixed id, times it, skips it once finished, and writes its evidence and the README table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.num_train=64", "data.num_val=32", "data.num_test=40", "data.min_length=8",
         "data.gen_max_length=64", "data.max_length=64", "train.steps=4", "train.warmup_steps=2",
         "train.eval_every=2"]


def driver(*args, cwd):
    sets = [a for kv in SMALL for a in ("--set", kv)]
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reproduce.py"), *args,
                           "--models", "fourier", "--data-dir", "data", "--results-dir", "results",
                           "--out", "evidence", "--machine", "test-machine", *sets],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A folder where the driver has run one small reproduction to the end (shared: a run takes
    seconds of compilation)."""
    where = tmp_path_factory.mktemp("repro")
    r = driver("run", cwd=where)
    assert r.returncode == 0, r.stderr[-2000:]
    return where


def test_a_run_is_timed_recorded_skipped_once_done_and_tabled(finished):
    tmp_path = finished
    rid = "repro-nystrom-listops-fourier-s0"
    out = tmp_path / "evidence" / "test-machine" / "nystrom-listops" / "fourier-s0"
    run = json.loads((out / "run.json").read_text())
    assert {p.name for p in out.iterdir()} == {"summary.json", "config.json", "metrics.jsonl",
                                               "curves.png", "run.json"}
    assert run["run_id"] == rid and len(run["stretches"]) == 1 and run["cpu_s"] > 0
    assert run["commands"][0].startswith("lra run -m fourier -t listops --preset nystrom")
    assert run["test_examples"] == 32  # nystrom drops the last partial test batch (40 -> 32)
    assert not (out / "checkpoints").exists()
    # finished: a second call starts nothing
    assert driver("run", cwd=tmp_path).returncode == 0
    lines = (tmp_path / "results" / "reproduce" / f"{rid}.jsonl").read_text().splitlines()
    assert len(lines) == 1
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import reproduce

    table = reproduce.table(tmp_path / "evidence")
    row = [line for line in table.splitlines() if line.startswith("| fourier")]
    assert len(row) == 1 and "| listops | `nystrom` | none |" in row[0]


def test_a_finished_run_is_evaluated_again_on_its_own_and_on_a_fresh_sample(finished):
    tmp_path = finished
    run_dir = tmp_path / "results" / "runs" / "repro-nystrom-listops-fourier-s0"
    summary = json.loads((run_dir / "summary.json").read_text())
    tool = [sys.executable, str(ROOT / "benchmarks" / "evaluate_run.py"), str(run_dir)]

    def evaluate(*args):
        r = subprocess.run([*tool, *args, "--out", "rows.json"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
        return r, (json.loads((tmp_path / "rows.json").read_text())["rows"]
                   if r.returncode == 0 else None)

    # its own data: the figures the run recorded, from the restored checkpoint
    r, rows = evaluate("--data-dir", "data")
    assert r.returncode == 0, r.stderr[-2000:]
    test = {row["parameters"]: row for row in rows if row["split"] == "test"}
    assert test["best"]["accuracy"] == summary["test_accuracy_best_val"]
    assert test["last"]["accuracy"] == summary["test_accuracy_last"]
    assert test["best"]["step"] == summary["best_step"] and test["last"]["step"] == 4
    # another generator seed and a larger test split, prepared first
    sets = [*(kv for kv in SMALL if kv.startswith("data.") and "num_test" not in kv),
            "data.generate_seed=1", "data.num_test=72"]
    flags = [a for kv in sets for a in ("--set", kv)]
    prep = subprocess.run([sys.executable, "-m", "lra_bench", "data", "prepare", "listops",
                           "--preset", "nystrom", "--generate", "--data-dir", "fresh", "-q", *flags],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert prep.returncode == 0, prep.stderr[-2000:]
    r, rows = evaluate("--data-dir", "fresh", *flags)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {row["examples"] for row in rows if row["split"] == "test"} == {64}  # 72, drop_last
    # only the data may change: another model is not the checkpoint's
    r, _ = evaluate("--data-dir", "fresh", "--set", "model.num_layers=3")
    assert r.returncode == 2 and r.stderr.startswith("error: --set model.num_layers=3")
    assert "Traceback" not in r.stderr
