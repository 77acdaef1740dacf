"""`lra grid`: planning and its user errors, the SLURM path through submitit's own objects (fake
sbatch/sacct/scancel, no cluster), the requeue hook, and a local grid end to end."""

import json
import os
import stat
import time

import pytest
from submitit.core.utils import DelayedSubmission
from typer.testing import CliRunner

from lra_bench import config, grid, results
from lra_bench.grid import planning
from lra_bench.cli import app

runner = CliRunner()
# Tiny jobs: synthetic data of the smoke shapes, a one-layer model, two steps.
TINY = ["--set", "train.steps=2", "--set", "train.eval_every=2", "--set", "model.num_layers=1",
        "--set", 'data.loader="synthetic"', "--no-preflight"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def compile_cache(tmp_path_factory, monkeypatch):
    """The jobs' `lra run` processes share compiled steps (a grid's seeds have the same shapes):
    about 10 s of CPU per run become about 3 s."""
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "jax"))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


@pytest.mark.parametrize("args, message", [
    (["--models", "transformer,nope", "--tasks", "listops"], "unknown model 'nope'"),
    (["--models", "transformer", "--tasks", ","], "--tasks ',' names no tasks"),
    (["--models", "transformer", "--tasks", "listops", "--parallel", "0"],
     "--parallel must be >= 1"),
    (["--models", "transformer", "--tasks", "listops", "--executor", "slurm", "--slurm-opt",
      "constraint"], "--slurm-opt 'constraint': expected KEY=VALUE"),
    (["--models", "transformer", "--tasks", "listops", "--partition", "gpu"],
     "--partition applies to --executor slurm only"),
    (["--models", "transformer", "--tasks", "listops", "--executor", "slurm", "--time", "4h"],
     "--time '4h'"),
    (["--models", "transformer", "--tasks", "listops", "--seeds", "0,0"], "repeats a seed"),
    (["--models", "transformer", "--tasks", "listops", "--set", "train.stepz=1"],
     "unknown key 'train.stepz'"),
    (["--tasks", "listops"], "--models and --tasks are required"),
])
def test_bad_grids_are_one_line_exit_2_and_write_nothing(args, message, tmp_path):
    r = invoke("grid", *args, "--results-dir", tmp_path / "results", "--data-dir", tmp_path / "d")
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "d").exists()


def test_parsers():
    assert [grid.parse_time(t) for t in ("90", "30:30", "4:00:00", "1-00", "1-02:03:04")] == \
        [90, 31, 240, 1440, 1440 + 123 + 1]
    assert grid.parse_mem("64G") == 64 and grid.parse_mem("512MB") == 0.5
    assert grid.parse_slurm_opts(["mail_type=END", "--constraint=a100|h100"]) == \
        {"mail-type": "END", "constraint": "a100|h100"}
    with pytest.raises(Exception, match="--run-id"):
        results.check_new_run_id("/nonexistent", "../escape")


# LRA Table 1's nine attentions and the two state space models (issues 30 and 32).
NEW_MODELS = ("local", "sparse_transformer", "longformer", "linformer", "reformer", "sinkhorn",
              "synthesizer", "bigbird", "performer", "s4d", "s5")


def test_models_all_plans_every_registered_model_and_trains_nothing(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dry run must not check data, create, submit or run anything")

    for name in ("check_data", "create", "run_local", "submit_slurm"):
        monkeypatch.setattr(grid, name, refuse)
    registered = list(config.available("models"))
    assert set(NEW_MODELS) <= set(registered)
    r = invoke("grid", "--models", "all", "--tasks", "listops", "--seeds", "0", "--dry-run",
               "--results-dir", tmp_path / "results", "--data-dir", tmp_path / "data")
    assert r.exit_code == 0, r.output
    shown = [m for m in registered if f"{m}-listops-s0" in r.stdout]
    assert shown == registered and f"{len(registered)} jobs" in r.stdout
    plan = grid.plan("all", "listops", [0], "smoke", [], grid.Resources(), 0, tmp_path / "data",
                     tmp_path / "results")
    assert [j["model"] for j in plan["jobs"]] == registered == plan["models"]
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


def test_dry_run_prints_the_plan_and_sbatch_directives_and_writes_nothing(tmp_path):
    r = invoke("grid", "--models", "transformer,linear", "--tasks", "listops", "--seeds", "0,1",
               "--executor", "slurm", "--partition", "gpu", "--gpus-per-job", "1", "--time",
               "4:00:00", "--mem", "64G", "--slurm-opt", "constraint=a100", "--dry-run",
               "--results-dir", tmp_path / "results")
    assert r.exit_code == 0, r.output
    for text in ("transformer-listops-s0", "linear-listops-s1", "lra run --run-id",
                 "#SBATCH --partition=gpu", "#SBATCH --array=0-3%4", "#SBATCH --time=240",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --mem=64GB", "#SBATCH --constraint=a100",
                 "#SBATCH --signal=USR2@90", "srun --unbuffered"):
        assert text in r.stdout, text
    assert not (tmp_path / "results").exists()


def _fake_slurm(bin_dir, log):
    """sbatch/srun/sacct/scancel stand-ins: record the calls, answer like SLURM."""
    bin_dir.mkdir()
    scripts = {
        "srun": "exit 0",
        "sbatch": f'cp "$1" {log}/sbatch.sh; echo "Submitted batch job 4242"',
        "sacct": 'printf "JobID|State|NodeList\\n4242_0|RUNNING|n1\\n4242_1|PENDING|\\n'
                 '4242_2|PENDING|\\n4242_3|PENDING|\\n"',
        "scancel": f'echo "$@" >> {log}/scancel.txt',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_submission_through_submitit_objects(tmp_path, monkeypatch):
    _fake_slurm(tmp_path / "bin", tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    rdir = tmp_path / "results"
    args = ["--models", "transformer,linear", "--tasks", "listops", "--seeds", "0,1",
            "--executor", "slurm", "--partition", "gpu", "--account", "lab", "--qos", "high",
            "--gpus-per-job", "4", "--cpus-per-job", "16", "--mem", "128G", "--time", "1-00:00:00",
            "--array-parallelism", "2", "--nodes", "2", "--tasks-per-node", "4",
            "--slurm-opt", "constraint=a100", "--slurm-opt", "mail-type=END",
            *TINY, "--results-dir", rdir]
    r = invoke("grid", *args)
    assert r.exit_code == 0, r.output
    g = grid.Grid.open(rdir, None)
    # submitit's SlurmExecutor made the parameters and the script (arrays: one sbatch call)
    ex = grid.slurm_executor(g.plan, g.logs)
    assert {k: ex.parameters[k] for k in ("partition", "account", "qos", "gpus_per_node",
                                          "cpus_per_task", "mem", "time", "nodes",
                                          "ntasks_per_node", "array_parallelism")} == {
        "partition": "gpu", "account": "lab", "qos": "high", "gpus_per_node": 4,
        "cpus_per_task": 16, "mem": "128GB", "time": 1440, "nodes": 2, "ntasks_per_node": 4,
        "array_parallelism": 2}
    script = (tmp_path / "sbatch.sh").read_text()
    assert script == grid.sbatch_text(g.plan, g.logs, 4)  # what --dry-run prints
    for line in ("#SBATCH --array=0-3%2", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --constraint=a100", "#SBATCH --mail-type=END", "#SBATCH --qos=high",
                 "#SBATCH --signal=USR2@90", "#SBATCH --time=1440"):
        assert line in script.splitlines(), line
    subs = g.submissions()
    assert sorted(s["job_id"] for s in subs.values()) == [f"4242_{i}" for i in range(4)]
    # every array task's pickle is the GridJob of its (model, task, seed)
    for key, sub in subs.items():
        pkl = g.logs / f"{sub['job_id']}_submitted.pkl"
        delayed = DelayedSubmission.load(pkl)
        assert isinstance(delayed.function, grid.GridJob) and delayed.function.key == key
        assert delayed._timeout_min == 1440  # submitit's own timeout countdown
    states = {r["key"]: r["state"] for r in grid.status(g)}  # from (fake) sacct
    assert states["transformer-listops-s0"] == "running"
    assert states["linear-listops-s1"] == "pending"
    r = invoke("grid", "cancel", g.grid_id, "--results-dir", rdir)
    assert r.exit_code == 0, r.output
    assert sorted((tmp_path / "scancel.txt").read_text().split()) == [f"4242_{i}" for i in range(4)]
    assert g.cancelled()


def _wait_for(predicate, timeout=300.0):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def _tiny_grid(tmp_path):
    plan = grid.plan("transformer", "listops", [0], "smoke", ['data.loader="synthetic"'],
                     grid.Resources(), 0, tmp_path / "d", tmp_path / "results", preflight=False)
    return grid.create(plan), plan


def test_a_cancel_between_a_jobs_check_and_its_pid_stops_it_before_it_runs(tmp_path,
                                                                           monkeypatch):
    """`lra grid cancel` writes cancelled.json, then signals each supervisor that has recorded
    its pid. One that looked for cancelled.json a moment before it came, and recorded its pid a
    moment after it was read, must still not start its run."""
    g, plan = _tiny_grid(tmp_path)
    (spec,) = plan["jobs"]
    job = grid.GridJob(g.path, plan, spec["key"])
    monkeypatch.setattr("signal.signal", lambda *a: None)  # pytest keeps its own handlers
    record = job._record

    def record_then_cancel(**fields):
        record(**fields)
        if fields.get("state") == "running":  # the cancel finds no pid: it came just before
            grid.cancel(g)

    monkeypatch.setattr(job, "_record", record_then_cancel)
    monkeypatch.setattr(job, "_start", lambda argv: pytest.fail("the cancelled run started"))
    assert job()["state"] == "cancelled"
    assert json.loads(grid.job_file(g.path, spec["key"]).read_text())["state"] == "cancelled"


def test_stopping_jobs_that_never_start_gives_up_with_a_warning(tmp_path, capsys):
    g, plan = _tiny_grid(tmp_path)

    class NeverStarts:
        def done(self):
            return False

    grid.executors.stop_when_started(g, {"transformer-listops-s0": NeverStarts()}, timeout=0.3)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning: lra grid: 1 job(s) had not started 0 s after the stop "
                           "(transformer-listops-s0)")
    assert f"lra grid cancel {g.grid_id}" in line


def test_checkpoint_hook_stops_the_run_and_requeues_a_job_that_resumes_it(tmp_path,
                                                                          compile_cache):
    rdir = tmp_path / "results"
    plan = grid.plan("transformer", "listops", [0], "smoke",
                     ["train.steps=60", "train.eval_every=2", "model.num_layers=1",
                      'data.loader="synthetic"'], grid.Resources(), 0, tmp_path / "d", rdir,
                     preflight=False)
    g = grid.create(plan)
    (job_spec,) = plan["jobs"]
    job = grid.GridJob(g.path, plan, job_spec["key"])
    job._start(grid.run_command(plan, job_spec, resume=False))
    run = rdir / "runs" / job_spec["run_id"]
    _wait_for(lambda: (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text())
    # what submitit calls on SIGUSR2 (time limit or preemption)
    delayed = job.checkpoint()
    assert job._child.poll() is not None
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 2 <= summary["checkpoint_step"] < 60
    record = json.loads(grid.job_file(g.path, job_spec["key"]).read_text())
    assert record["state"] == "interrupted" and record["requeued"] == 1
    assert isinstance(delayed.function, grid.GridJob) and delayed.function is not job
    assert {r["key"]: r["state"] for r in grid.status(g)} == {job_spec["key"]: "interrupted"}
    # the requeued job resumes the run from that checkpoint
    outcome = delayed.result()
    assert outcome["state"] == "completed"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 60
    (resumed_at,) = summary["resumed_from_steps"]
    assert resumed_at >= 2
    record = json.loads(grid.job_file(g.path, job_spec["key"]).read_text())
    assert record["state"] == "completed" and "--resume" in record["command"]


def test_local_grid_end_to_end_with_a_failure_then_resume(tmp_path, monkeypatch, compile_cache):
    """2 models x 2 tasks x 2 seeds on this machine, 2 at a time; one job fails (its run folder
    is damaged), is retried once, fails again; the others complete; `resume` completes it."""
    rdir = tmp_path / "results"
    monkeypatch.setattr(planning, "new_grid_id", lambda: "g1")
    broken = rdir / "runs" / "g1-linear-text-s1"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{not json")
    r = invoke("grid", "--models", "transformer,linear", "--tasks", "listops,text",
               "--seeds", "0,1", "--parallel", "2", "--retries", "1", *TINY,
               "--results-dir", rdir, "--data-dir", tmp_path / "data")
    assert r.exit_code == 1, r.output  # not every job completed
    assert "lra grid resume g1" in r.stderr
    g = grid.Grid.open(rdir, "g1")
    rows = {x["key"]: x for x in grid.status(g)}
    assert len(rows) == 8
    assert {k for k, x in rows.items() if x["state"] != "completed"} == {"linear-text-s1"}
    failed = rows["linear-text-s1"]
    assert failed["state"] == "failed" and failed["attempts"] == 2
    assert "cannot be resumed" in failed["error"]
    record = json.loads(grid.job_file(g.path, "linear-text-s1").read_text())
    assert len(record["errors"]) == 2 and record["errors"][0]["attempt"] == 1
    r = invoke("report", "--grid", "g1", "--results-dir", rdir)
    assert r.exit_code == 0 and "missing 1/2" in r.stdout, r.output

    r = invoke("grid", "status", "--results-dir", rdir)  # the latest grid
    assert r.exit_code == 0 and "7 completed, 1 failed" in r.stdout, r.output
    import shutil

    shutil.rmtree(broken)  # the damage repaired, resume runs that job only
    r = invoke("grid", "resume", "g1", "--results-dir", rdir)
    assert r.exit_code == 0, r.output
    assert "resuming 1 job(s): linear-text-s1" in r.stderr
    assert all(x["state"] == "completed" for x in grid.status(g))

    r = invoke("report", "--grid", "g1", "--results-dir", rdir, "--format", "json")
    assert r.exit_code == 0, r.output
    cells = json.loads(r.stdout)["grid"]
    assert len(cells) == 4 and all(c["n"] == 2 and c["missing"] == 0 for c in cells)
    r = invoke("report", "--results-dir", rdir)  # the plain leaderboard counts them too
    assert r.exit_code == 0 and r.stdout.count("(n=2)") == 4, r.output
    r = invoke("grid", "resume", "g1", "--results-dir", rdir)
    assert r.exit_code == 0 and "nothing to resume" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--run-id", "../x"], "--run-id '../x': use letters, digits"),
    (["--run-id", "a", "--seeds", "0,1"], "--run-id names one new run"),
    (["--run-id", "taken"], "run taken already exists"),
])
def test_run_id_errors(args, message, tmp_path):
    (tmp_path / "results" / "runs" / "taken").mkdir(parents=True)
    r = invoke("run", "--model", "transformer", "--task", "listops", *args,
               "--results-dir", tmp_path / "results", "--data-dir", tmp_path / "data")
    assert r.exit_code == 2 and message in r.stderr, r.output
    assert [p.name for p in (tmp_path / "results" / "runs").iterdir()] == ["taken"]


@pytest.mark.parametrize("signum, code", [(15, 143), (2, 130)])
def test_a_signal_to_the_whole_group_stops_a_local_grid_cleanly(tmp_path, compile_cache, signum,
                                                                  code):
    """`timeout`, `kill` of the group or Ctrl-C on the terminal: every process of the grid gets
    the signal. The grid stops its jobs with a checkpoint, says how to resume, and nothing is
    left running (submitit's controller ignores the Ctrl-C; the job's supervisor stops its run)."""
    import subprocess
    import sys

    rdir = tmp_path / "results"
    many = [a if a != "train.steps=2" else "train.steps=100000" for a in TINY]
    p = subprocess.Popen(
        [sys.executable, "-m", "lra_bench", "grid", "--models", "linear", "--tasks", "listops",
         *many, "--results-dir", str(rdir), "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    metrics = None
    while time.time() < deadline and p.poll() is None:
        found = list(rdir.glob("runs/*/metrics.jsonl"))
        if found and found[0].stat().st_size:  # the run is training
            metrics = found[0]
            break
        time.sleep(0.5)
    assert metrics is not None, p.communicate(timeout=30)
    os.killpg(p.pid, signum)
    out, err = p.communicate(timeout=120)
    assert p.returncode == code, err
    assert "Traceback" not in err and "lra grid resume" in err.splitlines()[-1]
    run = metrics.parent
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["checkpoint_step"] > 0
    assert not results.is_active(run)  # the run process has ended
    (g,) = (rdir / "grids").iterdir()
    assert [x["state"] for x in grid.status(grid.Grid.open(rdir, g.name))] == ["interrupted"]
