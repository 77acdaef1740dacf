"""One (model, length) point of `lra sweep`, alone in its own process.

    python -m lra_bench.sweep_worker --spec '<json>' --out result.json

The step is compiled on abstract shapes first (`preflight`), so a point that cannot fit is
recorded as OOM before anything is allocated; otherwise the state is built, the compiled step
runs `warmup` times, then `steps` timed calls, each waited for with `block_until_ready`. Whatever
happens, the result (a row of `lra_bench.sweep.COLUMNS`) is written to --out; a failure becomes a
row with its status and message, never a crash of the sweep.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from pathlib import Path

from lra_bench import config, host, results
from lra_bench.errors import UserError
from lra_bench.sizes import format_bytes

OOM_MARKERS = ("resource_exhausted", "out of memory", "oom when allocating", "failed to allocate")


def classify(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".lower()
    if isinstance(error, MemoryError) or any(m in text for m in OOM_MARKERS):
        return "OOM"
    return "error"


def short_message(error: BaseException, limit: int = 400) -> str:
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first}"[:limit]


def measure_point(spec: dict, row: dict) -> None:
    """Fill `row` in place, so a failure half-way keeps what was measured before it."""
    # jax and flax (measure, preflight, the trainer): imported here, inside main's try, so that a
    # failure to import them is recorded as the point's error row like any other failure
    import jax
    import numpy as np

    from lra_bench import measure, preflight
    from lra_bench.data import synthetic
    from lra_bench.trainer import build

    row.update(measure.device_info(), jax_version=jax.__version__,
               git_commit=measure.git_commit())
    # spec["overrides"] are the point's (lra_bench.sweep.point_overrides): length, batch, grid.
    rc = config.resolve(spec["model"], spec["task"], spec["preset"], seed=spec.get("seed", 0),
                        overrides=spec.get("overrides", []))
    row["dtype"] = rc.model["dtype"]  # bf16 and fp32 rows of one device sit side by side
    capacity = preflight.device_capacity(spec.get("memory_limit"))
    row["device_memory_bytes"] = capacity.bytes
    step = preflight.compile_abstract(rc, spec["mode"])
    # which softmax attention the timed step runs: a GPU baseline row says if it is the fused
    # kernel or, with the reason, the explicit N x N form
    row.update(compile_time_s=step.compile_time_s, xla_estimate_bytes=step.peak_bytes,
               flops_per_step=step.flops, params=step.params,
               attention=preflight.describe_attention(step.attention))
    if preflight.fits(step, capacity) is False:
        row.update(status="OOM", message=(
            f"not run: needs {format_bytes(step.peak_bytes)} (XLA estimate), has "
            f"{format_bytes(capacity.bytes)} ({capacity.source})"))
        return

    built = build(rc)
    split = synthetic.make_split(rc.data, rc.train["batch_size"], seed=rc.seed)
    batch = jax.device_put({k: v for k, v in split.items()})
    if spec["mode"] == "train":
        state = built.init_state

        def call():
            nonlocal state
            state, metrics = step.compiled(state, batch)
            return state, metrics
    else:
        params, rest = built.init_state["params"], built.init_state["rest"]
        batch["weights"] = jax.device_put(np.ones(rc.train["batch_size"], np.float32))

        def call():
            return step.compiled(params, rest, batch)

    for _ in range(spec["warmup"]):
        jax.block_until_ready(call())
    times = []
    for _ in range(spec["steps"]):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t0)
    median = float(np.median(times))
    tokens = int(np.prod(split["inputs"].shape))  # a paired task counts both documents
    memory, source = measure.peak_memory(step.compiled)
    row.update(status="ok", timed_steps=len(times), step_time_ms=1000.0 * median,
               step_time_min_ms=1000.0 * min(times), step_time_max_ms=1000.0 * max(times),
               steps_per_second=1.0 / median, tokens_per_second=tokens / median,
               peak_memory_bytes=memory, memory_source=source)


def check_points(spec: dict) -> list[dict]:
    """The points of a sweep whose model cannot be built at their length, and why."""
    from lra_bench import model  # flax and jax: as in measure_point, loaded by the check only

    refused = []
    for point in spec["points"]:
        try:
            model.check(config.resolve(point["model"], spec["task"], spec["preset"],
                                       seed=spec.get("seed", 0), overrides=point["overrides"]),
                        gradient=spec.get("mode", "train") == "train")
        except UserError as e:
            refused.append({"model": point["model"], "length": point["length"], "why": str(e)})
    return refused


class WarningLog(logging.Handler):
    """The lra_bench warnings of this process, kept for the point's row."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []
        logging.getLogger("lra_bench").addHandler(self)

    def emit(self, record):
        self.lines.append(record.getMessage())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="the point, as JSON")
    parser.add_argument("--out", required=True, type=Path, help="where the result row goes")
    parser.add_argument("--check", action="store_true",
                        help="only build every point of the spec abstractly; write the refusals")
    args = parser.parse_args(argv)
    host.tune_malloc()  # as `lra run`: the step times a sweep reports are a run's
    spec = json.loads(args.spec)
    if args.check:
        results.write_json_atomic(args.out, check_points(spec))
        return 0
    row = {"status": "error", "message": ""}
    warnings = WarningLog()  # e.g. a fused kernel rejected: the point then times another one
    try:
        measure_point(spec, row)
        if warnings.lines:
            row["message"] = "warning: " + " | ".join(warnings.lines)[:400]
    except Exception as e:  # noqa: BLE001 -- every failure is a result, recorded as such
        row.update(status=classify(e), message=short_message(e))
        traceback.print_exc(file=sys.stderr)
    results.write_json_atomic(args.out, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
