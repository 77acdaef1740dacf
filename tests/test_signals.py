"""SIGINT and SIGTERM end every command with one line and exit 130 / 143, also when the command
was started in the background (`cmd &`), where the shell hands it SIGINT ignored (issue 28)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def background(args: list[str], err: Path) -> subprocess.Popen:
    """`python -m lra_bench ARGS &` in a non-interactive bash, as a script starts a background
    job (SIGINT ignored): the job's pid is the first line of the shell's stdout; its exit code the
    second ("rc=N")."""
    cmd = " ".join([sys.executable, "-m", "lra_bench", *args])
    return subprocess.Popen(["bash", "-c", f'{cmd} 2>"{err}" & echo $!; wait $!; echo "rc=$?"'],
                            stdout=subprocess.PIPE, text=True)


def wait_for(path: Path, text: str, timeout: float = 60) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}: {path.read_text() if path.exists() else ''}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_background_job_stops_on_sigint_and_sigterm(tmp_path, sig):
    """A background `lra data prepare` (SIGINT inherited as ignored) stops at either signal,
    with one line, exit 128 + signal, no traceback and no data."""
    err, data = tmp_path / "err.txt", tmp_path / "data"
    shell = background(["data", "prepare", "pathfinder", "--preset", "smoke", "--generate",
                        "--data-dir", str(data)], err)
    pid = int(shell.stdout.readline())
    wait_for(err, "pathfinder: drawing")
    os.kill(pid, sig)
    rest, _ = shell.communicate(timeout=60)
    assert rest.strip() == f"rc={128 + sig}", err.read_text()
    lines = err.read_text().strip().splitlines()
    assert "Traceback" not in err.read_text()
    assert lines[-1].startswith(("interrupted (SIGINT)", "terminated (SIGTERM)")), lines
    assert not data.exists()


def test_run_stopped_while_generating_says_how_to_start_again(tmp_path):
    """`lra run` stopped during its own data generation: one line naming the signal and the
    command, with its folders, as typed; exit 143; no run folder."""
    err, data, results = tmp_path / "err.txt", tmp_path / "d", tmp_path / "r"
    args = ["run", "-m", "transformer", "-t", "pathfinder", "--preset", "smoke", "--data-dir",
            str(data), "--results-dir", str(results)]
    proc = subprocess.Popen([sys.executable, "-m", "lra_bench", *args],
                            stderr=open(err, "w"))
    wait_for(err, "pathfinder: drawing")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    text = err.read_text()
    assert "Traceback" not in text, text
    last = text.strip().splitlines()[-1]
    assert last == ("stopped by SIGTERM before it finished; start it again with: lra "
                    + " ".join(args)), last
    assert not results.exists() and not (data / "prepared").exists()


def test_the_grid_resume_hint_keeps_results_dir():
    from lra_bench.cli.grid import _follow

    class G:
        grid_id, plan = "G1", {"results_dir": "/x/my results"}

    assert _follow(G, "resume", Path("rel")) == "lra grid resume G1 --results-dir '/x/my results'"
    assert _follow(G, "resume", None) == "lra grid resume G1"


def test_a_sweep_stopped_by_sigterm_exits_143_with_a_resume_command_that_finds_it(tmp_path):
    err, results = tmp_path / "err.txt", tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "lra_bench", "sweep", "-m", "transformer",
                             "-t", "listops", "--preset", "smoke", "--lengths", "16,32",
                             "--batch-size", "2", "--steps", "1", "--warmup", "0",
                             "--results-dir", str(results)], stderr=open(err, "w"))
    end = time.time() + 60
    while not list(results.glob("sweeps/*.json")) and time.time() < end:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, err.read_text()
    (saved,) = results.glob("sweeps/*.json")
    last = err.read_text().strip().splitlines()[-1]
    assert last.startswith("SIGTERM: stopped; finished points are kept"), last
    assert last.endswith(f"lra sweep --resume {saved.stem} --results-dir {results}"), last


def test_a_background_grid_stopped_as_its_job_starts_leaves_nothing_running(tmp_path):
    """`lra grid ... &` (SIGINT inherited as ignored) gets SIGINT right after it submitted its
    job, while submitit is still starting the job's supervisor (no pid recorded yet, SIGINT
    ignored there): exit 130 with the resume command, and no supervisor or run left running
    after it (one was: it trained on, unseen, after the grid had ended; 200 steps bound what
    such a regression leaves behind)."""
    import json

    from lra_bench import results
    from lra_bench.grid.record import local_alive

    err, rdir = tmp_path / "err.txt", tmp_path / "r"
    shell = background(["grid", "--models", "linear", "--tasks", "listops", "--set",
                        "train.steps=200", "--set", "model.num_layers=1", "--set",
                        "'data.loader=\"synthetic\"'", "--no-preflight", "--results-dir",
                        str(rdir), "--data-dir", str(tmp_path / "d")], err)
    pid = int(shell.stdout.readline())
    end = time.time() + 60
    while not list(rdir.glob("grids/*/submissions.json")) and time.time() < end:
        time.sleep(0.05)
    os.kill(pid, signal.SIGINT)
    rest, _ = shell.communicate(timeout=120)
    assert rest.strip() == "rc=130", err.read_text()
    text = err.read_text()
    assert "Traceback" not in text
    (grid,) = (rdir / "grids").iterdir()
    assert text.strip().splitlines()[-1].endswith(
        f"lra grid resume {grid.name} --results-dir {rdir}"), text
    (job,) = (grid / "jobs").glob("*.json")
    record = json.loads(job.read_text())
    assert record["state"] in ("interrupted", "cancelled"), record
    assert not local_alive(record.get("pid"), record.get("host"))
    assert not any(results.is_active(run) for run in rdir.glob("runs/*"))
