"""Reproduction runs of published LRA rows, and the evidence they leave (docs/reproduce.md).

    python benchmarks/reproduce.py run --target cpu      # ListOps under `nystrom`, every model,
                                                         # one after another, each resumed if it
                                                         # was stopped (hours on 2 cores)
    python benchmarks/reproduce.py run --target gpu --deadline 500
                                                         # the same and the `lra` Transformer,
                                                         # all at once on one GPU; at the deadline
                                                         # every run checkpoints and stops
    python benchmarks/reproduce.py evidence              # finished runs -> results/published-runs/
    python benchmarks/reproduce.py table                 # README's "Reproduced" table from them

A run's id is fixed (`repro-<preset>-<task>-<model>-s<seed>`), so calling `run` again continues
every unfinished run from its checkpoint (`lra run --resume`) and skips the finished ones. Each
stretch of a run (start, end, wall and CPU seconds, exit code, the exact command) is appended to
`<results-dir>/reproduce/<run id>.jsonl`, and the evidence adds them up.

Evidence of a finished run, under `results/published-runs/<machine>/<preset>-<task>/<model>-s<seed>/`:
summary.json, config.json, metrics.jsonl, curves.png and run.json (commands, commit, date, machine,
wall and CPU time). Checkpoints never leave the results folder.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lra_bench import plots  # noqa: E402

# The order on CPU: the run the issue needs first, then the shortest, the Transformer last (9 h).
MODELS = ("nystromformer", "fourier", "fastformer", "linear", "sikf", "topk", "transformer")
# Published figures a run stands beside: (preset, task, model) -> [(value %, source)].
PUBLISHED = {
    ("nystrom", "listops", "nystromformer"): [(37.15, "Nystromformer (Xiong et al. 2021), Table 2"),
                                              (38.51, "Skyformer (Chen et al. 2021), same protocol")],
    ("nystrom", "listops", "transformer"): [(37.10, "Nystromformer (Xiong et al. 2021), Table 2")],
    ("lra", "listops", "transformer"): [(36.37, "LRA (Tay et al. 2021), Table 1")],
}
START = "<!-- reproduced:start -->"
END = "<!-- reproduced:end -->"


def jobs(target: str, models) -> list[tuple[str, str, str]]:
    out = [(m, "listops", "nystrom") for m in models]
    if target == "gpu" and "transformer" in models:
        out.append(("transformer", "listops", "lra"))
    return out


def run_id(model: str, task: str, preset: str, seed: int) -> str:
    return f"repro-{preset}-{task}-{model}-s{seed}"


def status_of(results_dir: Path, rid: str) -> str | None:
    try:
        return json.loads((results_dir / "runs" / rid / "summary.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def lra() -> list[str]:
    exe = Path(sys.executable).with_name("lra")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lra_bench"]


def command(model, task, preset, seed, args) -> list[str] | None:
    """The `lra run` that starts or continues this job; None when it is finished."""
    rid = run_id(model, task, preset, seed)
    where = ["--data-dir", str(args.data_dir), "--results-dir", str(args.results_dir)]
    status = status_of(args.results_dir, rid)
    if status in ("completed", "diverged"):
        return None
    if status is None:
        shutil.rmtree(args.results_dir / "runs" / rid, ignore_errors=True)  # never got a summary
        sets = [a for kv in args.set for a in ("--set", kv)]
        return [*lra(), "run", "-m", model, "-t", task, "--preset", preset, "--seed", str(seed),
                "--run-id", rid, *sets, *where]
    return [*lra(), "run", "--resume", rid, *where]


def prepare_data(args, presets) -> None:
    sets = [a for kv in args.set if kv.startswith("data.") for a in ("--set", kv)]
    for preset in sorted(presets):
        subprocess.run([*lra(), "data", "prepare", "listops", "--preset", preset, "--generate",
                        *sets, "--data-dir", str(args.data_dir)], check=True)


class Stretch:
    """One process of one run, timed: wall clock and the CPU seconds of the process (wait4)."""

    def __init__(self, argv: list[str], rid: str, log_dir: Path, nice: int, env: dict):
        self.argv, self.rid, self.log_dir = argv, rid, log_dir
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.t0 = time.monotonic()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.out = open(log_dir / f"{rid}.log", "a")
        # A session of its own: a Ctrl-C at the terminal reaches the driver only, which passes on
        # one SIGTERM (two signals would stop the run at once, without its step's checkpoint).
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True,
                                     preexec_fn=(lambda: os.nice(nice)) if nice else None)

    def wait(self) -> int:
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.out.close()
        record = {"argv": self.argv, "started_at": self.started.isoformat(timespec="seconds"),
                  "ended_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "wall_s": round(time.monotonic() - self.t0, 1),
                  "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                  "exit_code": self.proc.returncode}
        with open(self.log_dir / f"{self.rid}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        return self.proc.returncode


def run(args) -> int:
    todo = jobs(args.target, args.models)
    prepare_data(args, {p for _, _, p in todo})
    log_dir = args.results_dir / "reproduce"
    env = dict(os.environ)
    stop = {"signal": None}

    def on_signal(signum, _frame):  # pass it on: each run checkpoints and stops
        stop["signal"] = signum
        for s in live:
            if s.proc.poll() is None:
                s.proc.send_signal(signal.SIGTERM)

    live: list[Stretch] = []
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    pending = [(j, command(*j, args.seed, args)) for j in todo]
    pending = [(j, argv) for j, argv in pending if argv is not None]
    deadline = time.monotonic() + args.deadline if args.deadline else None
    if args.target == "gpu":
        # Small models leave most of one GPU idle: run them side by side, each with a share of
        # its memory (XLA otherwise takes 75% for the first process).
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / max(len(pending), 1):.3f}"
        live = [Stretch(argv, run_id(*j, args.seed), log_dir, 0, env) for j, argv in pending]
        while any(s.proc.poll() is None for s in live):
            if deadline and time.monotonic() > deadline and stop["signal"] is None:
                on_signal(signal.SIGTERM, None)
            time.sleep(1)
        codes = [s.wait() for s in live]
    else:
        codes = []
        for j, argv in pending:
            if stop["signal"] is not None or (deadline and time.monotonic() > deadline):
                break
            s = Stretch(argv, run_id(*j, args.seed), log_dir, args.nice, env)
            live = [s]
            codes.append(s.wait())
    evidence(args)
    return 0 if all(c in (0, 130, 143) for c in codes) else 1


def as_typed(argv: list[str]) -> str:
    """The command as a user types it: `lra ...` whichever interpreter path ran it."""
    rest = argv[1:] if argv[0].endswith("lra") else argv[3:] if argv[1:3] == ["-m", "lra_bench"] \
        else argv
    return " ".join(["lra", *rest])


def machine_name(summary: dict) -> str:
    if summary.get("platform") == "gpu" or summary.get("device_kind", "cpu") != "cpu":
        kind = str(summary.get("device_kind", "gpu")).lower()
        return "nvidia-" + kind.split()[-1] if "nvidia" not in kind else kind.replace(" ", "-")
    return f"cpu-{os.cpu_count()}core"


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, ValueError):
        pass
    return info


def curves_png(metrics: list[dict], summary: dict, path: Path) -> None:
    rows = [{"preset": summary["preset"], "model": summary["model"], "task": summary["task"],
             "seed": summary["seed"], "step": m["step"], "train_loss": m.get("train_loss"),
             "val_accuracy": 100 * m["val_accuracy"] if "val_accuracy" in m else None}
            for m in metrics if isinstance(m, dict) and "step" in m]
    chance = {(summary["preset"], summary["task"]): (100 * summary["val_majority"], "validation")} \
        if summary.get("val_majority") is not None else {}
    plots.plot_curves(pd.DataFrame(rows), path, f"{summary['model']} on {summary['task']}, "
                      f"--preset {summary['preset']}, seed {summary['seed']} "
                      f"(commit {summary.get('git_commit')})", chance)


def evidence(args) -> list[Path]:
    """Copy every finished reproduction run into the published-runs folder of its machine."""
    written = []
    for folder in sorted((args.results_dir / "runs").glob("repro-*")):
        try:
            summary = json.loads((folder / "summary.json").read_text())
        except (OSError, ValueError):
            continue
        if summary.get("status") != "completed":
            continue
        machine = args.machine or machine_name(summary)
        out = args.out / machine / f"{summary['preset']}-{summary['task']}" / \
            f"{summary['model']}-s{summary['seed']}"
        out.mkdir(parents=True, exist_ok=True)
        for name in ("summary.json", "config.json", "metrics.jsonl"):
            shutil.copyfile(folder / name, out / name)
        metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()
                   if line.strip()]
        curves_png(metrics, summary, out / "curves.png")
        stretches_file = args.results_dir / "reproduce" / f"{folder.name}.jsonl"
        stretches = [json.loads(line) for line in stretches_file.read_text().splitlines()] \
            if stretches_file.exists() else []
        key = (summary["preset"], summary["task"], summary["model"])
        (out / "run.json").write_text(json.dumps({
            "run_id": folder.name,
            "commit": summary.get("git_commit"),
            "date": summary.get("ended_at"),
            "driver": "python benchmarks/reproduce.py run --target "
                      + ("gpu" if machine.startswith("nvidia") else "cpu"),
            "commands": [as_typed(s["argv"]) for s in stretches],
            "stretches": stretches,
            "wall_s": round(sum(s["wall_s"] for s in stretches), 1),
            # a stretch whose driver was killed hard has no CPU time (its record is rebuilt by
            # hand from the log's times, "cpu_s": null): the sum then covers the others only
            "cpu_s": round(sum(s["cpu_s"] or 0 for s in stretches), 1),
            "cpu_s_complete": all(s["cpu_s"] is not None for s in stretches),
            "machine": {**machine_info(), "device_kind": summary.get("device_kind"),
                        "jax": summary.get("jax_version"), "flax": summary.get("flax_version")},
            "published": [{"value": v, "source": s} for v, s in PUBLISHED.get(key, [])],
            "test_accuracy": summary["test_accuracy"],
            "test_examples": summary.get("test_examples"),
        }, indent=1) + "\n")
        written.append(out)
        print(f"evidence: {out}", file=sys.stderr)
    return written


def table(out_root: Path) -> str:
    """The README's "Reproduced" table, one row per committed run."""
    lines = ["| model | task | protocol | published | lra-bench | difference | evidence |",
             "|---|---|---|---|---|---|---|"]
    for run_json in sorted(out_root.glob("*/*/*/run.json")):
        r = json.loads(run_json.read_text())
        s = json.loads((run_json.parent / "summary.json").read_text())
        ours = 100 * r["test_accuracy"]
        pub = r.get("published") or []
        published = "; ".join(f"{p['value']:.2f} ({p['source'].split(' (')[0]})" for p in pub) or "none"
        diff = f"{ours - pub[0]['value']:+.2f}" if pub else "-"
        link = Path(os.path.relpath(run_json.parent, ROOT)).as_posix()  # README-relative
        lines.append(f"| {s['model']} | {s['task']} | `{s['preset']}` | {published} | "
                     f"{ours:.2f} (seed {s['seed']}) | {diff} | [{run_json.parent.parent.parent.name}]({link}) |")
    return "\n".join(lines)


def write_table(args) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        sys.exit(f"error: README.md lacks the {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table(args.out)}\n{END}{tail}")
    print("README.md: Reproduced table regenerated", file=sys.stderr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("run", "evidence", "table"))
    p.add_argument("--target", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deadline", type=float, default=0, help="seconds; 0 = none")
    p.add_argument("--nice", type=int, default=10, help="CPU runs' niceness (default 10)")
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("LRA_DATA_DIR", "data")))
    p.add_argument("--results-dir", type=Path,
                   default=Path(os.environ.get("LRA_RESULTS_DIR", "results")))
    p.add_argument("--out", type=Path, default=ROOT / "results" / "published-runs")
    p.add_argument("--machine", default=None, help="evidence folder name (default: from the run)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="passed to every new run (and data.* to the data preparation): for "
                        "checks of this script only, never for evidence")
    args = p.parse_args(argv)
    if args.action == "run":
        return run(args)
    if args.action == "evidence":
        evidence(args)
    else:
        write_table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
