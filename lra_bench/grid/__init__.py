"""`lra grid`: every (model, task, seed) of a benchmark as one job each, dispatched by submitit
on SLURM (`SlurmExecutor`, one job array) or on this machine (`LocalExecutor`, `--parallel N`
jobs at a time).

    planning      the plan: flags checked, every config resolved, before anything is written
    job           `GridJob`, the supervisor of one run (`lra run` in a child process)
    executors     submitting to SLURM or running locally, and cancelling
    record        the grid's folder and each job's state
    leaderboard   `lra report --grid`: the grid's runs, missing cells marked

Each job is a `GridJob`: a small supervisor process that runs `lra run` as a child process under
a run id fixed when the grid is planned, so a job, its run folder and its summary are found from
one another. The record is all JSON written atomically; a job's state is read from it and from
its run's summary and lock (`status`).
"""

from lra_bench.grid.executors import (LOCAL_TIMEOUT_MIN, cancel, create, local_executor,
                                      run_local, sbatch_text, slurm_executor, slurm_parameters,
                                      stop_local, submit_slurm, wait_stopped)
from lra_bench.grid.job import REQUEUE_GRACE_S, STOP_WAIT_S, GridJob
from lra_bench.grid.planning import (Resources, check_data, grids_dir, new_grid_id, parse_mem,
                                     parse_names, parse_slurm_opts, parse_time, plan, run_command)
from lra_bench.grid.record import (DONE, STATES, Grid, counts, describe, job_file, read_json,
                                   resume, run_summary, status, to_submit)
from lra_bench.grid.leaderboard import report

__all__ = ["LOCAL_TIMEOUT_MIN", "REQUEUE_GRACE_S", "STOP_WAIT_S", "DONE", "STATES", "Grid",
           "GridJob", "Resources", "cancel", "check_data", "counts", "create", "describe",
           "grids_dir", "job_file", "local_executor", "new_grid_id", "parse_mem", "parse_names",
           "parse_slurm_opts", "parse_time", "plan", "read_json", "report", "resume",
           "run_command", "run_local", "run_summary", "sbatch_text", "slurm_executor",
           "slurm_parameters", "status", "stop_local", "submit_slurm", "to_submit",
           "wait_stopped"]
