"""`lra grid`: every (model, task, seed) of a benchmark as one job each, dispatched by submitit
on SLURM (`SlurmExecutor`, one job array) or on this machine (`LocalExecutor`, `--parallel N`
jobs at a time).

Each job is a `GridJob`: a small supervisor process that runs `lra run` as a child process under
a run id fixed when the grid is planned, so a job, its run folder and its summary are found from
one another. Rerunning a job is always safe: it skips a completed run, continues a started one
with `lra run --resume RUN_ID` and starts a missing one with `lra run --run-id RUN_ID`. That one
rule serves `--retries`, `lra grid resume` and submitit's requeue after a time limit or a
preemption (`checkpoint`: the child is stopped with SIGTERM, which saves an orbax checkpoint, and
the same job is requeued; it then resumes from that checkpoint).

The record, all JSON written atomically:

    results/grids/<grid-id>/plan.json            settings and jobs (key, model, task, seed, run id)
    results/grids/<grid-id>/submissions.json     per job: executor job id, log paths (the driver)
    results/grids/<grid-id>/jobs/<key>.json      per job: state, attempts, errors (the job itself)
    results/grids/<grid-id>/cancelled.json       `lra grid cancel` was asked (until a resume)
    results/grids/<grid-id>/logs/                submitit's pickles and the jobs' stdout/stderr

A job's state is read from those and from its run's summary and lock (`status`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import submitit

from lra_bench import config, results
from lra_bench.errors import UserError
from lra_bench.interruption import StopOnSignal

STATES = ("pending", "running", "completed", "diverged", "failed", "interrupted", "cancelled")
DONE = ("completed", "diverged")  # outcomes: resume and retries leave them alone
LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # LocalExecutor always sets a time limit; `--time` or none
REQUEUE_GRACE_S = 60
STOP_WAIT_S = 60  # how long a stopped run may take to finish its step and checkpoint


# ---- planning: everything is checked before anything is written ------------------------------

@dataclass
class Resources:
    """What each job asks for. Flags that only SLURM understands are refused locally."""

    executor: str = "local"
    parallel: int | None = None
    gpus_per_job: int | None = None
    cpus_per_job: int | None = None
    mem: str | None = None
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    array_parallelism: int | None = None
    nodes: int | None = None
    tasks_per_node: int | None = None
    slurm_opts: list[str] = field(default_factory=list)

    SLURM_ONLY = ("cpus_per_job", "mem", "partition", "account", "qos", "array_parallelism",
                  "nodes", "tasks_per_node", "slurm_opts")

    def check(self) -> None:
        if self.executor not in ("local", "slurm"):
            raise UserError(f"unknown executor '{self.executor}'; choose local or slurm")
        for name in ("parallel", "gpus_per_job", "cpus_per_job", "array_parallelism", "nodes",
                     "tasks_per_node"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "gpus_per_job" else 1):
                low = 0 if name == "gpus_per_job" else 1
                raise UserError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
        if self.executor == "local":
            given = [n for n in self.SLURM_ONLY if getattr(self, n) not in (None, [])]
            if given:
                flag = "--" + given[0].replace("_", "-").replace("slurm-opts", "slurm-opt")
                raise UserError(f"{flag} applies to --executor slurm only; drop it or add "
                                "--executor slurm")
        elif self.parallel is not None:
            raise UserError("--parallel is for --executor local; on SLURM use "
                            "--array-parallelism")
        parse_time(self.time)
        parse_mem(self.mem)
        parse_slurm_opts(self.slurm_opts)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def parse_names(kind: str, text: str) -> list[str]:
    """'all' or a comma-separated list of registered names, each once."""
    known = list(config.available(kind))
    names = [x.strip() for x in text.split(",") if x.strip()]
    if text.strip() == "all":
        return known
    if not names:
        raise UserError(f"--{kind} '{text}' names no {kind}; give a comma-separated list or all")
    for n in names:
        if n not in known:
            raise UserError(f"unknown {kind[:-1]} '{n}'; choose from: {', '.join(known)} (or all)")
    if len(set(names)) != len(names):
        raise UserError(f"--{kind} '{text}' repeats a name; list each once")
    return names


_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def parse_time(text: str | None) -> int | None:
    """A SLURM time limit in whole minutes: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    if text is None:
        return None
    m = _TIME.fullmatch(text.strip())
    if not m:
        raise UserError(f"--time '{text}': use minutes or [D-]HH:MM:SS, e.g. 240 or 1-00:00:00")
    d, a, b, c = m.groups()
    if d is not None:  # D-H, D-H:M, D-H:M:S
        h, mi, s = int(a), int(b or 0), int(c or 0)
        total = int(d) * 1440 + h * 60 + mi + (s + 59) // 60
    elif c is not None:  # H:M:S
        total = int(a) * 60 + int(b) + (int(c) + 59) // 60
    elif b is not None:  # M:S
        total = int(a) + (int(b) + 59) // 60
    else:
        total = int(a)
    if total < 1:
        raise UserError(f"--time '{text}' is under a minute")
    return total


def parse_mem(text: str | None) -> float | None:
    """Memory per node in GB: 64, 64G, 64GB, 500M, 500MB, 1T."""
    if text is None:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([MGT]?)B?", text.strip(), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"--mem '{text}': use a size such as 64G or 500M")
    return float(m.group(1)) * {"M": 1 / 1024, "": 1, "G": 1, "T": 1024}[m.group(2).upper()]


def parse_slurm_opts(opts: list[str]) -> dict[str, str]:
    """--slurm-opt KEY=VALUE -> {KEY: VALUE}: extra `#SBATCH --KEY=VALUE` lines."""
    out = {}
    for opt in opts:
        key, sep, value = opt.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key) or not value.strip():
            raise UserError(f"--slurm-opt '{opt}': expected KEY=VALUE, e.g. constraint=a100 "
                            "(becomes #SBATCH --constraint=a100)")
        out[key.replace("_", "-")] = value.strip()
    return out


def new_grid_id() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def grids_dir(results_dir: Path) -> Path:
    return Path(results_dir) / "grids"


def plan(models: str, tasks: str, seeds: list[int], preset: str, overrides: list[str],
         resources: Resources, retries: int, data_dir: Path, results_dir: Path,
         preflight: bool = True) -> dict:
    """The grid's plan: one job per (model, task, seed), every config resolved (so a bad name,
    preset or --set fails here, before anything is written)."""
    resources.check()
    if retries < 0:
        raise UserError(f"--retries must be >= 0, got {retries}")
    model_names, task_names = parse_names("models", models), parse_names("tasks", tasks)
    grid_id = new_grid_id()
    data_dir, results_dir = Path(data_dir).absolute(), Path(results_dir).absolute()
    jobs = []
    for m in model_names:
        for t in task_names:
            for s in seeds:
                config.resolve(m, t, preset, seed=s, overrides=overrides)
                key = f"{m}-{t}-s{s}"
                jobs.append({"key": key, "model": m, "task": t, "seed": s,
                             "run_id": f"{grid_id}-{key}"})
    return {"grid_id": grid_id, "created_at": results.utc_now(), "preset": preset,
            "models": model_names, "tasks": task_names, "seeds": list(seeds),
            "overrides": list(overrides), "retries": retries, "preflight": preflight,
            "resources": resources.to_dict(),
            "data_dir": str(data_dir), "results_dir": str(results_dir), "jobs": jobs}


def run_command(plan_: dict, job: dict, resume: bool) -> list[str]:
    """The `lra run` arguments of a job: a new run under its fixed id, or its continuation."""
    dirs = ["--data-dir", plan_["data_dir"], "--results-dir", plan_["results_dir"]]
    if resume:
        return ["run", "--resume", job["run_id"], *dirs]
    sets = [a for o in plan_["overrides"] for a in ("--set", o)]
    preflight = [] if plan_.get("preflight", True) else ["--no-preflight"]
    return ["run", "--run-id", job["run_id"], "--model", job["model"], "--task", job["task"],
            "--preset", plan_["preset"], "--seed", str(job["seed"]), *sets, *preflight, *dirs]


# ---- submitit executors ----------------------------------------------------------------------

def slurm_parameters(plan_: dict) -> dict:
    """SlurmExecutor.update_parameters() arguments from the grid's flags (see docs/grid.md)."""
    from submitit.slurm.slurm import _convert_mem

    r = plan_["resources"]
    mem = parse_mem(r["mem"])
    params = {"job_name": f"lra-grid-{plan_['grid_id']}", "nodes": r["nodes"] or 1,
              "ntasks_per_node": r["tasks_per_node"] or 1, "cpus_per_task": r["cpus_per_job"],
              "gpus_per_node": r["gpus_per_job"], "mem": _convert_mem(mem) if mem else None,
              "time": parse_time(r["time"]), "partition": r["partition"],
              "account": r["account"], "qos": r["qos"],
              "array_parallelism": r["array_parallelism"],
              "additional_parameters": parse_slurm_opts(r["slurm_opts"]) or None}
    return {k: v for k, v in params.items() if v is not None}


def sbatch_text(plan_: dict, folder: Path, count: int) -> str:
    """The sbatch script SlurmExecutor writes for `count` jobs (an array when count > 1), made by
    submitit's own function, for `--dry-run` (no srun needed here)."""
    from submitit.slurm import slurm

    params = slurm_parameters(plan_)
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit",
                        shlex.quote(str(folder))])
    return slurm._make_sbatch_string(command=command, folder=folder,
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


# ---- the job ---------------------------------------------------------------------------------

def job_file(grid_dir: Path, key: str) -> Path:
    return Path(grid_dir) / "jobs" / f"{key}.json"


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def run_summary(results_dir: Path, run_id: str) -> dict | None:
    return read_json(Path(results_dir) / "runs" / run_id / "summary.json")


class GridJob(submitit.helpers.Checkpointable):
    """One (model, task, seed) of a grid: runs `lra run` (new or resumed) in a child process,
    records the outcome in jobs/<key>.json, and reruns a failed run up to `retries` times."""

    def __init__(self, grid_dir: str, plan_: dict, key: str, env: dict | None = None):
        self.grid_dir, self.plan, self.key = str(grid_dir), plan_, key
        self.job = next(j for j in plan_["jobs"] if j["key"] == key)
        # Variables the child gets as given (None: unset). LocalExecutor sets CUDA_VISIBLE_DEVICES
        # to the GPUs it hands out, "" when none: a grid without --gpus-per-job passes its own.
        self.env = dict(env or {})
        self._child: subprocess.Popen | None = None
        self._stopping = self._cancelled = False
        self._tail: deque = deque(maxlen=30)
        self._teeing: threading.Thread | None = None

    def __getstate__(self):  # the child process and its pipes stay with this process
        state = dict(self.__dict__)
        state.update(_child=None, _stopping=False, _cancelled=False, _tail=deque(maxlen=30),
                     _teeing=None)
        return state

    # -- where it runs
    @staticmethod
    def _env_info() -> tuple[int, int, str | None]:
        """(global rank, number of tasks, executor job id), outside submitit (0, 1, None)."""
        try:
            env = submitit.JobEnvironment()
            return env.global_rank, env.num_tasks, env.job_id
        except RuntimeError:
            return 0, 1, None

    def _record(self, **fields) -> None:
        path = job_file(self.grid_dir, self.key)
        record = read_json(path, {}) or {}
        record.update(fields, key=self.key, run_id=self.job["run_id"], updated_at=results.utc_now())
        results.write_json_atomic(path, record)

    # -- the child `lra run`
    def _start(self, argv: list[str]) -> subprocess.Popen:
        env = dict(os.environ)
        for k, v in self.env.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        local = os.environ.get("SUBMITIT_EXECUTOR") == "local"

        def child_setup():
            # SLURM's --signal=USR2 reaches every process of the step; only submitit's handler
            # in this supervisor acts on it (the child would die of it).
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)

        # Locally the child gets its own session so that a Ctrl-C on the terminal reaches it
        # once, forwarded by this supervisor as SIGTERM. On SLURM it stays in the job step:
        # scancel and preemption signal it directly.
        self._child = subprocess.Popen([sys.executable, "-m", "lra_bench", *argv], env=env,
                                       stderr=subprocess.PIPE, text=True, errors="replace",
                                       bufsize=1, preexec_fn=child_setup,
                                       start_new_session=local)
        self._tail.clear()
        self._teeing = threading.Thread(target=self._tee, args=(self._child.stderr,), daemon=True)
        self._teeing.start()
        return self._child

    def _tee(self, stream) -> None:
        for line in stream:
            sys.stderr.write(line)
            sys.stderr.flush()
            self._tail.append(line.rstrip("\n"))

    def _wait(self) -> int:
        # poll, not wait(): a signal handler (checkpoint) may wait on the child meanwhile
        while (code := self._child.poll()) is None:
            time.sleep(0.2)
        self._teeing.join(timeout=10)  # its last lines hold the error, if any
        return code

    def _stop_child(self, timeout: float = STOP_WAIT_S) -> None:
        """SIGTERM: the run finishes its step, saves a checkpoint and exits as interrupted."""
        child = self._child
        if child is None or child.poll() is not None:
            return
        if not self._stopping:
            self._stopping = True
            child.send_signal(signal.SIGTERM)
        deadline = time.time() + timeout
        while child.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        if child.poll() is None:
            child.kill()  # it did not reach a step boundary: resume from the last checkpoint

    def _on_sigint(self, signum, frame) -> None:
        # `lra grid cancel`, LocalJob.cancel and Ctrl-C: stop the run with a checkpoint, start no
        # other attempt. The child's own session keeps it alive if submitit kills this
        # supervisor before the child is done.
        self._cancelled = True
        if self._child is not None and self._child.poll() is None and not self._stopping:
            self._stopping = True
            self._child.send_signal(signal.SIGTERM)

    def _error(self, code: int, summary: dict | None) -> str:
        if summary and summary.get("status") in ("failed", "diverged") and summary.get("error"):
            return f"run {summary['status']}: {summary['error']}"
        lines = [x for x in self._tail if x.startswith("error:")] or list(self._tail)[-1:]
        return (lines[-1] if lines else "") + f" (lra run exit code {code})"

    def __call__(self) -> dict:
        rank, ntasks, job_id = self._env_info()
        primary = rank == 0
        plan_, run_id = self.plan, self.job["run_id"]
        rdir = Path(plan_["results_dir"])
        # A multi-process run cannot retry one process alone: `lra grid resume` reruns it whole.
        retries = plan_["retries"] if ntasks == 1 else 0
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._on_sigint)
            if os.environ.get("SUBMITIT_EXECUTOR") == "local":
                # locally a SIGTERM (`timeout`, `kill` of the group, the controller forwarding
                # one) stops the run the same way; on SLURM submitit's own handlers keep it
                signal.signal(signal.SIGTERM, self._on_sigint)
        previous = (read_json(job_file(self.grid_dir, self.key), {}) or {}) if primary else {}
        errors = list(previous.get("errors", []))
        for attempt in range(retries + 1):
            summary = run_summary(rdir, run_id)
            status = (summary or {}).get("status")
            if status in DONE:
                state = status
            elif self._cancelled or (Path(self.grid_dir) / "cancelled.json").exists():
                state = "cancelled"
            else:
                started = (rdir / "runs" / run_id / "config.json").is_file()
                argv = run_command(plan_, self.job, resume=started)
                attempts = previous.get("attempts", 0) + attempt + 1  # over every submission
                if primary:
                    self._record(state="running", attempts=attempts, job_id=job_id,
                                 host=socket.gethostname(), pid=os.getpid(),
                                 command="lra " + shlex.join(argv), started_at=results.utc_now())
                self._start(argv)
                if self._cancelled:  # the signal came while it was starting
                    self._on_sigint(signal.SIGINT, None)
                code = self._wait()
                summary = run_summary(rdir, run_id)
                status = (summary or {}).get("status")
                if self._stopping or status == "interrupted" or code in (130, 143, -15, -9, -2):
                    state = "interrupted"
                    if not self._stopping and os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
                        # A preemption sends SIGTERM (the run just stopped on it) and then
                        # SIGUSR2: stay for it, so that submitit requeues this job.
                        time.sleep(REQUEUE_GRACE_S)
                elif code == 0 and status == "completed":
                    state = "completed"
                elif status == "diverged":
                    state = "diverged"
                else:
                    state = "failed"
                    errors.append({"attempt": attempts, "at": results.utc_now(),
                                   "error": self._error(code, summary)})
            if not primary:
                return {"key": self.key, "state": state}
            fields = {"state": state, "ended_at": results.utc_now(), "errors": errors,
                      "error": errors[-1]["error"] if state == "failed" else None}
            self._record(**fields)
            if state != "failed" or attempt == retries:
                break
            sys.stderr.write(f"lra grid: {self.key} failed ({errors[-1]['error']}); retry "
                             f"{attempt + 1} of {retries}\n")
        if state == "failed":
            raise RuntimeError(f"{self.key}: {errors[-1]['error']}")  # the scheduler sees it fail
        return {"key": self.key, "state": state, "run_id": run_id}

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """submitit calls this on a time limit or a preemption (SIGUSR2), then requeues what it
        returns: stop the run with a checkpoint, and requeue this same job, which resumes it."""
        self._stop_child()
        rank, _, _ = self._env_info()
        if rank == 0:
            record = read_json(job_file(self.grid_dir, self.key), {}) or {}
            self._record(state="interrupted", requeued=record.get("requeued", 0) + 1,
                         ended_at=results.utc_now())
        fresh = GridJob(self.grid_dir, self.plan, self.key, self.env)
        return submitit.helpers.DelayedSubmission(fresh, *args, **kwargs)


# ---- the grid record -------------------------------------------------------------------------

class Grid:
    def __init__(self, results_dir: Path, grid_id: str):
        self.path = grids_dir(results_dir) / grid_id
        self.grid_id = grid_id
        self.plan = read_json(self.path / "plan.json")
        if not isinstance(self.plan, dict):
            raise UserError(f"grid {grid_id} has no readable plan.json in {self.path}")

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
        return read_json(self.path / "submissions.json", {}) or {}

    def add_submissions(self, entries: dict) -> None:
        subs = self.submissions()
        subs.update(entries)
        results.write_json_atomic(self.path / "submissions.json", subs)

    def cancelled(self) -> bool:
        return (self.path / "cancelled.json").exists()

    def driver_lock(self) -> int | None:
        """The local driver's lock (flock): one process at a time submits a local grid."""
        from lra_bench.results import try_flock

        return try_flock(self.path / ".driver.lock")


def _local_alive(pid: int | None, host: str | None) -> bool:
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
            alive, waiting = _local_alive(int(sub["job_id"]), sub.get("host")), False
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


# ---- submitting ------------------------------------------------------------------------------

def create(plan_: dict) -> Grid:
    """Write the grid's folder and plan.json (after every check passed)."""
    path = grids_dir(Path(plan_["results_dir"])) / plan_["grid_id"]
    if plan_["resources"]["executor"] == "slurm":
        slurm_executor(plan_, path / "logs")  # no srun here: a UserError before any write
    path.mkdir(parents=True, exist_ok=False)
    results.write_json_atomic(path / "plan.json", plan_)
    return Grid(Path(plan_["results_dir"]), plan_["grid_id"])


def check_data(plan_: dict, log) -> None:
    """Every task's data is there (generated once here when the preset generates it), so that a
    grid with missing data stops before submitting instead of failing every job."""
    from lra_bench import data

    for task in plan_["tasks"]:
        rc = config.resolve(plan_["models"][0], task, plan_["preset"],
                            overrides=plan_["overrides"])
        data.load(rc, Path(plan_["data_dir"]), log=log)


def to_submit(grid: Grid) -> list[str]:
    """What `resume` submits: every job that has not finished and is not queued or running."""
    return [r["key"] for r in status(grid) if r["state"] not in (*DONE, "running", "pending")
            or (r["state"] == "pending" and r["job_id"] is None)]


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


def run_local(grid: Grid, keys: list[str], parallel: int, say) -> str | None:
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
    try:
        with stop:
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
                        say(f"[{done}/{len(keys)}] {key}: {describe(row)}")
                time.sleep(0.5)
            if stop.requested():
                say(f"stopping {len(running)} running job(s) with a checkpoint")
                stop_local(grid, list(running))
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
                or _local_alive(rec.get("pid"), rec.get("host")))

    while time.time() < deadline and any(busy(k) for k in keys):
        time.sleep(0.5)


def describe(row: dict) -> str:
    text = f"{row['state']} ({row['run_id']})"
    if row["state"] == "completed" and row.get("test_accuracy") is not None:
        text += f" test acc {100 * row['test_accuracy']:.2f}%"
    if row.get("error"):
        text += f": {row['error']}"
    return text


def resume(grid: Grid) -> list[str]:
    """Clear a cancellation and return the jobs to submit again."""
    (grid.path / "cancelled.json").unlink(missing_ok=True)
    return to_submit(grid)


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


def stop_local(grid: Grid, keys: list[str]) -> None:
    """SIGINT to the supervisors (GridJob) of local jobs: each stops its run with a checkpoint
    and starts no other attempt. Not LocalJob.cancel: it signals submitit's controller, which
    ignores SIGINT when `lra grid` was started in the background (nohup, &); the supervisor
    installs its own handler. A job not yet started sees cancelled.json instead."""
    for key in keys:
        rec = read_json(job_file(grid.path, key)) or {}
        if _local_alive(rec.get("pid"), rec.get("host")):
            os.kill(int(rec["pid"]), signal.SIGINT)


# ---- the report ------------------------------------------------------------------------------

def report(results_dir: Path, ref: str | None, selection: str):
    """`lra report --grid ID`: the grid's runs as mean ± std over seeds per (model, task), each
    cell with its count; cells still short of seeds are marked `missing k/N`."""
    import pandas as pd

    from lra_bench import report as rep

    grid = Grid.open(results_dir, ref)
    runs, warnings = rep.load_runs(Path(grid.plan["results_dir"]))
    ids = {j["run_id"] for j in grid.jobs}
    runs = runs[runs["run_id"].isin(ids)] if not runs.empty else runs
    acc = rep.accuracy_table(runs, selection)
    seeds, tasks = len(grid.plan["seeds"]), grid.plan["tasks"]
    header = ["preset", "model", *tasks, "avg"]
    rows, records = [], []
    for model in grid.plan["models"]:
        r = acc[acc["model"] == model].iloc[0] if not acc.empty and model in set(acc["model"]) \
            else None
        cells, means = [grid.plan["preset"], model], []
        for t in tasks:
            have = r is not None and t in r.index and not pd.isna(r.get(f"{t}_n"))
            n = int(r[f"{t}_n"]) if have else 0
            div = int(r.get(f"{t}_diverged", 0)) if have else 0
            mean = float(r[t]) if have and n else float("nan")
            std = float(r[f"{t}_std"]) if have and n else float("nan")
            text = rep.accuracy_cell(mean, std, n, div) if n or div else ""
            if n + div < seeds:
                text = (text + " " if text else "") + f"missing {seeds - n - div}/{seeds}"
            cells.append(text)
            means.append(mean)
            records.append({"preset": grid.plan["preset"], "model": model, "task": t,
                            "mean": mean, "std": std, "n": n, "diverged": div,
                            "missing": seeds - n - div})
        avg = float("nan") if any(pd.isna(m) for m in means) else sum(means) / len(means)
        cells.append(rep._fmt(avg))
        rows.append(cells)
    title = (f"Grid {grid.grid_id}: test accuracy (%), {rep.SELECTIONS[selection][2]}; mean ± std "
             f"over {seeds} seed(s) ({counts(status(grid))})")
    return [(title, header, rows)], {"grid": pd.DataFrame(records)}, warnings
