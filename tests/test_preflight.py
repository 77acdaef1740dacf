import jax
import pytest
from typer.testing import CliRunner

from lra_bench import config, measure, preflight, sizes
from lra_bench.cli import app
from lra_bench.data import synthetic
from lra_bench.errors import UserError
from lra_bench.trainer import build

runner = CliRunner()
TINY = ["model.num_layers=1", "model.emb_dim=16", "model.qkv_dim=16", "model.mlp_dim=16",
        "model.num_heads=2", "train.batch_size=2"]


def test_abstract_compile_allocates_nothing_and_matches_the_real_step():
    rc = config.resolve("transformer", "listops", "smoke", overrides=TINY)
    before = {id(a) for a in jax.live_arrays()}
    step = preflight.compile_abstract(rc, "train")
    new = [a for a in jax.live_arrays() if id(a) not in before]
    assert sum(a.nbytes for a in new) < 4 * step.params  # not even one copy of the parameters
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(step.state))

    real = build(rc)
    batch = {k: jax.numpy.asarray(v) for k, v in synthetic.make_split(rc.data, 2, 0).items()}
    compiled = real.train_step.lower(real.init_state, batch).compile()
    assert step.peak_bytes == measure.compiled_memory_estimate(compiled) > 0
    assert step.flops == measure.cost_flops(compiled) > 0
    # The abstract executable runs on concrete arrays: the sweep times exactly what it estimated.
    state, metrics = step.compiled(real.init_state, batch)
    assert int(state["step"]) == 1 and float(metrics["loss"]) > 0

    assert preflight.fits(step, preflight.Capacity(step.peak_bytes, "x")) is True
    assert preflight.fits(step, preflight.Capacity(step.peak_bytes - 1, "x")) is False
    assert preflight.fits(step, preflight.Capacity(None, "x")) is None


@pytest.mark.parametrize("text, expected", [
    ("512MB", 512_000_000), ("1.5GiB", 3 * 2**29), ("2g", 2_000_000_000), ("1000", 1000),
    ("16 KiB", 16384)])
def test_memory_sizes_parse(text, expected):
    assert sizes.parse_bytes(text) == expected


@pytest.mark.parametrize("n, shown", [
    (1_436_549, "1.37 MiB"), (1500, "1.46 KiB"), (512, "512 B"), (3 * 2**30, "3.00 GiB"),
    (None, "unknown"), (float("nan"), "unknown")])
def test_memory_sizes_print_in_the_unit_that_fits(n, shown):
    """Never "0.00137 GiB" (issue 28, case 14): the one helper every command prints with."""
    assert sizes.format_bytes(n) == shown


def test_memory_size_typos_are_user_errors():
    with pytest.raises(UserError, match="cannot read memory size '2 parsecs'"):
        sizes.parse_bytes("2 parsecs")


def test_capacity_is_the_limit_else_free_ram_on_cpu(monkeypatch):
    monkeypatch.delenv("LRA_MEMORY_LIMIT", raising=False)
    cpu = preflight.device_capacity()
    assert cpu.bytes > 0 and "MemAvailable" in cpu.source
    monkeypatch.setenv("LRA_MEMORY_LIMIT", "3MB")
    assert preflight.device_capacity() == preflight.Capacity(3_000_000, "memory limit")
    assert preflight.device_capacity("1KiB").bytes == 1024


def test_preflight_command_and_run_refuse_what_does_not_fit(data_dir, results_dir, monkeypatch):
    sets = [x for s in TINY for x in ("--set", s)]
    r = runner.invoke(app, ["preflight", "-m", "transformer", "-t", "listops", *sets,
                            "--memory-limit", "10KB"])
    assert r.exit_code == 1, r.output
    for text in ("estimated peak memory", " (XLA compiled estimate", "FLOPs per step",
                 "softmax attention      query blocks x 1",
                 "9.77 KiB (memory limit)", "DOES NOT FIT",
                 "no batch size fits at data.max_length=128: shorten data.max_length"):
        assert text in r.stdout, text

    monkeypatch.setenv("LRA_MEMORY_LIMIT", "10KB")
    r = runner.invoke(app, ["run", "-m", "transformer", "-t", "listops", *sets, "--data-dir",
                            str(data_dir), "--results-dir", str(results_dir)])
    assert r.exit_code == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: transformer/listops needs ") and "9.77 KiB is available" in line
    assert "no batch size fits at data.max_length=128" in line
    assert not results_dir.exists()


def test_the_suggested_batch_is_one_that_fits(monkeypatch):
    import re

    sets = [x for s in [*TINY[:-1], "train.batch_size=64"] for x in ("--set", s)]
    args = ["preflight", "-m", "transformer", "-t", "listops", *sets]
    full = preflight.compile_abstract(config.resolve(
        "transformer", "listops", "smoke", overrides=[*TINY[:-1], "train.batch_size=64"]))
    limit = str(full.peak_bytes // 3)  # about a third of what batch 64 needs
    r = runner.invoke(app, [*args, "--memory-limit", limit])
    assert r.exit_code == 1, r.output
    batch = int(re.search(r"--set train\.batch_size=(\d+) fits \(.*, checked\)", r.stdout)[1])
    assert 1 <= batch < 64
    r = runner.invoke(app, [*args, "--set", f"train.batch_size={batch}", "--memory-limit", limit])
    assert r.exit_code == 0 and "verdict                fits" in r.stdout, r.output
    # (when not even one row fits, it says so instead: the 10KB case above)
