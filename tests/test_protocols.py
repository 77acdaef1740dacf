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


# What PyTorch's OneCycleLR (cycle_momentum=True, its default) does to AdamW, measured once in a
# scratch environment (the fixture's note says how).
TORCH = __import__("json").loads((paths.PACKAGE_DIR.parent / "tests" / "fixtures" /
                                  "onecycle_torch.json").read_text())


@pytest.mark.parametrize("case", TORCH["cases"], ids=lambda c: f"{c['warmup']}-{c['total']}")
def test_onecycle_rate_and_beta1_are_pytorchs(case):
    from lra_bench.optim import onecycle_momentum

    train = {"learning_rate": 1e-4, "warmup_steps": case["warmup"], "steps": case["total"],
             "schedule": "onecycle"}
    lr, b1 = make_schedule(train), onecycle_momentum(case["warmup"], case["total"])
    for t, want in case["steps"].items():
        # float32: near the end the rate is ~1e-8, so its error is measured against the peak
        assert float(lr(int(t))) == pytest.approx(want["lr"], rel=1e-5, abs=1e-6 * 1e-4), t
        assert float(b1(int(t))) == pytest.approx(want["b1"], rel=1e-6), t


def _adamw_trajectory(cycle_momentum: bool) -> np.ndarray:
    from lra_bench.optim import make_optimizer

    tr = TORCH["trajectory"]
    tx = make_optimizer({"learning_rate": tr["lr"], "warmup_steps": tr["warmup"],
                         "steps": tr["total"], "schedule": "onecycle", "b1": 0.9, "b2": 0.999,
                         "eps": 1e-6, "weight_decay": 0.0, "grad_clip": 0.0,
                         "cycle_momentum": cycle_momentum})
    params = jnp.asarray(tr["init"], jnp.float32)
    state, out = tx.init(params), []
    for t in range(tr["total"]):
        grads = jnp.asarray([math.sin(t) + 0.5, math.cos(0.7 * t) - 0.2], jnp.float32)
        updates, state = tx.update(grads, state, params)
        params = params + updates
        out.append(np.asarray(params))
    return np.stack(out)


def test_cycle_momentum_steps_adamw_as_pytorch_does():
    want = np.asarray(TORCH["trajectory"]["params_after_step"])
    np.testing.assert_allclose(_adamw_trajectory(True), want, atol=2e-6)
    # the check can tell: a fixed b1 = 0.9 leaves PyTorch's path by far more than the tolerance
    assert np.abs(_adamw_trajectory(False) - want).max() > 100 * 2e-6


def test_nystrom_preset_cycles_beta1_and_uses_pytorch_gelu_and_norm():
    rc = tiny("listops", "nystrom")
    assert rc.train["cycle_momentum"] and rc.model["gelu"] == "exact"
    block = model.Classifier(rc, rngs=nnx.Rngs(params=0)).encoder.blocks[0]
    assert block.norm1.epsilon == 1e-5 and not block.gelu_tanh
    lra = model.Classifier(tiny("listops", "lra"), rngs=nnx.Rngs(params=0)).encoder.blocks[0]
    assert lra.norm1.epsilon == 1e-6 and lra.gelu_tanh


def lra_cosine(step, base, warmup, steps_per_cycle):
    """train_utils.create_learning_rate_scheduler('constant * linear_warmup * cosine_decay')
    @4954d9f, written from its source."""
    ret = base * min(1.0, step / warmup)
    progress = max(0.0, (step - warmup) / float(steps_per_cycle))
    return ret * max(0.0, 0.5 * (1.0 + math.cos(math.pi * (progress % 1.0))))


@pytest.mark.parametrize("task", ["image", "pathfinder", "pathx"])
def test_lra_image_cosine_is_the_releases_and_never_reaches_zero(task):
    t = config.resolve("transformer", task, "lra").train
    lr = make_schedule(t)
    total, warmup = t["steps"], t["warmup_steps"]
    for step in (0, 1, warmup - 1, warmup, warmup + 1, total // 2, total - 2, total - 1):
        want = lra_cosine(step, t["learning_rate"], warmup, total)
        assert float(lr(step)) == pytest.approx(want, rel=1e-4, abs=1e-6 * t["learning_rate"]), step
    assert float(lr(total - 1)) > 0.0
    # the `remaining` period (lra-bench's default) does reach 0 at the last step
    assert float(make_schedule({**t, "cosine_period": "remaining"})(total)) == pytest.approx(0.0, abs=1e-12)


def test_listops_token_streams_of_a_known_expression():
    from lra_bench.data import listops

    tree = ("[MAX", [2, 9, ("[MIN", [4, 7]), 0])
    source = listops.to_source(tree)
    assert source == "( ( ( ( ( [MAX 2 ) 9 ) ( ( ( [MIN 4 ) 7 ) ] ) ) 0 ) ] )"
    after_fix = listops.detokenize(listops.tokenize(source, "whitespace"))
    assert after_fix == "[MAX 2 9 [MIN 4 7 ] 0 ]"  # c209b2a: ']' kept (as 'X')
    before_fix = listops.tokenize(source, "alphanumeric")
    assert listops.detokenize(before_fix) == "[MAX 2 9 [MIN 4 7 0"  # 4954d9f: no brackets
    assert listops.TOKEN_ID["]"] not in before_fix
    # the two streams the presets read
    assert config.resolve_data("listops", "nystrom")["tokens"] == "alphanumeric"
    assert config.resolve_data("listops", "lra")["tokens"] == "alphanumeric"
    assert config.resolve_data("listops", "quick")["tokens"] == "whitespace"


def test_listops_token_stream_is_a_cache_key(tmp_path):
    from lra_bench.data import listops
    from lra_bench.data.cache import prep_config

    base = config.resolve_data("listops", "smoke")
    assert "tokens" not in prep_config(base)  # caches made before the key stay valid
    assert prep_config({**base, "tokens": "alphanumeric"})["tokens"] == "alphanumeric"
    with pytest.raises(Exception, match="data.tokens must be one of"):
        listops.fingerprint(str(tmp_path), {**base, "tokens": "bytes"})


@pytest.mark.parametrize("drop", [False, True])
def test_eval_drop_remainder_tests_whole_batches_only(drop):
    rc = config.resolve("transformer", "listops", "smoke", steps=2, overrides=[
        "model.emb_dim=8", "model.qkv_dim=8", "model.mlp_dim=8", "model.num_layers=1",
        "data.max_length=16", "train.batch_size=24", "train.eval_every=1",
        f"train.eval_drop_remainder={str(drop).lower()}"])
    splits = {**synthetic.load(rc), "test": synthetic.make_split(rc.data, 100, seed=5)}  # 4 x 24 + 4
    out = train_and_evaluate(rc, splits)
    assert out["test_examples"] == (96 if drop else 100)


def test_the_test_split_as_validation_never_yields_a_best_val_test_number():
    with pytest.raises(Exception, match="would select on test"):
        config.resolve("transformer", "text", "lra", overrides=['train.selection="best_val"'])
    rc = config.resolve("transformer", "text", "lra", steps=2, overrides=[
        "model.emb_dim=8", "model.qkv_dim=8", "model.mlp_dim=8", "model.num_layers=1",
        "model.num_heads=2", "data.max_length=16", "train.batch_size=8", "train.eval_every=1"])
    out = train_and_evaluate(rc, synthetic.load(rc))
    assert out["test_accuracy_best_val"] is None and out["test_accuracy"] == out["test_accuracy_last"]
