import csv
import io
import json

import matplotlib.image
import pandas as pd
import pytest
from typer.testing import CliRunner

from lra_bench import paths, sweep
from lra_bench.cli import app

runner = CliRunner()
GIB = 2**30


def _row(model, length, status="ok", sps=None, gib=None):
    ok = status == "ok"
    return {"sweep_id": "s", "model": model, "task": "text", "preset": "lra", "mode": "train",
            "length": length, "batch_size": 32, "status": status,
            "steps_per_second": sps, "step_time_ms": 1000.0 / sps if ok else None,
            "tokens_per_second": 32 * length * sps if ok else None,
            "peak_memory_bytes": int(gib * GIB) if ok else None,
            "memory_source": "device peak_bytes_in_use" if ok else None,
            "flops_per_step": 1e12 if ok else None, "compile_time_s": 2.0,
            "device_kind": "NVIDIA H100", "message": "" if ok else "RESOURCE_EXHAUSTED: oom"}


@pytest.fixture
def results(tmp_path):
    s = sweep.Settings(models=["linear", "transformer"], lengths=[1024, 2048])
    older = [_row("transformer", 1024, sps=1.0, gib=1.0)]
    sweep.save(tmp_path, "20200101-000000-text-train-aaaaaa", s, older)
    rows = [_row("linear", 1024, sps=16.0, gib=0.5), _row("linear", 2048, sps=15.0, gib=0.75),
            _row("transformer", 1024, sps=8.0, gib=1.0), _row("transformer", 2048, "OOM")]
    sweep.save(tmp_path, "20300101-000000-text-train-bbbbbb", s, rows)
    return tmp_path


def invoke(*args):
    return runner.invoke(app, ["report", *map(str, args)])


def test_table2_layout_with_speedups_ratios_and_oom(results):
    r = invoke("--sweep", "--results-dir", results, "--format", "markdown")  # alone: the latest
    assert r.exit_code == 0, r.output
    assert "Sweep 20300101-000000-text-train-bbbbbb: text (lra preset), train step, batch 32" in r.stdout
    assert "memory source: device peak_bytes_in_use" in r.stdout
    lines = r.stdout.splitlines()
    header = lines.index("| model | steps/s 1K | steps/s 2K | memory 1K | memory 2K |")
    # The baseline first, without brackets; others relative to it where it has a value.
    assert lines[header + 2] == "| transformer | 8 | OOM | 1.00 GiB | OOM |"
    assert lines[header + 3] == "| linear | 16 (2.00x) | 15 | 512.00 MiB (0.50x) | 768.00 MiB |"
    assert "speed-up over transformer" in r.stdout
    assert "| linear | 2048 | ok | 66.7 |" in r.stdout  # the per-point table: step ms


def test_an_older_sweep_by_id_and_unknown_ids(results):
    r = invoke("--sweep", "20200101-000000-text-train-aaaaaa", "--results-dir", results,
               "--format", "markdown")
    assert r.exit_code == 0 and "| transformer | 1 | 1.00 GiB |" in r.stdout
    r = invoke("--sweep", "nope", "--results-dir", results)
    assert r.exit_code == 2 and "no sweep 'nope'" in r.stderr and "20300101" in r.stderr


def test_filters_pick_the_newest_sweep_of_a_task_and_keep_the_models_asked_for(results):
    listops = sweep.Settings(task="listops", preset="quick", models=["transformer"],
                             lengths=[1024])
    sweep.save(results, "20250101-000000-listops-train-cccccc", listops,
               [{**_row("transformer", 1024, sps=3.0, gib=1.0), "task": "listops"}])
    # the newest sweep is text's; -t listops picks the older listops one
    r = invoke("--sweep", "-t", "listops", "--results-dir", results, "--format", "markdown")
    assert r.exit_code == 0, r.output
    assert "Sweep 20250101-000000-listops-train-cccccc" in r.stdout
    r = invoke("--sweep", "-m", "linear", "--results-dir", results, "--format", "markdown")
    assert r.exit_code == 0 and "| linear | 16 | 15 |" in r.stdout
    assert "| transformer |" not in r.stdout
    for args, says in ((["-m", "reformer"], "has no reformer; it has linear, transformer"),
                       (["-t", "image"], "no sweep of -t image"),
                       (["20300101-000000-text-train-bbbbbb", "--preset", "quick"],
                        "is of --preset lra, not quick")):
        r = invoke("--sweep", *args, "--results-dir", results)
        assert r.exit_code == 2 and says in r.stderr and "Traceback" not in r.output, r.output


def test_without_a_transformer_no_speed_ups_and_small_memory_in_small_units(tmp_path):
    """Issue 28, case 14: no "speed-up over transformer" when none was swept, and a peak of
    1.4 MB is "1.37 MiB", not "0.00137 GiB", in the tables, as in the progress line."""
    s = sweep.Settings(models=["linear"], lengths=[16])
    sweep.save(tmp_path, "20300101-000000-text-train-cccccc", s,
               [_row("linear", 16, sps=100.0, gib=1_436_549 / GIB)])
    r = invoke("--sweep", "--results-dir", tmp_path, "--format", "markdown")
    assert r.exit_code == 0, r.output
    assert "speed-up over" not in r.stdout and "(ratio)" not in r.stdout
    assert "no transformer in this sweep" in r.stdout
    assert "| linear | 100 | 1.37 MiB |" in r.stdout and "GiB" not in r.stdout
    row = _row("linear", 16, sps=100.0, gib=1_436_549 / GIB)
    assert "peak 1.37 MiB (" in sweep.progress_line(1, 1, row)


def test_published_rows_are_marked_with_source_and_hardware(results):
    r = invoke("--sweep", "--published", "--results-dir", results, "--format", "markdown")
    assert r.exit_code == 0, r.output
    assert "PUBLISHED, not measured here: LRA paper Table 2 (Tay et al. 2021), text task, batch 32" in r.stdout
    assert "| model | hardware | steps/s 1K | steps/s 2K | steps/s 3K | steps/s 4K | GB 1K |" in r.stdout
    assert "| Transformer | TPU v3 4x4 | 8.1 | 4.9 | 2.3 | 1.4 | 0.85 | 2.65 | 5.51 | 9.48 |" in r.stdout
    # 9.1 / 8.1 = 1.12x faster, 0.37 / 0.85 = 0.44x the memory
    assert "| Linear Transformer | TPU v3 4x4 | 9.1 (1.12x) |" in r.stdout
    assert "| 0.37 (0.44x) |" in r.stdout


def test_csv_format_is_the_sweep_schema(results):
    r = invoke("--sweep", "--results-dir", results, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert list(rows[0]) == sweep.COLUMNS and len(rows) == 4


def test_plot_is_written(results, tmp_path):
    png = tmp_path / "plots" / "sweep.png"
    png.parent.mkdir()  # a missing folder is an error (tests/test_bad_inputs.py), not made
    r = invoke("--sweep", "--results-dir", results, "--plot", png)
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert width > 1000 and height > 500
    r = invoke("--sweep", "--results-dir", results, "--plot", tmp_path / "x.jpg")
    assert r.exit_code == 2 and "give a .png path" in r.stderr


def test_no_sweeps_says_how_to_make_one(tmp_path):
    r = invoke("--sweep", "--results-dir", tmp_path)
    assert r.exit_code == 2 and "lra sweep" in r.stderr


def test_each_model_beside_its_published_table2_row_as_ratios_to_each_transformer(results):
    r = invoke("--sweep", "--results-dir", results, "--format", "markdown")
    assert r.exit_code == 0, r.output
    assert ("Sweep 20300101-000000-text-train-bbbbbb beside LRA paper Table 2 (Tay et al. 2021): "
            "measured here on NVIDIA H100, published on TPU v3 4x4, different machines") in r.stdout
    assert "this sweep timed" not in r.stdout  # text, batch 32, train: Table 2's own setting
    assert ("| model | length | LRA name | steps/s here | steps/s LRA | speed-up here | "
            "speed-up LRA | memory here | GB LRA | memory ratio here | memory ratio LRA |"
            in r.stdout)
    assert "| transformer | 1K | Transformer | 8 | 8.1 | 1.00x | 1.00x | 1.00 GiB | 0.85 | " \
           "1.00x | 1.00x |" in r.stdout
    # OOM here, the published figure still shown
    assert "| transformer | 2K | Transformer | OOM | 4.9 | OOM | 1.00x | OOM | 2.65 | OOM | " \
           "1.00x |" in r.stdout
    # 16 / 8 = 2.00x here, 9.1 / 8.1 = 1.12x there; 0.5 / 1 here, 0.37 / 0.85 = 0.44x there
    assert "| linear | 1K | Linear Transformer | 16 | 9.1 | 2.00x | 1.12x | 512.00 MiB | 0.37 | " \
           "0.50x | 0.44x |" in r.stdout
    # no transformer here at 2K (OOM): no ratio here; 9.3 / 4.9 = 1.90x there
    assert "| linear | 2K | Linear Transformer | 15 | 9.3 | - | 1.90x | 768.00 MiB | 0.57 | - | " \
           "0.22x |" in r.stdout
    r = invoke("--sweep", "--results-dir", results, "--format", "json")
    beside = json.loads(r.stdout)["beside_published"]
    assert [(b["model"], b["length"], b["published_model"]) for b in beside] == [
        ("transformer", 1024, "Transformer"), ("transformer", 2048, "Transformer"),
        ("linear", 1024, "Linear Transformer"), ("linear", 2048, "Linear Transformer")]


def test_a_model_or_length_without_a_published_row_and_another_setting_say_so(tmp_path):
    s = sweep.Settings(task="listops", batch_size=8, models=["nystromformer", "transformer"],
                       lengths=[512, 1024])
    rows = [{**_row(m, n, sps=10.0, gib=0.1), "task": "listops", "batch_size": 8}
            for m in ("nystromformer", "transformer") for n in (512, 1024)]
    sweep.save(tmp_path, "20300101-000000-listops-train-dddddd", s, rows)
    r = invoke("--sweep", "--results-dir", tmp_path, "--format", "markdown")
    assert r.exit_code == 0, r.output
    assert ("this sweep timed listops, batch 8, a train step, the published rows text, batch 32, "
            "a train step") in r.stdout
    assert "| nystromformer | 1K | - | 10 | - | 1.00x | - |" in r.stdout  # LRA ran no Nystromformer
    assert "| transformer | 512 | - | 10 | - | 1.00x | - |" in r.stdout  # Table 2 starts at 1K


def test_every_published_model_name_is_matched_to_a_model_by_one_mapping():
    """The efficiency rows and the accuracy rows are matched to models by the same data
    (reproduced.PUBLISHED_NAMES), and every model named there is one lra-bench has."""
    from lra_bench import config, reproduced, sweep_report

    assert set(reproduced.PUBLISHED_NAMES) <= set(config.available("models"))
    table2 = sweep_report.published_efficiency()
    assert table2["registry_model"].notna().all(), table2[table2["registry_model"].isna()]
    assert dict(zip(table2["model"], table2["registry_model"])) == {
        "Transformer": "transformer", "Local Attention": "local", "Linformer": "linformer",
        "Reformer": "reformer", "Sinkhorn Transformer": "sinkhorn",
        "Synthesizer": "synthesizer", "BigBird": "bigbird", "Linear Transformer": "linear",
        "Performer": "performer"}
    accuracy = pd.read_csv(paths.PACKAGE_DIR / "published" / "lra_accuracy.csv")
    unmatched = {m for m in accuracy["model"] if reproduced.registry_model(m) is None}
    assert unmatched == set()
