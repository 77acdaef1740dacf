"""Runs that survive: kill-and-resume equality, signals, divergence, seeds, concurrent runs and
damaged results, through the real CLI (subprocesses where a process must die or run in parallel).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lra_bench import config, results
from lra_bench.checkpoint import Checkpoints, all_finite
from lra_bench.cli import app
from lra_bench.report import read_csv_tables
from lra_bench.trainer import build

ROOT = Path(__file__).resolve().parents[1]
# Small and quick, but with dropout on, so a resume that lost the RNG, the data position or the
# optimiser state would end with different numbers.
RUN = ["--model", "transformer", "--task", "listops", "--steps", "120",
       "--set", "train.eval_every=30", "--set", "train.eval_batches=2",
       "--set", "train.batch_size=8", "--set", "model.num_layers=1",
       "--set", "train.checkpoint_every=20"]
COMPARED = ("val_accuracy", "best_step", "test_accuracy", "test_accuracy_last", "test_loss",
            "final_train_loss")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """The subprocesses' environment. They share a persistent compilation cache: the first run
    compiles, the others load the same executables (the same program: results do not change)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
            "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax-cache")),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def start_run(env: dict, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lra_bench", "run", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_dirs(results_dir: Path) -> list[Path]:
    return sorted((results_dir / "runs").glob("*"))


def checkpoint_steps(run: Path) -> list[int]:
    # Finished checkpoints only: orbax names a save in progress `<step>.orbax-checkpoint-tmp-*`.
    return sorted(int(p.name) for p in (run / "checkpoints").glob("*") if p.name.isdigit())


def wait_for_checkpoint(results_dir: Path, proc: subprocess.Popen, at_least: int) -> Path:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        for run in run_dirs(results_dir):
            if any(s >= at_least for s in checkpoint_steps(run)):
                return run
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def evals(run: Path) -> list[dict]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # (the clock and the speed differ between any two runs; the rest must not)
    return [{k: v for k, v in r.items() if k not in ("time", "steps_per_second")}
            for r in records]


def outcome(run: Path) -> dict:
    return {"summary": {k: summary(run)[k] for k in COMPARED}, "evals": evals(run)}


@pytest.fixture(scope="module")
def parallel(env, data_dir, tmp_path_factory):
    """Four runs started at once into one results dir: seeds 0, 0, 1, 2."""
    results_dir = tmp_path_factory.mktemp("parallel")
    seeds = [0, 0, 1, 2]
    procs = [start_run(env, *RUN, "--seed", s, "--data-dir", data_dir, "--results-dir", results_dir)
             for s in seeds]
    outputs = [p.communicate(timeout=400) for p in procs]
    return results_dir, seeds, [(p.returncode, *o) for p, o in zip(procs, outputs)]


@pytest.fixture(scope="module")
def reference(parallel) -> dict:
    """The uninterrupted seed-0 run."""
    results_dir, _, _ = parallel
    run = next(r for r in run_dirs(results_dir) if summary(r)["seed"] == 0)
    return outcome(run)


def test_sigkill_mid_run_then_resume_ends_exactly_like_the_uninterrupted_run(
        env, data_dir, tmp_path, request):
    results_dir = tmp_path / "results"
    proc = start_run(env, *RUN, "--seed", 0, "--data-dir", data_dir, "--results-dir", results_dir)
    run = wait_for_checkpoint(results_dir, proc, 40)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert summary(run)["status"] == "running"  # it really died mid-run
    killed_at = checkpoint_steps(run)[-1]
    assert 40 <= killed_at < 120
    # The uninterrupted runs start only now, with this run's compilations in the cache.
    reference = request.getfixturevalue("reference")

    r = invoke("run", "--resume", "latest", "--data-dir", data_dir, "--results-dir", results_dir)
    assert r.exit_code == 0, r.output
    assert f"resumed from step {killed_at}" in r.stdout
    assert summary(run)["resumed_from_steps"] == [killed_at]
    assert outcome(run) == reference


def test_four_parallel_runs_complete_correctly_and_the_same_seed_repeats_exactly(parallel):
    results_dir, seeds, outputs = parallel
    for rc, out, err in outputs:
        assert rc == 0, err
        assert "Traceback" not in err
    runs = run_dirs(results_dir)
    assert len(runs) == 4 and len({r.name for r in runs}) == 4
    by_seed = {}
    for run in runs:
        s = summary(run)
        assert s["status"] == "completed" and s["run_id"] == run.name
        assert json.loads((run / "config.json").read_text())["seed"] == s["seed"]
        assert [e["step"] for e in evals(run) if "val_accuracy" in e] == [30, 60, 90, 120]
        assert checkpoint_steps(run) == [100, 120]  # every 20 steps, the newest two kept
        by_seed.setdefault(s["seed"], []).append(outcome(run))
    assert sorted(by_seed) == [0, 1, 2] and len(by_seed[0]) == 2
    # Determinism: the same seed in two processes gives the same numbers, to the last bit.
    assert by_seed[0][0] == by_seed[0][1]
    assert by_seed[0][0]["evals"] != by_seed[1][0]["evals"]

    # The leaderboard counts seeds (the repeated seed 0 once) and averages them.
    r = invoke("report", "--results-dir", results_dir, "--format", "csv")
    assert r.exit_code == 0, r.output
    row = read_csv_tables(r.stdout)["accuracy"].iloc[0]
    accs = [100 * by_seed[s][0]["summary"]["test_accuracy"] for s in (0, 1, 2)]
    assert row["listops_n"] == 3 and row["listops_diverged"] == 0
    assert row["listops"] == pytest.approx(np.mean(accs), abs=1e-4)
    assert row["listops_std"] == pytest.approx(np.std(accs, ddof=1), abs=1e-4)
    assert row["selection"] == "best_val"


def test_sigint_and_sigterm_checkpoint_mark_interrupted_and_exit_within_seconds(
        env, reference, data_dir, tmp_path):
    procs = {sig: start_run(env, *RUN, "--seed", 0, "--data-dir", data_dir,
                            "--results-dir", tmp_path / sig.name)
             for sig in (signal.SIGINT, signal.SIGTERM)}
    runs, sent, marked, exited = {}, {}, {}, {}
    deadline = time.monotonic() + 240
    while len(exited) < len(procs) and time.monotonic() < deadline:
        for sig, proc in procs.items():
            if sig not in sent:
                found = [r for r in run_dirs(tmp_path / sig.name) if checkpoint_steps(r)]
                assert proc.poll() is None, proc.communicate()
                if found:  # training is under way: ask it to stop
                    runs[sig], sent[sig] = found[0], time.monotonic()
                    proc.send_signal(sig)
                continue
            if sig not in marked and summary(runs[sig]).get("status") == "interrupted":
                marked[sig] = time.monotonic()
            if sig not in exited and proc.poll() is not None:
                exited[sig] = time.monotonic()
        time.sleep(0.01)
    for sig, proc in procs.items():
        _, err = proc.communicate(timeout=30)
        # Checkpointed and marked within a few seconds; the exit adds JAX's interpreter teardown
        # (about a second on a loaded 2-core machine).
        assert marked[sig] - sent[sig] < 5.0
        assert exited[sig] - sent[sig] < 10.0
        assert proc.returncode == 128 + sig, err
        assert "Traceback" not in err
        s = summary(runs[sig])
        assert s["status"] == "interrupted" and s["signal"] == sig.name
        step = s["interrupted_step"]
        assert 20 <= step < 120 and s["checkpoint_step"] == step
        assert step in checkpoint_steps(runs[sig])
        assert f"lra run --resume {runs[sig].name}" in err

    run, results_dir = runs[signal.SIGTERM], tmp_path / "SIGTERM"
    # Options that contradict the saved config are refused, with nothing written.
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    r = invoke("run", "--resume", run.name, "--steps", 50, "--results-dir", results_dir)
    assert r.exit_code == 2 and "--steps 50 conflicts with its --steps 120" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before

    r = invoke("run", "--resume", run.name, *RUN[:4], "--data-dir", data_dir,
               "--results-dir", results_dir)  # options that agree are fine
    assert r.exit_code == 0, r.output
    assert outcome(run) == reference
    r = invoke("run", "--resume", run.name, "--results-dir", results_dir)
    assert r.exit_code == 2 and "already completed" in r.stderr


def test_nan_loss_marks_the_run_diverged_and_keeps_the_last_good_checkpoint(data_dir, results_dir):
    # Adam's first update moves every weight by about the learning rate: 1e9 overflows float32
    # in the next forward pass, so the loss of step 2 is NaN.
    sets = ["train.learning_rate=1e9", 'train.schedule="constant"', "train.warmup_steps=0",
            "train.checkpoint_every=1", "train.batch_size=8", "model.num_layers=1"]
    r = invoke("run", "-m", "transformer", "-t", "listops", "--steps", 10,
               *[a for s in sets for a in ("--set", s)],
               "--data-dir", data_dir, "--results-dir", results_dir)
    assert r.exit_code == 1, r.output
    (run,) = run_dirs(results_dir)
    s = summary(run)
    assert s["status"] == "diverged" and s["diverged_step"] == 2
    assert s["error"] == "loss became nan at step 2" and "test_accuracy" not in s
    assert s["checkpoint_step"] == 1 and checkpoint_steps(run) == [1]
    assert "diverged" in r.stderr and "last good checkpoint: step 1" in r.stderr
    rc = config.RunConfig.from_dict(json.loads((run / "config.json").read_text()))
    ckpt = Checkpoints(run)
    state, _, progress = ckpt.restore(build(rc).init_state)
    ckpt.close()
    assert int(state["step"]) == 1 and bool(all_finite((state["params"], state["opt_state"])))

    r = invoke("report", "--results-dir", results_dir, "--format", "markdown")
    assert r.exit_code == 0, r.output
    from lra_bench.report import experiment

    label = experiment("smoke", [*sets, "train.steps=10"])  # the changed settings, sorted
    assert label.startswith("smoke [model.num_layers=1, train.batch_size=8, ")
    assert f"| {label} | transformer | diverged | - |" in r.stdout
    r = invoke("report", "--results-dir", results_dir, "--runs", "--format", "markdown")
    assert f"| {run.name} | {label} | transformer | listops | 0 | diverged at step 2 | diverged | diverged |" in r.stdout
    r = invoke("run", "--resume", run.name, "--results-dir", results_dir)
    assert r.exit_code == 2 and "diverged at step 2" in r.stderr


def test_seeds_run_one_after_another_and_the_report_shows_each(data_dir, results_dir):
    r = invoke("run", "-m", "transformer", "-t", "listops", "--steps", 2, "--seeds", "0,1",
               "--set", "train.eval_every=2", "--set", "train.batch_size=8",
               "--set", "model.num_layers=1", "--data-dir", data_dir, "--results-dir", results_dir)
    assert r.exit_code == 0, r.output
    assert r.stdout.count("test acc") == 2 and "2/2 seeds completed" in r.stderr
    starts = sorted((summary(run)["started_at"], summary(run)["ended_at"], summary(run)["seed"])
                    for run in run_dirs(results_dir))
    assert [s[2] for s in starts] == [0, 1] and starts[0][1] <= starts[1][0]  # sequential
    r = invoke("report", "--results-dir", results_dir, "--runs", "--format", "json")
    rows = json.loads(r.stdout)["runs"]
    assert [(x["seed"], x["status"], x["selection"]) for x in rows] == [
        (0, "completed", "best_val"), (1, "completed", "best_val")]
    r = invoke("report", "--results-dir", results_dir, "--runs", "--selection", "best")
    assert r.exit_code == 0 and "best-validation parameters" in r.stdout


def test_report_warns_about_each_damaged_summary_and_reports_the_rest(tmp_path):
    good = {"run_id": "good", "model": "transformer", "task": "listops", "preset": "smoke",
            "seed": 0, "status": "completed", "test_accuracy": 0.5, "test_accuracy_last": 0.4,
            "step_time_ms": 1.0, "peak_memory_bytes": 2**20, "memory_source": "x",
            "compile_time_s": 1.0, "params": 10, "flops_per_step": 1.0, "device_kind": "cpu"}
    results.write_json_atomic(tmp_path / "runs" / "good" / "summary.json", good)
    damaged = {"truncated": json.dumps(good)[:40], "empty": "", "garbage": b"\xff\xfe\x00{",
               "a-list": "[1, 2]", "no-status": json.dumps({"model": "m", "task": "t"})}
    for name, content in damaged.items():
        path = tmp_path / "runs" / name / "summary.json"
        path.parent.mkdir(parents=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for args in ([], ["--runs"]):
        r = invoke("report", "--results-dir", tmp_path, "--format", "markdown", *args)
        assert r.exit_code == 0, r.output
        assert "| smoke | transformer | 50.00 |" in r.stdout or "| good |" in r.stdout
        warnings = r.stderr.strip().splitlines()
        assert len(warnings) == 5 and all(w.startswith("warning: skipped ") for w in warnings)
        reasons = {"truncated": "truncated or corrupt JSON", "empty": "the file is empty",
                   "garbage": "not UTF-8", "a-list": "expected a JSON object, found list",
                   "no-status": "not a run summary (no status)"}
        for name, reason in reasons.items():
            (line,) = [w for w in warnings if f"/runs/{name}/summary.json" in w]
            assert reason in line, line


def test_run_ids_never_collide_across_parallel_processes(tmp_path, monkeypatch):
    code = ("import sys; from lra_bench.results import RunDir; "
            "[RunDir.create(sys.argv[1], 'transformer', 'listops') for _ in range(50)]")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env)
             for _ in range(4)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    assert len(run_dirs(tmp_path)) == 200
    # A drawn id that is taken is drawn again, never shared.
    ids = iter(["same", "same", "other"])
    monkeypatch.setattr(results, "new_run_id", lambda model, task: next(ids))
    first = results.RunDir.create(tmp_path / "x", "m", "t")
    second = results.RunDir.create(tmp_path / "x", "m", "t")
    assert (first.run_id, second.run_id) == ("same", "other")


@pytest.mark.parametrize("args, message", [
    (["run"], "--model and --task are required"),
    (["run", "-m", "transformer", "-t", "listops", "--seeds", "0,x"], "--seeds '0,x'"),
    (["run", "-m", "transformer", "-t", "listops", "--seeds", "0,0"], "repeats a seed"),
    (["run", "-m", "transformer", "-t", "listops", "--seed", "1", "--seeds", "0,1"],
     "give --seed or --seeds"),
    (["run", "-m", "transformer", "-t", "listops", "--set", "train.checkpoint_every=-1"],
     "checkpoint_every must be >= 0"),
    (["run", "--resume", "latest"], "no runs to resume"),
    (["run", "--resume", "20260101-000000-x"], "no run '20260101-000000-x'"),
])
def test_reliability_user_errors_are_one_line_and_write_nothing(args, message, results_dir):
    r = invoke(*args, "--results-dir", results_dir)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert not results_dir.exists() or not any(results_dir.rglob("*"))


def test_seed_aggregation_counts_seeds_and_never_averages_diverged_runs(tmp_path):
    from lra_bench import report

    def s(model, task, seed, status="completed", acc=None, started="2026-01-01T00:00:00"):
        out = {"run_id": f"{model}-{task}-{seed}-{started[:10]}", "model": model, "task": task,
               "preset": "lra", "seed": seed, "status": status, "started_at": started}
        if status == "completed":
            out.update(test_accuracy=acc, test_accuracy_last=acc - 0.1)
        elif status == "diverged":
            out.update(diverged_step=7)
        return out

    for x in [s("a", "listops", 0, acc=0.30), s("a", "listops", 1, acc=0.40),
              s("a", "listops", 0, acc=0.50, started="2026-01-02T00:00:00"),  # re-run: replaces
              s("a", "listops", 2, "diverged"), s("a", "listops", 3, "interrupted"),
              s("a", "text", 0, "diverged"), s("a", "text", 1, "diverged"),
              s("b", "listops", 0, acc=0.20)]:
        results.write_json_atomic(tmp_path / "runs" / x["run_id"] / "summary.json", x)
    runs, _ = report.load_runs(tmp_path)
    table = report.accuracy_table(runs).set_index("model")
    assert table.loc["a", "listops"] == pytest.approx(45.0)  # seeds 0 (latest run) and 1
    assert table.loc["a", "listops_std"] == pytest.approx(np.std([50.0, 40.0], ddof=1))
    assert (table.loc["a", "listops_n"], table.loc["a", "listops_diverged"]) == (2, 1)
    assert pd.isna(table.loc["a", "text"]) and table.loc["a", "text_diverged"] == 2
    # An average is over the tasks with a number (diverged or not run: none), and says so.
    assert table.loc["a", "avg_lra"] == pytest.approx(45.0) and table.loc["a", "avg_lra_tasks"] == 1
    assert table.loc["b", "avg_6"] == pytest.approx(20.0) and table.loc["b", "avg_6_tasks"] == 1
    assert report.accuracy_table(runs, "last").set_index("model").loc["a", "listops"] == pytest.approx(35.0)
    _, rows = report.accuracy_rows(table.reset_index())
    assert rows[0] == ["lra", "a", "45.00 ± 7.07 (n=2, +1 diverged)", "diverged (n=2)",
                       "45.00 (1/5 tasks)", "45.00 (1/6 tasks)", "best_val"]
    assert rows[1] == ["lra", "b", "20.00", "-", "20.00 (1/5 tasks)", "20.00 (1/6 tasks)",
                       "best_val"]
    each = report.runs_table(runs)
    assert len(each) == 8 and set(each["status"]) == {"completed", "diverged", "interrupted"}
    assert each.loc[each["status"] != "completed", "test_accuracy"].isna().all()


def test_a_run_held_by_a_live_process_cannot_be_resumed_twice(tmp_path):
    rc = config.resolve("transformer", "listops", "smoke")
    rd = results.RunDir.create(tmp_path, "transformer", "listops")
    rd.write("config.json", rc.to_dict())
    rd.write("summary.json", {"run_id": rd.run_id, "model": "transformer", "task": "listops",
                              "preset": "smoke", "seed": 0, "status": "running"})
    assert rd.lock() and results.is_active(rd.path)
    r = invoke("run", "--resume", rd.run_id, "--results-dir", tmp_path)
    assert r.exit_code == 2 and "still running in another process" in r.stderr
    r = invoke("report", "--runs", "--results-dir", tmp_path, "--format", "csv")
    assert ",running," in r.stdout
    rd.unlock()  # as when its process dies
    assert not results.is_active(rd.path)
    r = invoke("report", "--runs", "--results-dir", tmp_path, "--format", "markdown")
    assert "| stopped (checkpoint step -) |" in r.stdout
    # killed before its summary said so: the checkpoint folders tell (orbax's unfinished ones
    # carry a suffix)
    for name in ("100", "200", "300.orbax-checkpoint-tmp-1"):
        (rd.path / "checkpoints" / name).mkdir(parents=True)
    r = invoke("report", "--runs", "--results-dir", tmp_path, "--format", "markdown")
    assert "| stopped (checkpoint step 200) |" in r.stdout


def test_a_second_signal_stops_at_once_and_says_how_to_resume(data_dir, results_dir,
                                                              monkeypatch):
    from lra_bench import run as runner

    def second_signal(*args, **kwargs):  # as StopOnSignal raises it on the second Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "train_and_evaluate", second_signal)
    r = invoke("run", *RUN, "--data-dir", data_dir, "--results-dir", results_dir)
    assert r.exit_code == 130 and "Traceback" not in r.output
    (run,) = run_dirs(results_dir)
    assert summary(run)["status"] == "interrupted"
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"run {run.name} stopped at once by a second signal; continue it "
                           "from the start with: lra run --resume ")
    monkeypatch.undo()
    # options given with --resume must agree with the saved ones: --steps 120 does (it is the
    # run's), --steps 7 does not
    r = invoke("run", "--resume", run.name, "--steps", 120, "--data-dir", data_dir,
               "--results-dir", results_dir)
    assert r.exit_code == 0, r.output
    r = invoke("run", "--resume", run.name, "--steps", 7, "--results-dir", results_dir)
    assert r.exit_code == 2 and "--steps 7 conflicts with its --steps 120" in r.stderr
