"""Token mixers: every attention variant behind one interface.

A mixer is a module `lra_bench.mixers.<kind>` that defines `Mixer(spec, *, rngs, **options)`;
`models/<name>.toml` names the kind and its options under [mixer]. Calling it:

    y, mask = mixer(x, mask, deterministic=..., rngs=...)

x is (batch, length, dim), mask is (batch, length) bool with True at real tokens. The math of
each mixer lives in pure JAX functions in its module, so it can be tested against equations and
references without the module around it.

Mixers that change the sequence length. Every layer gets its own mixer, and `MixerSpec.layer` /
`num_layers` tell it where it sits, so a per-layer schedule is data in the mixer's options (e.g.
"filter in layers [0]", "pool to [2048, 512] tokens after layers 0 and 1"). A pre-LN block is

    h = LN(x);  y, m = mixer(h, mask);  x = R + dropout(y);  x = x + MLP(LN(x));  x, m = P(x, m)

and a mixer may define two optional methods that decide R and P (the block calls each only if the
mixer has it, so a mixer without them behaves exactly as before):

    mixer.residual_stream(x, h, mask) -> x'     R: the stream the mixer output is added to, at
                                                the output's length (default: x). The Fourier
                                                Transformer returns its filtered h here.
    mixer.after_block(x, mask) -> (x, mask)     P: a step after attention AND the MLP, e.g. top-k
                                                pooling to a shorter sequence (default: none).

    mixer.mix(x, h, mask, ...) -> (x', y, m)    both R and the call at once, when they share
                                                work (the Fourier filter: computed, and
                                                differentiated, once); the block then uses it
                                                instead of calling the two separately.

Both keep the `(x, mask) -> (x, mask)` shape; a layer that does not shorten returns its inputs.
Whatever length and mask come out are threaded into the next layer, the final LN, the pooling
(CLS at position 0, or the masked mean over the short mask) and the head. A mixer that returns a
shorter y without `residual_stream` is a bug and fails on the residual add.

Option errors: a mixer raises `UserError` from its constructor; `lra_bench.model.check(rc)`
builds the model abstractly before any data is loaded or written, so they surface first.

Adding a mixer: write `lra_bench/mixers/<kind>.py` and `models/<name>.toml`. Nothing else changes.
Users add theirs without forking: an entry point in the group `lra_bench.mixers`, or
`kind = "package.module:Class"` (see `lra_bench.plugins` and docs/plugins.md).

Mixed precision (`--dtype bfloat16`): `spec.dtype` is the compute dtype; parameters stay float32.
"float32" below means the island dtype `_precision.island(dtype)` = promote_types(dtype, float32):
float32 for bf16/float32 inputs, float64 for float64 ones (the equation tests run in float64), so
no kernel hard-codes float32. Softmax attention is `_attention.attention` for every mixer that
attends; q/k/v/out projections are `_projections.HeadProjections`.
Every mixer must
  - run its projections and other matrix work in `spec.dtype` (pass `dtype=spec.dtype` to
    `nnx.Linear` and friends; cast its own float32 parameters and tables to it);
  - keep float32 islands where bf16's 8 mantissa bits break the maths: softmax logits and
    statistics (accumulate logits with `preferred_element_type=jnp.float32`, normalise in
    float32), pseudo-inverses and their iterations, DCTs and FFTs (no bf16 FFT exists anyway),
    exp / feature kernels, normalisers and long sums over the sequence; cast the result back to
    the input's dtype before the next matrix product;
  - return `y` in the dtype of `x`.
`tests/test_scaling.py` checks every registered model against the parts of this rule it can see
in the traced step (bf16 matmuls, float32 exp/log, finite bf16 training).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any

from flax import nnx

from lra_bench import plugins
from lra_bench.errors import UserError


@dataclass(frozen=True)
class MixerSpec:
    """What every mixer is told about the model and the sequences it will see."""

    dim: int
    num_heads: int
    qkv_dim: int
    attention_dropout: float
    max_length: int  # the encoder input length, a CLS token included; no layer sees more
    has_cls: bool  # position 0 is a CLS token
    grid: tuple[int, int] | None = None  # (rows, cols) when the tokens are an image's pixels
    dtype: Any = None
    layer: int = 0  # this mixer's encoder layer, 0-based: per-layer schedules key on it
    num_layers: int = 1
    init: str = "lecun"  # model.init: "lra" = xavier_uniform projections without bias, as LRA's
    #                      attention (softmax-family mixers; the others keep their references')
    mask_pad_queries: bool = False  # model.mask_pad_queries: pads masked as queries too (LRA)


def kinds() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def build(kind: str, spec: MixerSpec, options: dict[str, Any], rngs: nnx.Rngs) -> nnx.Module:
    if kind not in kinds():  # a user's mixer: an entry point or "module:Class"
        return plugins.build(kind, spec, options, rngs)
    module = importlib.import_module(f"{__name__}.{kind}")
    try:
        return module.Mixer(spec, rngs=rngs, **options)
    except TypeError as e:
        raise UserError(f"mixer '{kind}': bad options {sorted(options)} ({e})") from None
