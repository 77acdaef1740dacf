import json

import pandas as pd

from lra_bench import report, results


def _summary(model, task, acc, seed=0, status="completed", preset="lra", last=None):
    return {"run_id": f"{model}-{task}-{seed}", "model": model, "task": task, "preset": preset,
            "seed": seed, "status": status, "test_accuracy": acc,
            "test_accuracy_last": acc if last is None else last, "step_time_ms": 10.0,
            "peak_memory_bytes": 2**20, "memory_source": "xla compiled estimate",
            "compile_time_s": 1.0, "params": 100, "flops_per_step": 1e6, "device_kind": "cpu",
            "batch_size": 32, "max_length": 2000}


def _write(root, summaries):
    for s in summaries:
        results.write_json_atomic(root / "runs" / s["run_id"] / "summary.json", s)


def test_leaderboard_pivots_tasks_aggregates_seeds_and_skips_unfinished(tmp_path):
    _write(tmp_path, [
        _summary("transformer", "listops", 0.36, seed=0), _summary("transformer", "listops", 0.38, seed=1),
        _summary("transformer", "text", 0.64), _summary("linear", "listops", 0.16),
        _summary("linear", "text", 0.9, status="failed"), _summary("linear", "image", 0.5, status="running"),
    ])
    runs, warnings = report.load_runs(tmp_path)
    table = report.accuracy_table(runs).set_index("model")
    assert list(table.columns[:3]) == ["preset", "listops", "text"]
    assert table.loc["transformer", "listops"] == 37.0
    assert round(table.loc["transformer", "listops_std"], 4) == round(pd.Series([36.0, 38.0]).std(), 4)
    assert table.loc["transformer", "listops_n"] == 2
    assert table.loc["transformer", "avg_lra"] == (37.0 + 64.0) / 2
    assert table.loc["transformer", "avg_lra_tasks"] == 2
    # An average is over the tasks a row has, and says how many.
    assert pd.isna(table.loc["linear", "text"]) and table.loc["linear", "avg_lra"] == 16.0
    assert table.loc["linear", "avg_lra_tasks"] == 1
    header, rows = report.accuracy_rows(table.reset_index()[["preset", "model", *table.columns[1:]]])
    assert header == ["preset", "model", "listops", "text", "avg LRA (5 tasks, no Path-X)",
                      "avg 6 (Path-X FAIL = 50)", "selection"]
    assert "16.00 (1/5 tasks)" in rows[[r[1] for r in rows].index("linear")]
    assert "37.00 ± 1.41 (n=2)" in rows[[r[1] for r in rows].index("transformer")]


def test_selection_rule_last_uses_the_final_parameters(tmp_path):
    _write(tmp_path, [_summary("transformer", "listops", 0.40, last=0.30)])
    runs, _ = report.load_runs(tmp_path)
    assert report.accuracy_table(runs, "best").iloc[0]["listops"] == 40.0
    assert report.accuracy_table(runs, "last").iloc[0]["listops"] == 30.0


def test_corrupt_summaries_are_reported_not_fatal(tmp_path):
    _write(tmp_path, [_summary("transformer", "listops", 0.4)])
    bad = tmp_path / "runs" / "broken" / "summary.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"model": "x", "task"')
    runs, warnings = report.load_runs(tmp_path)
    assert len(runs) == 1 and len(warnings) == 1 and "broken" in warnings[0]


def test_markdown_and_json_renderings(tmp_path):
    md = report.markdown(["a", "b"], [["1", "2"]])
    assert md.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]
    df = pd.DataFrame([{"x": 1.5}])
    assert json.loads(report.to_json({"t": df})) == {"t": [{"x": 1.5}]}


def test_published_rows_carry_their_source():
    header, rows = report.published_rows(["listops", "text"])
    assert header[0] == "source"
    transformer = [r for r in rows if r[1] == "Transformer" and "Table 1" in r[0]][0]
    assert transformer[2:4] == ["36.37", "64.27"]


def test_the_recorded_commit_says_when_the_files_differ_from_it(tmp_path, monkeypatch):
    import subprocess

    from lra_bench import measure

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "code.py").write_text("x = 1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    monkeypatch.setattr(measure, "__file__", str(pkg / "measure.py"))
    assert measure.git_commit() == head
    (pkg / "code.py").write_text("x = 2\n")  # files newer than the commit
    assert measure.git_commit() == head + "-dirty"
    monkeypatch.setattr(measure, "__file__", "/measure.py")
    assert measure.git_commit() == "unknown"


def test_a_runs_experiment_is_its_preset_plus_the_settings_that_change_its_result():
    from lra_bench.report import experiment

    assert experiment("quick", []) == "quick"
    assert experiment("quick", ["train.steps=20"]) == "quick [train.steps=20]"
    assert experiment("lra", ['model.dtype="bfloat16"', "train.grad_accum=4"]) == \
        'lra [model.dtype="bfloat16"]'  # accumulation computes the same step
    assert experiment("lra", ["train.checkpoint_every=100", "train.log_every=5"]) == "lra"
    assert experiment("s", ["b.y=1", "a.x=2"]) == "s [a.x=2, b.y=1]"  # order-free
