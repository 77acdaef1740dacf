"""The job that supervises one run of a grid: `GridJob`, run by submitit (on SLURM or on this
machine), starts `lra run` as a child process under the run id fixed by the plan, records the
outcome in jobs/<key>.json, and reruns a failed run up to `retries` times.

Rerunning a job is always safe: it skips a completed run, continues a started one with
`lra run --resume RUN_ID` and starts a missing one with `lra run --run-id RUN_ID`. That one rule
serves `--retries`, `lra grid resume` and submitit's requeue after a time limit or a preemption
(`checkpoint`: the child is stopped with SIGTERM, which saves an orbax checkpoint, and the same
job is requeued; it then resumes from that checkpoint).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import submitit

from lra_bench import results
from lra_bench.grid.planning import run_command
from lra_bench.grid.record import DONE, job_file, read_json, run_summary

REQUEUE_GRACE_S = 60
STOP_WAIT_S = 60  # how long a stopped run may take to finish its step and checkpoint


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

    def _cancel_seen(self) -> bool:
        return self._cancelled or (Path(self.grid_dir) / "cancelled.json").exists()

    def _attempt(self, argv: list[str], attempts: int, errors: list[dict], rdir: Path,
                 run_id: str) -> str:
        """Run `lra run` once; its state (a failure appended to `errors`)."""
        self._start(argv)
        if self._cancelled:  # the signal came while it was starting
            self._on_sigint(signal.SIGINT, None)
        code = self._wait()
        summary = run_summary(rdir, run_id)
        status = (summary or {}).get("status")
        if self._stopping or status == "interrupted" or code in (130, 143, -15, -9, -2):
            if not self._stopping and os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
                # A preemption sends SIGTERM (the run just stopped on it) and then
                # SIGUSR2: stay for it, so that submitit requeues this job.
                time.sleep(REQUEUE_GRACE_S)
            return "interrupted"
        if code == 0 and status == "completed":
            return "completed"
        if status == "diverged":
            return "diverged"
        errors.append({"attempt": attempts, "at": results.utc_now(),
                       "error": self._error(code, summary)})
        return "failed"

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
            elif self._cancel_seen():
                state = "cancelled"
            else:
                started = (rdir / "runs" / run_id / "config.json").is_file()
                argv = run_command(plan_, self.job, resume=started)
                attempts = previous.get("attempts", 0) + attempt + 1  # over every submission
                if primary:
                    self._record(state="running", attempts=attempts, job_id=job_id,
                                 host=socket.gethostname(), pid=os.getpid(),
                                 command="lra " + shlex.join(argv), started_at=results.utc_now())
                # Looked at again once the pid is recorded: `lra grid cancel` writes
                # cancelled.json before it reads the pids, so a cancel that came in between
                # either finds this pid (and signals it) or is found here.
                state = "cancelled" if self._cancel_seen() else \
                    self._attempt(argv, attempts, errors, rdir, run_id)
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
