"""Data parallelism, multi-host, bf16 and gradient accumulation.

Runs on several host devices need XLA_FLAGS before JAX starts, so they happen in subprocesses:
`scaling_worker.py` (4 devices, one process) and `lra run` twice (2 processes x 2 devices).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jcore

from typer.testing import CliRunner

from lra_bench import config, data, distributed
from lra_bench.cli import app
from lra_bench.data import synthetic
from lra_bench.errors import UserError
from lra_bench.trainer import build, out_of_memory_error, train_and_evaluate
from step_checks import check_test_accuracies

ROOT = Path(__file__).resolve().parents[1]
# A tiny run with a visible loss curve: constant lr, no warm-up, an eval after every step. No
# dropout, so that 4 micro-batches (which draw their own dropout masks) must give the same curve.
CURVE = ['data.loader="synthetic"', "data.max_length=32", "train.batch_size=16", "train.steps=6",
         "train.eval_every=1", "train.eval_batches=1", 'train.schedule="constant"',
         "train.learning_rate=1e-3", "train.warmup_steps=0", "model.num_layers=1",
         "model.dropout=0.0"]
TOL = dict(rtol=1e-4, atol=1e-5)


def _env(devices: int) -> dict:
    # These processes are compile-bound: skipping LLVM's optimisations saves ~40% of their time.
    # XLA ends a process whose CPU devices do not all reach a collective within 40 s; on a loaded
    # 2-core machine one of four device threads can be that late (seen once, beside a training run).
    flags = (f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
             " --xla_cpu_collective_call_terminate_timeout_seconds=600")
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), "XLA_FLAGS": flags}


@pytest.fixture(scope="module")
def four_devices():
    worker = ROOT / "tests" / "scaling_worker.py"
    r = subprocess.run([sys.executable, str(worker), json.dumps(CURVE)], env=_env(4),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_four_devices_give_the_one_device_loss_curve(four_devices):
    one, four = four_devices["one"], four_devices["four"]
    assert one["describe"]["mesh_shape"] == {"data": 1}
    assert four["describe"] == {"device_count": 4, "process_count": 1, "mesh_shape": {"data": 4},
                                "grad_accum": 1, "micro_batch_size": 16, "dtype": "float32"}
    assert len(one["train_loss"]) == 6 and np.ptp(one["val_loss"]) > 1e-3  # the model learns
    np.testing.assert_allclose(four["train_loss"], one["train_loss"], **TOL)
    np.testing.assert_allclose(four["val_loss"], one["val_loss"], **TOL)


def test_grad_accum_4_equals_one_step_on_the_4_times_larger_batch(four_devices):
    """4 micro-batches of 4 rows (one per device) per step give the curve of whole 16-row steps:
    the same losses at every step, so the same parameters."""
    one, k4 = four_devices["one"], four_devices["four_k4"]
    assert k4["describe"]["grad_accum"] == 4 and k4["describe"]["micro_batch_size"] == 4
    np.testing.assert_allclose(k4["train_loss"], one["train_loss"], **TOL)
    np.testing.assert_allclose(k4["val_loss"], one["val_loss"], **TOL)


def test_a_batch_the_devices_cannot_split_is_a_user_error(four_devices):
    assert four_devices["indivisible"] == (
        "train.batch_size 6 is not divisible by the 4 devices; set train.batch_size to a "
        "multiple of 4")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(*args, results: Path, data_dir: Path) -> list[tuple[str, str]]:
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "lra_bench", "run", *map(str, args), "--data-dir", str(data_dir),
         "--results-dir", str(results), "--coordinator", f"127.0.0.1:{port}",
         "--num-processes", "2", "--process-id", str(i)],
        env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return outs


def test_two_hosts_give_the_one_device_curve_checkpoint_together_and_resume(four_devices,
                                                                           tmp_path):
    results = tmp_path / "results"
    sets = [a for s in [*CURVE, "train.checkpoint_every=3"] for a in ("--set", s)]
    outs = _two_processes("-m", "transformer", "-t", "listops", *sets, results=results,
                          data_dir=tmp_path)
    assert "test acc" in outs[0][0] and "test acc" not in outs[1][0]
    (run,) = (results / "runs").iterdir()  # one run folder, which process 0 writes
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["process_count"], summary["device_count"], summary["mesh_shape"]) == \
        (2, 4, {"data": 4})
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    one = four_devices["one"]
    np.testing.assert_allclose([e["train_loss"] for e in evals], one["train_loss"], **TOL)
    np.testing.assert_allclose([e["val_loss"] for e in evals], one["val_loss"], **TOL)
    assert summary["checkpoint_step"] == 6
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["3", "6"]

    # As if both processes were killed after the checkpoint at step 3: resumed on two processes,
    # the run ends exactly as it did uninterrupted.
    import shutil

    shutil.rmtree(run / "checkpoints" / "6")
    (run / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    outs = _two_processes("--resume", run.name, results=results, data_dir=tmp_path)
    assert "resumed from step 3" in outs[0][0]
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["status"] == "completed" and resumed["resumed_from_steps"] == [3]
    again = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in again] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([e["train_loss"] for e in again], one["train_loss"], **TOL)
    np.testing.assert_allclose([e["val_loss"] for e in again], one["val_loss"], **TOL)
    assert resumed["test_accuracy"] == summary["test_accuracy"]


def test_a_signal_to_one_host_stops_every_host_at_the_same_step_with_a_checkpoint(tmp_path):
    import signal
    import time

    results, port = tmp_path / "results", _free_port()
    sets = [a for s in [*CURVE, "train.steps=100000", "train.eval_every=50",
                        "train.checkpoint_every=100000"] for a in ("--set", s)]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "lra_bench", "run", "-m", "transformer", "-t", "listops", *sets,
         "--data-dir", str(tmp_path), "--results-dir", str(results), "--coordinator",
         f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
        env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    deadline = time.time() + 300
    while time.time() < deadline and not list(results.glob("runs/*/metrics.jsonl")):
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)  # process 0 gets none
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [130, 143], [o[1][-2000:] for o in outs]
    (run,) = (results / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "another process's signal"
    step = summary["interrupted_step"]
    assert summary["checkpoint_step"] == step > 0  # both saved it, at the step they agreed on
    assert "lra run --resume" in outs[0][1]


def _resolve(*sets, model="transformer"):
    return config.resolve(model, "listops", "smoke", overrides=list(sets))


def test_grad_accum_scans_over_k_micro_batches_of_the_batch():
    rc = _resolve("train.batch_size=16", "train.grad_accum=4", "data.max_length=32")
    steps = build(rc)
    batch = {k: jnp.asarray(v) for k, v in synthetic.make_split(rc.data, 16, seed=0).items()}
    eqns = list(_eqns(jax.make_jaxpr(steps.train_step)(steps.init_state, batch)))
    scans = [e for e in eqns if e.primitive.name == "scan"]
    nested = {id(e) for s in scans for e in _eqns(s.params["jaxpr"])}  # e.g. attention's blocks
    (scan,) = [e for e in scans if id(e) not in nested]
    assert scan.params["length"] == 4
    # Inside the scan the model sees 4-row micro-batches: (4, 1 + 32 tokens, dim) activations.
    inner = {tuple(v.aval.shape[:2]) for e in _eqns(scan.params["jaxpr"]) for v in e.outvars
             if len(getattr(v.aval, "shape", ())) == 3}
    assert (4, 33) in inner and not any(rows == 16 for rows, _ in inner)


def test_grad_accum_must_divide_the_batch():
    with pytest.raises(UserError, match=r"train.grad_accum \(3\) must be > 0 and divide"):
        _resolve("train.batch_size=8", "train.grad_accum=3")


def test_out_of_memory_names_grad_accum_and_bf16():
    rc = _resolve("train.batch_size=32")
    e = jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
    msg = str(out_of_memory_error(e, rc, device_count=8))
    assert "--grad-accum 2 " in msg and "--dtype bfloat16" in msg and "8 device(s)" in msg
    # 32 rows on 32 devices cannot be split further: no accumulation to suggest.
    assert "--grad-accum" not in str(out_of_memory_error(e, rc, device_count=32))
    assert out_of_memory_error(ValueError("out of memory"), rc, 1) is None


def _eqns(jaxpr):
    """Every equation of a traced program, sub-programs (jit, scan, cond, remat) included."""
    for e in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        yield e
        for v in e.params.values():
            for x in v if isinstance(v, (tuple, list)) else (v,):
                if isinstance(x, (jcore.ClosedJaxpr, jcore.Jaxpr)):
                    yield from _eqns(x)


def _dot_flops(e) -> float:
    (lhs_contract, _), _ = e.params["dimension_numbers"]
    contract = np.prod([e.invars[0].aval.shape[d] for d in lhs_contract])
    return 2.0 * np.prod(e.outvars[0].aval.shape) * contract


def _bf16_share_and_islands(model: str, dtype: str):
    rc = _resolve(f'model.dtype="{dtype}"', "model.attention_dropout=0.1", model=model)
    steps = build(rc)
    batch = {k: jnp.asarray(v) for k, v in synthetic.make_split(rc.data, 2, seed=0).items()}
    eqns = list(_eqns(jax.make_jaxpr(steps.train_step)(steps.init_state, batch)))
    dots = [e for e in eqns if e.primitive.name == "dot_general"]
    bf16 = sum(_dot_flops(e) for e in dots
               if all(v.aval.dtype == jnp.bfloat16 for v in e.invars))
    low_precision_exp = [e for e in eqns if e.primitive.name in ("exp", "log", "logistic")
                         and e.invars[0].aval.dtype in (jnp.bfloat16, jnp.float16)]
    return bf16 / sum(_dot_flops(e) for e in dots), low_precision_exp, steps


@pytest.mark.parametrize("model", config.available("models"))
def test_bf16_models_do_their_matrix_work_in_bf16_with_float32_islands(model):
    share, low_exp, steps = _bf16_share_and_islands(model, "bfloat16")
    # Most matmul FLOPs (forward and backward) run in bf16; islands may keep a few in float32.
    assert share > 0.6, f"only {share:.0%} of the matmul FLOPs run in bf16"
    assert not low_exp, [str(e) for e in low_exp]  # softmax / exp kernels / loss in float32
    kinds = {x.dtype for x in jax.tree.leaves(steps.init_state["params"])}
    assert kinds == {jnp.dtype(jnp.float32)}  # parameters (and so Adam's moments) stay float32
    assert _bf16_share_and_islands(model, "float32")[0] == 0.0


@pytest.mark.parametrize("model", config.available("models"))
def test_bf16_training_on_the_smoke_preset_stays_finite(model, data_dir, fast_compile):
    rc = config.resolve(model, "listops", "smoke", steps=10, overrides=[
        'model.dtype="bfloat16"', "train.eval_every=10", "train.eval_batches=1",
        "train.batch_size=16", "model.num_layers=1"])
    splits = data.load(rc, data_dir)
    out = train_and_evaluate(rc, splits)  # raises Diverged on a NaN loss
    assert np.isfinite(out["final_train_loss"]) and np.isfinite(out["test_loss"])
    assert out["dtype"] == "bfloat16"
    check_test_accuracies(out, len(splits["test"]["labels"]))


def test_launches_of_several_processes_are_recognised():
    several = distributed.launched_as_several_processes
    assert not several({}) and not several({"SLURM_NTASKS": "4", "OMPI_COMM_WORLD_SIZE": "1"})
    assert several({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert several({"SLURM_STEP_NUM_TASKS": "2"}) and several({"OMPI_COMM_WORLD_SIZE": "8"})


@pytest.mark.parametrize("args, message", [
    (["--grad-accum", "3"], "train.grad_accum (3) must be > 0 and divide train.batch_size (32)"),
    (["--dtype", "float16"], "model.dtype must be float32 or bfloat16"),
    (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"],
     "--process-id must be in [0, 2)"),
    (["--set", "train.batch_size=8"], "not divisible by the 3 devices"),  # see the fake below
])
def test_scaling_user_errors_are_one_line_and_leave_nothing(args, message, tmp_path, monkeypatch):
    three = distributed.DataParallel.over()
    monkeypatch.setattr(distributed.DataParallel, "device_count", property(lambda self: 3))
    monkeypatch.setattr(distributed.DataParallel, "over", classmethod(lambda cls, d=None: three))
    r = CliRunner().invoke(app, ["run", "-m", "transformer", "-t", "listops", "--set",
                                 'data.loader="synthetic"', *args, "--results-dir",
                                 str(tmp_path / "results")])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not list(tmp_path.rglob("*.json"))  # the run folder made before training is gone
