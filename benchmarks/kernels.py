"""Every mixer's kernel alone: one layer's forward + backward per sequence length, as JSON.

    PYTHONPATH=. python benchmarks/kernels.py [--lengths 1024 2048 4096 8192] [--out k.json]
    PYTHONPATH=. python benchmarks/kernels.py --markdown k.json --update docs/kernels.md

One step is the gradient, with respect to the mixer's parameters and its input, of sum(z^2) for
z = R + y, the mixer's output added to its residual stream (the filtered input for Fourier),
followed by the top-k pooling where the mixer pools: everything a layer adds over a plain block.
Batch 2, width 64, 4 heads, float32 by default (the official references' settings for the
comparison in issue 14); every second sample is half padding. Per point: median and minimum wall
ms of --repeats calls after a warm-up, compile seconds, and memory: XLA's compiled estimate
(arguments + outputs + temporaries - aliased; the same on any machine with this XLA), plus the
device's peak where the backend keeps one (GPU; it is the process's peak so far, so lengths run
in increasing order). Lengths default to 1K-8K, and 16K on a GPU.

FLOPs per call: XLA's cost analysis (`xla_gflop`, which counts a loop's body once) and the
figure with every loop body counted as often as it runs (`gflop`, `measure.cost_flops`: the
compiled HLO walked with each while loop's known trip count, `lra_bench/hlo_flops.py`); for
softmax also a hand count (`hand_gflop`: 12 B H N^2 d for the attention, 2 products forward and
4 backward, plus 24 B N D^2 for the four projections; the CPU blocks also recompute the logits in
the backward pass, 2 B H N^2 d more that the hand count leaves out). Achieved GFLOP/s =
gflop / minimum time; the roof is the GFLOP/s of a ROOF_SIZE^3 float32 matrix product measured in
the same process and settings (its minimum over the repeats), and `roof_share` is their ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._timing import compile_timed, summary_ms, time_calls, versions  # noqa: E402
from lra_bench import config, measure, mixers  # noqa: E402

# name -> (model whose [mixer] defaults are used, option overrides)
KERNELS = {
    "softmax": ("transformer", {}),
    "fastformer": ("fastformer", {}),
    "linear": ("linear", {}),
    "sikf": ("sikf", {"fastrpb": "none"}),
    "sikf+fastrpb": ("sikf", {"fastrpb": "1d"}),
    "nystromformer": ("nystromformer", {}),
    "fourier": ("fourier", {}),
    "topk": ("topk", {}),  # blockwise attention + pooling to length / 4 (official first step)
    "linformer": ("linformer", {}),  # LRA: k = 16
    "linformer-nystrom": ("linformer", {"projection": "nystrom", "k": 256}),
    "performer": ("performer", {}),  # LRA's default: relu features
    "performer-favor": ("performer", {"features": "favor+", "nb_features": 256, "redraw": "fixed",
                                      "kernel_eps": 1e-4, "key_max": "global", "masking": "zero",
                                      "prescale": True}),  # the Nystromformer's performer-256
    "synthesizer": ("synthesizer", {}),  # LRA: mode "random" with the dot product, every task
    "local": ("local", {}),  # LRA's ListOps/Text/Retrieval: groups of 50, its strided layout
    "longformer": ("longformer", {}),  # LRA: a 512-token sliding window, no global tokens
    "sinkhorn": ("sinkhorn", {}),  # LRA's ListOps/Text/Retrieval: blocks of 50, LRA's sort
    "sparse_transformer": ("sparse_transformer", {}),  # LRA: fixed patterns, l = 50, c = 10, causal
    "sparse_transformer-dense": ("sparse_transformer", {"form": "dense"}),  # as LRA computed it
    "bigbird": ("bigbird", {}),  # LRA: blocks of 64, 3 random blocks, seed = the layer index
    "reformer": ("reformer", {}),  # LRA: 1 round, 10 buckets
    "reformer-hf": ("reformer", {"style": "hf", "n_hashes": 2, "chunk_len": 64}),
    "s4d": ("s4d", {}),  # Vandermonde kernel + FFT convolution: O(N L log L)
    "s5": ("s5", {}),  # parallel scan: O(P L log L) work, O(log L) depth
}


ROOF_SIZE = 2048


def roof_gflops(repeats: int, size: int = ROOF_SIZE, dtype=jnp.float32) -> float:
    """GFLOP/s of a dense (size x size) @ (size x size) product in this process: the roof."""
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    compiled, _ = compile_timed(lambda x, y: x @ y, a, a)
    return 2 * size**3 / min(time_calls(compiled, (a, a), max(repeats, 3))) / 1e9


def hand_flops(name: str, length: int, *, batch: int, dim: int, heads: int) -> float | None:
    """Forward + backward FLOPs counted by hand, where one is kept (softmax: see the module)."""
    if name != "softmax":
        return None
    return 12.0 * batch * heads * length**2 * (dim // heads) + 24.0 * batch * length * dim**2


def layer_loss(graphdef, dropout: bool = False):
    """sum(z^2) of one layer; with dropout, its attention dropout on, drawn from `key`."""
    def loss(params, x, mask, key):
        m = nnx.merge(graphdef, params)
        run = dict(deterministic=not dropout, rngs=nnx.Rngs(dropout=key))
        if hasattr(m, "mix"):
            stream, y, short = m.mix(x, x, mask, **run)
        else:
            y, short = m(x, mask, **run)
            stream = m.residual_stream(x, x, mask) if hasattr(m, "residual_stream") else x
        z = stream + y
        if hasattr(m, "after_block"):
            z, short = m.after_block(z, short)
        return jnp.sum(z.astype(jnp.float32) ** 2)
    return loss


def build_step(name: str, length: int, *, batch: int, dim: int, heads: int, dtype,
               dropout: float = 0.0):
    """The compiled step, its compile seconds and its arguments (params, x, mask, dropout key).
    dropout: the attention dropout rate (the key is an argument, so nothing is folded)."""
    model, overrides = KERNELS[name]
    options = {**config.load_spec("models", model)["mixer"], **overrides}
    kind = options.pop("kind")
    if kind == "topk":
        options["pool_lengths"] = [length // 4]
    spec = mixers.MixerSpec(dim=dim, num_heads=heads, qkv_dim=dim, attention_dropout=dropout,
                            max_length=length, has_cls=False, dtype=dtype)
    graphdef, params = nnx.split(mixers.build(kind, spec, options, nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(1), (batch, length, dim), dtype)
    # every second sample half padding, at any batch size
    lengths = jnp.where(jnp.arange(batch) % 2 == 1, length // 2, length)
    mask = jnp.arange(length)[None, :] < lengths[:, None]
    args = (params, x, mask, jax.random.key(2))
    compiled, compile_s = compile_timed(
        jax.grad(layer_loss(graphdef, dropout > 0), argnums=(0, 1)), *args)
    return compiled, compile_s, args


def measure_point(name, length, args, roof: float | None = None) -> dict:
    compiled, compile_s, call_args = build_step(name, length, batch=args.batch, dim=args.dim,
                                                heads=args.heads, dtype=jnp.dtype(args.dtype),
                                                dropout=args.attention_dropout)
    times = time_calls(compiled, call_args, args.repeats)
    estimate = measure.compiled_memory_estimate(compiled)
    peak = measure.device_peak_bytes()
    flops, xla_flops = measure.cost_flops(compiled), measure.xla_cost_flops(compiled)
    hand = hand_flops(name, length, batch=args.batch, dim=args.dim, heads=args.heads)
    gflops = flops / min(times) / 1e9 if flops else None
    return {"kernel": name, "length": length, **summary_ms(times), "compile_s": compile_s,
            "xla_estimate_mib": estimate / 2**20 if estimate else None,
            "device_peak_mib": peak / 2**20 if peak else None,
            "gflop": flops / 1e9 if flops else None,
            "xla_gflop": xla_flops / 1e9 if xla_flops else None,
            "hand_gflop": hand / 1e9 if hand else None, "gflops": gflops,
            "roof_share": gflops / roof if gflops and roof else None}


def run(args, malloc_tuned: bool = False) -> dict:
    lengths = args.lengths or [1024, 2048, 4096, 8192] + (
        [16384] if jax.default_backend() == "gpu" else [])
    out = {"command": " ".join(["python", "benchmarks/kernels.py", *sys.argv[1:]]),
           "commit": measure.git_commit(),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "device": measure.device_info(), "versions": versions(), "malloc_tuned": malloc_tuned,
           "config": {"batch": args.batch, "dim": args.dim, "heads": args.heads,
                      "dtype": args.dtype, "repeats": args.repeats,
                      "attention_dropout": args.attention_dropout},
           "roof_gflops": roof_gflops(args.repeats, dtype=jnp.dtype(args.dtype)),
           "roof": f"{ROOF_SIZE}^3 {args.dtype} matrix product, minimum of the repeats",
           "results": []}
    for length in lengths:  # increasing: the device peak so far is this length's peak
        for name in args.kernels:
            point = measure_point(name, length, args, out["roof_gflops"])
            out["results"].append(point)
            if args.out:  # after every point: a run cut short keeps what it measured
                write(args.out, out)
            print(f"{name:<14}{length:>7}{point['median_ms']:>10.1f}{point['min_ms']:>10.1f}"
                  f"{point['xla_estimate_mib'] or 0:>10.1f}{point['compile_s']:>8.1f}",
                  file=sys.stderr, flush=True)
    return out


def markdown(report: dict) -> str:
    """The docs page: a table per measure, kernels by rows and lengths by columns."""
    rows = report["results"]
    lengths = sorted({r["length"] for r in rows})
    kernels = list(dict.fromkeys(r["kernel"] for r in rows))
    by = {(r["kernel"], r["length"]): r for r in rows}
    dev, cfg, ver = report["device"], report["config"], report["versions"]
    lines = [
        "# Kernel costs: one layer of each mixer, forward + backward",
        "",
        f"Generated by `{report['command']}` at commit `{report['commit']}` on "
        f"{report['date']}; device: {dev['device_kind']} ({dev['platform']}), jax "
        f"{ver['jax']}, flax {ver['flax']}. Batch {cfg['batch']}, width {cfg['dim']}, "
        f"{cfg['heads']} heads, {cfg['dtype']}, {cfg['repeats']} timed calls per point; glibc "
        f"malloc thresholds raised as `lra` does (`lra_bench/host.py`): "
        f"{'yes' if report.get('malloc_tuned') else 'no'}. "
        "Regenerate with `python benchmarks/kernels.py --out k.json && "
        "python benchmarks/kernels.py --markdown k.json --update docs/kernels.md`.",
        "",
        "What a step is: the gradient of sum(z^2), z = residual stream + mixer output (then the "
        "pooling, for top-k), with respect to the parameters and the input; see "
        "`benchmarks/kernels.py`. Times are wall-clock and machine-dependent (a shared CPU is "
        "noisy: compare within one table); the XLA estimate is not.",
    ]
    if report.get("roof_gflops"):
        lines += ["", f"The roof: {report['roof_gflops']:.1f} GFLOP/s ({report['roof']}, "
                      "measured in the same process). FLOPs: see `benchmarks/kernels.py`."]
    measures = [("min_ms", "Minimum ms", "{:.1f}"), ("median_ms", "Median ms", "{:.1f}"),
                ("xla_estimate_mib", "XLA memory estimate, MiB", "{:.0f}"),
                ("device_peak_mib", "Device peak so far, MiB", "{:.0f}"),
                ("gflop", "GFLOP per call, loops counted in full", "{:.2f}"),
                ("xla_gflop", "GFLOP per call, XLA's cost analysis (a loop's body once)",
                 "{:.2f}"),
                ("hand_gflop", "GFLOP per call, hand count", "{:.2f}"),
                ("gflops", "Achieved GFLOP/s (loops counted, minimum time)", "{:.1f}"),
                ("roof_share", "Share of the roof, %", "{:.0%}"),
                ("compile_s", "Compile seconds", "{:.1f}")]
    for key, title, fmt in measures:
        if all(r.get(key) is None for r in rows):
            continue
        lines += ["", f"## {title}", "",
                  "| kernel | " + " | ".join(f"{n // 1024}K" if n % 1024 == 0 else str(n)
                                             for n in lengths) + " |",
                  "|---|" + "---:|" * len(lengths)]
        for k in kernels:
            cells = [fmt.format(by[k, n][key]) if (k, n) in by and by[k, n].get(key) is not None
                     else "-" for n in lengths]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


BEGIN = "<!-- BEGIN benchmarks/kernels.py --markdown: generated, do not edit -->"
END = "<!-- END benchmarks/kernels.py --markdown -->"


def update_page(text: str, page: str) -> str:
    """text with the lines between its BEGIN and END markers replaced by `page` (its title
    dropped: the hand-written page has its own), so regenerating keeps the written sections."""
    if BEGIN not in text or END not in text:
        sys.exit(f"error: the page has no {BEGIN} ... {END} lines to replace; add them where "
                 "the tables go")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    body = page.split("\n", 1)[1].strip("\n")
    return f"{head}{BEGIN}\n{body}\n{END}{tail}"


def write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    p.add_argument("--lengths", nargs="+", type=int, default=None)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--attention-dropout", type=float, default=0.0,
                   help="attention dropout rate of the step (default 0: the tables' setting)")
    p.add_argument("--out", type=Path, help="write the JSON here (default: stdout)")
    p.add_argument("--markdown", type=Path, metavar="JSON",
                   help="print the docs page for a JSON written by this script, and exit")
    p.add_argument("--update", type=Path, metavar="PAGE",
                   help="with --markdown: put the tables into PAGE between its BEGIN and END "
                        "marker lines instead (docs/kernels.md), keeping the rest of the page")
    args = p.parse_args(argv)
    if args.markdown:
        page = markdown(json.loads(args.markdown.read_text()))
        if args.update:
            args.update.write_text(update_page(args.update.read_text(), page))
        else:
            print(page, end="")
        return
    from lra_bench import host

    report = run(args, malloc_tuned=host.tune_malloc())  # tuned as `lra run` is
    if not args.out:
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
