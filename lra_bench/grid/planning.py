"""A grid's plan: one job per (model, task, seed), every config resolved and every flag checked
before anything is written; and the `lra run` command line of each job."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lra_bench import config, results
from lra_bench.errors import UserError


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


def check_data(plan_: dict, log) -> None:
    """Every task's data is there (generated once here when the preset generates it), so that a
    grid with missing data stops before submitting instead of failing every job."""
    from lra_bench import data  # numpy: starting a grid needs it; `lra grid status` does not

    for task in plan_["tasks"]:
        rc = config.resolve(plan_["models"][0], task, plan_["preset"],
                            overrides=plan_["overrides"])
        data.load(rc, Path(plan_["data_dir"]), log=log)
