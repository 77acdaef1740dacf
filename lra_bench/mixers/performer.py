"""Performer (Choromanski et al. 2021): linear attention through a (random) feature map.

References, selectable by option:
  LRA:   google-research/long-range-arena `lra_benchmarks/models/performer/performer_attention.py`
         (a fork of google-research `performer/fast_attention/jax/fast_attention.py`) and
         `performer.py` (ad0ff01, Mar 2021). The encoder's default attention is "generalized"
         with its defaults: features = "relu", *no random projection* (features_type =
         "deterministic"), phi(x) = relu(x) + 0.001, no data normalisation. Only ListOps' config
         asks for FAVOR+ ("softmax", nb_features = 2, ortho_scaling = 0); its features are
         redrawn at every call from the seed ceil(sum(Q) * 1e7) ("query_seed"). Neither form
         looks at the padding mask: pad keys count like real ones.
  Nyströmformer: mlpen/Nystromformer `LRA/code/attention_performer.py` (5689313) on
         performer_pytorch's FastAttention (performer-256: nb_features = 256, kernel_type
         "relu", which FastAttention ignores unless generalized_attention is set, so FAVOR+
         ran). Q and K are divided by d^(1/4) before FastAttention divides them by d^(1/4)
         again (logits q.k / d, not / sqrt(d)); K and V are multiplied by the mask (a pad key
         is a zero vector, whose features are not zero: it still adds to the normaliser); the
         projection is drawn once at init and never redrawn ("fixed"); the key features'
         stabilising max is taken over the whole batch ("global").
FAVOR+ features (both): with x' = x d^(-1/4) and W (m, d) Gaussian orthogonal rows,
    phi(x) = m^(-1/2) (exp(W x' - |x'|^2 / 2 - max) + eps),
queries' max over their own features, keys' over features and positions of their (batch, head)
("per_head", LRA) or over everything ("global", performer_pytorch). Then
    out_i = phi(q_i)^T sum_s phi(k_s) v_s^T / (phi(q_i)^T sum_s phi(k_s)),
the normaliser bumped by 2 stabilizer where |R| <= stabilizer. kernel_eps is the feature's eps
(relu: 0.001; FAVOR+: LRA 1e-6, performer_pytorch 1e-4); stabilizer is LRA's numerical_stabilizer
(1e-6 for FAVOR+, 0 for relu; performer_pytorch has none: 0). The feature maps, sums and normaliser
run in `island` precision. FAVOR+'s backward pass is written out (`favor_attention`), for memory.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from lra_bench.errors import UserError
from lra_bench.mixers import MixerSpec
from lra_bench.mixers._precision import island
from lra_bench.mixers._projections import HeadProjections

FEATURES = ("relu", "favor+")
REDRAWS = ("query_seed", "fixed")
KEY_MAXES = ("per_head", "global")
MASKS = ("none", "zero")


def gaussian_orthogonal_matrix(key, rows: int, cols: int, scaling: int = 0):
    """(rows, cols): blocks of the transposed Q of QR(N(0,1)^{cols x cols}), rows scaled by the
    norms of a Gaussian (rows, cols) matrix drawn with the *same* key (scaling 0, as LRA's
    GaussianOrthogonalRandomMatrix) or by sqrt(cols) (scaling 1)."""
    blocks, rng = [], key
    for _ in range(rows // cols):
        rng, sub = jax.random.split(rng)
        blocks.append(jnp.linalg.qr(jax.random.normal(sub, (cols, cols)))[0].T)
    if rows % cols:
        rng, sub = jax.random.split(rng)
        blocks.append(jnp.linalg.qr(jax.random.normal(sub, (cols, cols)))[0].T[:rows % cols])
    matrix = jnp.vstack(blocks)
    if scaling == 0:
        multiplier = jnp.linalg.norm(jax.random.normal(key, (rows, cols)), axis=1)
    else:
        multiplier = jnp.sqrt(float(cols)) * jnp.ones(rows)
    return multiplier[:, None] * matrix


def query_seeded_projection(q, rows: int, scaling: int = 0):
    """LRA's redraw: PRNGKey(ceil(sum(q) * 1e7)) as int32, split once, the first half drawing."""
    seed = jnp.ceil(jnp.sum(jax.lax.stop_gradient(q).astype(jnp.float32)) * 1e7).astype(jnp.int32)
    key = jax.random.split(jax.random.PRNGKey(seed))[0]
    return gaussian_orthogonal_matrix(key, rows, q.shape[-1], scaling)


def favor_exponentials(x, w, *, axes):
    """exp(W x' - |x'|^2 / 2 - max) of heads-major x (batch, heads, n, d) for W (m, d), the max of
    W x' taken over `axes` (queries: (3,); keys: (2, 3) "per_head" or all four "global"), where
    W x' reaches that max (bits packed along m: `jnp.packbits`) and how many entries reach it.

    Why packed: kept as booleans for the backward pass, XLA fused the comparison into the
    gradient's loop instead and kept W x' (float32, 32x the bytes) alive until then; counted as
    booleans, they were written out as int32 first. The packed bits are counted instead."""
    acc = island(x.dtype)
    x = x.astype(acc) * x.shape[-1] ** -0.25
    dash = jnp.einsum("bhnd,md->bhnm", x, w.astype(acc))
    diag = 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
    # the max subtracted first, once (one pass over (n, m) fewer): W x' - max is 0 exactly
    # where W x' is the max
    dash = dash - jnp.max(dash, axis=axes, keepdims=True)
    at_top = jnp.packbits(dash == 0, axis=-1)
    ties = jnp.sum(jax.lax.population_count(at_top), axis=axes, keepdims=True, dtype=jnp.int32)
    return jnp.exp(dash - diag), at_top, ties


def key_max_axes(key_max: str):
    """The axes of (batch, heads, n, m) the keys' stabilising max is taken over."""
    return (2, 3) if key_max == "per_head" else (0, 1, 2, 3)


def relu_features(x, *, eps: float = 0.001):
    """LRA's generalized attention with its defaults: relu(x) + eps, no projection."""
    return jax.nn.relu(x.astype(island(x.dtype))) + eps


def linear_attention_terms(e_q, e_k, v, *, scale: float = 1.0, eps: float = 0.0,
                           stabilizer: float = 0.0):
    """For the features phi = scale (e + eps): the numerator phi_q kv (batch, heads, n, d), R
    (batch, heads, n), kv^T = sum_s v_s phi_k_s^T (batch, heads, d, m) and sum_s phi_k_s of
    `renormalized_linear_attention`.

    Why e and not phi: each product with phi is taken as scale (the product with e + eps times a
    sum), so no (n, m) array of features is written. Why kv^T: with (n, m) as the product's right
    operand XLA runs it as a plain matrix product; as the left one, contracted over n, it took a
    slower path (three times the time at 2K tokens)."""
    acc = e_q.dtype
    v = v.astype(acc)
    vk = scale * (jnp.einsum("bhsd,bhsm->bhdm", v, e_k) + eps * jnp.sum(v, axis=2)[..., None])
    k_sum = scale * (jnp.sum(e_k, axis=2) + e_k.shape[2] * eps)
    r = scale * (jnp.einsum("bhlm,bhm->bhl", e_q, k_sum) + eps * jnp.sum(k_sum, -1)[..., None])
    r = r + 2 * stabilizer * (jnp.abs(r) <= stabilizer)
    numerator = scale * (jnp.einsum("bhlm,bhdm->bhld", e_q, vk)
                         + eps * jnp.sum(vk, axis=-1)[:, :, None, :])
    return numerator, r, vk, k_sum


def renormalized_linear_attention(phi_q, phi_k, v, *, stabilizer: float = 0.0):
    """out_i = phi_q_i^T (sum_s phi_k_s v_s^T) / R_i, R_i = phi_q_i^T sum_s phi_k_s, with LRA's
    R + 2 stabilizer [|R| <= stabilizer]. Every key counts (mask the inputs beforehand).
    Heads-major: phi (batch, heads, n, m), v (batch, heads, n, d)."""
    numerator, r = linear_attention_terms(phi_q, phi_k, v, stabilizer=stabilizer)[:2]
    return (numerator / r[..., None]).astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def favor_attention(q, k, v, w, eps: float, stabilizer: float, key_axes: tuple):
    """renormalized_linear_attention of the FAVOR+ features of heads-major q, k (batch, heads, n,
    d), with its backward pass written out.

    Why: autodiff kept, per feature map, the exponentials, the features m^(-1/2) (e + eps) and
    jnp.max's float32 mask of where the max is, all (batch, heads, n, m): 1.23x performer_pytorch's
    memory (docs/kernels.md). Here the backward keeps the exponentials, a bit per entry for the
    max and small arrays, and takes every product with phi as one with e plus eps times a sum;
    performer-256's step at 1K tokens: 62.8 -> 37.3 MiB. The gradient is autodiff's, jnp.max's
    share to its maxima (split among ties) included (tests/test_mixers_lowrank.py, float64)."""
    return _favor_attention_fwd(q, k, v, w, eps, stabilizer, key_axes)[0]


def _favor_attention_fwd(q, k, v, w, eps, stabilizer, key_axes):
    e_q, top_q, ties_q = favor_exponentials(q, w, axes=(3,))
    e_k, top_k, ties_k = favor_exponentials(k, w, axes=key_axes)
    numerator, r, vk, k_sum = linear_attention_terms(e_q, e_k, v, scale=e_q.shape[-1] ** -0.5,
                                                     eps=eps, stabilizer=stabilizer)
    out = (numerator / r[..., None]).astype(v.dtype)
    return out, (q, k, v, w, e_q, e_k, top_q, top_k, ties_q, ties_k, numerator, r, vk, k_sum)


def _favor_attention_bwd(eps, stabilizer, key_axes, residuals, g):
    q, k, v, w, e_q, e_k, top_q, top_k, ties_q, ties_k, numerator, r, vk, k_sum = residuals
    g = g.astype(e_q.dtype)
    ratio = e_q.shape[-1] ** -0.5
    # out = numerator / R (the stabilizer's step has no gradient)
    g_numerator = g / r[..., None]
    g_r = -jnp.sum(g * numerator, axis=-1) / (r * r)
    # Products with phi = ratio (e + eps) taken as in linear_attention_terms.
    g_vk = ratio * (jnp.einsum("bhld,bhlm->bhdm", g_numerator, e_q)
                    + eps * jnp.sum(g_numerator, axis=2)[..., None])
    g_k_sum = ratio * (jnp.einsum("bhlm,bhl->bhm", e_q, g_r)
                       + eps * jnp.sum(g_r, axis=2)[..., None])
    g_phi_q = (jnp.einsum("bhld,bhdm->bhlm", g_numerator, vk)
               + g_r[..., None] * k_sum[:, :, None, :])
    g_phi_k = jnp.einsum("bhsd,bhdm->bhsm", v.astype(g.dtype), g_vk) + g_k_sum[:, :, None, :]
    g_v = ratio * (jnp.einsum("bhsm,bhdm->bhsd", e_k, g_vk)
                   + eps * jnp.sum(g_vk, axis=3)[:, :, None, :])
    return (_exponentials_grad(q, w, e_q, top_q, ties_q, g_phi_q, (3,)),
            _exponentials_grad(k, w, e_k, top_k, ties_k, g_phi_k, key_axes),
            g_v.astype(v.dtype), jnp.zeros_like(w))


def _exponentials_grad(x, w, e, at_top, ties, g_phi, axes):
    """x's gradient through the features m^(-1/2) (favor_exponentials(x) + eps) for their
    gradient g_phi. jnp.max's gradient goes to where the max is, shared equally among ties."""
    acc = e.dtype
    scale = x.shape[-1] ** -0.25
    g_z = g_phi * (e.shape[-1] ** -0.5 * e)
    g_top = -jnp.sum(g_z, axis=axes, keepdims=True) / ties.astype(acc)
    at_top = jnp.unpackbits(at_top, axis=-1, count=e.shape[-1]).astype(bool)
    g_dash = g_z + jnp.where(at_top, g_top, 0)
    g_x = (jnp.einsum("bhnm,md->bhnd", g_dash, w.astype(acc))
           - jnp.sum(g_z, axis=-1, keepdims=True) * (x.astype(acc) * scale))
    return (g_x * scale).astype(x.dtype)


favor_attention.defvjp(_favor_attention_fwd, _favor_attention_bwd)


def performer_attention(q, k, v, mask, w=None, *, features: str = "relu", kernel_eps: float = 0.001,
                        stabilizer: float = 0.0, key_max: str = "per_head", masking: str = "none",
                        prescale: bool = False):
    """q, k, v: (batch, n, heads, d); w: (m, d) projection for "favor+", a constant (no gradient:
    performer_pytorch's buffer, or LRA's draw, which depends on q only through its seed).
    masking "zero": K and V multiplied by the mask (Nyströmformer); "none": ignored (LRA).
    prescale: q, k divided by d^(1/4) first (Nyströmformer's wrapper).

    Why heads-major: the (n, m) features are the largest arrays here; laid out (batch, n, heads,
    m) every product over n needs them transposed, forward and backward (four copies of each), so
    q, k, v (m / d times smaller) are transposed once instead. Why stop_gradient on w: a gradient
    for a buffer nobody trains cost two more (m, n) transposes and products. Together: one
    performer-256 layer at 1K tokens (issue 30, benchmarks/kernels.py, one thread) took about half
    the CPU time; the maths is the same (tests/test_mixers_lowrank.py, float64).
    """
    if prescale:
        q, k = q * q.shape[-1] ** -0.25, k * k.shape[-1] ** -0.25
    if masking == "zero":
        keep = mask[:, :, None, None]
        k, v = jnp.where(keep, k, 0), jnp.where(keep, v, 0)
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
    if features == "relu":
        out = renormalized_linear_attention(relu_features(q, eps=kernel_eps),
                                            relu_features(k, eps=kernel_eps), v,
                                            stabilizer=stabilizer)
    else:
        out = favor_attention(q, k, v, jax.lax.stop_gradient(w), float(kernel_eps),
                              float(stabilizer), key_max_axes(key_max))
    return jnp.swapaxes(out, 1, 2)


def _choice(name, value, allowed):
    if value not in allowed:
        raise UserError(f"mixer.{name} must be one of {', '.join(allowed)}, got '{value}'")


class Mixer(HeadProjections):
    def __init__(self, spec: MixerSpec, *, rngs: nnx.Rngs, features: str = "relu",
                 nb_features: int = 256, ortho_scaling: int = 0, redraw: str = "query_seed",
                 kernel_eps: float = 0.001, stabilizer: float = 0.0, key_max: str = "per_head",
                 masking: str = "none", prescale: bool = False):
        _choice("features", features, FEATURES)
        _choice("redraw", redraw, REDRAWS)
        _choice("key_max", key_max, KEY_MAXES)
        _choice("masking", masking, MASKS)
        if ortho_scaling not in (0, 1):
            raise UserError(f"mixer.ortho_scaling must be 0 or 1, got {ortho_scaling}")
        if nb_features < 1:
            raise UserError(f"mixer.nb_features must be at least 1, got {nb_features}")
        self.features, self.redraw = features, redraw
        self.nb_features, self.ortho_scaling = int(nb_features), int(ortho_scaling)
        self.options = dict(features=features, kernel_eps=float(kernel_eps),
                            stabilizer=float(stabilizer), key_max=key_max, masking=masking,
                            prescale=bool(prescale))
        self.init_projections(spec, rngs, lra_init=spec.init == "lra")
        if features == "favor+" and redraw == "fixed":
            # performer_pytorch: a buffer drawn at init, never trained and never redrawn
            self.projection = nnx.Variable(gaussian_orthogonal_matrix(
                rngs.params(), self.nb_features, self.head_dim, self.ortho_scaling))

    def __call__(self, x, mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        q, k, v = self.qkv(x)
        w = None
        if self.features == "favor+":
            w = (self.projection[...] if self.redraw == "fixed" else
                 query_seeded_projection(q, self.nb_features, self.ortho_scaling))
        return self.merge(performer_attention(q, k, v, mask, w, **self.options)), mask
