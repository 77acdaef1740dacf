"""Every registered model on every registered task: each preset resolves and builds, and each
model x task takes one training step. The lists come from tasks/ and models/, so a new model or
task is covered without editing this file."""

import tomllib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_bench import config, model, paths
from lra_bench.data import synthetic
from lra_bench.trainer import build
from step_checks import check_train_step

MODELS = list(config.available("models"))
TASKS = list(config.available("tasks"))


def presets(task: str) -> list[str]:
    with open(paths.tasks_dir() / f"{task}.toml", "rb") as f:
        return sorted(tomllib.load(f).get("presets", {}))


@pytest.mark.parametrize("task,preset", [(t, p) for t in TASKS for p in presets(t)])
def test_every_model_resolves_and_builds_in_every_preset(task, preset):
    for name in MODELS:
        model.check(config.resolve(name, task, preset))


def tiny(task: str) -> list[str]:
    """A model and input small enough that one step compiles in a second or two (compiling is
    nearly all the cost). One layer: the per-layer schedules have their own tests."""
    sets = ["model.emb_dim=8", "model.qkv_dim=8", "model.mlp_dim=8", "model.num_heads=2",
            "model.num_layers=1", "data.max_length=32", "train.batch_size=2",
            "mixer.num_landmarks=8", "mixer.chunk_size=16"]
    if "grid" in config.resolve_data(task, "smoke"):
        sets.append("data.grid=[4, 8]")
    return sets


# A compiled step costs seconds (compiling is nearly all of it) and the mixer code is the same on
# every task, so each model runs one real step on ListOps and is traced through the whole train
# step (forward and gradient, shapes and dtypes) on every other task: a shape or masking bug on
# the dual encoder or on image grids fails the trace, at a fraction of a compile's cost.
STEP_TASK = "listops"


def _tiny_config(name: str, task: str):
    options = config.resolve(name, task, "smoke").mixer
    sets = [s for s in tiny(task) if not s.startswith("mixer.") or s[6:].split("=")[0] in options]
    return config.resolve(name, task, "smoke", overrides=sets)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_takes_a_training_step(name, fast_compile):
    rc = _tiny_config(name, STEP_TASK)
    state, _ = check_train_step(rc, build(rc), synthetic.make_split(rc.data, 2, seed=0))
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(state["params"])), name


@pytest.mark.parametrize("name", MODELS)
def test_every_model_traces_a_training_step_on_every_task(name):
    for task in TASKS:
        rc = _tiny_config(name, task)
        steps = build(rc)
        batch = synthetic.make_split(rc.data, 2, seed=0)
        state, metrics = jax.eval_shape(steps.train_step, steps.init_state, batch)
        assert metrics["loss"].shape == () and metrics["loss"].dtype == jnp.float32, (name, task)
        shapes = jax.tree.map(lambda x: (x.shape, x.dtype), steps.init_state["params"])
        assert jax.tree.map(lambda x: (x.shape, x.dtype), state["params"]) == shapes, (name, task)
