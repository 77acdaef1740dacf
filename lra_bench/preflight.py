"""Will a run fit? Compile its step on abstract shapes and compare XLA's estimate with the memory
there is, before a single parameter is allocated.

`trainer.build` runs under `jax.eval_shape`: the model, the optimiser state and the step
functions are traced, never materialised, so the state comes back as `jax.ShapeDtypeStruct`s and
the step is lowered and compiled on those. The compiled executable is the one a real run would
execute (same function, same shapes), so its memory analysis is the real run's estimate and it
can even be called on concrete arrays afterwards (the sweep does).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lra_bench import measure
from lra_bench.sizes import format_bytes, parse_bytes
from lra_bench.config import RunConfig
from lra_bench.data import synthetic
from lra_bench.errors import UserError

MODES = ("train", "forward")


@dataclass
class AbstractStep:
    """A step compiled on abstract shapes, and what it is expected to cost."""

    mode: str
    compiled: Any
    state: Any  # the train state (train) or {"params", "rest"} (forward), as ShapeDtypeStructs
    batch: dict
    compile_time_s: float
    peak_bytes: int | None  # XLA's estimate: temp + argument + output - alias
    flops: float | None
    params: int
    attention: tuple = ()  # (form, why) of every softmax attention traced (mixers._attention)


@dataclass
class Capacity:
    bytes: int | None
    source: str


def abstract_batch(rc: RunConfig, mode: str = "train") -> dict:
    """The shapes and dtypes of one batch, as the data pipeline makes it."""
    one = synthetic.make_split(rc.data, 1, seed=0)
    b = rc.train["batch_size"]
    batch = {k: jax.ShapeDtypeStruct((b, *v.shape[1:]), v.dtype) for k, v in one.items()}
    if mode == "forward":  # eval batches carry per-row weights (padding rows of the last batch)
        batch["weights"] = jax.ShapeDtypeStruct((b,), jnp.float32)
    return batch


def compile_abstract(rc: RunConfig, mode: str = "train") -> AbstractStep:
    # flax (the mixers, the trainer): loaded by the step check only
    from lra_bench.mixers._attention import recording
    from lra_bench.trainer import build

    if mode not in MODES:
        raise UserError(f"unknown mode '{mode}'; choose one of: {', '.join(MODES)}")
    built = {}

    def init():
        built["steps"] = build(rc)
        return built["steps"].init_state

    state = jax.eval_shape(init)
    steps = built.pop("steps")  # only its jitted functions: its own init_state holds dead tracers
    batch = abstract_batch(rc, mode)
    t0 = time.perf_counter()
    with recording() as forms:  # tracing happens in lower()
        if mode == "train":
            lowered = steps.train_step.lower(state, batch)
        else:
            state = {"params": state["params"], "rest": state["rest"]}
            lowered = steps.eval_step.lower(state["params"], state["rest"], batch)
    compiled = lowered.compile()
    compile_time = time.perf_counter() - t0
    params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state["params"])))
    return AbstractStep(mode, compiled, state, batch, compile_time,
                        measure.compiled_memory_estimate(compiled), measure.cost_flops(compiled),
                        params, tuple(forms))


def describe_attention(forms) -> str:
    """'fused cuDNN x 4', 'key blocks x 4 (attention dropout: ...)', 'explicit x 4 (...)', or
    'none' for mixers that attend otherwise."""
    if not forms:
        return "none (this mixer does not use softmax attention)"
    return "; ".join(f"{form} x {n}" + (f" ({why})" if why else "")
                     for (form, why), n in Counter(forms).items())


def free_ram_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (what the kernel can hand out without swapping)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def device_capacity(limit: str | int | None = None) -> Capacity:
    """Memory one step may use: an explicit limit (`--memory-limit`, else $LRA_MEMORY_LIMIT, to
    plan for a smaller device), else the accelerator's allocator limit, else on CPU the machine's
    free RAM."""
    limit = limit if limit is not None else os.environ.get("LRA_MEMORY_LIMIT") or None
    if limit is not None:
        return Capacity(limit if isinstance(limit, int) else parse_bytes(limit), "memory limit")
    device = jax.local_devices()[0]
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return Capacity(int(stats["bytes_limit"]), f"{device.device_kind} memory (bytes_limit)")
    if device.platform == "cpu":
        return Capacity(free_ram_bytes(), "free RAM (/proc/meminfo MemAvailable)")
    return Capacity(None, f"{device.device_kind} memory (unknown)")


def fits(step: AbstractStep, capacity: Capacity) -> bool | None:
    if step.peak_bytes is None or capacity.bytes is None:
        return None
    return step.peak_bytes <= capacity.bytes


def fitting_batch(rc: RunConfig, step: AbstractStep, capacity: Capacity,
                  tries: int = 3) -> tuple[int, AbstractStep] | None:
    """The largest batch that fits by a linear estimate from `step`, checked by compiling it
    (a few compiles at most): (batch, its step), or None when not even the smallest batch the
    devices can split fits."""
    t = rc.train
    unit = jax.device_count() * t.get("grad_accum", 1)
    batch, needed = t["batch_size"], step.peak_bytes
    for _ in range(tries):
        if not needed or capacity.bytes is None:
            return None
        guess = min(int(0.9 * batch * capacity.bytes / needed), batch - 1) // unit * unit
        if guess < unit:
            guess = unit  # the smallest batch: one row per device (and micro-batch)
        trial = replace(rc, train={**t, "batch_size": guess})
        trial_step = compile_abstract(trial, step.mode)
        if fits(trial_step, capacity) is not False:
            return guess, trial_step
        if guess == unit:
            return None
        batch, needed = guess, trial_step.peak_bytes
    return None


def what_to_change(rc: RunConfig, step: AbstractStep | None = None,
                   capacity: Capacity | None = None) -> str:
    """How to make the step fit; with its compiled step, a batch size checked to fit (or the
    news that none does at this length)."""
    t, d = rc.train, rc.data
    options = [f"lower train.batch_size (now {t['batch_size']})"]
    if "grad_accum" in t:
        options.append(f"raise train.grad_accum (now {t['grad_accum']}) with a smaller batch")
    options.append(f"shorten data.max_length (now {d['max_length']})")
    advice = ", ".join(options[:-1]) + " or " + options[-1]
    if step is None or capacity is None:
        return f"{advice}, e.g. --set train.batch_size={max(1, t['batch_size'] // 2)}"
    found = fitting_batch(rc, step, capacity)
    if found is None:
        return (f"no batch size fits at data.max_length={d['max_length']}: shorten "
                "data.max_length, compute in bfloat16 (--dtype bfloat16) or use a device with "
                "more memory")
    batch, fitted = found
    return (f"{advice}: --set train.batch_size={batch} fits "
            f"({format_bytes(fitted.peak_bytes)}, checked)")


def ensure_fits(rc: RunConfig, limit: str | int | None = None) -> AbstractStep:
    """The `lra run` gate: a UserError (one line, exit 2) when the train step will not fit."""
    step = compile_abstract(rc, "train")
    capacity = device_capacity(limit)
    if fits(step, capacity) is False:
        raise UserError(
            f"{rc.model_name}/{rc.task_name} needs {format_bytes(step.peak_bytes)} per train step "
            f"(XLA estimate) but only {format_bytes(capacity.bytes)} is available "
            f"({capacity.source}); "
            f"{what_to_change(rc, step, capacity)} (or skip this check with --no-preflight)")
    return step
