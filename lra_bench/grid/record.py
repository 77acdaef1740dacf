"""The grid's record and each job's state, read from it and from its run's summary and lock:

    results/grids/<grid-id>/plan.json            settings and jobs (key, model, task, seed, run id)
    results/grids/<grid-id>/submissions.json     per job: executor job id, log paths (the driver)
    results/grids/<grid-id>/jobs/<key>.json      per job: state, attempts, errors (the job itself)
    results/grids/<grid-id>/cancelled.json       `lra grid cancel` was asked (until a resume)
    results/grids/<grid-id>/logs/                submitit's pickles and the jobs' stdout/stderr
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import submitit

from lra_bench import records, results
from lra_bench.errors import UserError
from lra_bench.grid.planning import grids_dir

STATES = ("pending", "running", "completed", "diverged", "failed", "interrupted", "cancelled")
DONE = ("completed", "diverged")  # outcomes: resume and retries leave them alone


def job_file(grid_dir: Path, key: str) -> Path:
    return Path(grid_dir) / "jobs" / f"{key}.json"


def read_json(path: Path, default=None, schema=records.JOB_STATE):
    """A job's record (or another record of `schema`); `default` when it is missing, unreadable
    or damaged (the job's state then comes from its run and its executor)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default
    return default if records.problem(value, schema) else value


def run_summary(results_dir: Path, run_id: str) -> dict | None:
    value = read_json(Path(results_dir) / "runs" / run_id / "summary.json", schema=dict)
    return None if records.summary_problem(value) else value


class Grid:
    def __init__(self, results_dir: Path, grid_id: str):
        self.path = grids_dir(results_dir) / grid_id
        self.grid_id = grid_id
        self.warnings: list[str] = []  # the damaged records skipped, for the CLI to print
        self.plan, why = records.read(self.path / "plan.json", records.PLAN)
        if why is not None:
            raise UserError(f"grid {grid_id}: {self.path / 'plan.json'} {why}; the grid cannot be "
                            "followed without its plan: restore the file, or start a new grid "
                            "with lra grid --models ... --tasks ...")

    @classmethod
    def open(cls, results_dir: Path, ref: str | None) -> "Grid":
        folder = grids_dir(results_dir)
        if ref in (None, "latest"):
            found = sorted(p.parent.name for p in folder.glob("*/plan.json"))
            if not found:
                raise UserError(f"no grids in {folder}; start one with: lra grid --models "
                                "transformer --tasks listops --seeds 0,1")
            ref = found[-1]  # ids start with their UTC time
        if "/" in ref or ref in ("", ".", "..") or not (folder / ref / "plan.json").is_file():
            raise UserError(f"no grid '{ref}' in {folder}; see `lra grid status` for the latest")
        return cls(results_dir, ref)

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def jobs(self) -> list[dict]:
        return self.plan["jobs"]

    def submissions(self) -> dict:
        """Each job's submission; a damaged file or entry is skipped with a warning (the job
        then counts as not submitted, and `lra grid resume` submits it again)."""
        path = self.path / "submissions.json"
        if not path.exists():
            return {}
        subs, why = records.read(path, dict)
        if why is not None:
            self._warn(f"skipped {path}: {why}")
            return {}
        good = {}
        for key, sub in subs.items():
            why = records.problem(sub, records.SUBMISSION)
            if why is None:
                good[key] = sub
            else:
                self._warn(f"skipped {path}: job {key!r}: {why}")
        return good

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def add_submissions(self, entries: dict) -> None:
        subs = self.submissions()
        subs.update(entries)
        results.write_json_atomic(self.path / "submissions.json", subs)

    def cancelled(self) -> bool:
        return (self.path / "cancelled.json").exists()

    def driver_lock(self) -> int | None:
        """The local driver's lock (flock): one process at a time submits a local grid."""
        return results.try_flock(self.path / ".driver.lock")


def local_alive(pid: int | None, host: str | None) -> bool:
    """Whether a LocalExecutor job (its controller process) is still alive on this host."""
    if not pid or host != socket.gethostname():
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"submitit" in cmdline


def _slurm_states(grid: Grid, subs: dict) -> dict[str, str]:
    """The scheduler's state of every SLURM job of the grid (sacct through submitit); UNKNOWN
    where it cannot say."""
    states = {}
    for key, sub in subs.items():
        try:
            states[key] = submitit.SlurmJob(grid.logs, sub["job_id"]).state
        except Exception:  # noqa: BLE001 - no sacct here, or the job has aged out of it
            states[key] = "UNKNOWN"
    return states


SLURM_WAITING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED")
SLURM_LIVE = SLURM_WAITING + ("RUNNING", "COMPLETING", "RESIZING", "STAGE_OUT", "SIGNALING")


def status(grid: Grid) -> list[dict]:
    """One row per job: state (see STATES), run id, attempts, error, executor job id, log."""
    plan_ = grid.plan
    rdir = Path(plan_["results_dir"])
    subs = grid.submissions()
    slurm = plan_["resources"]["executor"] == "slurm"
    sched = _slurm_states(grid, subs) if slurm else {}
    cancelled = grid.cancelled()
    rows = []
    for job in grid.jobs:
        key, run_id = job["key"], job["run_id"]
        sub, rec = subs.get(key), read_json(job_file(grid.path, key))
        summary = run_summary(rdir, run_id)
        if sub is None:
            alive, waiting = False, False
        elif slurm:
            st = sched.get(key, "UNKNOWN").split(" ")[0]
            alive = st in SLURM_LIVE or (st == "UNKNOWN" and not cancelled)
            waiting = st in SLURM_WAITING or (st == "UNKNOWN" and rec is None)
        else:
            alive, waiting = local_alive(int(sub["job_id"]), sub.get("host")), False
        error = None
        if summary is not None and results.is_active(rdir / "runs" / run_id):
            state = "running"
        elif summary is not None and summary.get("status") in DONE:
            state = summary["status"]
            if state == "diverged":
                error = summary.get("error")
        elif alive and (rec is not None or summary is not None):
            state = "running"  # between attempts, loading data, compiling, requeued
        elif alive:
            state = "pending" if waiting else "running"
        elif summary is not None and summary.get("status") in ("running", "interrupted"):
            state = "interrupted"  # resumable from its newest checkpoint
        elif rec is not None and rec.get("state") == "cancelled":
            state = "cancelled"
        elif (rec is not None and rec.get("state") == "failed") or summary is not None:
            state = "failed"
            error = (rec or {}).get("error") or (summary or {}).get("error")
        elif rec is not None:
            state = "failed"
            error = "the job ended before its run started; see its log"
        elif sub is not None and not cancelled:
            state = "failed"
            error = "the job ended without starting; see its log"
        else:
            state = "cancelled" if cancelled else "pending"
        rows.append({**job, "state": state, "error": error,
                     "attempts": (rec or {}).get("attempts", 0),
                     "job_id": (sub or {}).get("job_id"), "log": (sub or {}).get("stderr"),
                     "step": (summary or {}).get("checkpoint_step"),
                     "test_accuracy": (summary or {}).get("test_accuracy")})
    return rows


def counts(rows: list[dict]) -> str:
    n = {s: sum(r["state"] == s for r in rows) for s in STATES}
    return ", ".join(f"{v} {k}" for k, v in n.items() if v)


def describe(row: dict) -> str:
    text = f"{row['state']} ({row['run_id']})"
    if row["state"] == "completed" and row.get("test_accuracy") is not None:
        text += f" test acc {100 * row['test_accuracy']:.2f}%"
    if row.get("error"):
        text += f": {row['error']}"
    return text


def to_submit(grid: Grid) -> list[str]:
    """What `resume` submits: every job that has not finished and is not queued or running."""
    return [r["key"] for r in status(grid) if r["state"] not in (*DONE, "running", "pending")
            or (r["state"] == "pending" and r["job_id"] is None)]


def resume(grid: Grid) -> list[str]:
    """Clear a cancellation and return the jobs to submit again."""
    (grid.path / "cancelled.json").unlink(missing_ok=True)
    return to_submit(grid)
