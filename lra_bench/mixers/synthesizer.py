"""Synthesizer (Tay et al. 2021): softmax attention over learnt ("synthetic") logits.

Reference: google-research/long-range-arena `lra_benchmarks/models/synthesizer/
synthesizer_attention.py` and `synthesizer.py` (ad0ff01, Mar 2021). The variant LRA ran is the
encoder's default on every task, mode "random" with the dot product kept (Random + Vanilla):

    out = softmax(Q K^T / sqrt(d) + R_h[:n, :n] + padding bias) V,

R: (heads, max_len, max_len) learnt, xavier_uniform (fan_in = fan_out = heads * max_len). The text
config sets `synthesizer_mode = "factorized_random"`, `ignore_dot_product = True` and `k = 32` at
the top level of its config, which train.py never passes to the model, and image/pathfinder set
mode "random", the default; so "random" with the dot product ran everywhere (docs/fidelity.md).
The other modes of the same file are options:
  "factorized_random": R_h = R1_h R2_h, (max_len, k) x (k, max_len);
  "dense": per query, relu(x W1) W2 -> max_len logits per head. As in the reference, the
           (batch, n, heads, max_len) product is *reshaped* (not transposed) to (batch, heads,
           n, max_len) and its first n columns kept;
  modes join with "+" ("dense+random" sums both).
dot_product = false (the reference's ignore_dot_product): the logits are the synthetic ones
only, v is the only projection, and, as there, no padding mask is applied at all.
The softmax is the shared `attention` with the synthetic logits as its additive bias.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lra_bench.errors import UserError
from lra_bench.mixers import MixerSpec
from lra_bench.mixers._attention import attention
from lra_bench.mixers._precision import island
from lra_bench.mixers._projections import HeadProjections, dense

MODES = ("random", "factorized_random", "dense")


def random_logits(r, n):
    """(heads, max_len, max_len) -> (1, heads, n, n)."""
    return r[None, :, :n, :n]


def factorized_random_logits(r1, r2, n):
    """R1 (heads, max_len, k), R2 (heads, k, max_len) -> (1, heads, n, n) = R1[:, :n] R2[:, :, :n]."""
    return jnp.einsum("hlk,hkn->hln", r1[:, :n], r2[:, :, :n])[None]


def dense_logits(proj, n):
    """proj: (batch, n, heads, max_len) = relu(x W1) W2. The reference reshapes it to (batch,
    heads, n, max_len) without a transpose, then keeps the first n columns."""
    b, _, h, m = proj.shape
    return proj.reshape(b, h, n, m)[..., :n]


def synthesizer_attention(q, k, v, mask, synthetic, *, dot_product: bool = True,
                          dropout_rate: float = 0.0, dropout_rng=None, mask_queries: bool = False):
    """q, k, v: (batch, n, heads, d); synthetic: logits broadcastable to (batch, heads, n, n).
    dot_product = False: logits = synthetic alone and no padding mask (as the reference)."""
    if dot_product:
        return attention(q, k, v, mask, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                         bias=synthetic, query_mask=mask if mask_queries else None)
    zeros = jnp.zeros(v.shape[:3] + (1,), v.dtype)  # q.k = 0: the logits are the bias alone
    every = jnp.ones(mask.shape, bool)
    return attention(zeros, zeros, v, every, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                     bias=synthetic, scale=1.0)


class Mixer(HeadProjections):
    def __init__(self, spec: MixerSpec, *, rngs: nnx.Rngs, mode: str = "random",
                 dot_product: bool = True, k: int = 32):
        parts = mode.split("+")
        if not parts or any(p not in MODES for p in parts) or len(set(parts)) != len(parts) or \
                {"random", "factorized_random"} <= set(parts):
            raise UserError(f"mixer.mode must be one of {', '.join(MODES)} or two of them joined "
                            f"by '+' (not both random forms), got '{mode}'")
        self.spec, self.parts, self.dot_product = spec, parts, bool(dot_product)
        # LRA's block: xavier_uniform kernels, no biases (its kernel_init reaches R as well).
        self.init_projections(spec, rngs, lra_init=spec.init == "lra")
        if not self.dot_product:
            del self.query, self.key  # the reference projects v only
        xavier = nnx.initializers.xavier_uniform()
        h, m = self.heads, spec.max_length
        if "random" in parts:
            self.random = nnx.Param(xavier(rngs.params(), (h, m, m)))
        if "factorized_random" in parts:
            self.random1 = nnx.Param(xavier(rngs.params(), (h, m, k)))
            self.random2 = nnx.Param(xavier(rngs.params(), (h, k, m)))
        if "dense" in parts:
            bias = spec.init != "lra"
            kw = dict(dtype=spec.dtype, rngs=rngs, use_bias=bias, kernel_init=xavier)
            self.dense_syn = nnx.Linear(spec.dim, spec.qkv_dim, **kw)
            self.dense_syn_len = nnx.Linear(self.head_dim, m, **kw)

    def synthetic(self, x):
        n, acc = x.shape[1], island(x.dtype)
        total = 0.0
        if "random" in self.parts:
            total = total + random_logits(self.random[...], n).astype(acc)
        if "factorized_random" in self.parts:
            total = total + factorized_random_logits(self.random1[...], self.random2[...],
                                                     n).astype(acc)
        if "dense" in self.parts:
            hidden = jax.nn.relu(dense(self.dense_syn, x))
            hidden = hidden.reshape(*x.shape[:2], self.heads, self.head_dim)
            total = total + dense_logits(dense(self.dense_syn_len, hidden), n).astype(acc)
        return total

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        rate = 0.0 if deterministic else self.spec.attention_dropout
        rng = rngs.dropout() if (rate > 0.0 and rngs is not None) else None
        split = lambda t: t.reshape(*t.shape[:2], self.heads, self.head_dim)  # noqa: E731
        v = split(dense(self.value, x))
        q = k = None
        if self.dot_product:
            q, k = split(dense(self.query, x)), split(dense(self.key, x))
        y = synthesizer_attention(q, k, v, mask, self.synthetic(x), dot_product=self.dot_product,
                                  dropout_rate=rate, dropout_rng=rng,
                                  mask_queries=self.spec.mask_pad_queries)
        return self.merge(y), mask
