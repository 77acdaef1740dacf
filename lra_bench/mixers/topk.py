"""Trainable top-k representation pooling by successive halving (Pietruszka, Borchmann, Garncarek
2022, "Sparsifying Transformer Models with Trainable Representation Pooling"; the "pyramidion").

Official code: applicaai/pyramidions, fairseq/examples/deep_pyramidion/successive_halving_topk.py
(the soft top-k), pooler_utils.py (scorer, padding), pyramidion.py (placement, schedule, chunks).

Each layer runs blockwise softmax attention (independent chunks of `chunk_size` tokens, so the
first layer is linear in n) and, after its attention AND its MLP (`after_block`), the layers the
schedule names pool the sequence. The schedule is data: `pool_factors` (reduction per layer,
relative to whatever length the task and model give, e.g. [4, 4]) or `pool_lengths` (absolute
token counts, the official 8K-token {0: 2048, 1: 512}); it resolves when the model is built:

    s = sigmoid(Linear(d, 1)(x)) + 1e-5
    repeat log2(n / k) times:  sort by s; pair the i-th best with the i-th worst;
        w = softmax([base ** s_L, base ** s_R])  (a double exponential in s)
        s <- w_L s_L + w_R s_R;   x <- w_L x_L + w_R x_R

Sort and pairing indices carry no gradient; the scorer learns through the weights w. Departures
from the official code: the rounds are vectorised over the batch (the official loops over
examples); pads are masked out of selection: they sort last, get weight exactly 0 next to a real
token, and a merged token is real iff one of its pair is, so no real output depends on pad
content; the first pooling step pads the sequence with such masked tokens up to k * 2^r, as the
official pads to max_source_positions. A CLS token stays outside the pooler, at position 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lra_bench.errors import UserError
from lra_bench.mixers import MixerSpec
from lra_bench.mixers import softmax
from lra_bench.mixers._precision import island

SCORE_EPS = 1e-5  # official: sigmoid(logits) + 0.00001 keeps every score positive


def blockwise_attention(q, k, v, mask, chunk_size: int, *, mask_queries: bool = False, **kwargs):
    """Softmax attention within consecutive chunks of `chunk_size` positions (block-diagonal),
    as the official encoder's unfolded chunks. q, k, v: (B, L, H, Dh); mask (B, L).
    mask_queries: as `softmax.softmax_attention` (a pad query averages its chunk's values)."""
    batch, length = q.shape[:2]
    if length <= chunk_size:
        return softmax.softmax_attention(q, k, v, mask, mask_queries=mask_queries, **kwargs)
    chunks = -(-length // chunk_size)
    pad = chunks * chunk_size - length

    def to_chunks(t):
        t = jnp.pad(t, [(0, 0), (0, pad)] + [(0, 0)] * (t.ndim - 2))
        return t.reshape(batch * chunks, chunk_size, *t.shape[2:])

    y = softmax.softmax_attention(to_chunks(q), to_chunks(k), to_chunks(v), to_chunks(mask),
                                  mask_queries=mask_queries, **kwargs)
    return y.reshape(batch, chunks * chunk_size, *y.shape[2:])[:, :length]


@jax.custom_vjp
def permute(x, perm):
    """x[b, perm[b]] along axis 1, for a permutation `perm` (B, n) of each row."""
    return jnp.take_along_axis(x, perm.reshape(perm.shape + (1,) * (x.ndim - 2)), axis=1)


def _permute_fwd(x, perm):
    return permute(x, perm), perm


def _permute_bwd(perm, g):
    # A permutation's transpose is its inverse: a gather, not the scatter-add of a generic gather.
    rows = jnp.arange(perm.shape[0])[:, None]
    inverse = jnp.zeros_like(perm).at[rows, perm].set(jnp.arange(perm.shape[1]))
    return permute(g, inverse), None


permute.defvjp(_permute_fwd, _permute_bwd)


def halving_round(embs, scores, mask, *, base: float = 20.0, flip_right: bool = True,
                  sort_back: bool = False):
    """One round of successive halving: (B, n, D), (B, n), (B, n) -> length n / 2."""
    half = scores.shape[1] // 2
    rank_key = jnp.where(mask, jax.lax.stop_gradient(scores), -jnp.inf)
    order = jnp.argsort(-rank_key, axis=1, stable=True)  # best first, pads last
    left, right = order[:, :half], order[:, half:]
    if flip_right:
        right = right[:, ::-1]  # best with worst, second best with second worst, ...
    if sort_back:  # restore the original order of the (better) left members
        by_position = jnp.argsort(left, axis=1)
        left = jnp.take_along_axis(left, by_position, axis=1)
        right = jnp.take_along_axis(right, by_position, axis=1)

    # One gather per array (left members, then their partners) keeps the graph small.
    pairs = jnp.concatenate([left, right], axis=1)
    (s_l, s_r), (m_l, m_r) = (jnp.split(permute(a, pairs), 2, axis=1) for a in (scores, mask))
    # A pad's logit is the dtype minimum: weight exactly 0 next to a real token, 1/2 next to a pad.
    lowest = jnp.finfo(scores.dtype).min
    logits = jnp.stack([jnp.where(m_l, base ** s_l, lowest), jnp.where(m_r, base ** s_r, lowest)], -1)
    w = jax.nn.softmax(logits, axis=-1)
    w_l, w_r = w[..., 0], w[..., 1]
    new_scores = w_l * s_l + w_r * s_r
    e_l, e_r = jnp.split(permute(embs, pairs), 2, axis=1)
    new_embs = w_l[..., None].astype(embs.dtype) * e_l + w_r[..., None].astype(embs.dtype) * e_r
    return new_embs, new_scores, m_l | m_r


def successive_halving_topk(embs, scores, mask, rounds: int, **kwargs):
    """Soft top-k from n to n / 2**rounds tokens: (B, n, D), (B, n) scores > 0, (B, n) bool.

    Returns the pooled embeddings, their scores and mask. Pads (mask False) are zeroed first; a
    pooled token is real iff it merged at least one real token.
    """
    embs = jnp.where(mask[..., None], embs, 0)
    scores = jnp.where(mask, scores, 0.0)
    for _ in range(rounds):
        embs, scores, mask = halving_round(embs, scores, mask, **kwargs)
    return embs, scores, mask


def halving_rounds(length: int, target: int) -> int:
    """Rounds to go from `length` (padded up to target * 2**r) down to `target` tokens."""
    rounds = 0
    while target << rounds < length:
        rounds += 1
    return rounds


def pooling_plan(tokens: int, pool_lengths, num_layers: int) -> list[int | None]:
    """Pooled length after each layer (None = no pooling there), or a UserError naming the fix.

    pool_lengths[i] is the length after layer i (0 = do not pool after layer i; layers past the
    end of the list do not pool, entries past the last layer are dropped). The first pooling may
    start from any input length (it pads up to k * 2^r); every later one must divide the current
    length by a power of two.
    """
    where = f"mixer.pool_lengths = {list(pool_lengths)}"
    plan, current, first = [], tokens, True
    for layer, k in enumerate((list(pool_lengths) + [0] * num_layers)[:num_layers]):
        if not isinstance(k, int) or k < 0:
            raise UserError(f"{where}: entry {layer} must be an int >= 0 (0 = no pooling)")
        if k == 0:
            plan.append(None)
            continue
        if k > current:
            raise UserError(f"{where}: {k} after layer {layer} is longer than its {current}-token "
                            "input; pool to a shorter length, or use mixer.pool_factors")
        ratio = current // k
        if not first and (current % k or ratio & (ratio - 1)):
            raise UserError(f"{where}: {current} -> {k} after layer {layer} is not a power-of-two "
                            "reduction; successive halving needs current / k = 2^r")
        plan.append(k)
        current, first = k, False
    return plan


def factor_plan(tokens: int, pool_factors, num_layers: int) -> list[int | None]:
    """Pooled length after each layer from reduction factors relative to the input.

    pool_factors[i] = f divides the length after layer i by f (1 = no pooling there): log2(f)
    halving rounds from the current length padded up to k * f with masked tokens, k = ceil(n / f),
    so f must be a power of two. Entries past the last layer are dropped; the length never goes
    below one token. The official 8K-token schedule {0: 2048, 1: 512} is pool_factors = [4, 4].
    """
    where = f"mixer.pool_factors = {list(pool_factors)}"
    plan, current = [], tokens
    for layer, f in enumerate(list(pool_factors)[:num_layers]):
        if not isinstance(f, int) or f < 1 or f & (f - 1):
            raise UserError(f"{where}: entry {layer} must be a power of two (1 = no pooling, "
                            "2, 4, 8, ...): successive halving divides the length by 2^r")
        if f == 1:
            plan.append(None)
            continue
        current = -(-current // f)
        plan.append(current)
    return plan + [None] * (num_layers - len(plan))


class Mixer(softmax.Mixer):
    """Blockwise softmax attention; layers with a pooled length pool after their MLP."""

    def __init__(self, spec: MixerSpec, *, rngs: nnx.Rngs, pool_factors=(4, 4), pool_lengths=(),
                 blockwise: bool = True, chunk_size: int = 512, base: float = 20.0,
                 flip_right: bool = True, sort_back: bool = False):
        if chunk_size < 1:
            raise UserError(f"mixer.chunk_size must be >= 1, got {chunk_size}")
        if base <= 1.0:
            raise UserError(f"mixer.base must be > 1, got {base}")
        tokens = spec.max_length - int(spec.has_cls)  # the CLS token is never pooled
        # Absolute lengths (the official 8K-token form) win over factors when given.
        plan = (pooling_plan(tokens, pool_lengths, spec.num_layers) if len(pool_lengths)
                else factor_plan(tokens, pool_factors, spec.num_layers))
        self.target = plan[spec.layer]
        super().__init__(spec, rngs=rngs)
        self.chunk_size = chunk_size if blockwise else None
        self.base, self.flip_right, self.sort_back = float(base), bool(flip_right), bool(sort_back)
        self.scorer = nnx.Linear(spec.dim, 1, dtype=spec.dtype, rngs=rngs) if self.target else None

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        q, k, v = self.qkv(x)
        masking = self.dropout_args(deterministic, rngs)
        if self.chunk_size is None:
            y = softmax.softmax_attention(q, k, v, mask, **masking)
        else:
            y = blockwise_attention(q, k, v, mask, self.chunk_size, **masking)
        return self.merge(y), mask

    def after_block(self, x, mask):
        if self.target is None:
            return x, mask
        if self.spec.has_cls:
            cls, cls_mask, x, mask = x[:, :1], mask[:, :1], x[:, 1:], mask[:, 1:]
        scores = jax.nn.sigmoid(self.scorer(x)[..., 0].astype(island(x.dtype))) + SCORE_EPS
        rounds = halving_rounds(x.shape[1], self.target)
        pad = (self.target << rounds) - x.shape[1]
        x = jnp.pad(x, [(0, 0), (0, pad), (0, 0)])
        scores, mask = jnp.pad(scores, [(0, 0), (0, pad)]), jnp.pad(mask, [(0, 0), (0, pad)])
        x, _, mask = successive_halving_topk(x, scores, mask, rounds, base=self.base,
                                             flip_right=self.flip_right, sort_back=self.sort_back)
        if self.spec.has_cls:
            x, mask = jnp.concatenate([cls, x], axis=1), jnp.concatenate([cls_mask, mask], axis=1)
        return x, mask
