"""The `lra` and `nystrom` presets equal their protocol tables; the switches they use do what the
official code does."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lra_bench import config, model, paths, protocols
from lra_bench.data import synthetic
from lra_bench.optim import make_schedule
from lra_bench.trainer import train_and_evaluate


@pytest.mark.parametrize("name", protocols.names())
def test_every_task_preset_equals_its_protocol_table(name):
    doc = protocols.load(name)
    assert set(doc["tasks"]) == set(config.available("tasks"))  # a new task needs its rows
    assert protocols.mismatches(name) == []
    for table in doc["tasks"].values():
        selection = [r["value"] for r in table["rows"] if r["key"] == "train.selection"]
        assert selection == [doc["selection"]]


def test_a_drifted_preset_is_caught(monkeypatch):
    real = config.resolve

    def drifted(model_name, task, preset="smoke", **kw):
        rc = real(model_name, task, preset, **kw)
        if task == "listops":
            rc.model["mlp_dim"] = 1024  # the March-2021 value
        return rc

    monkeypatch.setattr(config, "resolve", drifted)
    assert protocols.mismatches("lra") == ["listops model.mlp_dim: protocol 2048, preset 1024"]


def test_docs_page_is_generated_from_the_tables():
    page = (paths.PACKAGE_DIR.parent / "docs" / "protocols.md").read_text()
    assert page == protocols.markdown(), "regenerate: python -m lra_bench.protocols"


def torch_onecycle_linear(step, max_lr, total, pct_start, div=25.0, final_div=1e4):
    """torch.optim.lr_scheduler.OneCycleLR.get_lr, three_phase=False, anneal 'linear', at
    scheduler step `step` (the lr the optimizer's step `step` uses), written from its source."""
    initial, minimum = max_lr / div, max_lr / div / final_div
    phases = [(float(pct_start * total) - 1, initial, max_lr), (total - 1, max_lr, minimum)]
    start = 0.0
    for end, lo, hi in phases:
        if step <= end or end == phases[-1][0]:
            pct = (step - start) / (end - start)
            return (hi - lo) * pct + lo
        start = end


@pytest.mark.parametrize("warmup,total", [(1000, 5000), (175, 35000), (8000, 20000)])
def test_onecycle_schedule_is_pytorchs(warmup, total):
    train = {"learning_rate": 1e-4, "warmup_steps": warmup, "steps": total, "schedule": "onecycle"}
    schedule = make_schedule(train)
    for t in (0, 1, warmup // 2, warmup - 1, warmup, warmup + 7, total // 2, total - 1):
        want = torch_onecycle_linear(t, 1e-4, total, warmup / total)
        assert float(schedule(t)) == pytest.approx(want, rel=1e-5, abs=1e-12), t


def tiny(task, preset, *extra):
    sets = ["model.emb_dim=8", "model.qkv_dim=8", "model.mlp_dim=8", "model.num_heads=2",
            "model.num_layers=1", "data.max_length=16", *extra]
    if "grid" in config.resolve_data(task, preset):
        sets.append("data.grid=[4, 4]")
    return config.resolve("transformer", task, preset, overrides=sets)


def test_lra_retrieval_is_the_official_dual_encoder():
    rc = tiny("retrieval", "lra")
    m = model.Classifier(rc, rngs=nnx.Rngs(params=0))
    assert m.encoder.cls is None  # no CLS token: "CLS" pooling takes the first byte
    assert m.hidden.kernel.shape == (16, 8) and m.hidden2.kernel.shape == (8, 4)
    assert m.logits.kernel.shape == (4, 2)
    tokens = jax.random.randint(jax.random.key(0), (3, 2, 16), 1, 257)
    x, mask = m.encoder(tokens.reshape(6, 16))
    e = x[:, 0].reshape(3, 2, 8)
    h = jax.nn.relu(m.hidden2(jax.nn.relu(m.hidden(jnp.concatenate([e[:, 0], e[:, 1]], -1)))))
    np.testing.assert_allclose(m(tokens), m.logits(h), rtol=1e-5, atol=1e-6)
    ours = model.Classifier(tiny("retrieval", "smoke"), rngs=nnx.Rngs(params=0))
    assert ours.hidden.kernel.shape == (32, 8) and ours.hidden2 is None  # [x1, x2, x1*x2, x1-x2]


def test_lra_initialisers():
    m = model.Classifier(tiny("listops", "lra"), rngs=nnx.Rngs(params=0))
    mixer, block = m.encoder.blocks[0].mixer, m.encoder.blocks[0]
    assert all(getattr(mixer, n).bias is None for n in ("query", "key", "value", "out"))
    bias = np.asarray(block.mlp_in.bias[...])
    assert 0 < np.abs(bias).max() < 1e-5  # N(0, 1e-6), not zeros
    kernel = np.asarray(block.mlp_in.kernel[...])  # xavier_uniform: |w| <= sqrt(6 / (in + out))
    assert np.abs(kernel).max() <= math.sqrt(6 / 16) and np.abs(kernel).max() > 0.5 * math.sqrt(6 / 16)
    ours = model.Classifier(tiny("listops", "smoke"), rngs=nnx.Rngs(params=0))
    assert ours.encoder.blocks[0].mixer.query.bias is not None
    assert not np.asarray(ours.encoder.blocks[0].mlp_in.bias[...]).any()


def test_black_is_padding_masks_black_and_the_mean_pools_every_position():
    rc = tiny("pathfinder", "lra", "model.dropout=0.0")
    m = model.Classifier(rc, rngs=nnx.Rngs(params=0))
    tokens = jnp.array([[1, 5, 1, 9] * 4])  # ids are grey level + 1: id 1 is black
    x, mask = m.encoder(tokens)
    np.testing.assert_array_equal(mask[0], tokens[0] != 1)
    np.testing.assert_allclose(m.encoder.pool(x, mask), x.mean(axis=1), rtol=1e-6)
    # Black pixels are masked as keys: changing a black pixel's embedding row (the pad row 0)
    # changes no real position's output, only the black positions' own. The change is random,
    # not a constant, which the LayerNorms would remove.
    before = m.encoder(tokens)[0]
    noise = jax.random.normal(jax.random.key(1), m.encoder.embed.embedding[...].shape[1:])
    m.encoder.embed.embedding[...] = m.encoder.embed.embedding[...].at[0].add(noise)
    after = m.encoder(tokens)[0]
    real = np.asarray(mask[0])
    np.testing.assert_allclose(after[0, real], before[0, real], rtol=1e-5, atol=1e-5)
    assert not np.allclose(after[0, ~real], before[0, ~real])
    ours = model.Classifier(tiny("pathfinder", "smoke"), rngs=nnx.Rngs(params=0))
    assert ours.encoder(tokens)[1].all()  # black is a pixel


def test_pad_pooling_variants():
    x = jnp.arange(12.0).reshape(1, 4, 3)
    mask = jnp.array([[True, True, False, False]])
    np.testing.assert_allclose(model.masked_mean(x, mask, "exclude"), x[:, :2].mean(1))
    np.testing.assert_allclose(model.masked_mean(x, mask, "include"), x.mean(1))
    np.testing.assert_allclose(model.masked_mean(x, mask, "zero"), x[:, :2].sum(1) / 4)


@pytest.mark.parametrize("selection", ["last", "best_val"])
def test_selection_names_the_tested_parameters(selection):
    rc = config.resolve("transformer", "listops", "smoke", steps=4, overrides=[
        "model.emb_dim=8", "model.qkv_dim=8", "model.mlp_dim=8", "model.num_layers=1",
        "data.max_length=16", "train.batch_size=8", "train.eval_every=1",
        "train.learning_rate=0.5", f"train.selection=\"{selection}\""])
    out = train_and_evaluate(rc, synthetic.load(rc))
    assert out["selection"] == selection
    key = "test_accuracy_last" if selection == "last" else "test_accuracy_best_val"
    assert out["test_accuracy"] == out[key]
    assert {"test_accuracy_last", "test_accuracy_best_val"} <= set(out)
