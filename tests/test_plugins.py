"""Users' config folders and mixer plugins, in process (the installed-wheel path is
tests/test_install.py). A broken plugin is one `error:` line naming it and the fix, exit 2."""

import json
import sys
import textwrap

import jax
import pytest
from typer.testing import CliRunner

from lra_bench import config, paths, plugins
from lra_bench.cli import app

runner = CliRunner()

GOOD = '''
import jax.numpy as jnp
from flax import nnx


class Mixer(nnx.Module):
    def __init__(self, spec, *, rngs, scale: float = 1.0):
        self.proj = nnx.Linear(spec.dim, spec.dim, dtype=spec.dtype, rngs=rngs)
        self.scale = scale

    def __call__(self, x, mask, *, deterministic=True, rngs=None):
        return self.proj(x) * self.scale, mask
'''

# forward traces; reverse mode refuses a while_loop whose bound is traced (issue 28, case 5)
NO_GRADIENT = GOOD.replace("import jax.numpy", "import jax\nimport jax.numpy").replace(
    "return self.proj(x) * self.scale, mask", """n = mask.sum(axis=1).max()  # a traced bound
        _, y = jax.lax.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, c[1] * 0.5),
                                  (0, self.proj(x)))
        return y, mask""")

# name -> (module source, class, what the one error line must say)
BROKEN = {
    "missing_module": (None, "Mixer", "cannot import plug_missing_module (ModuleNotFoundError"),
    "import_raises": ("raise RuntimeError('needs a GPU library')\n", "Mixer",
                      "plug_import_raises.py:1: needs a GPU library); fix or install it"),
    "missing_class": (GOOD, "Mixr", "module plug_missing_class has no 'Mixr'"),
    "not_a_module": ("class Mixer:\n    pass\n", "Mixer", "is not a flax.nnx.Module subclass"),
    "init_signature": (GOOD.replace("spec, *, rngs,", "spec, *, rng,"), "Mixer",
                       "its __init__ must take (self, spec, *, rngs, **options)"),
    "init_raises": (GOOD.replace("self.scale = scale", "self.scale = 1 / 0"), "Mixer",
                    "__init__ raised ZeroDivisionError at"),
    "call_signature": (GOOD.replace("x, mask, *, deterministic=True, rngs=None", "x, mask"),
                       "Mixer", "__call__ raised TypeError"),
    "wrong_shape": (GOOD.replace("return self.proj(x) * self.scale, mask",
                                 "return self.proj(x)[:, 1:], mask[:, 1:]"),
                    "Mixer", "y must be [2, 129, 32], the shape of x"),
    "no_tuple": (GOOD.replace(", mask\n", "\n"), "Mixer", "it must return the tuple (y, mask)"),
    "wrong_dtype": (GOOD.replace("* self.scale, mask", "* self.scale, mask.astype(jnp.int32)"),
                    "Mixer", "the mask must be bool"),
    "no_gradient": (NO_GRADIENT, "Mixer",
                    "its gradient cannot be traced (ValueError: Reverse-mode differentiation"),
}


@pytest.fixture(autouse=True)
def _no_config_dirs_left_behind():
    """--config-dir sets process state in an in-process CLI call: never leak it to other tests."""
    yield
    paths.set_config_dirs([])


@pytest.fixture
def plugin_home(tmp_path, monkeypatch):
    """A config folder with one model per plugin case, their modules importable (sys.path for
    this process, PYTHONPATH for the sweep's children)."""
    src, home = tmp_path / "src", tmp_path / "configs"
    src.mkdir()
    (home / "models").mkdir(parents=True)
    cases = {"good": (GOOD, "Mixer", None), **BROKEN}
    for name, (code, cls, _) in cases.items():
        if code is not None:
            (src / f"plug_{name}.py").write_text(textwrap.dedent(code))
        (home / "models" / f"p_{name}.toml").write_text(
            f'description = "plugin case {name}"\n[mixer]\nkind = "plug_{name}:{cls}"\n')
    monkeypatch.syspath_prepend(str(src))
    monkeypatch.setenv("PYTHONPATH", str(src))
    return home


def one_error_line(r, *needles):
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_config_dirs_add_and_override_and_list_shows_the_source(tmp_path, monkeypatch):
    mine, env = tmp_path / "mine", tmp_path / "env"
    for root in (mine, env):
        (root / "tasks").mkdir(parents=True)
    listops = (paths.tasks_dir() / "listops.toml").read_text()
    (mine / "tasks" / "listops.toml").write_text(listops.replace(
        'description = "', 'description = "MINE '))
    (env / "tasks" / "listops.toml").write_text(listops.replace(
        'description = "', 'description = "ENV '))
    (env / "tasks" / "tiny.toml").write_text(
        'description = "a user task"\n[data]\nloader = "synthetic"\nmax_length = 8\n'
        'vocab_size = 4\nnum_classes = 2\n[presets.smoke]\n')
    monkeypatch.setenv("LRA_CONFIG_PATH", str(env))
    r = runner.invoke(app, ["--config-dir", str(mine), "list", "tasks", "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = {row["task"]: row for row in json.loads(r.stdout)["tasks"]}
    assert "MINE" in rows["listops"]["description"]  # --config-dir first
    assert rows["listops"]["source"] == str(mine)
    assert "a user task" in rows["tiny"]["description"] and rows["tiny"]["source"] == str(env)
    assert rows["text"]["source"] == "built-in"
    # The user task trains with a built-in model (synthetic data: nothing to prepare).
    rc = config.resolve("transformer", "tiny", "smoke")
    assert rc.data["max_length"] == 8
    r = runner.invoke(app, ["--config-dir", str(tmp_path / "nope"), "list"])
    one_error_line(r, "--config-dir", "no such folder")
    r = runner.invoke(app, ["--config-dir", str(tmp_path), "list"])
    one_error_line(r, "has neither tasks/ nor models/")


def test_a_good_module_class_plugin_builds_with_its_options(plugin_home):
    """(Training a plugin end to end, installed by entry point, is in tests/test_install.py.)"""
    from flax import nnx

    from lra_bench.model import Classifier, check

    (plugin_home / "models" / "p_good.toml").write_text(
        '[mixer]\nkind = "plug_good:Mixer"\nscale = 0.5\n')
    paths.set_config_dirs([plugin_home])
    rc = config.resolve("p_good", "listops")
    check(rc)  # builds and traces a forward pass on abstract inputs
    model = nnx.eval_shape(lambda: Classifier(rc, rngs=nnx.Rngs(0)))
    mixer = model.encoder.blocks[0].mixer
    assert type(mixer).__module__ == "plug_good" and mixer.scale == 0.5


def test_list_never_imports_plugins(plugin_home):
    r = runner.invoke(app, ["--config-dir", str(plugin_home), "list", "models"])
    assert r.exit_code == 0, r.output
    for name in BROKEN:
        assert f"p_{name}" in r.stdout


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_plugin_is_one_line_exit_2_and_writes_nothing(case, plugin_home, results_dir,
                                                               data_dir):
    r = runner.invoke(app, ["--config-dir", str(plugin_home), "run", "--model", f"p_{case}",
                            "--task", "listops", "--steps", "1", "--data-dir", str(data_dir),
                            "--results-dir", str(results_dir)])
    one_error_line(r, f"mixer 'plug_{case}:", BROKEN[case][2])
    assert not results_dir.exists()


def test_preflight_and_sweep_stop_on_a_broken_plugin(plugin_home, results_dir):
    r = runner.invoke(app, ["--config-dir", str(plugin_home), "preflight", "--model",
                            "p_wrong_shape", "--task", "listops"])
    one_error_line(r, "mixer 'plug_wrong_shape:Mixer'", "the shape of x")
    # The sweep's parent never imports jax: a child process checks the plugin before any point.
    r = runner.invoke(app, ["--config-dir", str(plugin_home), "sweep", "--task", "listops",
                            "--preset", "smoke", "--models", "transformer,p_call_signature",
                            "--lengths", "8,16", "--batch-size", "2", "--steps", "1",
                            "--results-dir", str(results_dir)])
    one_error_line(r, "mixer 'plug_call_signature:Mixer': __call__ raised TypeError",
                   "(self, x, mask, *, deterministic, rngs) -> (y, mask)")
    assert not results_dir.exists()


@pytest.mark.parametrize("args", [["preflight"], ["run", "--no-preflight", "--preset", "smoke",
                                                  "--steps", "1"]])
def test_a_plugin_whose_gradient_fails_is_one_line_before_anything_runs(args, plugin_home,
                                                                       tmp_path):
    """The check traces the whole train step, gradient included: `lra preflight` and `lra run
    --no-preflight` stop with one line, and the run generates no data and leaves no folder."""
    data, results = tmp_path / "data", tmp_path / "results"
    folders = ["--data-dir", str(data), "--results-dir", str(results)] if args[0] == "run" else []
    r = runner.invoke(app, ["--config-dir", str(plugin_home), *args, "--model", "p_no_gradient",
                            "--task", "listops", *folders])
    one_error_line(r, "mixer 'plug_no_gradient:Mixer': its gradient cannot be traced",
                   "lax.scan or lax.fori_loop with static bounds")
    assert not data.exists() and not results.exists()
    # a forward-only check (`lra preflight --mode forward`, a forward sweep) lets it through
    from lra_bench.model import check

    paths.set_config_dirs([plugin_home])
    check(config.resolve("p_no_gradient", "listops", "smoke"), gradient=False)


def test_entry_points_are_models_and_a_broken_one_is_one_line(tmp_path, monkeypatch):
    """An installed distribution's `lra_bench.mixers` entry points (a dist-info folder on
    sys.path is what pip leaves), one broken."""
    # JAX reads every distribution's entry points itself when its backends first start (its own
    # plugin discovery), and fails on the broken one: start them before it is on sys.path, as
    # they would be in any process that got this far.
    jax.devices()
    site = tmp_path / "site"
    info = site / "someplug-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: someplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[lra_bench.mixers]\nghost = no_such_module_xyz:Mixer\nsoftmax = plug_ep:Mixer\n")
    (site / "plug_ep.py").write_text(textwrap.dedent(GOOD))
    mangled = site / "mangled-1.0.dist-info"  # its entry_points.txt breaks importlib.metadata's
    mangled.mkdir()
    (mangled / "METADATA").write_text("Metadata-Version: 2.1\nName: mangled\nVersion: 1.0\n")
    (mangled / "entry_points.txt").write_text("[lra_bench.mixers]\nno equals sign\nx =\n")
    monkeypatch.syspath_prepend(str(site))
    assert set(plugins.entry_points()) == {"ghost", "softmax"}
    models = config.available("models")
    assert models["ghost"].source == "plugin someplug"
    # Named like a built-in mixer: reached through its class, never shadowing the built-in.
    assert config.load_spec("models", "softmax")["mixer"]["kind"] == "plug_ep:Mixer"
    assert config.load_spec("models", "transformer")["mixer"]["kind"] == "softmax"
    r = runner.invoke(app, ["list", "models"])
    assert r.exit_code == 0 and "plugin someplug" in r.stdout
    # with the defaults its __init__ declares, read from the source, not imported (issue 28)
    r = runner.invoke(app, ["list", "models", "--format", "json"])
    rows = {row["model"]: row for row in json.loads(r.stdout)["models"]}
    assert rows["softmax"]["options"] == {"scale": 1.0} and rows["ghost"]["options"] == {}
    assert "plug_ep" not in sys.modules
    r = runner.invoke(app, ["preflight", "--model", "ghost", "--task", "listops"])
    one_error_line(r, "mixer plugin 'ghost' (no_such_module_xyz:Mixer, from someplug): cannot "
                   "import no_such_module_xyz", "fix the 'ghost' entry point")
    from lra_bench.model import check

    check(config.resolve("softmax", "listops"))  # builds and traces: the entry point's class
    (tmp_path / "configs" / "models").mkdir(parents=True)
    (tmp_path / "configs" / "models" / "typo.toml").write_text('[mixer]\nkind = "softmaks"\n')
    r = runner.invoke(app, ["--config-dir", str(tmp_path / "configs"), "preflight", "--model",
                            "typo", "--task", "listops"])
    one_error_line(r, "unknown mixer kind 'softmaks'; choose one of: bigbird, fastformer", "ghost",
                   "package.module:Class")


def test_the_install_docs_user_model_and_task_resolve(tmp_path):
    """docs/install.md's example files, as written there."""
    import re

    from lra_bench.model import check

    doc = (paths.PACKAGE_DIR.parent / "docs" / "install.md").read_text()
    blocks = re.findall(r"```toml\n# (my-configs/[\w./-]+)\n(.*?)```", doc, re.S)
    assert len(blocks) == 2
    for path, body in blocks:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(body)
    paths.set_config_dirs([tmp_path / "my-configs"])
    rc = config.resolve("nystrom-32", "listops-short", "smoke")
    assert rc.mixer["num_landmarks"] == 32 and rc.data["max_length"] == 64
    assert rc.model["num_layers"] == 2 and rc.train["steps"] == 200
    assert config.resolve("nystrom-32", "listops", "smoke").model["num_layers"] == 1
    check(rc)


def test_the_docs_plugin_lists_its_default_options(tmp_path, monkeypatch):
    """docs/plugins.md says `lra list models` shows the mean mixer with its default options:
    its module, as written there, gives gate=True without being imported."""
    import re

    doc = (paths.PACKAGE_DIR.parent / "docs" / "plugins.md").read_text()
    (code,) = re.findall(r"```python\n# lra-mean-mixer/mean_mixer.py\n(.*?)```", doc, re.S)
    (tmp_path / "mean_mixer.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert plugins.declared_defaults("mean_mixer:MeanMixer") == {"gate": True}
    assert "mean_mixer" not in sys.modules
