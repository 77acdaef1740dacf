"""One trainer for every task and model (flax examples' `train_and_evaluate` shape).

The train step is a pure function of (state, batch): the NNX model is split once into a static
graph definition and array state, and `jax.jit` compiles the step over that state with its
buffers donated, so parameters and optimiser state are updated in place. Dropout keys are
`fold_in(seed key, step)`, so a step's randomness depends on nothing but the seed and the step.

A run with `checkpoints` saves every `train.checkpoint_every` steps, at the end and when asked
to stop, and starts from its newest checkpoint: state, data-stream position, best-val parameters
and the evaluations so far, so a resumed run ends with exactly the metrics of an uninterrupted one.

Scaling (see `lra_bench.distributed`): the step is jitted with the batch split over a 'data' mesh
axis and the state replicated, so the same function runs on one device or many. With
`train.grad_accum` K > 1 the step scans over K micro-batches and applies the mean gradient once:
one optimiser step on the whole batch, with the activation memory of one micro-batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lra_bench import measure
from lra_bench.checkpoint import Checkpoints, all_finite
from lra_bench.config import RunConfig
from lra_bench.distributed import DataParallel, any_process, grad_accum_suggestion
from lra_bench.errors import UserError
from lra_bench.data.pipeline import TrainStream, eval_batches, evaluated_rows
from lra_bench.model import Classifier
from lra_bench.optim import make_optimizer, make_schedule


@dataclass
class Steps:
    """The compiled functions of one run and what they need to rebuild the model."""

    graphdef: Any
    init_state: dict
    train_step: Callable
    eval_step: Callable
    tx: optax.GradientTransformation
    data_parallel: DataParallel | None = None


def build(rc: RunConfig, data_parallel: DataParallel | None = None) -> Steps:
    """The jitted steps of a run, laid out over `data_parallel` (default: every device)."""
    dp = data_parallel or DataParallel.over()
    accum = rc.train["grad_accum"]
    dp.check_batch(rc.train["batch_size"], accum)
    model = Classifier(rc, rngs=nnx.Rngs(params=rc.seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(rc.train)
    schedule = make_schedule(rc.train)
    # Built eagerly (each initialiser op compiles once per process and shape, then is cached),
    # then replicated over the mesh; on several hosts device_put checks that they all agree.
    state = dp.replicate({
        "params": params,
        "rest": rest,
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key(rc.seed + 1),
    })

    def loss_fn(params, rest, batch, rng):
        # Rebuilt here, so that BatchNorm's statistics are Variables of this trace level, which
        # the forward pass may update (nnx refuses to mutate one made outside value_and_grad).
        rest = jax.tree.map(lambda v: v, rest)
        model = nnx.merge(graphdef, params, rest)
        logits = model(batch["inputs"], deterministic=False, rngs=nnx.Rngs(dropout=rng))
        # float32 logits (Classifier casts them): the loss is a float32 island under bf16.
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
        accuracy = (logits.argmax(-1) == batch["labels"]).mean()
        # The non-parameter state after the forward pass: BatchNorm's running statistics move
        # in training (model.norm = batch); everything else in it comes back unchanged.
        return loss, (accuracy, nnx.split(model, nnx.Param, ...)[2])

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulated_grads(params, rest, batch, rng):
        """Mean loss, accuracy and gradient over `accum` equal micro-batches (one micro-batch's
        activations alive at a time). Micro-batch i takes rows i, i + K, i + 2K, ...: every
        device's block of the batch splits evenly, so micro-batches stay split over the devices
        and no rows move between them."""
        def split(x):
            x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
            return jax.lax.with_sharding_constraint(x, dp.micro_batch_sharding)

        def add_micro_batch(carry, xs):
            totals, rest = carry
            i, micro = xs
            (loss, (accuracy, rest)), grads = grad_fn(params, rest, micro,
                                                      jax.random.fold_in(rng, i))
            return (jax.tree.map(jnp.add, totals, (grads, loss, accuracy)), rest), None

        zeros = (jax.tree.map(jnp.zeros_like, params), jnp.zeros(()), jnp.zeros(()))
        (totals, rest), _ = jax.lax.scan(add_micro_batch, (zeros, rest),
                                         (jnp.arange(accum), jax.tree.map(split, batch)))
        grads, loss, accuracy = jax.tree.map(lambda t: t / accum, totals)
        return (loss, (accuracy, rest)), grads

    def train_step(state, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        gradients = grad_fn if accum == 1 else accumulated_grads
        (loss, (accuracy, rest)), grads = gradients(state["params"], state["rest"], batch, rng)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {
            **state,
            "params": optax.apply_updates(state["params"], updates),
            "rest": rest,
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads),
                   "learning_rate": schedule(state["step"])}
        return new_state, metrics

    def eval_step(params, rest, batch):
        model = nnx.merge(graphdef, params, rest)
        logits = model(batch["inputs"], deterministic=True)
        w = batch["weights"]
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        correct = (logits.argmax(-1) == batch["labels"]).astype(jnp.float32)
        return {"loss": (losses * w).sum(), "correct": (correct * w).sum(), "count": w.sum()}

    # A single sharding stands for every leaf of its argument (pytree prefix).
    rep, rows = dp.replicated, dp.batch_sharding
    train = jax.jit(train_step, in_shardings=(rep, rows), out_shardings=(rep, rep),
                    donate_argnums=0)
    evaluate_ = jax.jit(eval_step, in_shardings=(rep, rep, rows), out_shardings=rep)
    return Steps(graphdef, state, train, evaluate_, tx, dp)


def param_count(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def evaluate(steps: Steps, params, rest, split: dict, batch_size: int, max_batches: int = 0) -> dict:
    totals = None
    put = steps.data_parallel.put_global if steps.data_parallel else (lambda b: b)
    for batch in eval_batches(split, batch_size, max_batches):
        out = steps.eval_step(params, rest, put(batch))
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.device_get(totals)
    n = max(float(totals["count"]), 1.0)
    return {"loss": float(totals["loss"]) / n, "accuracy": float(totals["correct"]) / n,
            "examples": int(totals["count"])}


@dataclass
class TrainResult:
    summary: dict
    evals: list[dict] = field(default_factory=list)


class Diverged(Exception):
    def __init__(self, step: int, loss: float, what: str = "loss"):
        message = f"loss became {loss}" if what == "loss" else f"{what} became non-finite"
        super().__init__(f"{message} at step {step}")
        self.step, self.loss = step, loss


class Interrupted(Exception):
    """The run stopped on request after `step`, with a checkpoint at that step."""

    def __init__(self, step: int):
        super().__init__(f"stopped on request after step {step}")
        self.step = step


def out_of_memory_error(e: BaseException, rc: RunConfig, device_count: int) -> UserError | None:
    """A UserError naming what to try when `e` is the device running out of memory."""
    text = str(e)
    if not isinstance(e, jax.errors.JaxRuntimeError) or not (
            "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()):
        return None
    b, k = rc.train["batch_size"], rc.train["grad_accum"]
    tries = []
    if (more := grad_accum_suggestion(b, device_count, k)) is not None:
        tries.append(f"--grad-accum {more} (the same optimiser step, 1/{more} of the batch's "
                     "activations at a time)")
    if rc.model["dtype"] != "bfloat16":
        tries.append("--dtype bfloat16")
    tries.append("more devices")
    return UserError(f"out of device memory at train.batch_size {b} on {device_count} device(s) "
                     f"(grad_accum {k}); try " + ", or ".join(tries))


def train_and_evaluate(rc: RunConfig, splits: dict, on_eval: Callable[[dict], None] | None = None,
                       reporter=None, checkpoints: Checkpoints | None = None,
                       should_stop: Callable[[], bool] | None = None,
                       data_parallel: DataParallel | None = None) -> dict:
    """Train, evaluate every `eval_every` steps, test the best-val and the last parameters
    (`test_accuracy` is the one `train.selection` names).

    With `checkpoints`, continue from the newest one if there is one. `should_stop` is polled
    after every step; when it says so the run checkpoints and raises `Interrupted`.
    Returns the measured part of the run summary.
    """
    t = rc.train
    splits = {**splits, "val": evaluated_rows(splits["val"], t),
              "test": evaluated_rows(splits["test"], t)}
    # With the test split as validation (LRA's Text), a "best-validation" pick is made on test.
    val_is_test = rc.data.get("validation") == "test"
    steps = build(rc, data_parallel)
    dp = steps.data_parallel
    state, best_params = steps.init_state, None
    progress = {"position": [0, 0], "best_accuracy": -1.0, "best_step": 0, "evals": [],
                "step_times": [], "data_waits": []}
    restored = checkpoints.restore(state) if checkpoints is not None else None
    if restored is not None:
        state, best_params, progress = restored
        # Restored arrays go back onto the mesh, replicated like the fresh state.
        state = dp.replicate(state)
        best_params = dp.replicate(best_params) if best_params is not None else None
    start, total = int(state["step"]), t["steps"]
    step_times, data_waits, evals = progress["step_times"], progress["data_waits"], progress["evals"]
    best = {"accuracy": progress["best_accuracy"], "step": progress["best_step"], "params": best_params}
    # Each process reads and transfers only its own rows of every global batch.
    stream = TrainStream(splits["train"], t["batch_size"], seed=rc.seed,
                         start=tuple(progress["position"]),
                         rows=dp.local_rows(t["batch_size"]),
                         device_put=lambda b: dp.put_local(b, t["batch_size"]))
    # Evaluate in micro-batches too (the same rows: eval_batches counts whole batches).
    eval_size = t["batch_size"] // t["grad_accum"]

    def save_checkpoint(step: int) -> None:
        if not bool(all_finite((state["params"], state["opt_state"]))):
            raise Diverged(step, float("nan"), what="parameters")
        checkpoints.save(state, best["params"] if best["params"] is not None else state["params"], {
            "position": list(stream.position), "best_accuracy": best["accuracy"],
            "best_step": best["step"], "evals": evals, "step_times": step_times,
            "data_waits": data_waits, "window": window})

    def through_signal(fn, *args):
        # A stop signal reaches the whole process group (Ctrl-C, SLURM, `timeout`), the XLA
        # compiler's own subprocesses (ptxas) with it, which fails the compilation in flight. The
        # stop means "after this step": compile again, then checkpoint and stop as promised.
        try:
            return fn(*args)
        except jax.errors.JaxRuntimeError:
            if should_stop is None or not should_stop():
                raise
            return fn(*args)

    try:
        first = next(stream)
        t0 = time.perf_counter()
        compiled = through_signal(lambda: steps.train_step.lower(state, first).compile())
        compile_time = time.perf_counter() - t0
        memory, memory_source = measure.peak_memory(compiled)
        flops = measure.cost_flops(compiled)

        # Training loss and accuracy are the means over the steps since the previous record, so a
        # curve point is not one batch's noise.
        empty = {"loss": 0.0, "accuracy": 0.0, "count": 0}
        latest_val = next((e["val_accuracy"] for e in reversed(evals) if "val_accuracy" in e),
                          None)
        window = progress.get("window") or dict(empty)
        batch = first
        for step in range(start + 1, total + 1):
            if step > start + 1:
                t_wait = time.perf_counter()
                batch = next(stream)
                data_waits.append(time.perf_counter() - t_wait)
            t_step = time.perf_counter()
            state, metrics = compiled(state, batch)
            # One transfer for both; it synchronises, so the step time below is device time.
            loss, accuracy = map(float, jax.device_get((metrics["loss"], metrics["accuracy"])))
            step_times.append(time.perf_counter() - t_step)
            if not math.isfinite(loss):
                raise Diverged(step, loss)
            window["loss"] += loss
            window["accuracy"] += accuracy
            window["count"] += 1
            train_loss = window["loss"] / window["count"]
            train_accuracy = window["accuracy"] / window["count"]
            recent = step_times[-t["log_every"]:]
            steps_per_second = len(recent) / max(sum(recent), 1e-9)
            evaluate_now = step % t["eval_every"] == 0 or step == total
            if evaluate_now or step % t["log_every"] == 0:
                record = {"step": step, "train_loss": train_loss, "train_accuracy": train_accuracy,
                          "train_steps": window["count"],
                          "learning_rate": float(metrics["learning_rate"]),
                          "steps_per_second": steps_per_second}
                window = dict(empty)
                if evaluate_now:
                    val = through_signal(evaluate, steps, state["params"], state["rest"],
                                         splits["val"], eval_size,
                                         t["eval_batches"] * t["grad_accum"])
                    record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
                    latest_val = val["accuracy"]
                    if val["accuracy"] > best["accuracy"]:
                        # With BatchNorm the running statistics belong to the parameters.
                        best = {"accuracy": val["accuracy"], "step": step,
                                "params": jax.tree.map(jnp.copy, state["params"]),
                                "rest": jax.tree.map(jnp.copy, state["rest"])}
                record["time"] = time.time()
                evals.append(record)
                if on_eval is not None:
                    on_eval(record)
            if reporter is not None:  # (the step has synchronised already: this costs no wait)
                reporter.step(step, {"loss": train_loss, "acc": train_accuracy,
                                     "steps/s": steps_per_second, "val_acc": latest_val,
                                     "best": best["accuracy"], "best_step": best["step"]})
            every = t["checkpoint_every"]
            # every process of a multi-host run stops at the same step
            stop = any_process(should_stop is not None and should_stop())
            if checkpoints is not None and ((every and step % every == 0) or step == total or stop):
                save_checkpoint(step)
            if stop:
                raise Interrupted(step)
    except jax.errors.JaxRuntimeError as e:
        if (hint := out_of_memory_error(e, rc, dp.device_count)) is not None:
            raise hint from None
        raise
    finally:
        stream.close()

    test_last = evaluate(steps, state["params"], state["rest"], splits["test"], eval_size)
    # A resumed run has the best parameters' BatchNorm statistics only if it found them itself.
    best_rest = best["rest"] if best.get("rest") is not None else state["rest"]
    test_best = None if val_is_test else evaluate(steps, best["params"], best_rest,
                                                  splits["test"], eval_size)
    # The first steps after compilation still warm caches; leave them out of the median.
    steady = step_times[2:] if len(step_times) > 4 else step_times
    # train.selection says which parameters the headline test_accuracy tests; both are kept.
    chosen = test_last if t["selection"] == "last" else test_best
    return {
        "steps": total,
        "val_accuracy": best["accuracy"],
        "best_step": best["step"],
        "selection": t["selection"],
        "test_accuracy": chosen["accuracy"],
        # None where the validation split is the test split: that pick was made on test
        "test_accuracy_best_val": None if test_best is None else test_best["accuracy"],
        "test_accuracy_last": test_last["accuracy"],
        "test_examples": chosen["examples"],
        "test_loss": chosen["loss"],
        "final_train_loss": evals[-1]["train_loss"],
        "step_time_ms": 1000.0 * float(np.median(steady)),
        "data_wait_ms": 1000.0 * float(np.median(data_waits)) if data_waits else 0.0,
        "compile_time_s": compile_time,
        "peak_memory_bytes": memory,
        "memory_source": memory_source,
        "flops_per_step": flops,
        "params": param_count(state["params"]),
        **dp.describe(),
        "grad_accum": t["grad_accum"],
        "micro_batch_size": t["batch_size"] // t["grad_accum"],
        "dtype": rc.model["dtype"],
    }
