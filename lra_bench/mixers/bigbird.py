"""BigBird block-sparse attention: window + global + random blocks (Zaheer et al. 2020), as LRA
runs it.

Reference: google-research/long-range-arena `lra_benchmarks/models/bigbird/bigbird_attention.py`
(BigBirdAttention, sparse_dot_product_attention, get_block_rand_mask; ad0ff01). With nb blocks of
`block_size` tokens:

  - blocks 0 and nb - 1 are global: their queries attend every key (and every query attends them);
  - block j in 1 .. nb - 2 attends blocks j - 1, j, j + 1 (blocks 1 and nb - 2 see their neighbour
    pair only, the other one being global) and `num_rand_blocks` random blocks, drawn per head
    once, when the graph is built, with numpy's legacy generator seeded by the layer index (LRA's
    connectivity_seed = lyr), so the draws here are LRA's own; random blocks are drawn only among
    the first min(Np, 1024) tokens (LRA's last_idx);
  - the input is padded by `block_size - N % block_size` zero tokens counted as real (LRA pads
    its bool mask with -1e9, which casts to True); pad queries output 0 before the out projection;
  - the sparse path has no attention dropout (LRA passes none to it).

Each row of blocks gathers its key blocks and runs the one softmax attention over them. Short
sequences, where LRA's draw has too few candidate blocks (it fails there), take full attention:
at 4 blocks or fewer the pattern already covers every pair of blocks.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lra_bench.errors import UserError
from lra_bench.mixers import MixerSpec
from lra_bench.mixers._attention import attention
from lra_bench.mixers._projections import HeadProjections
from lra_bench.mixers.local import lra_padding, pad_tokens

MAX_RANDOM_SPAN = 1024  # LRA's last_idx = min(seq_length, 1024)


def _random_row(rng, i: int, nb: int, last: int, r: int):
    """LRA's candidate blocks for block row i (1 .. nb - 2), drawn as it draws them."""
    a = np.arange(1, nb - 1)
    start, end = i - 2, i
    if i == 1:
        pool = a[2:last]
    elif i == 2:
        pool = a[3:last]
    elif i == nb - 3:
        pool = a[:last - 4]
    elif i == nb - 2:
        pool = a[:last - 3]
    elif start > last:
        pool = a[:last]
    elif end + 1 == last:
        pool = a[:start]
    else:
        pool = np.concatenate((a[:start], a[end + 1:last]))
    return rng.permutation(pool)[:r]


@functools.lru_cache(maxsize=64)
def random_blocks(n_padded: int, block_size: int, r: int, heads: int, seed: int):
    """(heads, nb - 2, r) int: each head's random key blocks for block rows 1 .. nb - 2, the
    draws of LRA's get_block_rand_mask (numpy's legacy generator seeded with `seed`, heads in
    order). None where a row has fewer than r candidates (LRA's draw fails there)."""
    nb = n_padded // block_size
    span = min(n_padded, MAX_RANDOM_SPAN)
    last = span // block_size - 1 if span > 2 * block_size else nb - 1
    rng = np.random.RandomState(seed)
    out = np.zeros((heads, nb - 2, r), np.int64)
    for h in range(heads):
        for i in range(1, nb - 1):
            row = _random_row(rng, i, nb, last, r)
            if len(row) < r:
                return None
            out[h, i - 1] = row
    out.flags.writeable = False
    return out


def key_block_table(rand: np.ndarray, nb: int):
    """(heads, nb - 2, 5 + r) key blocks of block rows 1 .. nb - 2 and (nb - 2, 5 + r) slot
    validity: [0, j - 1, j, j + 1, random..., nb - 1]; rows 1 and nb - 2 repeat a global block
    as their neighbour, so that slot is switched off (LRA gives them 4 + r blocks)."""
    heads, rows, r = rand.shape
    j = np.arange(1, nb - 1)
    fixed = np.stack([np.zeros_like(j), j - 1, j, j + 1], axis=1)
    table = np.concatenate([np.broadcast_to(fixed, (heads, rows, 4)), rand,
                            np.full((heads, rows, 1), nb - 1)], axis=2)
    valid = np.ones((rows, 5 + r), bool)
    valid[0, 1] = False  # row 1: j - 1 = 0 is the global block, already slot 0
    valid[-1, 3] = False  # row nb - 2: j + 1 = nb - 1 is the last slot
    return table, valid


def bigbird_attention(q, k, v, mask, *, block_size: int, rand):
    """q, k, v: (batch, Np, heads, head_dim), Np a multiple of block_size; mask: (batch, Np);
    rand: `random_blocks(...)` or None (full attention). Pad queries output 0."""
    b, n, h, d = q.shape
    nb = n // block_size
    if rand is None:
        y = attention(q, k, v, mask)
        return jnp.where(mask[:, :, None, None], y, 0.0)
    table, valid = key_block_table(rand, nb)
    blocks = lambda t: t.reshape(b, nb, block_size, h, d)  # noqa: E731
    qb, kb, vb = blocks(q), blocks(k), blocks(v)
    # the global rows: blocks 0 and nb - 1 against every key
    glob = attention(jnp.concatenate([qb[:, 0], qb[:, -1]], axis=1), k, v, mask)
    # the other rows, one attention per (row, head) over its 5 + r gathered key blocks
    heads = np.arange(h)[:, None, None]

    def gather(t):  # (b, nb, bs, h, d) -> (b * h * (nb - 2), (5 + r) * bs, 1, d)
        t = t.transpose(0, 3, 1, 2, 4)[:, heads, table]  # (b, h, nb - 2, 5 + r, bs, d)
        return t.reshape(-1, table.shape[-1] * block_size, 1, d)

    km, vm = gather(kb), gather(vb)
    mb = mask.reshape(b, nb, block_size)[:, table] & valid[..., None]  # (b, h, rows, slots, bs)
    mm = mb.reshape(-1, table.shape[-1] * block_size)
    qm = qb[:, 1:-1].transpose(0, 3, 1, 2, 4).reshape(-1, block_size, 1, d)
    mid = attention(qm, km, vm, mm).reshape(b, h, nb - 2, block_size, d).transpose(0, 2, 3, 1, 4)
    y = jnp.concatenate([glob[:, None, :block_size], mid, glob[:, None, block_size:]], axis=1)
    y = y.reshape(b, n, h, d)
    return jnp.where(mask[:, :, None, None], y, 0.0)


class Mixer(HeadProjections):
    def __init__(self, spec: MixerSpec, *, rngs: nnx.Rngs, block_size: int = 64,
                 num_rand_blocks: int = 3, seed: int = -1):
        if block_size < 1 or num_rand_blocks < 0:
            raise UserError("bigbird: block_size must be positive and num_rand_blocks >= 0")
        self.spec, self.block_size, self.num_rand_blocks = spec, int(block_size), int(num_rand_blocks)
        self.seed = spec.layer if seed < 0 else int(seed)  # LRA: connectivity_seed = layer index
        self.init_projections(spec, rngs, lra_init=spec.init == "lra")

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        n = x.shape[1]
        xp, mp = pad_tokens(x, mask, lra_padding(n, self.block_size), pad_is_real=True)
        q, k, v = self.qkv(xp)
        nb = xp.shape[1] // self.block_size
        rand = (random_blocks(xp.shape[1], self.block_size, self.num_rand_blocks, self.heads,
                              self.seed) if nb > 4 else None)
        y = bigbird_attention(q, k, v, mp, block_size=self.block_size, rand=rand)
        return self.merge(y)[:, :n], mask
