"""lra-bench's layers against their official PyTorch layers: time and memory of one layer's step.

    python benchmarks/against_reference.py --refs DIR --torch-python PY [--out r.json]
    python benchmarks/against_reference.py --markdown r.json

The official code is not part of lra-bench and never enters the repository: DIR is a folder the
user fills from the sources cited in each mixer's docstring (docs/kernels.md lists the files and
commits), PY a Python with torch (and performer-pytorch, transformers for their layers). This
script only imports the official modules from DIR. It runs outside `make test`.

The step is `benchmarks/kernels.py`'s on both sides: the gradient of sum(z^2), z = x + layer(x)
(then the top-k pooling), with respect to the parameters and x; batch 2, width 64, 4 heads,
float32, the second sample half padding. Two workers, each on one thread (torch.set_num_threads(1);
XLA_FLAGS=--xla_cpu_multi_thread_eigen=false) and pinned to one core (taskset -c CORE), are asked
in turn (torch, jax, torch, jax, ...) to time `--repeats` calls after a warm-up, for every layer and
length, `--passes` times. Memory, one definition for both: the peak bytes a step holds beyond
its arguments (parameters and x), gradients included. torch: MemTracker's peak total (every
storage live during the step, tracked by weak references) minus the argument bytes; JAX: the
compiled step's temporaries + outputs - aliased bytes (XLA's static buffer plan).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# layer -> (benchmarks/kernels.py kernel, official reference)
LAYERS = {
    "softmax": ("softmax", "mlpen/Nystromformer attention.py softmax (ListOps: checkpointed)"),
    "linear": ("linear", "idiap/fast-transformers AttentionLayer(LinearAttention)"),
    "fastformer": ("fastformer", "wuch15/Fastformer Fastformer.ipynb FastSelfAttention + dense"),
    "topk": ("topk", "applicaai/pyramidions TopKOperator + scorer; nn.MultiheadAttention chunks"),
    "nystromformer": ("nystromformer", "mlpen/Nystromformer attention_nystrom.py (64, conv 35)"),
    "linformer-nystrom": ("linformer-nystrom", "mlpen/Nystromformer attention_linformer.py k=256"),
    "performer-favor": ("performer-favor", "mlpen/Nystromformer attention_performer.py rp_dim=256"),
    "reformer-hf": ("reformer-hf", "mlpen/Nystromformer attention_reformer.py num_hash=2"),
}
BATCH, DIM, HEADS = 2, 64, 4


# ---------------------------------------------------------------- the torch worker (official code)

def torch_layer(name: str, length: int, refs: Path):
    """(step, argument bytes, tracked modules and tensors) for the official layer."""
    import torch  # why: only the torch worker has torch; the driver and JAX worker must not

    sys.path.insert(0, str(refs))
    nn = torch.nn
    torch.manual_seed(0)
    x = torch.randn(BATCH, length, DIM, requires_grad=True)
    mask = torch.arange(length)[None, :] < torch.tensor([length, length // 2])[:, None]
    maskf = mask.float()
    mlpen = {"softmax": "softmax", "nystromformer": "nystrom-64", "reformer-hf": "reformer-2",
             "linformer-nystrom": "linformer-256", "performer-favor": "performer-256"}
    if name in mlpen:
        if name == "reformer-hf":  # the official file imports transformers' pre-4.0 module path
            import transformers.models.reformer.modeling_reformer as reformer  # why: see above
            sys.modules["transformers.modeling_reformer"] = reformer
        import attention  # why: the official module, from --refs
        if name == "linformer-nystrom":
            import attention_linformer  # why: its E is a class attribute shared across lengths
            attention_linformer.LinformerAttention.projection_matrix = None
        cfg = {"transformer_dim": DIM, "head_dim": DIM // HEADS, "num_head": HEADS,
               "attn_type": mlpen[name], "attention_dropout": 0.0, "max_seq_len": length,
               "seq_len": length, "attention_grad_checkpointing": name == "softmax",
               "num_landmarks": 64, "conv_kernel_size": 35, "linformer_k": 256, "num_hash": 2,
               "rp_dim": 256, "kernel_type": "relu"}
        layer = attention.Attention(cfg)
        forward = lambda: layer(x, maskf)  # noqa: E731
    elif name == "linear":
        # why (all three): the official modules, from --refs (fast_transformers' python files)
        from fast_transformers.attention.attention_layer import AttentionLayer
        from fast_transformers.attention.linear_attention import LinearAttention
        from fast_transformers.masking import FullMask, LengthMask

        layer = AttentionLayer(LinearAttention(DIM // HEADS), DIM, HEADS)
        full = FullMask(N=length, M=length)
        lengths = LengthMask(mask.sum(1), max_len=length)
        forward = lambda: layer(x, x, x, full, lengths, lengths)  # noqa: E731
    elif name == "fastformer":
        import types  # why: a namespace for the notebook's config, torch worker only
        cell = next("".join(c["source"]) for c in json.loads(
            (refs / "Fastformer.ipynb").read_text())["cells"]
            if "class FastSelfAttention" in "".join(c["source"]))
        ns = {}
        exec(compile(cell, "Fastformer.ipynb", "exec"), ns)  # the official class, from --refs
        config = types.SimpleNamespace(hidden_size=DIM, num_attention_heads=HEADS,
                                       initializer_range=0.02)
        layer = nn.ModuleDict({"self": ns["FastSelfAttention"](config),
                               "out": nn.Linear(DIM, DIM)})  # BertSelfOutput's dense
        additive = (1.0 - maskf.unsqueeze(1)) * -10000.0  # the notebook's extended mask
        forward = lambda: layer["out"](layer["self"](x, additive))  # noqa: E731
    elif name == "topk":
        from successive_halving_topk import TopKConfig, TopKOperator  # why: from --refs
        chunk = min(512, length)
        layer = nn.ModuleDict({"mha": nn.MultiheadAttention(DIM, HEADS),
                               "scorer": nn.Linear(DIM, 1)})
        selector = TopKOperator()
        selector.set_config(TopKConfig(input_len=length, pooled_len=length // 4, flip_right=True,
                                       sort_back=False, base=20, depth=-1))
        pad = ~mask.reshape(-1, chunk).clone()
        pad[pad.all(1), -1] = False  # fairseq's _inject_eos: an empty chunk keeps its last token

        def forward():  # pyramidion.py: attention within chunks, then the TopkPooler
            t = x.reshape(-1, chunk, DIM).transpose(0, 1)
            y = layer["mha"](t, t, t, key_padding_mask=pad, need_weights=False)[0]
            return y.transpose(0, 1).reshape(BATCH, length, DIM)
    else:
        raise SystemExit(f"error: no official layer for {name}")

    def step():
        z = x + forward()
        if name == "topk":
            logits = torch.where(mask[..., None], layer["scorer"](z), torch.tensor(-10000.0))
            z, _ = selector(z, torch.sigmoid(logits) + 0.00001)
        (z ** 2).sum().backward()

    layer.train()
    arg_bytes = x.nbytes + sum(p.nbytes for p in layer.parameters())
    return step, arg_bytes, (layer, x)


def torch_memory(step, arg_bytes, tracked) -> float:
    import torch  # why: only the torch worker has torch
    from torch.distributed._tools.mem_tracker import MemTracker  # why: as above

    for t in [tracked[1], *tracked[0].parameters()]:
        t.grad = None
    tracker = MemTracker()
    tracker.track_external(*tracked)
    with tracker:
        step()
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    return peak - arg_bytes


def serve_torch(refs: Path) -> None:
    import torch  # why: only the torch worker has torch

    torch.set_num_threads(1)
    # This script's folder comes first on sys.path; its kernels.py would shadow the `kernels`
    # package that transformers imports.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
    built = {}
    for line in sys.stdin:
        req = json.loads(line)
        key = (req["layer"], req["length"])
        if key not in built:
            step, arg_bytes, tracked = torch_layer(*key, refs)
            step()  # warm-up (and the official code's lazy set-up)
            built[key] = (step, torch_memory(step, arg_bytes, tracked))
        step, memory = built[key]
        reply(time_calls(step, req["repeats"]), memory)


# ---------------------------------------------------------------- the JAX worker (lra-bench)

def serve_jax() -> None:
    import jax  # why: only the JAX worker has JAX

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import kernels  # why: the same step as the kernel table, after sys.path
    from lra_bench import host  # why: as above

    host.tune_malloc()  # as `lra` runs
    built = {}
    for line in sys.stdin:
        req = json.loads(line)
        key = (req["layer"], req["length"])
        if key not in built:
            compiled, _, args = kernels.build_step(LAYERS[key[0]][0], key[1], batch=BATCH,
                                                   dim=DIM, heads=HEADS, dtype=jax.numpy.float32)
            jax.block_until_ready(compiled(*args))
            m = compiled.memory_analysis()
            memory = m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            built[key] = (lambda c=compiled, a=args: jax.block_until_ready(c(*a)), memory)
        step, memory = built[key]
        reply(time_calls(step, req["repeats"]), memory)


def time_calls(step, repeats: int) -> list[float]:
    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def reply(times, memory) -> None:
    print(json.dumps({"ms": [1000 * t for t in times], "bytes": memory}), flush=True)


# ---------------------------------------------------------------- the driver

def start(cmd: list[str], core: int, env: dict) -> subprocess.Popen:
    return subprocess.Popen(["taskset", "-c", str(core), *cmd], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)


def ask(worker: subprocess.Popen, layer: str, length: int, repeats: int) -> dict:
    worker.stdin.write(json.dumps({"layer": layer, "length": length, "repeats": repeats}) + "\n")
    worker.stdin.flush()
    line = worker.stdout.readline()
    if not line:
        raise SystemExit(f"error: a worker died at {layer} {length}; run it alone to see why")
    return json.loads(line)


def drive(args) -> dict:
    me = str(Path(__file__).resolve())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false", "JAX_PLATFORMS": "cpu"}
    workers = {"torch": start([args.torch_python, me, "--worker", "torch", "--refs",
                               str(args.refs)], args.core, env),
               "jax": start([sys.executable, me, "--worker", "jax"], args.core, env)}
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lra_bench import measure  # why: the commit, after sys.path (the workers import nothing)

    out = {"command": " ".join(["python", "benchmarks/against_reference.py", *sys.argv[1:]]),
           "commit": measure.git_commit(), "date": now(), "core": args.core,
           "repeats": args.repeats, "passes": args.passes, "references": {
               k: LAYERS[k][1] for k in args.layers}, "results": []}
    for p in range(args.passes):
        for length in args.lengths:
            for layer in args.layers:
                got = {side: ask(w, layer, length, args.repeats) for side, w in workers.items()}
                out["results"].append({"pass": p, "layer": layer, "length": length, **got})
                t, j = (min(got[s]["ms"]) for s in ("torch", "jax"))
                print(f"pass {p} {layer:<18}{length:>6} torch {t:9.1f} jax {j:9.1f} ms "
                      f"x{j / t:5.2f}  mem x{got['jax']['bytes'] / got['torch']['bytes']:5.2f}",
                      file=sys.stderr, flush=True)
                if args.out:
                    args.out.write_text(json.dumps(out, indent=1) + "\n")
    for w in workers.values():
        w.stdin.close()
        w.wait()
    out["finished"] = now()
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return out


def now() -> str:
    import datetime  # why: only the driver stamps dates
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def markdown(report: dict) -> str:
    """Ratio tables (lra-bench / reference): min and median over passes of each pass's min-ms
    ratio; median ms; memory."""
    rows = report["results"]
    lengths = sorted({r["length"] for r in rows})
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    k = lambda n: f"{n // 1024}K" if n % 1024 == 0 else str(n)  # noqa: E731
    head = ["| layer | " + " | ".join(k(n) for n in lengths) + " |",
            "|---|" + "---:|" * len(lengths)]
    time_rows, ms_rows, mem_rows = [], [], []
    for layer in layers:
        cells, ms, mem = [], [], []
        for n in lengths:
            pts = [r for r in rows if r["layer"] == layer and r["length"] == n]
            if not pts:
                cells, ms, mem = cells + ["-"], ms + ["-"], mem + ["-"]
                continue
            ratios = [min(r["jax"]["ms"]) / min(r["torch"]["ms"]) for r in pts]
            cells.append(f"{min(ratios):.2f} / {statistics.median(ratios):.2f}")
            tj = statistics.median(t for r in pts for t in r["jax"]["ms"])
            tt = statistics.median(t for r in pts for t in r["torch"]["ms"])
            ms.append(f"{tj:.1f} / {tt:.1f}")
            mj, mt = pts[0]["jax"]["bytes"], pts[0]["torch"]["bytes"]
            mem.append(f"{mj / mt:.2f} ({mj / 2**20:.1f} / {mt / 2**20:.1f})")
        time_rows.append(f"| {layer} | " + " | ".join(cells) + " |")
        ms_rows.append(f"| {layer} | " + " | ".join(ms) + " |")
        mem_rows.append(f"| {layer} | " + " | ".join(mem) + " |")
    return "\n".join(
        ["Time ratio lra-bench / reference (each pass's minimum ms), min / median over "
         f"{report['passes']} passes:", "", *head, *time_rows, "",
         "Median ms over all calls, lra-bench / reference:", "", *head, *ms_rows, "",
         "Memory ratio lra-bench / reference (MiB lra-bench / reference):", "", *head,
         *mem_rows]) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--refs", type=Path, help="folder holding the official modules")
    p.add_argument("--torch-python", default="python", help="a Python that has torch")
    p.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    p.add_argument("--lengths", nargs="+", type=int, default=[1024, 2048, 4096, 8192])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--core", type=int, default=1, help="the core both workers are pinned to")
    p.add_argument("--out", type=Path)
    p.add_argument("--markdown", type=Path, metavar="JSON")
    p.add_argument("--worker", choices=["torch", "jax"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())), end="")
    elif args.worker == "torch":
        serve_torch(args.refs)
    elif args.worker == "jax":
        serve_jax()
    else:
        if args.refs is None or not args.refs.is_dir():
            print("error: --refs must name the folder holding the official modules (see "
                  "docs/kernels.md, Against the official layers)", file=sys.stderr)
            sys.exit(2)
        report = drive(args)
        if not args.out:
            print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
