"""Where a grid's jobs run, through submitit: one SLURM job array (`submit_slurm`), or this
machine, `parallel` jobs at a time (`run_local`); and how they are stopped (`cancel`)."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import submitit
from rich.table import Table
from submitit.slurm import slurm as submitit_slurm

from lra_bench import results
from lra_bench.errors import UserError
from lra_bench.interruption import StopOnSignal
from lra_bench.grid.job import STOP_WAIT_S, GridJob
from lra_bench.grid.planning import grids_dir, parse_mem, parse_slurm_opts, parse_time
from lra_bench.grid.record import (STATES, Grid, counts, describe, job_file, local_alive,
                                   read_json, status)
from lra_bench.progress import Display, console

LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # LocalExecutor always sets a time limit; `--time` or none
TABLE_EVERY_S = 2.0  # the live table of jobs reads every job's record: not at every poll


def slurm_parameters(plan_: dict) -> dict:
    """SlurmExecutor.update_parameters() arguments from the grid's flags (see docs/grid.md)."""
    r = plan_["resources"]
    mem = parse_mem(r["mem"])
    params = {"job_name": f"lra-grid-{plan_['grid_id']}", "nodes": r["nodes"] or 1,
              "ntasks_per_node": r["tasks_per_node"] or 1, "cpus_per_task": r["cpus_per_job"],
              "gpus_per_node": r["gpus_per_job"], "mem": submitit_slurm._convert_mem(mem) if mem else None,
              "time": parse_time(r["time"]), "partition": r["partition"],
              "account": r["account"], "qos": r["qos"],
              "array_parallelism": r["array_parallelism"],
              "additional_parameters": parse_slurm_opts(r["slurm_opts"]) or None}
    return {k: v for k, v in params.items() if v is not None}


def sbatch_text(plan_: dict, folder: Path, count: int) -> str:
    """The sbatch script SlurmExecutor writes for `count` jobs (an array when count > 1), made by
    submitit's own function, for `--dry-run` (no srun needed here)."""
    params = slurm_parameters(plan_)
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit",
                        shlex.quote(str(folder))])
    return submitit_slurm._make_sbatch_string(command=command, folder=folder,
                                              map_count=count if count > 1 else None, **params)


def slurm_executor(plan_: dict, folder: Path):
    try:
        ex = submitit.SlurmExecutor(folder=folder)
    except RuntimeError as e:  # no srun here
        raise UserError(f"--executor slurm: {e} (run lra grid on a SLURM login node)") from None
    ex.update_parameters(**slurm_parameters(plan_))
    return ex


def local_executor(plan_: dict, folder: Path):
    ex = submitit.LocalExecutor(folder=folder)
    ex.update_parameters(timeout_min=parse_time(plan_["resources"]["time"]) or LOCAL_TIMEOUT_MIN)
    return ex


def create(plan_: dict) -> Grid:
    """Write the grid's folder and plan.json (after every check passed)."""
    path = grids_dir(Path(plan_["results_dir"])) / plan_["grid_id"]
    if plan_["resources"]["executor"] == "slurm":
        slurm_executor(plan_, path / "logs")  # no srun here: a UserError before any write
    path.mkdir(parents=True, exist_ok=False)
    results.write_json_atomic(path / "plan.json", plan_)
    return Grid(Path(plan_["results_dir"]), plan_["grid_id"])


def _log_paths(job) -> dict:
    return {"job_id": str(job.job_id), "stdout": str(job.paths.stdout),
            "stderr": str(job.paths.stderr), "host": socket.gethostname(),
            "submitted_at": results.utc_now()}


def submit_slurm(grid: Grid, keys: list[str]) -> list[str]:
    """Submit the jobs as one SLURM job array; return their job ids."""
    ex = slurm_executor(grid.plan, grid.logs)
    with ex.batch():
        jobs = [ex.submit(GridJob(grid.path, grid.plan, k)) for k in keys]
    grid.add_submissions({k: _log_paths(j) for k, j in zip(keys, jobs)})
    return [str(j.job_id) for j in jobs]


def jobs_table(rows: list[dict]) -> Table:
    """The jobs by state (running first), with each finished run's test accuracy."""
    t = Table(title=counts(rows), title_justify="left")
    for c in ("job", "state", "run id", "test acc"):
        t.add_column(c)
    order = ("running", "pending", *(s for s in STATES if s not in ("running", "pending")))
    for r in sorted(rows, key=lambda r: order.index(r["state"]) if r["state"] in order else 99):
        acc = r.get("test_accuracy")
        t.add_row(r["key"], r["state"], r["run_id"],
                  f"{100 * acc:.2f}" if acc is not None and r["state"] == "completed" else "-")
    return t


def run_local(grid: Grid, keys: list[str], parallel: int) -> str | None:
    """Run the jobs on this machine, `parallel` at a time, until all have ended; returns None,
    or the name of the signal (SIGINT, SIGTERM) that stopped the grid. A signal, to this process
    or its whole group (Ctrl-C, `timeout`, `kill`), or `lra grid cancel`, stops the running jobs
    with a checkpoint and starts no other; `lra grid resume` continues. A second signal stops at
    once (KeyboardInterrupt)."""
    lock = grid.driver_lock()
    if lock is None:
        raise UserError(f"grid {grid.grid_id} is being run by another `lra grid` process; wait "
                        f"for it or stop it (lra grid cancel {grid.grid_id})")
    gpus = grid.plan["resources"]["gpus_per_job"] or 0
    env = {} if gpus else {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    ex = local_executor(grid.plan, grid.logs)
    queue, running, done = list(keys), {}, 0
    free_slots = list(range(parallel))
    stop = StopOnSignal("stopping the running jobs with a checkpoint")
    shown = 0.0  # when the live table was last read
    try:
        with stop, Display(f"grid {grid.grid_id}", len(keys), unit="jobs") as bar:
            while queue or running:
                if stop.requested():
                    break
                if grid.cancelled():
                    queue.clear()
                while queue and free_slots:
                    key, slot = queue.pop(0), free_slots.pop(0)
                    if gpus:  # slot i gets GPUs [i*g, (i+1)*g): parallel jobs never share one
                        ex.update_parameters(gpus_per_node=gpus, visible_gpus=tuple(
                            range(slot * gpus, (slot + 1) * gpus)))
                    job = _submit_shielded(ex, GridJob(grid.path, grid.plan, key, env))
                    grid.add_submissions({key: _log_paths(job)})
                    running[key] = (job, slot)
                for key, (job, slot) in list(running.items()):
                    if job.done():
                        running.pop(key)
                        free_slots.append(slot)
                        done += 1
                        row = next(r for r in status(grid) if r["key"] == key)
                        bar.update(done, line=f"[{done}/{len(keys)}] {key}: {describe(row)}")
                if bar.mode == "live" and time.monotonic() - shown > TABLE_EVERY_S:
                    shown = time.monotonic()
                    bar.update(done, f"{len(running)} running", extra=jobs_table(
                        [r for r in status(grid) if r["key"] in keys]))
                time.sleep(0.5)
            if stop.requested():
                bar.say(f"stopping {len(running)} running job(s) with a checkpoint")
                stop_when_started(grid, {k: job for k, (job, _) in running.items()})
                wait_stopped(grid, list(running))
                return stop.name
    except KeyboardInterrupt:  # the second signal: the jobs were told once; do not wait
        stop_local(grid, list(running))
        raise
    finally:
        os.close(lock)
    return None


def _submit_shielded(ex, job):
    """Submit with SIGINT ignored while submitit starts its controller process, which inherits
    that: a Ctrl-C to the terminal's process group then reaches the job's supervisor (which stops
    its run with a checkpoint), not the controller (which would kill the supervisor at once)."""
    if threading.current_thread() is not threading.main_thread():
        return ex.submit(job)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return ex.submit(job)
    finally:
        signal.signal(signal.SIGINT, previous)


def wait_stopped(grid: Grid, keys: list[str], timeout: float = STOP_WAIT_S + 30) -> None:
    """Wait until the runs of `keys` no longer hold their lock (they checkpointed and ended) and
    their local supervisors have recorded it and exited."""
    rdir = Path(grid.plan["results_dir"])
    deadline = time.time() + timeout
    byk = {j["key"]: j for j in grid.jobs}

    def busy(key: str) -> bool:
        rec = read_json(job_file(grid.path, key)) or {}
        return (results.is_active(rdir / "runs" / byk[key]["run_id"])
                or local_alive(rec.get("pid"), rec.get("host")))

    while time.time() < deadline and any(busy(k) for k in keys):
        time.sleep(0.5)


def cancel(grid: Grid) -> list[str]:
    """Stop submitting, and cancel every queued or running job; return the keys cancelled."""
    results.write_json_atomic(grid.path / "cancelled.json", {"at": results.utc_now()})
    rows = {r["key"]: r for r in status(grid)}
    subs = grid.submissions()
    slurm = grid.plan["resources"]["executor"] == "slurm"
    hit = []
    for key, sub in subs.items():
        if rows[key]["state"] not in ("pending", "running"):
            continue
        if slurm:
            submitit.SlurmJob(grid.logs, sub["job_id"]).cancel(check=False)  # scancel
        else:
            stop_local(grid, [key])
        hit.append(key)
    if not slurm:
        wait_stopped(grid, hit)
    return hit


def stop_when_started(grid: Grid, jobs: dict, timeout: float = STOP_WAIT_S) -> None:
    """`stop_local` for jobs that may still be starting: a job submitted a moment before the
    signal has no supervisor pid in its record yet (submitit is still starting it, with SIGINT
    ignored), and signalled then it would be missed and run on after the grid has ended. Each
    supervisor is signalled once it has recorded its pid (its handler is in place by then), or
    left alone once its submitit job has ended. One not started within `timeout` is named in a
    warning line (shown with --quiet too: it may run on)."""
    waiting, deadline = dict(jobs), time.time() + timeout
    while waiting and time.time() < deadline:
        for key, job in list(waiting.items()):
            if _signal_supervisor(grid, key) or job.done():
                waiting.pop(key)
        if waiting:
            time.sleep(0.2)
    if waiting:
        console.print(f"warning: lra grid: {len(waiting)} job(s) had not started {timeout:.0f} s "
                      f"after the stop ({', '.join(waiting)}), so they were not stopped and may "
                      f"still run; see lra grid status {grid.grid_id}, stop them with lra grid "
                      f"cancel {grid.grid_id}", highlight=False, markup=False)


def stop_local(grid: Grid, keys: list[str]) -> None:
    """SIGINT to the supervisors (GridJob) of local jobs: each stops its run with a checkpoint
    and starts no other attempt. Not LocalJob.cancel: it signals submitit's controller, which
    ignores SIGINT when `lra grid` was started in the background (nohup, &); the supervisor
    installs its own handler. A job not yet started sees cancelled.json instead."""
    for key in keys:
        _signal_supervisor(grid, key)


def _signal_supervisor(grid: Grid, key: str) -> bool:
    """SIGINT to the supervisor of `key` if it has recorded its pid and lives; whether it did."""
    rec = read_json(job_file(grid.path, key)) or {}
    if not local_alive(rec.get("pid"), rec.get("host")):
        return False
    try:
        os.kill(int(rec["pid"]), signal.SIGINT)
    except ProcessLookupError:  # it ended between the check and the signal
        return False
    return True
