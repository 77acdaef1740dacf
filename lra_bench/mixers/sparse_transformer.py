"""Sparse Transformer attention with its fixed patterns (Child et al. 2019), as LRA runs it.

Reference: google-research/long-range-arena
`lra_benchmarks/models/sparse_transformer/sparse_attention.py` (SparseAttention, ad0ff01) with the
patterns `lra_benchmarks/utils/train_utils.py` passes, Fixed1Pattern(block_size=50) and
Fixed2Pattern(block_size=50, c=10), merged into one mask shared by every head:

    fixed1: floor(i / l) == floor(j / l)                    (the query's own block)
    fixed2: j mod l == 0  or  j mod l >= l - c              ("summary" keys of every block)
    both and-ed with j <= i (causal: LRA's patterns are causal even in its encoders)

With a CLS token the pattern is built for the other N - 1 tokens and CLS gets a full row and
column (LRA's use_cls_token). The padding mask is query & key; a wholly masked (pad) query
averages every value. LRA computes it as a dense N x N masked softmax (form = "dense" here); the
default form = "blocked" computes only what the pattern allows (`_sparse_blocks`), with the same
numbers.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from lra_bench.errors import UserError
from lra_bench.mixers import MixerSpec
from lra_bench.mixers._attention import attention
from lra_bench.mixers._projections import HeadProjections
from lra_bench.mixers._sparse_blocks import blocked_fixed_attention

FORMS = ("blocked", "dense")


def fixed_pattern(n: int, block_size: int, c: int, *, causal: bool = True,
                  cls: bool = False) -> np.ndarray:
    """(n, n) bool: query i may attend key j (the union of the two fixed heads)."""
    m = n - 1 if cls else n
    i, j = np.arange(m)[:, None], np.arange(m)[None, :]
    own_block = (i // block_size) == (j // block_size)
    summary = (j % block_size == 0) | (j % block_size >= block_size - c)
    pattern = own_block | summary
    if causal:
        pattern &= j <= i
    if cls:
        pattern = np.pad(pattern, [(1, 0), (1, 0)], constant_values=True)
    return pattern


def sparse_attention(q, k, v, mask, pattern, *, dropout_rate: float = 0.0, dropout_rng=None):
    """Softmax attention restricted to `pattern` ((n, n) bool), masks query & key.
    q, k, v: (batch, n, heads, head_dim); mask: (batch, n) bool."""
    return attention(q, k, v, mask, pair_mask=pattern[None, None], query_mask=mask,
                     dropout_rate=dropout_rate, dropout_rng=dropout_rng)


class Mixer(HeadProjections):
    def __init__(self, spec: MixerSpec, *, rngs: nnx.Rngs, block_size: int = 50, c: int = 10,
                 causal: bool = True, form: str = "blocked"):
        if not 0 <= c <= block_size or block_size < 1:
            raise UserError(f"sparse_transformer: need 0 <= c <= block_size, got c={c}, "
                            f"block_size={block_size}")
        if form not in FORMS:
            raise UserError(f"mixer.form must be one of {', '.join(FORMS)}, got '{form}'")
        self.spec, self.block_size, self.c, self.causal = spec, int(block_size), int(c), causal
        self.form = form
        self.init_projections(spec, rngs, lra_init=spec.init == "lra")

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        q, k, v = self.qkv(x)
        rate = 0.0 if deterministic else self.spec.attention_dropout
        rng = rngs.dropout() if (rate > 0.0 and rngs is not None) else None
        if self.form == "blocked":
            y = blocked_fixed_attention(q, k, v, mask, self.block_size, self.c, causal=self.causal,
                                        cls=self.spec.has_cls, dropout_rate=rate, dropout_rng=rng)
        else:
            pattern = fixed_pattern(x.shape[1], self.block_size, self.c, causal=self.causal,
                                    cls=self.spec.has_cls)
            y = sparse_attention(q, k, v, mask, pattern, dropout_rate=rate, dropout_rng=rng)
        return self.merge(y), mask
