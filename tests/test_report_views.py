"""The report's views: majority-class rows, both averages, protocol blocks, every export, the
learning-curve plot and the two-run comparison (issue 13)."""

import json
import struct

import numpy as np
import pytest
from typer.testing import CliRunner

from lra_bench import report, results
from lra_bench.cli import app
from lra_bench.run import majority_share

runner = CliRunner()


def _run(root, model, task, acc, seed=0, preset="quick", last=None, majority=0.18, **extra):
    run_id = f"{preset}-{model}-{task}-{seed}"
    s = {"run_id": run_id, "model": model, "task": task, "preset": preset, "seed": seed,
         "status": "completed", "test_accuracy": acc,
         "test_accuracy_last": acc if last is None else last, "step_time_ms": 10.0,
         "peak_memory_bytes": 2**20, "memory_source": "xla compiled estimate",
         "compile_time_s": 1.0, "params": 100, "flops_per_step": 1e6, "device_kind": "cpu",
         "batch_size": 32, "max_length": 128, "started_at": f"2026-01-01T00:00:0{seed}",
         **({"test_majority": majority} if majority is not None else {}), **extra}
    folder = root / "runs" / run_id
    results.write_json_atomic(folder / "summary.json", s)
    results.write_json_atomic(folder / "config.json", {
        "model_name": model, "task_name": task, "preset": preset, "seed": seed,
        "model": {"emb_dim": 64, "num_layers": 2}, "train": {"steps": 300, "seed_note": seed}})
    with open(folder / "metrics.jsonl", "w") as f:
        for step in (100, 200, 300):
            f.write(json.dumps({"step": step, "train_loss": 2.3 - step / 1000 - seed / 100,
                                "val_accuracy": 0.18 + (acc - 0.18) * step / 300}) + "\n")
    return run_id


def test_majority_share_is_the_most_frequent_class():
    assert majority_share(np.array([0, 1, 1, 2, 1])) == pytest.approx(0.6)


def test_the_majority_row_is_the_test_splits_majority(tmp_path):
    """A new run records the majority share of its test split (and its validation split's),
    not the training split's: here the three differ (train 90% class 0, val 75% class 1, test
    60% class 2), so reading any other split fails (issue 28, case 16)."""
    from lra_bench import config, run

    rc = config.resolve("transformer", "listops", "smoke")

    def split(labels):
        return {"inputs": np.ones((len(labels), 4), np.int32), "labels": np.asarray(labels)}

    splits = {"train": split([0] * 9 + [1]), "val": split([1, 1, 1, 0]),
              "test": split([2, 2, 2, 0, 1])}
    _, summary = run._new_run(rc, splits, tmp_path, None)
    assert summary["test_majority"] == pytest.approx(0.6)
    assert summary["val_majority"] == pytest.approx(0.75)
    saved = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert saved["test_majority"] == pytest.approx(0.6)


def test_each_split_has_its_own_majority(tmp_path):
    _run(tmp_path, "transformer", "listops", 0.40, majority=0.163, val_majority=0.112)
    runs = report.finished_runs(report.normalise(report.load_runs(tmp_path)[0]))
    val = report.majority_shares(runs, "val")
    test = report.majority_shares(runs)
    assert val["val_majority"].tolist() == [0.112] and test["test_majority"].tolist() == [0.163]


def test_every_preset_gets_a_majority_class_row_from_its_runs(tmp_path):
    _run(tmp_path, "transformer", "listops", 0.40, majority=0.161)
    _run(tmp_path, "linear", "listops", 0.30, majority=None)  # an older summary: no field
    _run(tmp_path, "transformer", "listops", 0.36, preset="lra", majority=0.172)
    runs, _ = report.load_runs(tmp_path)
    table = report.accuracy_table(runs)
    base = table[table["model"] == report.BASELINE].set_index("preset")
    assert base.loc["quick", "listops"] == pytest.approx(16.1)
    assert base.loc["lra", "listops"] == pytest.approx(17.2)
    # The baseline row follows its preset's runs.
    assert list(table["model"]) == ["transformer", report.BASELINE, "linear", "transformer",
                                    report.BASELINE]
    _, rows = report.accuracy_rows(table)
    assert ["quick", report.BASELINE, "16.10"] == rows[-1][:3]


def test_lra_and_six_task_averages_of_published_rows():
    pub = report.published_accuracy().set_index(["protocol", "model"])
    t = pub.loc[("lra", "Transformer")]
    assert t["avg_lra"] == pytest.approx(54.388) and t["avg_lra_tasks"] == 5
    # The later convention: a failed Path-X counts as 50.
    assert t["avg_6"] == pytest.approx((36.37 + 64.27 + 57.46 + 42.44 + 71.40 + 50) / 6)
    s4 = pub.loc[("s4", "S4")]
    assert s4["avg_6"] == pytest.approx(86.09, abs=0.005) and s4["avg_6_tasks"] == 6
    assert s4["attention_based"] == "no"
    # No Path-X figure at all: the six-task average says it has five.
    assert pub.loc[("nystrom", "Nystromformer"), "avg_6_tasks"] == 5


def test_published_blocks_hold_only_runs_of_their_protocol(tmp_path):
    _run(tmp_path, "transformer", "listops", 0.40, preset="lra", last=0.33,
         test_accuracy_best_val=0.40, selection="best_val")
    _run(tmp_path, "transformer", "listops", 0.50, preset="quick")
    runs, _ = report.load_runs(tmp_path)
    blocks = {name: (title, rows) for name, title, _, (_, rows) in report.published_blocks(runs)}
    assert set(blocks) == {"published_lra", "reproduced_lra", "published_nystrom",
                           "published_s4", "published_s5", "published_later"}
    lra_title, lra_rows = blocks["published_lra"]
    assert "last parameters" in lra_title
    ours = [r for r in lra_rows if r[0].startswith("lra-bench, --preset lra")]
    assert len(ours) == 1 and ours[0][2] == "33.00"  # LRA's rule: the last parameters
    assert not any(r[0].startswith("lra-bench") for r in blocks["published_nystrom"][1])
    assert "best-validation" in blocks["published_nystrom"][0]


def test_runs_beside_their_published_figure(tmp_path):
    for seed, acc in enumerate((0.36, 0.38)):
        _run(tmp_path, "nystromformer", "listops", acc, seed=seed, preset="nystrom",
             selection="best_val", test_accuracy_best_val=acc)
    _run(tmp_path, "transformer", "listops", 0.30, preset="lra", selection="last")
    _run(tmp_path, "linear", "listops", 0.20, preset="lra", selection="last")
    _run(tmp_path, "fourier", "text", 0.60, preset="nystrom", selection="best_val",
         test_accuracy_best_val=0.60)
    runs, _ = report.load_runs(tmp_path)
    blocks = {name: (title, rows) for name, title, _, (_, rows) in report.published_blocks(runs)}
    title, rows = blocks["reproduced_nystrom"]
    by_model = {r[0].rstrip("‡†*§"): r for r in rows}
    ny = by_model["nystromformer"]
    assert ny[2] == "37.00 ± 1.41 (n=2)" and ny[3].startswith("37.15 (Nystromformer")
    assert ny[4] == "-0.15" and ny[5] == "inside the spread (|d| = 0.1 sd)"
    assert by_model["fourier"][3:] == ["-", "-", "no published figure"]
    assert "‡ ListOps tokens" in title and "† Text length" in title
    title, rows = blocks["reproduced_lra"]
    by_model = {r[0]: r for r in rows}
    assert by_model["transformer‡"][4] == "-6.37" and by_model["transformer‡"][5] == "n = 1: no spread"
    assert by_model["linear‡*"][3].startswith("16.13") and "* run with lra-bench's settings" in title


def test_s4d_and_s5_runs_beside_the_published_s4_and_s5_rows(tmp_path):
    """Runs of the s4 and s5 presets stand in their protocol's block beside the S4 and S5 rows of
    lra_frontier.csv, under the best-validation rule; S4D beside S4 carries its mark."""
    for seed, acc in enumerate((0.58, 0.60)):
        _run(tmp_path, "s4d", "listops", acc, seed=seed, preset="s4", last=0.10,
             selection="best_val", test_accuracy_best_val=acc)
    _run(tmp_path, "s5", "text", 0.88, preset="s5", last=0.10, selection="best_val",
         test_accuracy_best_val=0.88)
    _run(tmp_path, "s5", "listops", 0.61, preset="quick")  # another preset: not in the blocks
    runs, _ = report.load_runs(tmp_path)
    blocks = {name: (title, rows) for name, title, _, (_, rows) in report.published_blocks(runs)}
    assert {"published_s4", "reproduced_s4", "published_s5", "reproduced_s5"} <= set(blocks)
    title, rows = blocks["published_s4"]
    assert "best-validation" in title
    assert [r[1] for r in rows if r[0].startswith("S4 paper")] == ["S4"]
    (ours,) = [r for r in rows if r[0] == "lra-bench, --preset s4"]
    assert ours[1] == "s4d" and ours[2].startswith("59.00")  # best-validation, not the last 10.00
    title, rows = blocks["reproduced_s4"]
    (s4d,) = rows
    assert s4d[:3] == ["s4d≈", "listops", "59.00 ± 1.41 (n=2)"]
    assert s4d[3].startswith("59.60 (S4 paper Table 4") and s4d[4] == "-0.60"
    assert s4d[5] == "inside the spread (|d| = 0.4 sd)" and "≈ S4D beside S4" in title
    title, rows = blocks["reproduced_s5"]
    (s5,) = rows
    assert s5[:3] == ["s5", "text", "88.00 (n=1)"] and s5[3].startswith("89.31 (S5 paper")
    assert s5[4:] == ["-1.31", "n = 1: no spread"]
    assert not any(r[1] in ("S4", "S5") for r in blocks["published_later"][1])
    assert not any("quick" in r[0] for r in blocks["published_s5"][1])


def test_selection_falls_back_for_summaries_without_the_field(tmp_path):
    _run(tmp_path, "transformer", "listops", 0.40, last=0.30)  # old: test_accuracy = best val
    _run(tmp_path, "linear", "listops", 0.20, last=0.20, selection="last",
         test_accuracy_best_val=0.25)
    runs, _ = report.load_runs(tmp_path)
    best = report.accuracy_table(runs, "best").set_index("model")
    assert best.loc["transformer", "listops"] == 40.0 and best.loc["linear", "listops"] == 25.0
    own = report.accuracy_table(runs, "run").set_index("model")
    assert own.loc["linear", "selection"] == "last"
    assert own.loc["transformer", "selection"] == "best_val"


@pytest.mark.parametrize("fmt", ["csv", "json", "latex", "markdown"])
def test_every_format_holds_every_table(tmp_path, fmt):
    _run(tmp_path, "transformer", "listops", 0.40, preset="lra")
    result = runner.invoke(app, ["report", "--results-dir", str(tmp_path), "--published",
                                 "--format", fmt])
    assert result.exit_code == 0, result.output
    names = ["accuracy", "efficiency", "published_lra", "reproduced_lra", "published_nystrom",
             "published_s4", "published_s5", "published_later"]
    text = result.stdout
    if fmt == "csv":
        assert [line.split(":")[0][2:] for line in text.splitlines()
                if line.startswith("# ")] == names
        assert "Transformer" in text and "S4" in text and report.BASELINE in text
    elif fmt == "json":
        data = json.loads(text)
        assert list(data) == names and any(r["model"] == "S4" for r in data["published_s4"])
        assert not any(r["model"] in ("S4", "S5") for r in data["published_later"])
    elif fmt == "latex":
        assert text.count(r"\begin{tabular}") == len(names) and r"\toprule" in text
        assert "±" not in text and "_" not in text.replace(r"\_", "")
    else:
        assert text.count("### ") == len(names)


def test_curves_png_is_written(tmp_path):
    for seed in range(2):
        _run(tmp_path, "transformer", "listops", 0.40 + seed / 100, seed=seed)
    _run(tmp_path, "linear", "listops", 0.30)
    _run(tmp_path, "linear", "text", 0.60)
    out = tmp_path / "c.png"
    result = runner.invoke(app, ["report", "--results-dir", str(tmp_path), "--curves", str(out),
                                 "-t", "listops"])
    assert result.exit_code == 0, result.output
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert width > 800 and 400 < height < 1000  # one task: one row of panels
    curves = report.learning_curves(report.filter_runs(report.load_runs(tmp_path)[0],
                                                       tasks=["listops"]), tmp_path)
    assert set(curves["model"]) == {"transformer", "linear"} and len(curves) == 9
    bad = runner.invoke(app, ["report", "--results-dir", str(tmp_path), "--curves",
                              str(tmp_path / "c.pdf")])
    assert bad.exit_code == 2 and "png" in bad.stderr


def test_compare_shows_only_differing_config_keys_and_both_runs_metrics(tmp_path):
    a = _run(tmp_path, "transformer", "listops", 0.40, seed=0)
    b = _run(tmp_path, "transformer", "listops", 0.35, seed=1)
    result = runner.invoke(app, ["report", "--results-dir", str(tmp_path), "--compare", a, b,
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {r["key"] for r in data["config_diff"]} == {"seed", "train.seed_note"}
    acc = {r["metric"]: (r["a"], r["b"]) for r in data["metrics"]}
    assert acc["test accuracy (run's rule) %"] == ("40.00", "35.00")
    missing = runner.invoke(app, ["report", "--results-dir", str(tmp_path), "--compare", a,
                                  "nope"])
    assert missing.exit_code == 2 and "nope" in missing.stderr
