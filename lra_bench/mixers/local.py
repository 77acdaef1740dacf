"""Local attention: softmax attention inside fixed groups of `block_size` tokens (LRA Table 1's
"Local Attention").

Reference: google-research/long-range-arena `lra_benchmarks/models/local/local_attention.py`
(LocalAttention, first released in ad0ff01, Apr 2021; the later commits change only imports).
What that code computes, and this mixer reproduces with layout = "lra" (the default):

  - the input is padded by `block_size - N % block_size` zero tokens (a whole extra block when N
    is already a multiple), and the padding mask by True: the added tokens count as real keys;
  - q/k/v (batch, Np, heads, d) are reshaped to (batch, block_size, Np / block_size, ...) and
    attention runs over the block_size axis, so the groups are STRIDED: token t = i * nb + j
    (nb = Np / block_size) sits at position i of group j, and each group holds every nb-th token;
  - the padding mask is reshaped the other way, (batch, nb, block_size), so group j position i
    is masked by token j * block_size + i (a contiguous block's mask on a strided group);
  - the mask is query & key (LRA's padding mask): a masked query averages its group's values;
  - the output is cut back to N tokens.

layout = "blocks" is the attention the name describes: contiguous blocks, each token masked by its
own padding, padded only up to the next multiple (docs/fidelity.md has the row).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from lra_bench.errors import UserError
from lra_bench.mixers import MixerSpec
from lra_bench.mixers._attention import attention
from lra_bench.mixers._projections import HeadProjections

LAYOUTS = ("lra", "blocks")


def lra_padding(length: int, block_size: int) -> int:
    """Tokens LRA's local, Sinkhorn and BigBird attentions append: always at least one."""
    return block_size - length % block_size


def strided_groups(t, block_size: int):
    """(batch, block_size * nb, ...) -> (batch * nb, block_size, ...): LRA's reshape to
    (batch, block_size, nb, ...) with attention over the block_size axis, i.e. group j holds the
    tokens i * nb + j."""
    b, n = t.shape[:2]
    nb = n // block_size
    t = t.reshape(b, block_size, nb, *t.shape[2:]).swapaxes(1, 2)
    return t.reshape(b * nb, block_size, *t.shape[3:])


def ungroup_strided(t, batch: int):
    """The inverse of `strided_groups`."""
    g, size = t.shape[:2]
    t = t.reshape(batch, g // batch, size, *t.shape[2:]).swapaxes(1, 2)
    return t.reshape(batch, g // batch * size, *t.shape[3:])


def contiguous_groups(t, block_size: int):
    """(batch, block_size * nb, ...) -> (batch * nb, block_size, ...), block j = tokens
    j * block_size ... (j + 1) * block_size - 1. On a (batch, Np) mask this is also LRA's view of
    the padding mask in both layouts."""
    b, n = t.shape[:2]
    return t.reshape(b * (n // block_size), block_size, *t.shape[2:])


def local_attention(q, k, v, mask, *, block_size: int, layout: str = "lra",
                    dropout_rate: float = 0.0, dropout_rng=None):
    """Softmax attention inside groups of `block_size` tokens, masks query & key.

    q, k, v: (batch, Np, heads, head_dim) with Np a multiple of block_size (the module pads);
    mask: (batch, Np) bool, True at real tokens. layout "lra": strided groups, each masked by a
    contiguous block's mask (LRA's reshapes, see the module docstring); "blocks": contiguous
    blocks. Returns (batch, Np, heads, head_dim).
    """
    b = q.shape[0]
    group = strided_groups if layout == "lra" else contiguous_groups
    qg, kg, vg = (group(t, block_size) for t in (q, k, v))
    mg = contiguous_groups(mask, block_size)
    y = attention(qg, kg, vg, mg, query_mask=mg, dropout_rate=dropout_rate,
                  dropout_rng=dropout_rng)
    if layout == "lra":
        return ungroup_strided(y, b)
    return y.reshape(q.shape)


def pad_tokens(x, mask, extra: int, pad_is_real: bool):
    """x (batch, N, dim) and mask (batch, N) padded by `extra` tokens: zeros, masked as real when
    pad_is_real (LRA pads its bool mask with -1e9, which casts to True)."""
    if extra == 0:
        return x, mask
    x = jnp.pad(x, [(0, 0), (0, extra), (0, 0)])
    mask = jnp.pad(mask, [(0, 0), (0, extra)], constant_values=pad_is_real)
    return x, mask


class Mixer(HeadProjections):
    def __init__(self, spec: MixerSpec, *, rngs: nnx.Rngs, block_size: int = 50,
                 layout: str = "lra"):
        if layout not in LAYOUTS:
            raise UserError(f"local: layout must be one of {LAYOUTS}, not {layout!r}")
        if block_size < 1:
            raise UserError(f"local: block_size must be positive, not {block_size}")
        self.spec, self.block_size, self.layout = spec, int(block_size), layout
        # LRA's blocks pass xavier_uniform kernels and bias=False (model.init = "lra").
        self.init_projections(spec, rngs, lra_init=spec.init == "lra")

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        n = x.shape[1]
        extra = (lra_padding(n, self.block_size) if self.layout == "lra"
                 else -n % self.block_size)
        xp, mp = pad_tokens(x, mask, extra, pad_is_real=self.layout == "lra")
        q, k, v = self.qkv(xp)
        rate = 0.0 if deterministic else self.spec.attention_dropout
        rng = rngs.dropout() if (rate > 0.0 and rngs is not None) else None
        y = local_attention(q, k, v, mp, block_size=self.block_size, layout=self.layout,
                            dropout_rate=rate, dropout_rng=rng)
        return self.merge(y)[:, :n], mask
