import csv
import json
import shutil

import pytest
from typer.testing import CliRunner

from lra_bench import paths, sweep
from lra_bench.cli import app

runner = CliRunner()
TINY = ["model.num_layers=1", "model.emb_dim=16", "model.qkv_dim=16", "model.mlp_dim=16",
        "model.num_heads=2"]
# XLA's estimate for TINY at batch 2 is ~67 KB at length 8 and ~390 KB at 64: a 160 KB device
# fits the first and not the second.
LIMIT = "160KB"


def sweep_args(results_dir, *extra):
    sets = [x for s in TINY for x in ("--set", s)]
    return ["sweep", "--task", "listops", "--preset", "smoke", "--models", "transformer,broken",
            "--lengths",
            "8,64,256", "--batch-size", "2", "--steps", "2", "--warmup", "1", "--memory-limit",
            LIMIT, *sets, "--results-dir", str(results_dir), *extra]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """The shipped ListOps task and Transformer, plus `broken`: a model that builds (so the sweep's
    up-front check passes it) but whose step cannot be traced (a fractional chunk size), so every
    point of it raises inside its worker process; and `refused`, whose mixer rejects its options."""
    root = tmp_path_factory.mktemp("home")
    (root / "tasks").mkdir()
    (root / "models").mkdir()
    shutil.copy(paths.tasks_dir() / "listops.toml", root / "tasks")
    shutil.copy(paths.models_dir() / "transformer.toml", root / "models")
    (root / "models" / "broken.toml").write_text('[mixer]\nkind = "topk"\nchunk_size = 2.5\n')
    (root / "models" / "refused.toml").write_text('[mixer]\nkind = "softmax"\nno_such_option = 1\n')
    return root


@pytest.fixture(scope="module")
def swept(home, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LRA_HOME", str(home))
        r = runner.invoke(app, sweep_args(results))
    assert r.exit_code == 0, r.output
    (json_path,) = (results / "sweeps").glob("*.json")
    return results, json_path.stem, r


def _rows(results, sweep_id):
    with open(results / "sweeps" / f"{sweep_id}.csv") as f:
        return {(r["model"], int(r["length"])): r for r in csv.DictReader(f)}


def test_each_point_is_isolated_and_failures_become_rows(swept):
    results, sweep_id, r = swept
    rows = _rows(results, sweep_id)
    assert set(rows) == {(m, n) for m in ("broken", "transformer") for n in (8, 64, 256)}
    ok = rows[("transformer", 8)]
    assert ok["status"] == "ok" and ok["memory_source"] == "xla compiled estimate"
    assert float(ok["steps_per_second"]) > 0 and int(ok["timed_steps"]) == 2
    # tokens/s = batch * length / median step time
    assert float(ok["tokens_per_second"]) == pytest.approx(2 * 8 * 1000 / float(ok["step_time_ms"]))
    assert float(ok["flops_per_step"]) > 0 and float(ok["compile_time_s"]) > 0
    assert int(ok["peak_memory_bytes"]) == int(ok["xla_estimate_bytes"]) <= 160_000
    assert ok["device_kind"] and ok["jax_version"] and ok["dtype"] == "float32"
    assert ok["attention"].startswith("explicit x ")  # 8 tokens: the small form on CPU
    # Every point of the broken model raised in its own process; the sweep went on past them.
    for n in (8, 64, 256):
        assert rows[("broken", n)]["status"] == "error" and rows[("broken", n)]["message"]
    lines = [x for x in r.stderr.splitlines() if x.startswith("[")]
    assert len(lines) == 6 and lines[-1].startswith("[6/6]")
    assert "transformer" in r.stdout and "OOM" in r.stdout


def test_oom_is_recorded_and_longer_lengths_are_not_run(swept):
    results, sweep_id, _ = swept
    rows = _rows(results, sweep_id)
    oom = rows[("transformer", 64)]
    assert oom["status"] == "OOM" and "needs" in oom["message"] and "memory limit" in oom["message"]
    assert int(oom["xla_estimate_bytes"]) > 160_000
    skipped = rows[("transformer", 256)]
    assert skipped["status"] == "OOM" and skipped["message"] == "not run: OOM at length 64"
    assert skipped["xla_estimate_bytes"] == "" and float(skipped["wall_time_s"]) < 1.0


def test_csv_schema_and_json_agree(swept):
    results, sweep_id, _ = swept
    with open(results / "sweeps" / f"{sweep_id}.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == sweep.COLUMNS
        rows = list(reader)
    doc = json.loads((results / "sweeps" / f"{sweep_id}.json").read_text())
    assert doc["settings"]["lengths"] == [8, 64, 256] and doc["settings"]["overrides"] == TINY
    assert len(doc["rows"]) == len(rows) == 6
    assert {r["status"] for r in rows} <= set(sweep.STATUSES)
    assert all(r["sweep_id"] == sweep_id and r["task"] == "listops" for r in rows)
    assert not list((results / "sweeps").glob(".*.tmp"))  # atomic writes leave no temp files


def test_resume_runs_only_the_missing_points(swept, home, tmp_path, monkeypatch):
    results, sweep_id, _ = swept
    shutil.copytree(results / "sweeps", tmp_path / "sweeps")
    doc_path = tmp_path / "sweeps" / f"{sweep_id}.json"
    doc = json.loads(doc_path.read_text())
    kept = [r for r in doc["rows"] if r["length"] != 256]  # as if interrupted before length 256
    doc_path.write_text(json.dumps({**doc, "rows": kept}))
    monkeypatch.setenv("LRA_HOME", str(home))
    r = runner.invoke(app, ["sweep", "--resume", sweep_id, "--results-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert f"resuming sweep {sweep_id}" in r.stderr and "(4 of its points done)" in r.stderr
    after = json.loads(doc_path.read_text())["rows"]
    assert after[:4] == kept  # finished points untouched
    new = {r["model"]: r for r in after[4:]}
    assert set(new) == {"broken", "transformer"} and all(r["length"] == 256 for r in after[4:])
    # The OOM rule also applies to rows from before the interruption.
    assert new["transformer"]["message"] == "not run: OOM at length 64"
    assert new["broken"]["status"] == "error"
    assert len(_rows(tmp_path, sweep_id)) == 6


def test_a_hung_point_times_out_and_a_killed_one_reads_as_oom():
    s = sweep.Settings(task="listops", preset="smoke", models=["transformer"], lengths=[8],
                       batch_size=2, steps=1, overrides=TINY, timeout_s=0.05)
    row = sweep.run_point(s, "transformer", 8)
    assert row["status"] == "timeout" and "0.05 s" in row["message"]
    assert sweep.dead_worker_row(-9, "")["status"] == "OOM"
    assert sweep.dead_worker_row(1, "jaxlib.XlaRuntimeError: RESOURCE_EXHAUSTED: x")["status"] == "OOM"
    crashed = sweep.dead_worker_row(-11, "line 1\nSegmentation fault")
    assert crashed["status"] == "error" and "Segmentation fault" in crashed["message"]


@pytest.mark.parametrize("args, message", [
    (["--models", "nope"], "unknown model(s) nope"),
    (["--lengths", "0,12x"], "--lengths: 0 is not a length"),
    (["--set", "train.bogus=1"], "unknown key 'train.bogus'"),
    (["--mode", "infer"], "unknown mode 'infer'"),
    (["--memory-limit", "lots"], "cannot read memory size 'lots'"),
    (["--resume", "nope"], "no sweeps in"),
])
def test_bad_sweep_options_are_one_line_errors_and_write_nothing(args, message, tmp_path):
    r = runner.invoke(app, ["sweep", *args, "--task", "listops", "--preset", "smoke",
                            "--results-dir", str(tmp_path / "r")])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not (tmp_path / "r").exists()


def test_unrunnable_points_are_refused_before_the_sweep_starts(home, tmp_path, monkeypatch):
    monkeypatch.setenv("LRA_HOME", str(home))
    r = runner.invoke(app, ["sweep", "--task", "listops", "--preset", "smoke", "--models",
                            "transformer,refused", "--lengths", "8,16", "--results-dir",
                            str(tmp_path / "r")])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot run refused at length 8: ")
    assert "no_such_option" in lines[0] and "refused at length 16" in lines[0]
    assert not (tmp_path / "r").exists()


def test_a_length_a_schedule_cannot_reach_is_refused_with_model_length_and_why(tmp_path):
    r = runner.invoke(app, ["sweep", "--task", "listops", "--preset", "smoke", "--models", "topk",
                            "--lengths", "64,512", "--set", "mixer.pool_lengths=[128]",
                            "--results-dir", str(tmp_path / "r")])
    assert r.exit_code == 2, r.output
    (line,) = r.stderr.strip().splitlines()
    assert "topk at length 64" in line and "longer than its 64-token input" in line
    assert "512" not in line.split("topk at length 64")[0]


def test_image_points_get_a_grid_that_covers_their_length():
    s = sweep.Settings(task="image", preset="smoke", batch_size=1)
    grids = {n: [o for o in sweep.point_overrides(s, n) if o.startswith("data.grid")]
             for n in (512, 1024, 3072, 1000)}
    assert grids == {512: ["data.grid=[16, 32]"], 1024: [], 3072: ["data.grid=[96, 32]"],
                     1000: []}


def test_lengths_parse_k_suffix_and_sort():
    assert sweep.parse_lengths("4K, 1024,2k,1024") == [1024, 2048, 4096]


def test_a_points_warnings_reach_its_row_and_progress_line():
    import logging

    from lra_bench import sweep_worker

    log = sweep_worker.WarningLog()
    try:
        logging.getLogger("lra_bench").warning("fused attention rejected for q %s", (2, 8))
        logging.getLogger("lra_bench.sub").info("not a warning")
    finally:
        logging.getLogger("lra_bench").removeHandler(log)
    assert log.lines == ["fused attention rejected for q (2, 8)"]
    row = {"model": "transformer", "length": 4096, "status": "ok", "steps_per_second": 6.0,
           "tokens_per_second": 8e5, "peak_memory_bytes": 2**30, "memory_source": "device",
           "flops_per_step": 1e12, "compile_time_s": 15.0,
           "message": "warning: fused attention rejected"}
    assert sweep.progress_line(1, 2, row).endswith("compile 15.0 s  warning: fused attention rejected")


# LRA Table 1's nine attentions and the two state space models (issues 30 and 32).
NEW_MODELS = ("local", "sparse_transformer", "longformer", "linformer", "reformer", "sinkhorn",
              "synthesizer", "bigbird", "performer", "s4d", "s5")


def test_models_all_includes_the_table1_attentions_and_the_state_space_models(monkeypatch):
    monkeypatch.setattr(sweep, "refuse_unrunnable", lambda s: None)  # names only: no child process
    settings = sweep.plan("listops", "all", "32", "smoke", batch_size=1, steps=1, warmup=0,
                          overrides=TINY)
    assert set(NEW_MODELS) <= set(settings.models)


def test_each_new_mixer_gives_a_sweep_row_at_a_tiny_length(tmp_path, monkeypatch, fast_compile):
    """`lra sweep` over the eleven: the up-front check in its child process, then each point
    measured and recorded as an ok row. Kept cheap: the points run in this process (one jax
    import instead of eleven; process isolation is the `swept` tests' subject), forward only
    (every model's train step is compiled by tests/test_matrix.py), with most XLA passes off:
    about 1 s of CPU a model, 15 s of CPU in all (34 s wall on 2 cores at load 11)."""
    from lra_bench import sweep_worker  # jax: the parent sweep module never imports it

    def in_process(s, model, length):
        row = {"status": "error", "message": ""}
        sweep_worker.measure_point(sweep.point_spec(s, model, length), row)
        return row

    monkeypatch.setattr(sweep, "run_point", in_process)
    sets = [x for s in TINY for x in ("--set", s)]
    r = runner.invoke(app, ["sweep", "--task", "listops", "--preset", "smoke", "--models",
                            ",".join(NEW_MODELS), "--lengths", "32", "--batch-size", "1",
                            "--steps", "1", "--warmup", "0", "--mode", "forward", *sets,
                            "--results-dir",
                            str(tmp_path)])
    assert r.exit_code == 0, r.output
    (json_path,) = (tmp_path / "sweeps").glob("*.json")
    rows = _rows(tmp_path, json_path.stem)
    assert sorted(m for m, _ in rows) == sorted(NEW_MODELS)
    for (model, length), row in rows.items():
        assert length == 32 and row["status"] == "ok", (model, row["message"])
        assert float(row["steps_per_second"]) > 0 and int(row["params"]) > 0, model
