import re

import pytest

from lra_bench import config
from lra_bench.errors import UserError


def test_layers_apply_in_order():
    smoke = config.resolve("transformer", "listops", "smoke")
    lra = config.resolve("transformer", "listops", "lra")
    # The lra preset holds the LRA ListOps config behind Table 1 (Nov 2020: 6 layers, mlp 2048).
    assert lra.model | {} == lra.model and lra.model["emb_dim"] == 512
    assert (lra.model["mlp_dim"], lra.model["num_layers"], lra.model["num_heads"]) == (2048, 6, 8)
    assert (lra.train["batch_size"], lra.train["steps"], lra.train["eval_every"]) == (32, 5000, 20)
    assert (lra.train["learning_rate"], lra.train["warmup_steps"], lra.train["weight_decay"]) == (0.05, 1000, 0.1)
    assert (lra.train["b1"], lra.train["b2"], lra.train["eps"]) == (0.9, 0.98, 1e-9)
    assert lra.data["max_length"] == 2000 and lra.model["pooling"] == "cls"
    assert smoke.data["max_length"] < 256 and smoke.model["emb_dim"] < 128
    assert smoke.mixer == {"kind": "softmax"}


def test_set_overrides_with_type_checks():
    rc = config.resolve("transformer", "listops", "smoke",
                        overrides=["train.steps=7", "model.dropout=0", "model.positional=learned"])
    assert rc.train["steps"] == 7
    assert rc.model["dropout"] == 0.0 and isinstance(rc.model["dropout"], float)
    assert rc.model["positional"] == "learned"
    assert rc.to_dict()["overrides"] == ["train.steps=7", "model.dropout=0", "model.positional=learned"]
    assert config.RunConfig.from_dict(rc.to_dict()) == rc


@pytest.mark.parametrize("override, message", [
    ("train.stepz=3", "unknown key 'train.stepz'; valid train keys: "),
    ("train.steps=abc", "'train.steps' must be int"),
    ("model.dropout=true", "'model.dropout' must be float"),
    ("bogus.x=1", "unknown section 'bogus'"),
    ("steps=3", "expected section.key=value"),
    ("train.steps=0", "train.steps must be >= 1, got 0"),
    ("train.warmup_steps=-5", "train.warmup_steps must be >= 0, got -5"),
    ("model.dropout=1.0", "model.dropout must be in [0, 1), got 1.0"),
    ("model.qkv_dim=31", "must be a multiple of model.num_heads"),
    ("model.pooling=max", "model.pooling must be cls, mean or first"),
])
def test_bad_overrides_are_user_errors(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        config.resolve("transformer", "listops", "smoke", overrides=[override])


def test_unknown_names_list_the_choices():
    with pytest.raises(UserError, match="unknown model 'nope'; choose one of: .*transformer"):
        config.resolve("nope", "listops")
    with pytest.raises(UserError, match="unknown task 'nope'; choose one of: .*listops"):
        config.resolve("transformer", "nope")
    with pytest.raises(UserError, match="has no preset 'huge'; choose one of: lra, .*smoke"):
        config.resolve("transformer", "listops", "huge")


def test_every_shipped_config_resolves_for_every_preset():
    for task in config.available("tasks"):
        presets = config.load_spec("tasks", task).get("presets", {})
        assert {"lra", "smoke"} <= set(presets), task
        for model in config.available("models"):
            for preset in presets:
                rc = config.resolve(model, task, preset)
                assert rc.mixer["kind"]


def test_typo_in_a_toml_layer_is_an_error(tmp_path, monkeypatch):
    root = tmp_path
    (root / "tasks").mkdir()
    (root / "models").mkdir()
    (root / "tasks" / "t.toml").write_text(
        '[data]\nmax_length = 8\nvocab_size = 4\nnum_classes = 2\nloader = "synthetic"\n'
        '[presets.smoke.train]\nbatchsize = 4\n')
    (root / "models" / "m.toml").write_text('[mixer]\nkind = "softmax"\n')
    monkeypatch.setenv("LRA_HOME", str(root))
    with pytest.raises(UserError, match=r"tasks/t.toml\[presets.smoke\]: unknown key 'train.batchsize'"):
        config.resolve("m", "t", "smoke")


@pytest.mark.parametrize("task, sets, message", [
    ("pathfinder", ["data.downsample=0"], "data.downsample must be >= 1, got 0"),
    ("pathfinder", ["data.downsample=3"], "data.downsample (3) must divide the image side (32)"),
    ("pathfinder", ["data.downsample=2"], "makes 32 x 32 images 16 x 16 = 256 tokens"),
    ("image", ["data.downsample=4", "data.max_length=64"], "data.grid ([32, 32]) must match"),
])
def test_downsample_must_add_up(task, sets, message):
    # both entry points: a run's config and `lra data prepare`'s data table
    with pytest.raises(UserError, match=re.escape(message)):
        config.resolve("transformer", task, "smoke", overrides=sets)
    with pytest.raises(UserError, match=re.escape(message)):
        config.resolve_data(task, "smoke", sets)
    ok = ["data.downsample=2", "data.max_length=256", "data.grid=[16, 16]"]
    assert config.resolve_data(task, "smoke", ok)["downsample"] == 2
