"""One softmax attention for every mixer that attends, with the best implementation per backend.

GPU, bf16/fp16, no attention dropout: cuDNN's fused (flash) kernel through
`jax.nn.dot_product_attention(implementation="cudnn")`; it never writes the N x N weights.
cuDNN takes key padding only as per-row lengths (real keys first: its bias must be a full
(.., T, S) array, the N x N write the kernel exists to avoid), so each row's real keys are
gathered to the front first: softmax attention does not depend on the order of the keys, so any
key mask works (black pixels as padding in the image tasks, top-k's pooled masks), for an
O(N d) gather.
On CPU: the same maths over blocks of queries with a flash-style backward pass
(`lra_bench.mixers._blocks`), attention dropout included; no N x N float array is ever stored
(the smallest attentions, under 256 KiB of logits, take the explicit form: it is faster there).
On CPU this matters: `jax.nn.dot_product_attention`'s XLA path works on a 5-D (1, B, H, N, N)
layout and writes about eight N x N arrays per step (five of them transposed copies).
Sequence lengths are padded to a multiple of 64 and head sizes to a multiple of 8 for the
kernel (zero features change no logit): in training JAX's cuDNN wrapper refuses odd lengths, and a
CLS token makes 4097; Pathfinder's LRA heads have 4 features.
Otherwise (GPU in float32/float64, with attention dropout, heads over 128 features, or a call
cuDNN rejected), where the N x N logits would pass 16 MiB: blocks of keys with an online softmax
(`lra_bench.mixers._key_blocks`), memory linear in the length, attention dropout's mask hashed per
key block from its position in the forward pass and again in the backward pass, never stored.
Every form draws the same dropout mask from the same key (`_dropout_mask`).
Below that the lean explicit form: two einsums, a `where` for the key mask and `jax.nn.softmax`.

`tests/test_attention_lowering.py` lowers whole train steps for CUDA on a CPU host and checks that
every softmax attention there is the cuDNN call and that no N x N array is left, and that a step
with attention dropout at 4K holds no N x N array either (key blocks).

Precision follows the mixed-precision rule of `lra_bench.mixers`: logits are accumulated, masked
and normalised in `island(dtype)` (float32 for bf16/fp16/float32, float64 for float64); the
weights go back to the compute dtype for the product with v.

`tests/test_attention_fused.py` checks the fused path against the explicit form (on CPU through
JAX's XLA implementation of the same call, on a GPU through cuDNN); `LRA_ATTENTION=explicit`
forces the explicit form everywhere (A/B checks of the fused kernel and the CPU blocks).
"""

from __future__ import annotations

import contextlib
import logging
import os

import jax
import jax.numpy as jnp

from lra_bench.mixers import _dropout_mask, _key_blocks
from lra_bench.mixers._blocks import SMALL_BYTES, mean_values, pays, query_blocks
from lra_bench.mixers._precision import island

FUSED_DTYPES = (jnp.bfloat16, jnp.float16)
FUSED_IMPLEMENTATION = "cudnn"  # tests run the same call with JAX's "xla" implementation on CPU
FUSED_TILE = 64  # sequence lengths given to the fused kernel are padded to a multiple of this
FUSED_HEAD_MULTIPLE = 8  # and head sizes to a multiple of this
FUSED_MAX_HEAD = 128
_warned: set[str] = set()


_recorders: list[list] = []


@contextlib.contextmanager
def recording():
    """Collects the form every softmax attention traced inside the block takes, as (form, why):
    what `lra preflight` reports, so a GPU user sees whether the baseline is the fused kernel."""
    forms: list[tuple[str, str]] = []
    _recorders.append(forms)
    try:
        yield forms
    finally:
        _recorders.remove(forms)


def _note(form: str, why: str = "") -> None:
    for forms in _recorders:
        forms.append((form, why))


def _why_not_fused(q, dropout: bool) -> str:
    """Why this attention cannot take cuDNN's fused kernel; empty when it can."""
    if _explicit_only():
        return "LRA_ATTENTION=explicit"
    if backend() != "gpu":
        return "not on a GPU"
    if dropout:
        return "attention dropout: cuDNN's kernel has none here; model.attention_dropout=0 fuses it"
    if q.dtype not in FUSED_DTYPES:
        return f"{q.dtype}: the fused kernel takes bfloat16/float16 (--dtype bfloat16)"
    if q.shape[-1] > FUSED_MAX_HEAD:
        return f"heads of {q.shape[-1]} features: the fused kernel takes at most {FUSED_MAX_HEAD}"
    return ""


def _explicit_only() -> bool:
    # LRA_ATTENTION=explicit: A/B checks, or a cuDNN that fails only at compile time, which the
    # fallback in _attention cannot catch.
    return os.environ.get("LRA_ATTENTION", "auto") == "explicit"


def backend() -> str:
    """The platform the attention is traced for (a test lowers for CUDA on a CPU host)."""
    return jax.default_backend()


def _fused_applies(q, dropout: bool) -> bool:
    return not _why_not_fused(q, dropout)


def attention(q, k, v, mask, *, dropout_rate: float = 0.0, dropout_rng=None, scale=None,
              query_mask=None, bias=None, pair_mask=None, keep=None):
    """Scaled dot-product attention with key-padding masking.

    q: (batch, queries, heads, head_dim); k, v: (batch, keys, heads, head_dim); mask: (batch,
    keys) bool, True at real keys. Returns (batch, queries, heads, head_dim) in v's dtype. A row
    with no real key gets uniform weights (its output is finite and ignored downstream).
    query_mask: (batch, queries) bool or None. Where it is False the query's logits are all
    masked, as in LRA's query & key padding mask: its weights are uniform over every key, so its
    output is the plain mean of v (computed directly, the same on every backend).
    bias: None or an additive logit bias broadcastable to (batch, heads, queries, keys), added
    in `island` precision before the masks (Synthesizer's learnt random logits).
    pair_mask: a fixed sparsity pattern, bool broadcastable to (batch, heads, queries, keys)
    (e.g. (1, 1, queries, keys)), True where a query may attend a key; it is and-ed with the key
    mask. The patterned mixers (Sparse Transformer, Longformer's band) use it on their own
    blocks. A bias or a pattern is an N x N array already, and neither cuDNN's lengths nor the
    CPU blocks carry one, so both take the explicit form.
    keep: attention dropout's keep mask, bool broadcastable to (batch, heads, queries, keys),
    used instead of one drawn from dropout_rng (explicit form): for a mixer that lays its
    problems out anew and keeps the bits its earlier layout drew (Sinkhorn's summed keys).
    """
    if bias is not None or pair_mask is not None or keep is not None:
        y = _patterned(q, k, v, mask, bias, pair_mask, dropout_rate, dropout_rng, scale, keep)
    else:
        y = _attention(q, k, v, mask, dropout_rate, dropout_rng, scale)
    if query_mask is None:
        return y
    return jnp.where(query_mask[:, :, None, None], y, mean_values(v))


def _patterned(q, k, v, mask, bias, pair_mask, dropout_rate, dropout_rng, scale, keep):
    dropout = dropout_rate > 0.0 and dropout_rng is not None
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    key_mask = mask[:, None, None, :]
    if pair_mask is not None:
        key_mask = jnp.logical_and(key_mask, pair_mask)
    _note("explicit", "a fixed sparsity pattern (pair_mask)" if pair_mask is not None
          else "an additive logit bias" if bias is not None else "a given dropout keep mask")
    return _explicit(q, k, v, key_mask, scale, dropout_rate, dropout_rng if dropout else None,
                     bias=bias, keep=keep)


def _attention(q, k, v, mask, dropout_rate, dropout_rng, scale):
    dropout = dropout_rate > 0.0 and dropout_rng is not None
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    key_mask = mask[:, None, None, :]  # (B, 1, 1, S): broadcasts over heads and queries
    if _fused_applies(q, dropout):
        try:
            y = _fused(q, k, v, mask, scale)
            _note("fused cuDNN")
            return y
        except (ValueError, NotImplementedError, RuntimeError, TypeError) as error:
            # this cuDNN/JAX build rejects the shape or dtype: the explicit form below, said once
            # per reason (a silent fallback would pass an N x N baseline off as the fused one)
            reason = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            why = f"cuDNN rejected it ({reason})"
            if reason not in _warned:
                _warned.add(reason)
                logging.getLogger("lra_bench").warning(
                    "fused attention rejected for q %s %s (%s); using the explicit form",
                    q.shape, q.dtype, reason)
    else:
        why = _why_not_fused(q, dropout)
    if backend() == "cpu" and not _explicit_only():
        if pays(q, k):
            words = _dropout_mask.words(dropout_rng, (q.shape[0], q.shape[2], q.shape[1]),
                                        k.shape[1]) if dropout else None
            _note("query blocks")
            return query_blocks(q, k, v, key_mask, scale, words, dropout_rate)
        why = f"small: under {SMALL_BYTES // 1024} KiB of logits the explicit form is faster"
    elif not _explicit_only() and _key_blocks.pays(q, k):
        # not fused on a GPU, and the N x N form would hold real memory: blocks of keys with an
        # online softmax, memory linear in the length, the dropout mask drawn again (not kept)
        _note("key blocks", why)
        return _key_blocks.key_blocks(q, k, v, mask, scale, dropout_rng if dropout else None,
                                      dropout_rate)
    _note("explicit", why)
    return _explicit(q, k, v, key_mask, scale, dropout_rate, dropout_rng if dropout else None)


def _fused(q, k, v, mask, scale, implementation=None):
    """The fused kernel with the key mask as lengths: each row's real keys moved to the front
    (a stable sort of the mask), then `key_value_seq_lengths`.

    Queries and keys are padded to a multiple of FUSED_TILE: JAX's cuDNN wrapper refuses odd
    lengths in training (it passes an empty bias array, so its "no odd length with a bias" rule
    always applies; jax 0.10-0.11), and a CLS token makes 4097. The extra keys lie beyond every
    row's length, the extra queries are dropped. Head sizes are padded with zero features to a
    multiple of FUSED_HEAD_MULTIPLE (q.k and the real output columns are unchanged; the scale is
    the real head size's). A row with no real key gets the uniform average of v, as in the
    explicit form (the kernel is given length 1, then overridden)."""
    order = jnp.argsort(jnp.logical_not(mask).astype(jnp.int8), axis=1, stable=True)
    k_front, v_front = (jnp.take_along_axis(t, order[:, :, None, None], axis=1) for t in (k, v))
    lengths = jnp.sum(mask, axis=1, dtype=jnp.int32)

    def pad(t):
        return jnp.pad(t, [(0, 0), (0, -t.shape[1] % FUSED_TILE), (0, 0),
                           (0, -t.shape[3] % FUSED_HEAD_MULTIPLE)])

    y = jax.nn.dot_product_attention(
        pad(q), pad(k_front), pad(v_front), scale=scale,
        key_value_seq_lengths=jnp.maximum(lengths, 1),
        implementation=implementation or FUSED_IMPLEMENTATION)[:, :q.shape[1], :, :v.shape[3]]
    return jnp.where((lengths == 0)[:, None, None, None], mean_values(v), y)


def _explicit(q, k, v, key_mask, scale, dropout_rate: float = 0.0, dropout_rng=None, bias=None,
              keep=None):
    """keep: a (batch, heads, queries, keys) keep mask to use instead of drawing one from
    dropout_rng."""
    acc = island(q.dtype)
    # Scaling q (n x d) instead of the logits (n x n) saves a pass over the largest array.
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * scale, k, preferred_element_type=acc)
    if bias is not None:
        logits = logits + bias.astype(acc)
    logits = jnp.where(key_mask, logits, jnp.finfo(acc).min)
    weights = jax.nn.softmax(logits, axis=-1)
    if dropout_rng is not None and keep is None:
        keep = _dropout_mask.full(dropout_rng, (q.shape[0], q.shape[2], q.shape[1], k.shape[1]),
                                  dropout_rate)
    if keep is not None:
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
