"""Learning-rate schedules and the optimiser, from a run's [train] table."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def make_schedule(train: dict):
    """LRA's `constant * linear_warmup * <decay>` schedules as pure functions of the step.

    rsqrt:    lr * min(1, t / warmup) / sqrt(max(t, warmup))   (ListOps, Text, Retrieval)
    cosine:   lr * min(1, t / warmup) * cosine decay to 0 over the remaining steps (Image, Pathfinder)
    constant: lr * min(1, t / warmup)
    onecycle: PyTorch's OneCycleLR(anneal_strategy="linear"), see `onecycle_linear`
    """
    base, warmup, total = train["learning_rate"], max(train["warmup_steps"], 0), train["steps"]
    if train["schedule"] == "onecycle":
        return onecycle_linear(base, warmup, total)

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        lr = base * (jnp.minimum(1.0, t / warmup) if warmup > 0 else 1.0)
        if train["schedule"] == "rsqrt":
            lr = lr / jnp.sqrt(jnp.maximum(t, max(warmup, 1)))
        elif train["schedule"] == "cosine":
            progress = jnp.clip((t - warmup) / max(total - warmup, 1), 0.0, 1.0)
            lr = lr * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return lr

    return schedule


def onecycle_linear(peak: float, warmup: int, total: int, div: float = 25.0,
                    final_div: float = 1e4):
    """torch.optim.lr_scheduler.OneCycleLR(max_lr=peak, total_steps=total, pct_start=warmup /
    total, anneal_strategy="linear"), two phases, its default div_factor and final_div_factor:
    peak / div at step 0, rising linearly to peak at step warmup - 1, then falling linearly to
    peak / div / final_div at step total - 1 (the Nystromformer LRA protocol, run_tasks.py)."""
    start = peak / div
    return optax.join_schedules(
        [optax.linear_schedule(start, peak, warmup - 1),
         optax.linear_schedule(peak, start / final_div, total - warmup)],
        boundaries=[warmup - 1])


def make_optimizer(train: dict) -> optax.GradientTransformation:
    """Adam with decoupled weight decay (flax.optim.Adam's weight_decay is optax.adamw's)."""
    adam = optax.adamw(
        make_schedule(train), b1=train["b1"], b2=train["b2"], eps=train["eps"],
        weight_decay=train["weight_decay"],
    )
    if train["grad_clip"] > 0:
        return optax.chain(optax.clip_by_global_norm(train["grad_clip"]), adam)
    return adam
