"""What one training step must do, for the matrix tests (tests/test_matrix.py) and any other test
that takes a step: `check_train_step(rc, steps, batch)` takes two steps from the initial state
(the first may have a learning rate of 0, at the start of a warm-up) and asserts, naming the model
and task on failure,

  - a finite loss and a finite, non-zero gradient norm at each;
  - the step counter advanced to 2;
  - every parameter leaf kept its shape and dtype, and the parameters changed (an update that
    leaves them as they were, e.g. a zero gradient or a learning rate of 0, is caught);
  - the model's output (traced on shapes only, no second compile) is (batch, num_classes).

A step that merely does not raise passes none of these by accident. Returns (state, metrics).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lra_bench.model import Classifier


def check_train_step(rc, steps, batch):
    what = f"{rc.model_name}/{rc.task_name}"
    before = steps.init_state["params"]
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), before)
    # a host copy: the step may donate the initial state's buffers
    before_host = jax.tree.map(np.asarray, before)
    state = steps.init_state
    for _ in range(2):
        state, metrics = steps.train_step(state, batch)
        loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
        assert math.isfinite(loss), f"{what}: loss {loss}"
        assert math.isfinite(grad_norm) and grad_norm > 0, f"{what}: gradient norm {grad_norm}"
    assert int(state["step"]) == 2, f"{what}: step counter {int(state['step'])}"
    after = state["params"]
    assert jax.tree.map(lambda x: (x.shape, x.dtype), after) == shapes, \
        f"{what}: the step changed a parameter's shape or dtype"
    changed = [not np.array_equal(a, np.asarray(b))
               for a, b in zip(jax.tree.leaves(before_host), jax.tree.leaves(after))]
    assert any(changed), f"{what}: no parameter changed in two training steps"
    model = Classifier(rc, rngs=nnx.Rngs(params=rc.seed))
    out = jax.eval_shape(lambda x: model(x, deterministic=True), jnp.asarray(batch["inputs"]))
    want = (len(batch["labels"]), rc.data["num_classes"])
    assert tuple(out.shape) == want, f"{what}: output shape {tuple(out.shape)}, expected {want}"
    return state, metrics


def check_test_accuracies(summary: dict, test_rows: int) -> None:
    """A finished run's test accuracies are counts over the whole test split, which a bound such
    as 0 <= accuracy <= 1 never checks: `test_examples` is the split's size (no padding row of
    the last batch counted, none dropped), each accuracy is a whole number of correct examples
    over it, and `test_accuracy` is the one `train.selection` names."""
    n = summary["test_examples"]
    assert n == test_rows, (n, test_rows)
    for key in ("test_accuracy", "test_accuracy_last", "test_accuracy_best_val"):
        correct = summary[key] * n
        assert abs(correct - round(correct)) < 1e-4 and 0 <= round(correct) <= n, (key, correct)
    named = "test_accuracy_last" if summary["selection"] == "last" else "test_accuracy_best_val"
    assert summary["test_accuracy"] == summary[named]
