"""Where a kernel's time goes: one layer's forward + backward profiled by XLA operation class.

    PYTHONPATH=. python benchmarks/profile_ops.py --kernels softmax --lengths 2048 4096
    PYTHONPATH=. python benchmarks/profile_ops.py --kernels softmax --head-dims 32 64 \\
        --attention-dropout 0 0.1 --batch 4 --out p.json

The step is `benchmarks/kernels.py`'s (same kernels, shapes and options), compiled once, run
--repeats times for the minimum wall time, then once under `jax.profiler.trace`. Every leaf
operation the profiler records (a fusion, a matrix product, a copy; loops and branches are
containers, not leaves) is classed from the compiled HLO (`lra_bench.hlo_flops.
instruction_classes`): matrix products (a dot, fused with whatever XLA put around it),
transcendental (exp, log, tanh... without a product), reductions, other elementwise work, data
movement (copies, transposes, slices). Per class: milliseconds in the traced call, its share of
the leaves' total, the FLOPs its operations executed (each event's FLOPs, so loops count as often
as they ran) and their GFLOP/s; the products' GFLOP/s against the roof (the GFLOP/s of a dense
matrix product in the same process, as in kernels.py) says how well the products themselves run,
and the other classes' share says how much of the step is not products at all.

Thread settings are the caller's (kernels.md's table: one thread, `XLA_FLAGS=
--xla_cpu_multi_thread_eigen=false taskset -c 1`); with several threads the leaves overlap and
their sum exceeds the wall time.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import kernels  # noqa: E402
from benchmarks._timing import time_calls  # noqa: E402
from lra_bench import hlo_flops, measure  # noqa: E402

CLASSES = ("products", "transcendental", "reductions", "elementwise", "data movement", "other")


def leaf_events(trace_dir: str) -> list[tuple[str, int]]:
    """(name, nanoseconds) of every XLA operation the trace recorded, loops and the executor's
    own spans left out (they contain the operations)."""
    path = next(Path(trace_dir).rglob("*.xplane.pb"))
    events = []
    for plane in jax.profiler.ProfileData.from_file(str(path)).planes:
        for line in plane.lines:
            if line.name == "python" or "XLA" not in line.name:
                continue
            for ev in line.events:
                name = ev.name
                # containers, and the executor's "end: X" markers of X's completion
                if name.startswith(("ThunkExecutor", "ThreadpoolListener", "end: ")):
                    continue
                events.append((name, ev.duration_ns))
    return events


def profile_point(name: str, length: int, args, head_dim: int, rate: float, roof: float) -> dict:
    heads = args.dim // head_dim
    compiled, _, call_args = kernels.build_step(name, length, batch=args.batch, dim=args.dim,
                                                heads=heads, dtype=jax.numpy.float32,
                                                dropout=rate)
    best = min(time_calls(compiled, call_args, args.repeats))
    classes = hlo_flops.instruction_classes(compiled.as_text())
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*call_args))
            traced = time.perf_counter() - t0
        events = leaf_events(d)
    ms, flops, count = collections.Counter(), collections.Counter(), collections.Counter()
    for ev, ns in events:
        kind, f = classes.get(ev, ("other", 0.0))
        if kind == "container":
            continue
        ms[kind] += ns / 1e6
        flops[kind] += f
        count[kind] += 1
    total = sum(ms.values())
    rows = {k: {"ms": ms[k], "share": ms[k] / total if total else None, "events": count[k],
                "gflop": flops[k] / 1e9,
                "gflops": flops[k] / ms[k] / 1e6 if ms[k] and flops[k] else None}
            for k in CLASSES if count[k]}
    products = rows.get("products", {})
    return {"kernel": name, "length": length, "batch": args.batch, "dim": args.dim,
            "heads": heads, "head_dim": head_dim, "attention_dropout": rate,
            "min_ms": 1000 * best, "traced_ms": 1000 * traced, "leaves_ms": total,
            "gflop": measure.cost_flops(compiled) / 1e9,
            "products_roof_share": (products["gflops"] / roof
                                    if products.get("gflops") else None),
            "classes": rows}


def table(points: list[dict], roof: float) -> str:
    lines = [f"The roof: {roof:.1f} GFLOP/s.", ""]
    for p in points:
        lines += [f"{p['kernel']} at {p['length']} tokens, batch {p['batch']}, {p['heads']} heads "
                  f"of {p['head_dim']}, attention dropout {p['attention_dropout']}: "
                  f"{p['min_ms']:.1f} ms (minimum), {p['gflop']:.2f} GFLOP (loops counted), "
                  f"{1000 * p['gflop'] / p['min_ms']:.1f} GFLOP/s = "
                  f"{1000 * p['gflop'] / p['min_ms'] / roof:.0%} of the roof; the traced call "
                  f"{p['traced_ms']:.1f} ms, its operations {p['leaves_ms']:.1f} ms", "",
                  "| class | ms | share | events | GFLOP | GFLOP/s |", "|---|---:|---:|---:|---:|---:|"]
        for kind, r in p["classes"].items():
            gflops = f"{r['gflops']:.1f}" if r["gflops"] else "-"
            lines.append(f"| {kind} | {r['ms']:.1f} | {r['share']:.0%} | {r['events']} | "
                         f"{r['gflop']:.2f} | {gflops} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kernels", nargs="+", default=["softmax"], choices=list(kernels.KERNELS))
    p.add_argument("--lengths", nargs="+", type=int, default=[2048])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--head-dims", nargs="+", type=int, default=[16],
                   help="heads = dim / head dim (kernels.py: 4 heads of 16)")
    p.add_argument("--attention-dropout", nargs="+", type=float, default=[0.0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, help="also write the points as JSON here")
    args = p.parse_args(argv)
    roof = kernels.roof_gflops(args.repeats)
    points = []
    for name in args.kernels:
        for length in args.lengths:
            for head_dim in args.head_dims:
                for rate in args.attention_dropout:
                    points.append(profile_point(name, length, args, head_dim, rate, roof))
                    print(table(points[-1:], roof), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"roof_gflops": roof, "commit": measure.git_commit(),
                                        "points": points}, indent=1) + "\n")


if __name__ == "__main__":
    main()
