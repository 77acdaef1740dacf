"""The Sparse Transformer's fixed patterns computed over blocks: only the weights they allow.

`sparse_transformer.fixed_pattern` lets query i (of the N - cls pattern tokens) attend key j
when j is in i's own block of l tokens or j is a "summary" key (j mod l == 0 or j mod l >= l - c),
and (causal) j <= i; a CLS token attends, and is attended by, everything. LRA computed this as a
dense N x N masked softmax. Here each query's logits are, side by side,

    [CLS key (with a CLS token)] [its own block: l keys] [the summary keys of every *other* block]

the last gathered once, N/l (c + 1) keys (fewer when the offsets coincide), shared by all
queries; a summary key in the query's own block is masked there, as it is already in the own
block, so no key is counted twice. One softmax over the row is then the dense row's softmax
restricted to its allowed keys: O(N (l + N (c + 1) / l)) instead of O(N^2). The CLS query's row
is the one dense row (N keys). The tokens are padded to whole blocks with masked keys. Attention
dropout draws each held weight's keep bit from its (row, column) position in the N x N matrix
(`_dropout_mask`), the bits the dense form draws. tests/test_mixers_patterns.py checks outputs
and gradients against the dense form in float64, with padding, CLS, ragged lengths and dropout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lra_bench.mixers import _dropout_mask
from lra_bench.mixers._attention import attention
from lra_bench.mixers._blocks import mean_values
from lra_bench.mixers._precision import island


def summary_offsets(block_size: int, c: int) -> np.ndarray:
    """Offsets inside a block of the summary keys: 0 and l - c ... l - 1, each once."""
    return np.unique(np.r_[0, np.arange(block_size - c, block_size)])


def blocked_fixed_attention(q, k, v, mask, block_size: int, c: int, *, causal: bool = True,
                            cls: bool = False, dropout_rate: float = 0.0, dropout_rng=None):
    """What `sparse_transformer.sparse_attention(q, k, v, mask, fixed_pattern(...))` returns.
    q, k, v: (batch, n, heads, head_dim); mask: (batch, n) bool (query & key padding)."""
    b, n, h, d = q.shape
    acc = island(q.dtype)
    off, size = int(cls), block_size
    nb = -(-(n - off) // size)
    extra = nb * size - (n - off)

    def body(t):  # the pattern tokens, padded to whole blocks
        return jnp.pad(t[:, off:], [(0, 0), (0, extra)] + [(0, 0)] * (t.ndim - 2))

    qs, ks, vs, keys = body(q * d ** -0.5), body(k), body(v), body(mask)
    blocks = lambda t: t.reshape(b, nb, size, h, d)  # noqa: E731
    # summary keys of every block (body positions), and which query blocks may see them
    spos = (np.arange(nb)[:, None] * size + summary_offsets(size, c)[None, :]).reshape(-1)
    sblock = spos // size
    qblock = np.arange(nb)[:, None]
    seen = sblock[None, :] < qblock if causal else sblock[None, :] != qblock  # (nb, S)
    own_ok = np.tril(np.ones((size, size), bool)) if causal else np.ones((size, size), bool)

    parts = [jnp.einsum("bnqhd,bnkhd->bnhqk", blocks(qs), blocks(ks), preferred_element_type=acc),
             jnp.einsum("bnqhd,bkhd->bnhqk", blocks(qs), ks[:, spos], preferred_element_type=acc)]
    oks = [keys.reshape(b, nb, 1, 1, size) & own_ok,
           keys[:, spos][:, None, None, None, :] & seen[None, :, None, None, :]]
    cols = [np.arange(nb * size).reshape(nb, 1, size), np.broadcast_to(spos, (nb, 1, spos.size))]
    if cls:  # every query sees the CLS key
        parts.insert(0, jnp.einsum("bnqhd,bhd->bnhq", blocks(qs), k[:, 0],
                                   preferred_element_type=acc)[..., None])
        oks.insert(0, mask[:, :1][:, None, None, None, :])
        cols.insert(0, np.full((nb, 1, 1), -off))
    ok = jnp.concatenate([jnp.broadcast_to(o, p.shape) for o, p in zip(oks, parts)], axis=-1)
    logits = jnp.where(ok, jnp.concatenate(parts, axis=-1), jnp.finfo(acc).min)
    weights = jax.nn.softmax(logits, axis=-1)
    if dropout_rng is not None:
        row_words, col = _dropout_mask.words(dropout_rng, (b, h, n), n)
        rows = np.minimum(np.arange(nb * size) + off, n - 1).reshape(nb, size)  # pads: any row
        row = jnp.moveaxis(row_words[:, :, rows], 1, 2)  # (b, nb, h, l, 1)
        colpos = np.minimum(np.concatenate(cols, axis=-1) + off, n - 1)  # (nb, 1, keys)
        keep = _dropout_mask.keep(row, col[colpos][None, :, None], dropout_rate)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    weights = weights.astype(v.dtype)
    split = np.cumsum([p.shape[-1] for p in parts])[:-1]
    w = jnp.split(weights, split, axis=-1)
    y = (jnp.einsum("bnhqk,bnkhd->bnqhd", w[off], blocks(vs))
         + jnp.einsum("bnhqk,bkhd->bnqhd", w[off + 1], vs[:, spos]))
    if cls:
        y = y + jnp.einsum("bnhq,bhd->bnqhd", w[0][..., 0], v[:, 0])
    y = y.reshape(b, nb * size, h, d)[:, :n - off]
    if cls:  # the CLS query's row is dense: every real key
        keep = (None if dropout_rng is None else
                _dropout_mask.keep(row_words[:, :, :1], col, dropout_rate))
        first = attention(q[:, :1], k, v, mask, dropout_rate=dropout_rate, keep=keep)
        y = jnp.concatenate([first.astype(y.dtype), y], axis=1)
    return jnp.where(mask[:, :, None, None], y, mean_values(v)).astype(v.dtype)
