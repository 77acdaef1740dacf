import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_bench import config, data
from lra_bench.data import synthetic
from lra_bench.data.pipeline import TrainStream, eval_batches
from lra_bench.optim import make_schedule
from lra_bench.trainer import build, evaluate, train_and_evaluate
from step_checks import check_test_accuracies


def test_lra_rsqrt_schedule_matches_the_release_formula():
    rc = config.resolve("transformer", "listops", "lra")
    lr = make_schedule(rc.train)
    for t in [0, 1, 500, 1000, 1001, 4000]:
        expected = 0.05 * min(1.0, t / 1000) / np.sqrt(max(t, 1000))
        np.testing.assert_allclose(float(lr(t)), expected, rtol=1e-6)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    train = {"learning_rate": 1e-3, "warmup_steps": 10, "steps": 110, "schedule": "cosine"}
    lr = make_schedule(train)
    assert float(lr(5)) == pytest.approx(5e-4)
    assert float(lr(10)) == pytest.approx(1e-3)
    assert float(lr(60)) == pytest.approx(5e-4, rel=1e-5)
    assert float(lr(110)) == pytest.approx(0.0, abs=1e-9)


def test_a_tiny_model_overfits_a_fixed_batch():
    rc = config.resolve("transformer", "listops", "smoke", overrides=[
        "model.dropout=0.0", "train.schedule=\"constant\"", "train.learning_rate=3e-3",
        "train.warmup_steps=0", "train.weight_decay=0.0", "train.batch_size=8"])
    steps = build(rc)
    batch = {k: jnp.asarray(v) for k, v in synthetic.make_split(rc.data, 8, seed=0).items()}
    state, losses = steps.init_state, []
    for _ in range(60):
        state, metrics = steps.train_step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.2 * losses[0], losses[::10]
    assert float(metrics["accuracy"]) == 1.0


def test_eval_weights_ignore_the_padding_rows_of_the_last_batch():
    split = {"inputs": np.arange(10)[:, None].repeat(3, 1).astype(np.int32),
             "labels": np.arange(10).astype(np.int32)}
    batches = list(eval_batches(split, 4))
    assert [b["weights"].sum() for b in batches] == [4, 4, 2]
    assert batches[-1]["inputs"].shape == (4, 3)


def test_train_stream_is_seeded_and_covers_an_epoch_without_repeats():
    split = {"inputs": np.arange(20)[:, None].astype(np.int32), "labels": np.arange(20).astype(np.int32)}
    a = TrainStream(split, 5, seed=3, device_put=lambda b: b)
    b = TrainStream(split, 5, seed=3, device_put=lambda b: b)
    first = [next(a)["labels"] for _ in range(4)]
    assert [x.tolist() for x in first] == [next(b)["labels"].tolist() for _ in range(4)]
    assert sorted(np.concatenate(first).tolist()) == list(range(20))
    assert a.position == (1, 0)
    # A stream re-created at a position continues exactly where the first one was.
    nxt = next(a)["labels"].tolist()
    c = TrainStream(split, 5, seed=3, start=(1, 0), device_put=lambda b: b)
    assert next(c)["labels"].tolist() == nxt
    for s in (a, b, c):
        s.close()


def test_one_training_run_records_every_measure(data_dir):
    rc = config.resolve("transformer", "listops", "smoke", steps=6,
                        overrides=["train.eval_every=3", "train.batch_size=16",
                                   "train.log_every=2"])
    splits = data.load(rc, data_dir)
    evals = []
    out = train_and_evaluate(rc, splits, on_eval=evals.append)
    # A record at every log step and every evaluation; only evaluations carry validation.
    assert [e["step"] for e in evals] == [2, 3, 4, 6]
    assert [e["step"] for e in evals if "val_accuracy" in e] == [3, 6]
    assert [e["train_steps"] for e in evals] == [2, 1, 1, 2]
    # Training loss is the mean over the steps since the previous record, not the last batch.
    every = config.resolve("transformer", "listops", "smoke", steps=6,
                           overrides=["train.eval_every=3", "train.batch_size=16",
                                      "train.log_every=1"])
    single = []
    train_and_evaluate(every, splits, on_eval=single.append)
    per_step = [e["train_loss"] for e in single]
    assert per_step[0] != per_step[1]
    means = [np.mean(per_step[0:2]), per_step[2], per_step[3], np.mean(per_step[4:6])]
    np.testing.assert_allclose([e["train_loss"] for e in evals], means, rtol=1e-6)
    assert out["final_train_loss"] == evals[-1]["train_loss"]
    check_test_accuracies(out, len(splits["test"]["labels"]))
    assert out["best_step"] in (3, 6)
    assert out["step_time_ms"] > 0 and out["compile_time_s"] > 0
    assert out["peak_memory_bytes"] > 0 and out["memory_source"]
    assert out["flops_per_step"] > 0
    assert out["params"] > 1000


# Every model's training step: tests/test_matrix.py (one real step each, finite loss, parameters
# that move, on every task traced); the smoke configs themselves are checked there in every preset.


@pytest.mark.parametrize("task", config.available("tasks"))
def test_every_task_takes_a_training_step(task):
    rc = config.resolve("transformer", task, "smoke")
    # At the task's own length the step is traced on shapes only: Path-X's 16K tokens of softmax
    # attention would take ~18 GB to run. The real step runs on at most 1024 tokens.
    full = build(rc)
    shapes = {k: jax.ShapeDtypeStruct((2, *v.shape[1:]), v.dtype)
              for k, v in synthetic.make_split(rc.data, 1, seed=0).items()}
    state, metrics = jax.eval_shape(full.train_step, full.init_state, shapes)
    assert metrics["loss"].shape == () and state["step"].shape == ()
    if rc.data["max_length"] > 1024:
        short = ["data.max_length=1024"] + (["data.grid=[32, 32]"] if "grid" in rc.data else [])
        rc = config.resolve("transformer", task, "smoke", overrides=short)
    steps = build(rc)
    batch = {k: jnp.asarray(v) for k, v in synthetic.make_split(rc.data, 2, seed=0).items()}
    state, metrics = steps.train_step(steps.init_state, batch)
    assert np.isfinite(float(metrics["loss"]))
    val = evaluate(steps, state["params"], state["rest"], synthetic.make_split(rc.data, 3, 1), 2)
    # three rows in batches of 2: the padding row of the second batch is not counted
    assert val["examples"] == 3 and round(3 * val["accuracy"], 6) in (0, 1, 2, 3)
    assert np.isfinite(val["loss"])


def test_a_compilation_killed_by_the_stop_signal_is_redone_then_the_run_stops(data_dir, monkeypatch):
    # Seen on a GPU: SIGTERM to the process group killed ptxas while the evaluation compiled.
    from lra_bench import trainer

    rc = config.resolve("transformer", "listops", "smoke", steps=3,
                        overrides=["train.eval_every=2", "train.batch_size=16"])
    real, failures = trainer.evaluate, []

    def evaluate_killed_once(*args):
        if not failures:
            failures.append(1)
            raise jax.errors.JaxRuntimeError("INTERNAL: ptxas exited with non-zero error code 15")
        return real(*args)

    monkeypatch.setattr(trainer, "evaluate", evaluate_killed_once)
    evals = []
    with pytest.raises(trainer.Interrupted) as stopped:
        train_and_evaluate(rc, data.load(rc, data_dir), on_eval=evals.append,
                           should_stop=lambda: bool(failures))
    assert stopped.value.step == 2 and [e["step"] for e in evals if "val_accuracy" in e] == [2]


def test_the_best_validation_step_and_its_parameters_are_the_ones_tested(data_dir, monkeypatch):
    """A scripted validation sequence (0.2, 0.9, 0.5 at steps 2, 4, 6): the best step is 4, the
    middle one, and the test accuracy of the best-validation parameters is that of the
    parameters as they were at step 4, not at the worst (2) or the last (6) evaluation.
    Keeping the worst validation, or the last parameters, fails here."""
    import lra_bench.trainer as trainer

    rc = config.resolve("transformer", "listops", "smoke", steps=6,
                        overrides=["train.eval_every=2", "train.batch_size=8",
                                   "train.selection=\"best_val\""])
    splits = data.load(rc, data_dir)
    scripted, seen = iter([0.2, 0.9, 0.5]), []

    def fingerprint(params) -> float:
        return float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(params)))

    def fake_evaluate(steps, params, rest, split, batch_size, max_batches=0):
        if split is splits["val"]:
            seen.append(fingerprint(params))
            return {"loss": 1.0, "accuracy": next(scripted), "examples": 8}
        return {"loss": 1.0, "accuracy": fingerprint(params), "examples": 8}

    monkeypatch.setattr(trainer, "evaluate", fake_evaluate)
    out = train_and_evaluate(rc, splits)
    assert out["best_step"] == 4 and out["val_accuracy"] == 0.9
    assert len(set(seen)) == 3  # the parameters changed between evaluations
    assert out["test_accuracy_best_val"] == pytest.approx(seen[1], rel=1e-6)
    assert out["test_accuracy"] == out["test_accuracy_best_val"]
    assert out["test_accuracy_last"] != pytest.approx(seen[1], rel=1e-6)
