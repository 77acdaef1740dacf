"""Every registered model on every registered task: each preset resolves and builds, and each
model x task takes one training step. The lists come from tasks/ and models/, so a new model or
task is covered without editing this file."""

import math
import tomllib

import jax
import numpy as np
import pytest

from lra_bench import config, model, paths
from lra_bench.data import synthetic
from lra_bench.trainer import build

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


@pytest.fixture(scope="module")
def fast_compile():
    # One step only has to run, not to run fast: skip most XLA passes (halves compile time).
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_takes_a_training_step_on_every_task(name, fast_compile):
    for task in TASKS:
        options = config.resolve(name, task, "smoke").mixer
        sets = [s for s in tiny(task) if not s.startswith("mixer.") or s[6:].split("=")[0] in options]
        rc = config.resolve(name, task, "smoke", overrides=sets)
        steps = build(rc)
        batch = synthetic.make_split(rc.data, 2, seed=0)
        state, metrics = steps.train_step(steps.init_state, batch)
        assert math.isfinite(float(metrics["loss"])), (name, task)
        assert int(state["step"]) == 1
        assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0
