"""Learning-rate schedules and the optimiser, from a run's [train] table."""

from __future__ import annotations

import fnmatch

import jax
import jax.numpy as jnp
import optax


def make_schedule(train: dict):
    """LRA's `constant * linear_warmup * <decay>` schedules as pure functions of the step.

    rsqrt:    lr * min(1, t / warmup) / sqrt(max(t, warmup))   (ListOps, Text, Retrieval)
    cosine:   lr * min(1, t / warmup) * cosine decay to 0 over the remaining steps (Image, Pathfinder);
              with `cosine_period = "total"`, LRA's: 0.5 (1 + cos(pi p)), p = max(0, t - warmup) /
              steps (train_utils.create_learning_rate_scheduler with steps_per_cycle = the total
              steps; p < 1 throughout, so its `p mod 1` never wraps and the rate never reaches 0)
    constant: lr * min(1, t / warmup)
    onecycle: PyTorch's OneCycleLR(anneal_strategy="linear"), see `onecycle_linear`
    """
    base, warmup, total = train["learning_rate"], max(train["warmup_steps"], 0), train["steps"]
    lra_period = train.get("cosine_period", "remaining") == "total"
    if train["schedule"] == "onecycle":
        return onecycle_linear(base, warmup, total)

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        lr = base * (jnp.minimum(1.0, t / warmup) if warmup > 0 else 1.0)
        if train["schedule"] == "rsqrt":
            lr = lr / jnp.sqrt(jnp.maximum(t, max(warmup, 1)))
        elif train["schedule"] == "cosine":
            if lra_period:
                progress = jnp.maximum(0.0, (t - warmup) / total)
            else:
                progress = jnp.clip((t - warmup) / max(total - warmup, 1), 0.0, 1.0)
            lr = lr * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return lr

    return schedule


def _two_phases(start: float, turn: float, end: float, warmup: int, total: int):
    """OneCycleLR's linear two-phase shape: `start` at step 0, `turn` at step warmup - 1
    (pct_start * total - 1), `end` at step total - 1."""
    return optax.join_schedules(
        [optax.linear_schedule(start, turn, warmup - 1),
         optax.linear_schedule(turn, end, total - warmup)],
        boundaries=[warmup - 1])


def onecycle_linear(peak: float, warmup: int, total: int, div: float = 25.0,
                    final_div: float = 1e4):
    """torch.optim.lr_scheduler.OneCycleLR(max_lr=peak, total_steps=total, pct_start=warmup /
    total, anneal_strategy="linear"), its default div_factor and final_div_factor: peak / div at
    step 0, rising linearly to peak at step warmup - 1, then falling linearly to
    peak / div / final_div at step total - 1 (the Nystromformer LRA protocol, run_tasks.py)."""
    start = peak / div
    return _two_phases(start, peak, start / final_div, warmup, total)


# OneCycleLR's defaults base_momentum=0.85, max_momentum=0.95 (torch/optim/lr_scheduler.py).
MOMENTUM_RANGE = (0.85, 0.95)


def onecycle_momentum(warmup: int, total: int, low: float = MOMENTUM_RANGE[0],
                      high: float = MOMENTUM_RANGE[1]):
    """OneCycleLR's cycle_momentum=True (its default) on an Adam-family optimiser: it writes
    betas[0] every step, high -> low while the rate rises, low -> high while it falls, the
    inverse of the rate's cycle and with the same phase boundaries."""
    return _two_phases(high, low, high, warmup, total)


def _adamw(train: dict) -> optax.GradientTransformation:
    """Adam with decoupled weight decay (flax.optim.Adam's weight_decay is optax.adamw's); with
    `cycle_momentum`, b1 is a schedule too, fed in through optax.inject_hyperparams."""
    kwargs = dict(learning_rate=make_schedule(train), b1=train["b1"], b2=train["b2"],
                  eps=train["eps"], weight_decay=train["weight_decay"])
    if train.get("cycle_momentum"):
        kwargs["b1"] = onecycle_momentum(train["warmup_steps"], train["steps"])
        return optax.inject_hyperparams(optax.adamw)(**kwargs)
    return optax.adamw(**kwargs)


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def param_path(path) -> str:
    """A parameter's tree path as 'encoder/blocks/0/mixer/B' (nnx's trailing 'value' dropped)."""
    names = [_key_name(k) for k in path]
    while names and names[-1] in ("value", "raw_value"):
        names.pop()
    return "/".join(names)


def group_labels(params, groups: list[dict]):
    """The tree of labels multi_transform routes by: 'group<i>' for the first group with a
    pattern that matches the parameter's path (fnmatch), else 'default'."""
    def label(path, _):
        name = param_path(path)
        for i, g in enumerate(groups):
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in g["match"]):
                return f"group{i}"
        return "default"
    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(train: dict) -> optax.GradientTransformation:
    """AdamW (`_adamw`) on every parameter; with `param_groups`, optax.multi_transform gives each
    group its own AdamW, with its peak rate (the same schedule shape) and weight decay: S4's
    `register(..., lr, wd=0)` and S5's `ssm` / `regular` optimiser groups."""
    groups = train.get("param_groups") or []
    if groups:
        transforms = {"default": _adamw(train)}
        for i, g in enumerate(groups):
            transforms[f"group{i}"] = _adamw({**train, **{k: float(v) for k, v in g.items()
                                                         if k != "match"}})
        adam = optax.multi_transform(transforms, lambda params: group_labels(params, groups))
    else:
        adam = _adamw(train)
    if train["grad_clip"] > 0:
        return optax.chain(optax.clip_by_global_norm(train["grad_clip"]), adam)
    return adam
