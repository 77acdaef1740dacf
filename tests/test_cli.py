import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from lra_bench import protocols
from lra_bench.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_list_shows_tasks_and_models():
    r = invoke("list")
    assert r.exit_code == 0, r.output
    assert "listops" in r.stdout and "transformer" in r.stdout and "softmax" in r.stdout
    assert "2000" in r.stdout  # ListOps max length
    assert invoke("list", "nothing").exit_code == 2


def test_run_then_report(data_dir, results_dir):
    r = invoke("run", "--model", "transformer", "--task", "listops", "--steps", "4",
               "--set", "train.eval_every=2", "--data-dir", data_dir, "--results-dir", results_dir)
    assert r.exit_code == 0, r.output
    assert "test acc" in r.stdout
    (run,) = (results_dir / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    for key in ["run_id", "model", "task", "preset", "seed", "steps", "val_accuracy",
                "test_accuracy", "test_accuracy_last", "step_time_ms", "compile_time_s",
                "peak_memory_bytes", "memory_source", "flops_per_step", "params", "device_kind",
                "device_count", "jax_version", "flax_version", "git_commit", "started_at",
                "ended_at", "status", "test_majority", "val_majority"]:
        assert key in summary, key
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert json.loads((run / "config.json").read_text())["train"]["eval_every"] == 2
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [2, 4]

    r = invoke("report", "--results-dir", results_dir, "--format", "csv")
    assert r.exit_code == 0, r.output
    from lra_bench.report import read_csv_tables

    acc = read_csv_tables(r.stdout)["accuracy"]
    assert list(acc.columns[:3]) == ["preset", "model", "listops"]
    assert list(acc["model"]) == ["transformer", "majority class"]
    assert round(acc.iloc[0]["listops"], 4) == round(100 * summary["test_accuracy"], 4)
    r = invoke("report", "--results-dir", results_dir, "--format", "markdown", "--published")
    # --steps and --set are part of the experiment: never shown as the plain smoke preset
    assert "| smoke [train.eval_every=2, train.steps=4] | transformer |" in r.stdout
    assert "| smoke | transformer |" not in r.stdout and "LRA paper Table 1" in r.stdout
    assert summary["overrides"] == ["train.eval_every=2", "train.steps=4"]
    r = invoke("report", "--results-dir", results_dir, "--format", "json")
    assert json.loads(r.stdout)["efficiency"][0]["model"] == "transformer"
    r = invoke("report", "--results-dir", results_dir)
    assert r.exit_code == 0 and "transformer" in r.stdout
    saved = (results_dir / "tables" / "accuracy.csv").read_text()
    assert saved.splitlines()[1].startswith('"smoke [train.eval_every=2, train.steps=4]",transformer,')
    assert (results_dir / "tables" / "efficiency.csv").exists()


def test_the_environment_sets_the_default_folders(tmp_path, monkeypatch):
    """$LRA_DATA_DIR and $LRA_RESULTS_DIR are where a command without --data-dir/--results-dir
    reads and writes (not ./data, ./results), and an explicit option beats them (issue 28)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LRA_DATA_DIR", str(tmp_path / "env-data"))
    monkeypatch.setenv("LRA_RESULTS_DIR", str(tmp_path / "env-results"))
    r = invoke("data", "prepare", "listops", "--preset", "smoke", "--set", "data.num_train=16",
               "--set", "data.num_val=8", "--set", "data.num_test=8")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "env-data" / "prepared" / "listops").is_dir()
    run = tmp_path / "env-results" / "runs" / "transformer-listops-1"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({
        "run_id": run.name, "model": "transformer", "task": "listops", "preset": "smoke",
        "seed": 0, "status": "interrupted", "started_at": "2026"}))
    r = invoke("report", "--runs", "--format", "json")
    assert [row["run_id"] for row in json.loads(r.stdout)["runs"]] == [run.name], r.output
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()
    r = invoke("report", "--runs", "--results-dir", tmp_path / "other")
    assert r.exit_code == 2 and str(tmp_path / "other") in r.stderr  # the option wins
    (tmp_path / "file").write_text("x")
    for var in ("LRA_DATA_DIR", "LRA_RESULTS_DIR"):  # `lra run` reads each, checked up front
        with monkeypatch.context() as m:
            m.setenv(var, str(tmp_path / "file"))
            r = invoke("run", "--model", "transformer", "--task", "listops", "--steps", "2")
            assert r.exit_code == 2 and f"${var} {tmp_path / 'file'} is a file" in r.stderr


def test_configs_are_found_from_any_working_directory(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "lra_bench", "list", "models"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "transformer" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["run", "--model", "nope", "--task", "listops"], "unknown model 'nope'; choose one of:"),
    (["run", "--model", "transformer", "--task", "nope"], "unknown task 'nope'; choose one of:"),
    (["run", "--model", "transformer", "--task", "listops", "--set", "train.stepz=1"],
     "unknown key 'train.stepz'"),
    (["run", "--model", "transformer", "--task", "listops", "--set", "train.steps=x"],
     "'train.steps' must be int"),
    (["run", "--model", "transformer", "--task", "listops", "--preset", "big"], "no preset 'big'"),
    (["report", "--format", "xml"], "unknown format 'xml'"),
])
def test_user_errors_are_one_line_exit_2_and_write_nothing(args, message, results_dir, data_dir):
    r = invoke(*args, "--results-dir", results_dir)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.output
    assert not results_dir.exists() or not any(results_dir.rglob("*.json"))


def test_missing_data_is_a_user_error_naming_the_fix(tmp_path, results_dir):
    r = invoke("run", "--model", "transformer", "--task", "listops", "--preset", "lra",
               "--data-dir", tmp_path / "empty", "--results-dir", results_dir)
    assert r.exit_code == 2 and "lra data prepare listops" in r.stderr
    assert not results_dir.exists()


def test_report_without_runs_says_how_to_make_one(results_dir):
    r = invoke("report", "--results-dir", results_dir)
    assert r.exit_code == 2 and "lra run" in r.stderr


def test_version_list_formats_completion_and_plain_help():
    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.startswith("lra-bench ") and "\njax " in r.stdout
    assert "\nflax " in r.stdout and "devices: " in r.stdout
    listed = json.loads(invoke("list", "--format", "json").stdout)
    assert {t["task"] for t in listed["tasks"]} >= {"listops", "text"}
    softmax = [m for m in listed["models"] if m["model"] == "transformer"][0]
    assert softmax["mixer"] == "softmax" and isinstance(softmax["options"], dict)
    csv_text = invoke("list", "models", "--format", "csv").stdout
    assert csv_text.splitlines()[0] == "model,mixer,options,description,source"
    assert len(csv_text.splitlines()) == 1 + len(listed["models"])
    assert "--install-completion" in invoke("--help").stdout
    for command in (["run"], ["report"], ["sweep"], ["data", "prepare"], ["data", "download"]):
        text = invoke(*command, "--help").stdout
        assert "<bool>" not in text and "--help" in text, command
    assert "--preflight / --no-preflight" in invoke("run", "--help").stdout


def _squeezed(text: str) -> str:
    """Help text without whitespace: rich wraps it at any width, hyphens included."""
    return "".join(text.split())


def test_preset_help_lists_the_presets_of_the_data_with_their_descriptions():
    described = protocols.preset_descriptions()
    assert {"smoke", "quick", "lra", "nystrom", "s4", "s5"} <= set(described)
    assert all(described.values()), described  # every shipped preset says what it is
    assert described["s4"] == protocols.load("s4")["title"]
    for command in (("run",), ("sweep",), ("grid",), ("preflight",), ("data", "prepare"),
                    ("report",)):
        text = _squeezed(invoke(*command, "--help").stdout)
        for name, description in described.items():
            assert _squeezed(f"{name}: {description}") in text, (command, name)


def test_a_preset_added_to_the_data_shows_in_help(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mine.toml").write_text(
        '[data]\nloader = "synthetic"\nmax_length = 8\nvocab_size = 4\nnum_classes = 2\n'
        '[presets.brand_new]\ndescription = "made for this test only"\n'
        '[presets.brand_new.train]\nsteps = 2\n')
    # A fresh process: the help is read from the data when the CLI is built.
    env = {**os.environ, "LRA_CONFIG_PATH": str(tmp_path), "COLUMNS": "200"}
    r = subprocess.run([sys.executable, "-m", "lra_bench", "run", "--help"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    text = _squeezed(r.stdout)
    assert _squeezed("brand_new: made for this test only") in text
    assert _squeezed("smoke: " + protocols.preset_descriptions()["smoke"]) in text
