"""Longformer attention: a sliding window plus global tokens (Beltagy et al. 2020), as LRA runs it.

Reference: google-research/long-range-arena `lra_benchmarks/models/longformer/longformer_attention.py`
(LongformerAttention, ad0ff01). Query i attends keys j with

    -(left - 1) <= j - i <= right,   right = window // 2,  left = window - right   (self included)

and a global token attends, and is attended by, every token; global queries use their own q/k/v
projections (`query_global`, ...), everything else the sliding-window ones. LRA's encoders pass
no global mask, so LRA's Longformer has NO global token (global_tokens = "none", the default);
"cls" makes the CLS token global, as the paper does for classification. The padding mask is query
& key; a pad query averages every value.

LRA builds the dense N x N mask; here the band runs over chunks of queries, each against the
(chunk + window - 1) keys it can see, so the cost is O(N * window); where a chunk would see the
whole sequence anyway (a window as long as the input), one N x N band is computed instead.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lra_bench.errors import UserError
from lra_bench.mixers import MixerSpec
from lra_bench.mixers._attention import attention
from lra_bench.mixers._blocks import mean_values
from lra_bench.mixers._projections import HeadProjections, dense

GLOBAL_TOKENS = ("none", "cls")


def window_sides(window: int) -> tuple[int, int]:
    """(left, right): keys i - left + 1 ... i + right (LRA: an even window gives the left one
    more, counting the query itself)."""
    right = window // 2
    return window - right, right


def sliding_window_attention(q, k, v, mask, *, window: int, chunk: int | None = None,
                             global_first: bool = False, dropout_rate: float = 0.0,
                             dropout_rng=None):
    """Banded softmax attention; q, k, v: (batch, n, heads, head_dim), mask: (batch, n) bool.

    global_first: key 0 is global, so every query also attends it (once, even outside its band).
    Rows of pad queries get the mean of v over every key (LRA's query & key mask).
    """
    b, n, h, d = q.shape
    left, right = window_sides(window)
    left, right = min(left, n), min(right, n - 1)  # the same band: no key lies further away
    chunk = max(1, min(n, chunk or max(1, window // 2)))
    nc = -(-n // chunk)
    span = chunk + left - 1 + right
    if span >= n:  # a chunk would see every key: one (n x n) band is less work than chunks
        return _dense_band(q, k, v, mask, left, right, global_first, dropout_rate, dropout_rng)
    qp = jnp.pad(q, [(0, 0), (0, nc * chunk - n), (0, 0), (0, 0)])
    pad = [(0, 0), (left - 1, nc * chunk - n + right)]
    kp, vp = (jnp.pad(t, pad + [(0, 0), (0, 0)]) for t in (k, v))
    mp = jnp.pad(mask, pad)
    # chunk c sees padded keys c * chunk ... c * chunk + span - 1, i.e. tokens from
    # c * chunk - (left - 1); query r of the chunk sees slots u with 0 <= u - r <= window - 1
    idx = np.arange(nc)[:, None] * chunk + np.arange(span)[None, :]
    kw, vw = (t[:, idx].reshape(b * nc, span, h, d) for t in (kp, vp))
    mw = mp[:, idx].reshape(b * nc, span)
    r, u = np.arange(chunk)[:, None], np.arange(span)[None, :]
    band = np.broadcast_to((u - r >= 0) & (u - r <= left - 1 + right), (nc, chunk, span))
    if global_first:
        # key 0 for the queries whose band does not reach it (those within it see it already)
        pos = np.arange(nc)[:, None, None] * chunk + r[None]
        band = np.concatenate([band, np.broadcast_to(pos >= left, (nc, chunk, 1))], axis=-1)
        kw, vw = (jnp.concatenate([t, jnp.repeat(s[:, :1], nc, axis=0)], axis=1)
                  for t, s in ((kw, k), (vw, v)))
        mw = jnp.concatenate([mw, jnp.repeat(mask[:, :1], nc, axis=0)], axis=1)
    pair = jnp.asarray(np.tile(band, (b, 1, 1))[:, None])  # (b * nc, 1, chunk, keys)
    y = attention(qp.reshape(b * nc, chunk, h, d), kw, vw, mw, pair_mask=pair,
                  dropout_rate=dropout_rate, dropout_rng=dropout_rng)
    y = y.reshape(b, nc * chunk, h, d)[:, :n]
    return jnp.where(mask[:, :, None, None], y, mean_values(v))


def _dense_band(q, k, v, mask, left, right, global_first, dropout_rate, dropout_rng):
    """The band as one masked attention over the whole sequence; without a pair mask when the
    band holds every key (a window as long as the sequence: the quick presets' 64 tokens under
    LRA's 512), so the softmax takes its fastest form."""
    n = q.shape[1]
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    band = (j - i >= -(left - 1)) & (j - i <= right) | ((j == 0) & global_first)
    pair = None if band.all() else jnp.asarray(band)[None, None]
    y = attention(q, k, v, mask, pair_mask=pair, dropout_rate=dropout_rate,
                  dropout_rng=dropout_rng)
    return jnp.where(mask[:, :, None, None], y, mean_values(v))


class Mixer(HeadProjections):
    def __init__(self, spec: MixerSpec, *, rngs: nnx.Rngs, window: int = 512,
                 global_tokens: str = "none", chunk: int = 0):
        if global_tokens not in GLOBAL_TOKENS:
            raise UserError(f"longformer: global_tokens must be one of {GLOBAL_TOKENS}")
        if global_tokens == "cls" and not spec.has_cls:
            raise UserError("longformer: global_tokens = 'cls' needs a CLS token (model.pooling "
                            "= 'cls')")
        if window < 1:
            raise UserError(f"longformer: window must be positive, not {window}")
        self.spec, self.window, self.chunk = spec, int(window), int(chunk) or None
        self.global_cls = global_tokens == "cls"
        lra = spec.init == "lra"
        self.init_projections(spec, rngs, lra_init=lra)
        if self.global_cls:  # LRA's query_global, key_global, value_global
            kw = dict(dtype=spec.dtype, rngs=rngs)
            if lra:
                kw.update(kernel_init=nnx.initializers.xavier_uniform(), use_bias=False)
            self.query_global, self.key_global, self.value_global = (
                nnx.Linear(spec.dim, spec.qkv_dim, **kw) for _ in range(3))

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        q, k, v = self.qkv(x)
        rate = 0.0 if deterministic else self.spec.attention_dropout
        rng = rngs.dropout() if (rate > 0.0 and rngs is not None) else None
        y = sliding_window_attention(q, k, v, mask, window=self.window, chunk=self.chunk,
                                     global_first=self.global_cls, dropout_rate=rate,
                                     dropout_rng=rng)
        if self.global_cls:  # the CLS query attends every key through the global projections
            split = lambda t: t.reshape(*t.shape[:2], self.heads, self.head_dim)  # noqa: E731
            qg = split(dense(self.query_global, x[:, :1]))
            kg, vg = (split(dense(layer, x)) for layer in (self.key_global, self.value_global))
            yg = attention(qg, kg, vg, mask, dropout_rate=rate, dropout_rng=rng)
            y = y.at[:, :1].set(yg)
        return self.merge(y), mask
