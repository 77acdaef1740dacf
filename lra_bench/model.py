"""The encoder and classifier shared by every model and task.

Pre-LN blocks around a pluggable mixer (see `lra_bench.mixers`), as in the LRA reference
Transformer: LN -> mixer -> dropout -> residual, LN -> Dense(mlp) -> GELU -> dropout -> Dense ->
dropout -> residual; final LN; pooling; Dense(mlp) -> ReLU -> Dense(classes). A mixer that
shortens the sequence tells the block what its residual adds to and what runs after the block
(`residual_stream`, `after_block`; see `lra_bench.mixers`); the shorter sequence and its mask flow
on into the later layers, the final LN and the pooling.

Retrieval is a dual encoder: inputs of shape (batch, 2, length) run through the one shared
encoder as a (2 * batch)-row batch; model.retrieval_head = "nli" feeds [x1, x2, x1 * x2, x1 - x2]
to Dense(mlp)-ReLU-Dense (Nystromformer's SCHeadDual), "lra" feeds [x1, x2] to Dense(mlp)-ReLU-
Dense(mlp / 2)-ReLU-Dense (LRA's classifier_head_dual).

Switches that reproduce LRA's or Nystromformer's model (docs/protocols.md): model.pooling
("first" = position 0 without a CLS token), model.pad_pooling, model.init, model.embed_std,
model.mask_pad_queries and data.black_is_padding (image tasks: grey level 0 becomes the pad id).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lra_bench import mixers, plugins
from lra_bench.mixers._projections import dense, glu
from lra_bench.config import RunConfig
from lra_bench.data import synthetic

PAD_ID = 0


def sinusoidal_table(length: int, dim: int) -> np.ndarray:
    pos = np.arange(length)[:, None]
    div = np.exp(np.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    table = np.zeros((length, dim), np.float32)
    table[:, 0::2] = np.sin(pos * div)
    table[:, 1::2] = np.cos(pos * div)[:, : dim // 2]
    return table


def masked_mean(x, mask, pads: str = "exclude"):
    """Mean over the sequence. pads: exclude (over real tokens), include (over every position,
    LRA's jnp.mean), zero (pads zeroed, divided by the full length: Nystromformer's)."""
    # A float32 island: a bf16 sum over thousands of positions would lose the mean's low bits.
    w = mask[..., None].astype(jnp.float32)
    if pads == "include":
        return x.astype(jnp.float32).mean(axis=1).astype(x.dtype)
    total = (x.astype(jnp.float32) * w).sum(axis=1)
    count = x.shape[1] if pads == "zero" else jnp.maximum(w.sum(axis=1), 1.0)
    return (total / count).astype(x.dtype)


def lra_mlp_init() -> dict:
    """LRA's common_layers.MlpBlock initialisers."""
    return dict(kernel_init=nnx.initializers.xavier_uniform(),
                bias_init=nnx.initializers.normal(1e-6))


def compute_dtype(name: str):
    return jnp.bfloat16 if name == "bfloat16" else jnp.float32


class MaskedBatchNorm(nnx.Module):
    """BatchNorm over the batch and the sequence, counting real tokens only (model.norm = "batch",
    the S4 and S5 LRA blocks). Training (deterministic=False) normalises with the batch's
    statistics and moves the running ones (flax's convention: running = momentum * running +
    (1 - momentum) * batch; PyTorch's momentum 0.1 is 0.9 here); evaluation uses the running ones.
    Beyond the references (whose BatchNorm counts every position): pads are left out of the
    statistics, so no padded position changes a real one's output. Statistics run in float32."""

    def __init__(self, dim: int, *, epsilon: float, momentum: float, dtype=None):
        self.scale = nnx.Param(jnp.ones((dim,)))
        self.bias = nnx.Param(jnp.zeros((dim,)))
        self.mean = nnx.BatchStat(jnp.zeros((dim,)))
        self.var = nnx.BatchStat(jnp.ones((dim,)))
        self.epsilon, self.momentum, self.dtype = epsilon, momentum, dtype

    def __call__(self, x, mask, *, deterministic: bool):
        x32 = x.astype(jnp.float32)
        if deterministic:
            mean, var = self.mean[...], self.var[...]
        else:
            w = mask[..., None].astype(jnp.float32)
            count = jnp.maximum(w.sum(axis=(0, 1)), 1.0)
            mean = (x32 * w).sum(axis=(0, 1)) / count
            var = (jnp.square(x32 - mean) * w).sum(axis=(0, 1)) / count
            m = self.momentum
            self.mean[...] = m * self.mean[...] + (1 - m) * jax.lax.stop_gradient(mean)
            self.var[...] = m * self.var[...] + (1 - m) * jax.lax.stop_gradient(var)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)


def make_norm(m: dict, dtype, rngs: nnx.Rngs) -> nnx.Module:
    """model.norm: LayerNorm (default) or `MaskedBatchNorm`; apply it with `apply_norm`."""
    if m["norm"] == "batch":
        return MaskedBatchNorm(m["emb_dim"], epsilon=m["norm_eps"], momentum=m["bn_momentum"],
                               dtype=dtype)
    return nnx.LayerNorm(m["emb_dim"], epsilon=m["norm_eps"], dtype=dtype, rngs=rngs)


def apply_norm(norm: nnx.Module, x, mask, deterministic: bool):
    if isinstance(norm, MaskedBatchNorm):
        return norm(x, mask, deterministic=deterministic)
    return norm(x)


class Block(nnx.Module):
    """The block's layout is data (model.prenorm, model.norm, model.mlp, model.tie_dropout):

    pre-norm (default):  x = x + drop(mixer(N1(x)));  x = x + drop(MLP(N2(x)))
    post-norm:           x = N1(x + drop(mixer(x)));  x = N2(x + drop(MLP(x)))

    with N LayerNorm or BatchNorm. MLP(h) = Dense(mlp) -> GELU -> dropout -> Dense (model.mlp =
    "gelu", LRA's MlpBlock), or Dense(2 mlp) -> GLU -> dropout -> Dense ("glu": state-spaces/s4's
    FFN with activation 'glu', src/models/sequence/modules/ffn.py), or left out ("none": the S4
    and S5 blocks, whose mixer ends in its own GLU). The defaults are the LRA Transformer's.
    """

    def __init__(self, rc: RunConfig, spec: mixers.MixerSpec, *, rngs: nnx.Rngs):
        m = rc.model
        dtype = spec.dtype
        options = {k: v for k, v in rc.mixer.items() if k != "kind"}
        self.prenorm = m["prenorm"]
        self.norm1 = make_norm(m, dtype, rngs)
        self.mixer = mixers.build(rc.mixer["kind"], spec, options, rngs)
        self.mlp = m["mlp"]
        if self.mlp != "none":
            self.norm2 = make_norm(m, dtype, rngs)
            # flax's gelu is the tanh form by default (LRA); PyTorch's nn.GELU() the exact erf form.
            self.gelu_tanh = m["gelu"] == "tanh"
            init = lra_mlp_init() if m["init"] == "lra" else {}
            # glu: twice the width, the second half the gate (state-spaces/s4's LinearActivation).
            width = m["mlp_dim"] * (2 if self.mlp == "glu" else 1)
            self.mlp_in = nnx.Linear(m["emb_dim"], width, dtype=dtype, rngs=rngs, **init)
            self.mlp_out = nnx.Linear(m["mlp_dim"], m["emb_dim"], dtype=dtype, rngs=rngs, **init)
        self.dropout = nnx.Dropout(m["dropout"])
        # S4's tie_dropout / S5's broadcast_dims=[0]: one residual-dropout mask per sequence.
        self.residual_dropout = (nnx.Dropout(m["dropout"], broadcast_dims=(1,))
                                 if m["tie_dropout"] else None)

    def __call__(self, x, mask, *, deterministic: bool, rngs: nnx.Rngs | None):
        drop = lambda t: self.dropout(t, deterministic=deterministic, rngs=rngs)  # noqa: E731
        residual_drop = drop if self.residual_dropout is None else (  # noqa: E731
            lambda t: self.residual_dropout(t, deterministic=deterministic, rngs=rngs))
        norm = lambda n, t, msk: apply_norm(n, t, msk, deterministic)  # noqa: E731
        h = norm(self.norm1, x, mask) if self.prenorm else x
        # Shortening mixers say what the residual adds to and what follows the block
        # (see lra_bench.mixers); mixers without these hooks run the plain pre-LN block.
        # `mix` computes both in one pass (the Fourier filter once per layer).
        if hasattr(self.mixer, "mix"):
            with plugins.blame(self.mixer, "mix"):
                x, y, out_mask = self.mixer.mix(x, h, mask, deterministic=deterministic, rngs=rngs)
        else:
            # A user's (plugin) mixer is held to the contract here, at trace time; built-ins pass.
            with plugins.blame(self.mixer, "__call__"):
                out = self.mixer(h, mask, deterministic=deterministic, rngs=rngs)
            y, out_mask = plugins.check_output(self.mixer, h, out)
            if hasattr(self.mixer, "residual_stream"):
                with plugins.blame(self.mixer, "residual_stream"):
                    x = self.mixer.residual_stream(x, h, mask)
        x, mask = x + residual_drop(y), out_mask
        if not self.prenorm:
            x = norm(self.norm1, x, mask)
        if self.mlp != "none":
            h = norm(self.norm2, x, mask) if self.prenorm else x
            # As matrices (mixers._projections.dense): XLA's CPU weight gradient is 2x faster.
            h = dense(self.mlp_in, h)
            h = drop(glu(h) if self.mlp == "glu" else
                     jax.nn.gelu(h, approximate=self.gelu_tanh))
            x = x + residual_drop(dense(self.mlp_out, h))
            if not self.prenorm:
                x = norm(self.norm2, x, mask)
        if hasattr(self.mixer, "after_block"):
            with plugins.blame(self.mixer, "after_block"):
                x, mask = self.mixer.after_block(x, mask)
        return x, mask


class Encoder(nnx.Module):
    def __init__(self, rc: RunConfig, *, rngs: nnx.Rngs, grid: tuple[int, int] | None = None):
        m, d = rc.model, rc.model["emb_dim"]
        dtype = compute_dtype(m["dtype"])
        self.use_cls = m["pooling"] == "cls"
        self.pooling, self.pad_pooling = m["pooling"], m["pad_pooling"]
        # Image ids are grey level + 1; as padding, black becomes id 0 (the pad id) and is masked.
        self.black_is_padding = bool(rc.data.get("black_is_padding", False))
        length = rc.data["max_length"] + int(self.use_cls)
        # LRA embeds tokens with N(0, 1) (Nystromformer N(0, 0.02)) and adds a zero-initialised
        # learned CLS embedding.
        self.embed = nnx.Embed(
            rc.data["vocab_size"], d, dtype=dtype,
            embedding_init=nnx.initializers.normal(m["embed_std"]), rngs=rngs,
        )
        self.cls = nnx.Param(jnp.zeros((1, 1, d))) if self.use_cls else None
        if m["positional"] == "learned":
            self.pos = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (1, length, d)))
        elif m["positional"] == "sinusoidal":
            self.pos = nnx.Variable(jnp.asarray(sinusoidal_table(length, d))[None])
        else:
            self.pos = None
        specs = [mixers.MixerSpec(
            dim=d, num_heads=m["num_heads"], qkv_dim=m["qkv_dim"],
            attention_dropout=m["attention_dropout"], max_length=length,
            has_cls=self.use_cls, grid=grid, dtype=dtype, layer=i, num_layers=m["num_layers"],
            init=m["init"], mask_pad_queries=m["mask_pad_queries"],
        ) for i in range(m["num_layers"])]
        self.dropout = nnx.Dropout(m["dropout"])
        blocks = [Block(rc, spec, rngs=rngs) for spec in specs]
        self.blocks = nnx.List(blocks) if hasattr(nnx, "List") else blocks
        # model.final_norm: the pre-norm stack's closing norm (S4 has it only when pre-norm; S5
        # never does).
        self.norm = make_norm(m, dtype, rngs) if m["final_norm"] else None

    def __call__(self, tokens, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        if self.black_is_padding:
            tokens = jnp.maximum(tokens - 1, PAD_ID)
        mask = tokens != PAD_ID
        x = self.embed(tokens)
        if self.use_cls:
            cls = jnp.broadcast_to(self.cls[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
            x = jnp.concatenate([cls, x], axis=1)
            # LRA gives the CLS token the first token's mask: with black as padding, an image
            # whose first pixel is black has a masked CLS. Elsewhere position 0 is always real.
            first = mask[:, :1] if self.black_is_padding else jnp.ones_like(mask[:, :1])
            mask = jnp.concatenate([first, mask], axis=1)
        if self.pos is not None:
            x = x + self.pos[...][:, : x.shape[1]].astype(x.dtype)
        x = self.dropout(x, deterministic=deterministic, rngs=rngs)
        for block in self.blocks:
            x, mask = block(x, mask, deterministic=deterministic, rngs=rngs)
        if self.norm is not None:
            x = apply_norm(self.norm, x, mask, deterministic)
        return x, mask

    def pool(self, x, mask):
        if self.pooling in ("cls", "first"):
            return x[:, 0]
        return masked_mean(x, mask, self.pad_pooling)


def check(rc: RunConfig, gradient: bool = True) -> None:
    """Build the model abstractly (shapes only, nothing allocated) so that a bad mixer option or
    schedule raises its UserError before any data is loaded or anything is written. A user's
    (plugin) mixer is also traced through a whole train step on abstract inputs of the task's
    shapes: the forward pass and, unless `gradient` is False (a forward-only sweep), its gradient,
    so that a breach of the mixer contract, or a mixer reverse mode cannot differentiate (a
    `lax.while_loop` with a traced bound), is one line before anything else happens."""
    if not plugins.is_plugin(rc.mixer["kind"]):
        nnx.eval_shape(lambda: Classifier(rc, rngs=nnx.Rngs(params=rc.seed)))
        return
    inputs = jnp.asarray(synthetic.make_split(rc.data, 2, seed=0)["inputs"])

    def loss(model):
        logits = model(inputs, deterministic=False, rngs=nnx.Rngs(dropout=0))
        return logits.astype(jnp.float32).sum()

    def step():
        model = Classifier(rc, rngs=nnx.Rngs(params=rc.seed))
        return nnx.grad(loss)(model) if gradient else loss(model)

    with plugins.blame_gradient(rc.mixer["kind"]):
        jax.eval_shape(step)


class Classifier(nnx.Module):
    """Encoder + pooling + MLP head; a dual encoder when the task pairs two documents."""

    def __init__(self, rc: RunConfig, *, rngs: nnx.Rngs):
        d, mlp = rc.model["emb_dim"], rc.model["mlp_dim"]
        self.dual = bool(rc.data.get("dual", False))
        grid = tuple(rc.data["grid"]) if "grid" in rc.data else None
        self.encoder = Encoder(rc, rngs=rngs, grid=grid)
        dtype = compute_dtype(rc.model["dtype"])
        self.lra_head = self.dual and rc.model["retrieval_head"] == "lra"
        width = d * (2 if self.lra_head else 4 if self.dual else 1)
        self.hidden = nnx.Linear(width, mlp, dtype=dtype, rngs=rngs)
        # LRA's dual head: Dense(mlp)-ReLU-Dense(mlp // 2)-ReLU-Dense(classes).
        self.hidden2 = nnx.Linear(mlp, mlp // 2, dtype=dtype, rngs=rngs) if self.lra_head else None
        self.logits = nnx.Linear(mlp // 2 if self.lra_head else mlp, rc.data["num_classes"],
                                 dtype=dtype, rngs=rngs)

    def __call__(self, inputs, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        tokens = inputs.reshape(-1, inputs.shape[-1])  # dual: (B, 2, L) -> (2B, L), one pass
        x, mask = self.encoder(tokens, deterministic=deterministic, rngs=rngs)
        pooled = self.encoder.pool(x, mask)
        if self.dual:
            pooled = pooled.reshape(inputs.shape[0], 2, -1)
            x1, x2 = pooled[:, 0], pooled[:, 1]
            pooled = jnp.concatenate([x1, x2] if self.lra_head else [x1, x2, x1 * x2, x1 - x2],
                                     axis=-1)
        h = jax.nn.relu(self.hidden(pooled))
        if self.hidden2 is not None:
            h = jax.nn.relu(self.hidden2(h))
        return self.logits(h).astype(jnp.float32)
