"""Multi-head softmax attention, the LRA baseline (Vaswani et al. 2017)."""

from __future__ import annotations

from flax import nnx

from lra_bench.mixers import MixerSpec
from lra_bench.mixers._attention import attention
from lra_bench.mixers._projections import HeadProjections


def softmax_attention(q, k, v, mask, *, dropout_rate: float = 0.0, dropout_rng=None,
                      mask_queries: bool = False):
    """Scaled dot-product attention with key-padding masking; q, k, v: (batch, length, heads,
    head_dim), mask: (batch, length) bool, True at real tokens. See `lra_bench.mixers._attention`
    for the implementation each backend gets.

    mask_queries: mask pad queries as well, as LRA's attention does (its padding mask is query &
    key): a pad query's logits are all masked, so it averages every value uniformly. It changes
    only pad rows, which matter only where pooling reads pads (model.pad_pooling = "include").
    """
    return attention(q, k, v, mask, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                     query_mask=mask if mask_queries else None)


class Mixer(HeadProjections):
    def __init__(self, spec: MixerSpec, *, rngs: nnx.Rngs):
        self.spec = spec
        # LRA's nn.SelfAttention (model.init = "lra"): xavier_uniform kernels, no biases.
        self.init_projections(spec, rngs, lra_init=spec.init == "lra")

    def dropout_args(self, deterministic: bool, rngs: nnx.Rngs | None) -> dict:
        rate = 0.0 if deterministic else self.spec.attention_dropout
        rng = rngs.dropout() if (rate > 0.0 and rngs is not None) else None
        return dict(dropout_rate=rate, dropout_rng=rng, mask_queries=self.spec.mask_pad_queries)

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        q, k, v = self.qkv(x)
        y = softmax_attention(q, k, v, mask, **self.dropout_args(deterministic, rngs))
        return self.merge(y), mask
