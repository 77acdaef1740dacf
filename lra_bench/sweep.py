"""`lra sweep`: steps per second and peak memory of every model over sequence lengths, the LRA
paper's Table 2 measured properly.

Every (model, length) point runs in a fresh `python -m lra_bench.sweep_worker` process, so its
peak memory is its own and a crash, an out-of-memory or a hang costs that point only: it becomes
a row with status OOM / error / timeout and its message, and the sweep goes on. Lengths run
shortest first; once a model is OOM at a length, its longer lengths are recorded as OOM without
running them. After each point the whole sweep is rewritten atomically (temp file + rename) to

    <results>/sweeps/<sweep-id>.json   settings + rows (what --resume reads)
    <results>/sweeps/<sweep-id>.csv    the rows, one per point, columns COLUMNS

so an interrupted sweep keeps every finished point and `--resume <sweep-id>` runs the rest.
This process never imports jax: on an accelerator it would claim the memory the points measure.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from lra_bench import config, interruption, paths, plugin_check, plugins, records, results
from lra_bench.progress import Display
from lra_bench.errors import UserError
from lra_bench.sizes import format_bytes, parse_bytes

MODES = ("train", "forward")
STATUSES = ("ok", "OOM", "error", "timeout")
COLUMNS = [
    "sweep_id", "model", "task", "preset", "mode", "length", "batch_size", "dtype", "status",
    "steps_per_second", "step_time_ms", "step_time_min_ms", "step_time_max_ms", "timed_steps",
    "tokens_per_second", "compile_time_s", "peak_memory_bytes", "memory_source",
    "xla_estimate_bytes", "device_memory_bytes", "flops_per_step", "params", "device_kind",
    "platform", "device_count", "host", "jax_version", "git_commit", "message", "started_at",
    "finished_at", "wall_time_s", "attention",
]
OOM_MARKERS = ("resource_exhausted", "out of memory", "memoryerror")


@dataclass
class Settings:
    task: str = "text"
    preset: str = "lra"
    models: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=lambda: [1024, 2048, 3072, 4096])
    batch_size: int = 32
    steps: int = 10
    warmup: int = 2
    mode: str = "train"
    overrides: list[str] = field(default_factory=list)
    timeout_s: float = 900.0
    memory_limit: str | None = None
    seed: int = 0
    config_dirs: list[str] = field(default_factory=list)  # --config-dir / $LRA_CONFIG_PATH


def parse_lengths(text: str) -> list[int]:
    """'1024,2K,4k' -> [1024, 2048, 4096] (K = 1024, as the paper's 1K-4K)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(\d+)([kK]?)", part)
        if not m:
            raise UserError(f"--lengths: cannot read '{part}'; write e.g. 1024,2048 or 1K,2K")
        if int(m.group(1)) <= 0:
            raise UserError(f"--lengths: {part} is not a length; give lengths >= 1, e.g. 1024,2048")
        out.append(int(m.group(1)) * (1024 if m.group(2) else 1))
        if out[-1] > 2**31 - 1:
            raise UserError(f"--lengths: {part} is more tokens than 32-bit indexing addresses "
                            "(2**31 - 1); give lengths such as 1K,2K,4K")
    if not out:
        raise UserError("--lengths: give at least one length, e.g. --lengths 1024,2048")
    return sorted(set(out))


def plan(task: str, models: str, lengths: str, preset: str = "lra", batch_size: int = 32,
         steps: int = 10, warmup: int = 2, mode: str = "train", overrides=(),
         timeout_s: float = 900.0, memory_limit: str | None = None, seed: int = 0) -> Settings:
    """Check everything a point could reject before anything runs or is written."""
    available = config.available("models")
    names = list(available) if models.strip() == "all" else \
        [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in names if m not in available]
    if not names:
        raise UserError(f"--models '{models}' names no model; give names from: "
                        f"{', '.join(available) or '(none registered)'}, or all")
    if unknown:
        raise UserError(f"unknown model(s) {', '.join(unknown) or '(none)'}; choose from: "
                        f"{', '.join(available)} or all")
    if mode not in MODES:
        raise UserError(f"unknown mode '{mode}'; choose one of: {', '.join(MODES)}")
    for value, name, low in ((batch_size, "--batch-size", 1), (steps, "--steps", 1),
                             (warmup, "--warmup", 0)):
        if value < low:
            raise UserError(f"{name} must be >= {low}, got {value}")
    if timeout_s <= 0:
        raise UserError(f"--timeout must be > 0 seconds, got {timeout_s}")
    if memory_limit is not None:
        parse_bytes(memory_limit)  # a bad size: its UserError, before anything runs
    settings = Settings(task, preset, names, parse_lengths(lengths), batch_size, steps, warmup,
                        mode, list(overrides), timeout_s, memory_limit, seed,
                        [str(d) for d in paths.user_config_dirs()])
    for model in names:  # a typo in --set or a model/task mismatch fails here, once
        for length in settings.lengths:
            rc = config.resolve(model, task, preset, seed=seed,
                                overrides=point_overrides(settings, length))
            refuse_oversized(rc, length)
        if plugins.is_plugin(rc.mixer["kind"]):  # a broken plugin: one error, not N error rows
            plugin_check.check_in_subprocess(model, task, preset, point_overrides(
                settings, settings.lengths[0]), seed, worker_env(settings), mode == "train")
    refuse_unrunnable(settings)
    return settings


def host_memory_bytes() -> int:
    """This machine's memory (without jax: the sweep's parent never imports it)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 2**62


def refuse_oversized(rc: config.RunConfig, length: int) -> None:
    """A point whose one activation (batch x length x emb_dim float32) is more than this
    machine's memory cannot run anywhere here: refused before any child process starts."""
    b, d = rc.train["batch_size"], rc.model["emb_dim"]
    need, have = 4 * b * length * d, host_memory_bytes()
    if need > have:
        raise UserError(f"--lengths {length}: one activation of {rc.model_name} ({b} x {length} "
                        f"tokens x {d} features, float32) is {format_bytes(need)}, more than "
                        f"this machine's {format_bytes(have)}; give shorter --lengths or a "
                        "smaller --batch-size")


def point_overrides(s: Settings, length: int) -> list[str]:
    """The settings of one point: the swept length and batch, and every length-dependent option
    scaled to it. Mixer options are relative already (top-k pool_factors, Fourier keep_ratio) or
    pad (Nystrom landmarks); an image task's grid keeps its width (or turns square) so that a 2-D
    layout covers exactly `length` pixels. The user's --set wins over the grid."""
    sets = []
    grid = config.resolve_data(s.task, s.preset).get("grid")
    if grid is not None and grid[0] * grid[1] != length:
        side, cols = math.isqrt(length), grid[1]
        layout = [side, side] if side * side == length else \
            [length // cols, cols] if length % cols == 0 else None
        if layout is not None:  # else only a mixer that needs the grid refuses this length
            sets.append(f"data.grid={layout}")
    return [*sets, *s.overrides, f"data.max_length={length}", f"train.batch_size={s.batch_size}"]


def refuse_unrunnable(s: Settings) -> None:
    """Build every (model, length) abstractly, before anything runs, in a CPU-only child process
    (this one never imports jax): a length a mixer cannot run is one error line, not error rows
    after compiling."""
    points = [{"model": m, "length": n, "overrides": point_overrides(s, n)}
              for m in s.models for n in s.lengths]
    spec = {"task": s.task, "preset": s.preset, "seed": s.seed, "mode": s.mode, "points": points}
    with tempfile.TemporaryDirectory(prefix="lra-sweep-check-") as tmp:
        out = Path(tmp) / "check.json"
        cmd = [sys.executable, "-m", "lra_bench.sweep_worker", "--check", "--spec",
               json.dumps(spec), "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**worker_env(), "JAX_PLATFORMS": "cpu"})
        if not out.exists():  # the check itself died: out of memory, or a size it cannot build
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1][:300]
            raise UserError(f"checking the sweep's points failed in its child process (exit "
                            f"{proc.returncode}: {last}); give shorter --lengths or a smaller "
                            "--batch-size")
        refused = json.loads(out.read_text())
    if refused:
        why = "; ".join(f"{r['model']} at length {r['length']}: {r['why']}" for r in refused)
        raise UserError(f"cannot run {why}; leave those models or lengths out of the sweep")


def new_sweep_id(s: Settings) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{s.task}-{s.mode}-{uuid.uuid4().hex[:6]}"


def sweeps_dir(results_dir: Path) -> Path:
    return Path(results_dir) / "sweeps"


def list_sweeps(results_dir: Path) -> list[str]:
    """Sweep ids, oldest first (ids start with their UTC start time)."""
    return sorted(p.stem for p in sweeps_dir(results_dir).glob("*.json"))


def resolve_id(results_dir: Path, sweep_id: str | None) -> str:
    """An existing sweep id; `latest` (or None) is the most recent one."""
    found = list_sweeps(results_dir)
    if not found:
        raise UserError(f"no sweeps in {sweeps_dir(results_dir)}; run one with: lra sweep "
                        "--models transformer --lengths 512,1024 --batch-size 2 --steps 3")
    if sweep_id in (None, "", "latest"):
        return found[-1]
    if sweep_id not in found:
        raise UserError(f"no sweep '{sweep_id}' in {sweeps_dir(results_dir)}; choose one of: "
                        f"{', '.join(found[-10:])}")
    return sweep_id


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rows_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
    return buf.getvalue()


def save(results_dir: Path, sweep_id: str, settings: Settings, rows: list[dict]) -> None:
    # JSON first: it is what --resume reads, so a crash between the two loses no point.
    folder = sweeps_dir(results_dir)
    results.write_json_atomic(folder / f"{sweep_id}.json", {
        "sweep_id": sweep_id, "settings": asdict(settings), "updated_at": results.utc_now(),
        "rows": rows})
    write_text_atomic(folder / f"{sweep_id}.csv", rows_csv(rows))


def load(results_dir: Path, sweep_id: str) -> tuple[Settings, list[dict]]:
    """A sweep's settings and rows, checked against records.SWEEP: a damaged or crafted file is
    one error line, never a setting or column of another type."""
    path = sweeps_dir(results_dir) / f"{sweep_id}.json"
    doc, why = records.read(path, records.SWEEP)
    if why is None:
        known = {f.name for f in fields(Settings)}
        unknown = sorted(set(doc["settings"]) - known)
        why = f"unknown settings {', '.join(unknown)}" if unknown else None
    if why is not None:
        raise UserError(f"cannot read sweep {path} ({why}); start a new sweep instead")
    # missing or null: the default (a sweep written before the setting existed)
    settings = Settings(**{k: v for k, v in doc["settings"].items() if v is not None})
    return settings, list(doc["rows"])


def worker_env(s: Settings | None = None) -> dict:
    """The worker imports this same package and reads the same configs: the built-in set
    ($LRA_HOME is inherited) and the user's config folders (--config-dir, $LRA_CONFIG_PATH and
    those the sweep was started with, for --resume). Plugins resolve from the same Python."""
    env = dict(os.environ)
    root = paths.checkout()  # a `PYTHONPATH=.` run; an installed package is found as it is
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    dirs = [str(d) for d in paths.user_config_dirs()]
    dirs += [d for d in (s.config_dirs if s else []) if d not in dirs]
    env["LRA_CONFIG_PATH"] = os.pathsep.join(dirs)
    return env


def dead_worker_row(returncode: int, stderr: str) -> dict:
    """A worker that died without writing its result: a kill -9 is the kernel's OOM killer far
    more often than anything else on a benchmark machine."""
    tail = " | ".join(line.strip() for line in stderr.strip().splitlines()[-3:])[-400:]
    if returncode in (-9, 137):
        return {"status": "OOM", "message": f"worker killed by SIGKILL (kernel OOM killer?) {tail}"}
    status = "OOM" if any(m in stderr.lower() for m in OOM_MARKERS) else "error"
    return {"status": status, "message": f"worker exited with code {returncode}: {tail}"}


def point_spec(s: Settings, model: str, length: int) -> dict:
    """What the worker of one point is given (`sweep_worker.measure_point`'s spec)."""
    return {"model": model, "task": s.task, "preset": s.preset, "length": length,
            "batch_size": s.batch_size, "steps": s.steps, "warmup": s.warmup, "mode": s.mode,
            "overrides": point_overrides(s, length), "memory_limit": s.memory_limit,
            "seed": s.seed}


def run_point(s: Settings, model: str, length: int) -> dict:
    spec = point_spec(s, model, length)
    with tempfile.TemporaryDirectory(prefix="lra-sweep-") as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, "-m", "lra_bench.sweep_worker", "--spec", json.dumps(spec),
               "--out", str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=s.timeout_s,
                                  env=worker_env(s))
        except subprocess.TimeoutExpired:  # subprocess.run has killed the worker
            return {"status": "timeout",
                    "message": f"no result after {s.timeout_s:g} s (--timeout)"}
        if out.exists():
            return json.loads(out.read_text())
        return dead_worker_row(proc.returncode, proc.stderr)


def _fmt_si(v: float | None, unit: str) -> str:
    if v is None:
        return "?"
    for prefix, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= size:
            return f"{v / size:.3g} {prefix}{unit}"
    return f"{v:.3g} {unit}"


def progress_line(i: int, n: int, row: dict) -> str:
    head = f"[{i}/{n}] {row['model']} L={row['length']} {row['status']}"
    if row["status"] != "ok":
        return f"{head}  {row.get('message', '')}"
    mem = row.get("peak_memory_bytes")
    return (f"{head}  {row['steps_per_second']:.3g} steps/s  "
            f"{_fmt_si(row['tokens_per_second'], 'tok/s')}  peak "
            f"{format_bytes(mem)} ({row.get('memory_source')})  "
            f"{_fmt_si(row.get('flops_per_step'), 'FLOP')}/step  compile "
            f"{row.get('compile_time_s', float('nan')):.1f} s"
            + (f"  {row['message']}" if row.get("message") else ""))


def _interrupt(signum, frame):
    raise interruption.Stopped(signum)


def run_sweep(s: Settings, results_dir: Path, sweep_id: str | None = None,
              rows: list[dict] | None = None) -> tuple[str, list[dict]]:
    """Run every point of `s` that `rows` (a resumed sweep's) does not have yet."""
    sweep_id = sweep_id or new_sweep_id(s)
    rows = list(rows or [])
    done = {(r["model"], int(r["length"])) for r in rows}
    points = [(m, n) for m in s.models for n in s.lengths]
    todo = [p for p in points if p not in done]
    save(results_dir, sweep_id, s, rows)
    main = threading.current_thread() is threading.main_thread()
    # A scheduler's SIGTERM stops the sweep like Ctrl-C: the running worker is killed and the
    # finished points stay on disk for --resume. SIGINT is set here too: a background job
    # inherits it ignored.
    previous = {sig: signal.signal(sig, _interrupt) for sig in interruption.SIGNALS} if main \
        else {}
    try:
        _run_points(s, results_dir, sweep_id, rows, points, todo)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return sweep_id, rows


def _run_points(s: Settings, results_dir: Path, sweep_id: str, rows: list[dict], points: list,
                todo: list) -> None:
    """Shortest lengths first; append each point's row to `rows` and save, as it finishes."""
    with Display("sweep", len(points), done=len(points) - len(todo), unit="point") as bar:
        for model, length in todo:
            oom_at = [int(r["length"]) for r in rows
                      if r["model"] == model and r["status"] == "OOM" and int(r["length"]) < length]
            base = {"sweep_id": sweep_id, "model": model, "task": s.task, "preset": s.preset,
                    "mode": s.mode, "length": length, "batch_size": s.batch_size,
                    "started_at": results.utc_now()}
            t0 = time.time()
            if oom_at:
                row = {**base, "status": "OOM", "message": f"not run: OOM at length {min(oom_at)}"}
            else:
                bar.update(len(rows), f"{model} L={length}")
                row = {**base, **run_point(s, model, length)}
            row.update(finished_at=results.utc_now(), wall_time_s=round(time.time() - t0, 3))
            if row.get("status") not in STATUSES:
                row["status"] = "error"
            rows.append(row)
            save(results_dir, sweep_id, s, rows)
            bar.update(len(rows), "", line=progress_line(len(rows), len(points), row))
