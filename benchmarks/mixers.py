"""Cost of each mixer alone: fwd+bwd time and XLA's compiled memory estimate per sequence length.

    PYTHONPATH=. python benchmarks/mixers.py [--lengths 1024 2048 4096] [--batch 2]

Each model's mixer is built from the [mixer] defaults of models/<name>.toml, at the width of the
Nyströmformer LRA config (64 dims, 2 heads), without CLS. One step is the gradient of sum(y^2)
with respect to the mixer's parameters and its input, jitted; the time is the median of
--repeats calls after a warm-up. Memory is `measure.compiled_memory_estimate` (arguments +
outputs + temporaries - aliased), so it is the same on any machine with the same XLA; time is
not. The last column is memory / memory at the previous length: ~2 for a linear-memory mixer, ~4
for a quadratic one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._timing import compile_timed, summary_ms, time_calls  # noqa: E402
from lra_bench import config, measure, mixers  # noqa: E402

MODELS = ("transformer", "fastformer", "linear", "sikf", "nystromformer")


def fwd_bwd(model_name: str, length: int, *, batch: int, dim: int, heads: int):
    """A compiled fwd+bwd step of one mixer and its arguments."""
    options = dict(config.load_spec("models", model_name)["mixer"])
    kind = options.pop("kind")
    spec = mixers.MixerSpec(dim=dim, num_heads=heads, qkv_dim=dim, attention_dropout=0.0,
                            max_length=length, has_cls=False, dtype=jnp.float32)
    mixer = mixers.build(kind, spec, options, nnx.Rngs(0))
    graphdef, params = nnx.split(mixer)

    def loss(params, x, mask):
        y, _ = nnx.merge(graphdef, params)(x, mask)
        return jnp.sum(y.astype(jnp.float32) ** 2)

    x = jax.random.normal(jax.random.key(1), (batch, length, dim))
    # A realistic mask: every second sample is half padding, at any batch size.
    lengths = jnp.where(jnp.arange(batch) % 2 == 1, length // 2, length)
    mask = jnp.arange(length)[None, :] < lengths[:, None]
    compiled, _ = compile_timed(jax.grad(loss, argnums=(0, 1)), params, x, mask)
    return compiled, (params, x, mask)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--lengths", nargs="+", type=int, default=[1024, 2048, 4096])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    print(f"device: {jax.devices()[0].device_kind}, batch {args.batch}, dim {args.dim}, "
          f"heads {args.heads}, float32, fwd+bwd")
    print(f"{'model':<14}{'mixer':<15}{'length':>7}{'time ms':>10}{'memory MiB':>12}{'x prev':>8}")
    for name in args.models:
        previous = None
        for length in args.lengths:
            compiled, call_args = fwd_bwd(name, length, batch=args.batch, dim=args.dim,
                                          heads=args.heads)
            memory = measure.compiled_memory_estimate(compiled)
            seconds = summary_ms(time_calls(compiled, call_args, args.repeats))["median_ms"] / 1000
            ratio = f"{memory / previous:.2f}" if previous and memory else ""
            kind = config.load_spec("models", name)["mixer"]["kind"]
            print(f"{name:<14}{kind:<15}{length:>7}{1000 * seconds:>10.1f}"
                  f"{(memory or 0) / 2**20:>12.1f}{ratio:>8}", flush=True)
            previous = memory


if __name__ == "__main__":
    main()
