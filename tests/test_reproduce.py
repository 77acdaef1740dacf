"""benchmarks/reproduce.py: the driver of the reproduction runs (issue 27) starts a run under a
fixed id, times it, skips it once finished, and writes its evidence and the README table."""

import json
import subprocess
import sys
from pathlib import Path

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


def test_a_run_is_timed_recorded_skipped_once_done_and_tabled(tmp_path):
    r = driver("run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
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
