"""Sequence-shortening encoders against the softmax Transformer: fwd+bwd time and XLA memory.

    PYTHONPATH=. python benchmarks/shortening.py [--lengths 1024 2048 4096] [--batch 1]

Every model is the same small encoder (the ListOps `lra` preset with narrower layers, no dropout),
differing only in the mixer: `transformer` (dense softmax in every layer), `fourier` (DCT filter to
20% of the tokens in layer 0) and `topk` (blockwise attention in 512-token chunks, pooling to
L/4 after layer 0 and L/16 after layer 1: the official 4x steps). Time is the median wall time of
one jitted value_and_grad of the classification loss; memory is XLA's compiled estimate of that
call (`lra_bench.measure.compiled_memory_estimate`: temporaries + arguments + outputs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._timing import compile_timed, summary_ms, time_calls  # noqa: E402
from lra_bench import config, measure  # noqa: E402
from lra_bench.model import Classifier  # noqa: E402

MODELS = ("transformer", "fourier", "topk")


def run_config(model: str, length: int, args) -> config.RunConfig:
    overrides = [
        f"data.max_length={length}", f"model.emb_dim={args.dim}", f"model.qkv_dim={args.dim}",
        f"model.mlp_dim={2 * args.dim}", f"model.num_heads={args.heads}",
        f"model.num_layers={args.layers}", "model.dropout=0.0", "model.attention_dropout=0.0",
    ]
    return config.resolve(model, "listops", "lra", overrides=overrides)


def measure_one(rc: config.RunConfig, batch: int, repeats: int) -> dict:
    model = Classifier(rc, rngs=nnx.Rngs(params=0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, rc.data["vocab_size"], (batch, rc.data["max_length"]), dtype=np.int32)
    labels = rng.integers(0, rc.data["num_classes"], (batch,), dtype=np.int32)

    def loss(params, tokens, labels):
        logits = nnx.merge(graphdef, params, rest)(tokens, deterministic=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    step, compile_s = compile_timed(jax.value_and_grad(loss), params, tokens, labels)
    times = time_calls(step, (params, tokens, labels), repeats)
    return {"ms": summary_ms(times)["median_ms"],
            "mib": measure.compiled_memory_estimate(step) / 2**20, "compile_s": compile_s}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    print(f"# {jax.devices()[0].device_kind}, batch {args.batch}, {args.layers} layers, "
          f"dim {args.dim}, {args.heads} heads, fwd+bwd of the loss")
    print(f"| {'model':11} | {'length':>6} | {'fwd+bwd ms':>10} | {'XLA MiB':>8} | "
          f"{'speed-up':>8} | {'memory /':>8} | {'compile s':>9} |")
    print("|-------------|-------:|-----------:|---------:|---------:|---------:|----------:|")
    for length in args.lengths:
        base = None
        for name in args.models:
            r = measure_one(run_config(name, length, args), args.batch, args.repeats)
            base = r if name == "transformer" else base
            speed = f"{base['ms'] / r['ms']:.2f}x" if base else "-"
            mem = f"{base['mib'] / r['mib']:.2f}x" if base else "-"
            print(f"| {name:11} | {length:6d} | {r['ms']:10.1f} | {r['mib']:8.1f} | {speed:>8} | "
                  f"{mem:>8} | {r['compile_s']:9.1f} |", flush=True)


if __name__ == "__main__":
    main()
