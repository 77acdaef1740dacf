"""`lra data prepare|info` and `lra run` on data: one-line errors, exit 2, no half-written cache,
idempotence, and the automatic generation of generated presets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lra_bench.cli import app

runner = CliRunner()

SMALL = ["--set", "data.max_length=16", "--set", "data.num_train=0", "--set", "data.num_val=0",
         "--set", "data.num_test=0"]


def lra(*args):
    return runner.invoke(app, [str(a) for a in args])


def cache_dir(data: Path, task: str, sets: list[str], preset: str = "smoke") -> Path:
    """Where the cache of these --set overrides lives (keyed by its settings)."""
    from lra_bench import config
    from lra_bench.data import prepare

    settings = config.resolve_data(task, preset, [s for s in sets if s != "--set"])
    return prepare.cache_path(data, task, prepare.cache_name(task, preset, settings))


def write_aan(folder: Path, n=6, bad: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("new_aan_pairs.train.tsv", "new_aan_pairs.eval.tsv", "new_aan_pairs.test.tsv"):
        lines = [f"{i % 2}\ta{i}\tb{i}\tfirst {name} {i}\tsecond {i}" for i in range(n)]
        if bad is not None and "test" in name:
            lines[-1] = bad
        (folder / name).write_text("\n".join(lines) + "\n")


def one_error_line(result, progress_lines: int = 0) -> str:
    """The error is one line, the last on stderr, after at most `progress_lines` of progress."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert lines[-1].startswith("error: ") and len(lines) <= 1 + progress_lines, lines
    assert "Traceback" not in result.output and not any(ln.startswith("error") for ln in lines[:-1])
    return lines[-1]


def leftovers(data: Path) -> list[str]:
    return sorted(str(p.relative_to(data)) for p in data.rglob("*"))


def test_missing_and_malformed_sources_fail_in_one_line_and_write_nothing(tmp_path):
    data = tmp_path / "data"
    line = one_error_line(lra("data", "prepare", "retrieval", "--preset", "smoke",
                              "--source", tmp_path / "nowhere", "--data-dir", data))
    assert "lacks new_aan_pairs.train.tsv" in line
    write_aan(tmp_path / "tsv", bad="0\tonly three\tfields")
    line = one_error_line(lra("data", "prepare", "retrieval", "--preset", "smoke", "--source",
                              tmp_path / "tsv", "--data-dir", data, *SMALL), progress_lines=3)
    assert "new_aan_pairs.test.tsv:6: expected 5 tab-separated fields" in line
    assert [p for p in leftovers(data) if not (data / p).is_dir()] == []  # not one file
    assert not any(".tmp-" in p for p in leftovers(data))


def test_a_failed_prepare_keeps_the_previous_cache_intact(tmp_path):
    data = tmp_path / "data"
    write_aan(tmp_path / "tsv")
    ok = lra("data", "prepare", "retrieval", "--preset", "smoke", "--source", tmp_path / "tsv",
             "--data-dir", data, *SMALL)
    assert ok.exit_code == 0, ok.output
    cached = cache_dir(data, "retrieval", SMALL)
    before = {p: p.read_bytes() for p in cached.iterdir()}
    write_aan(tmp_path / "tsv", bad="x\ty\tz\tw\tv")  # a changed source that fails to parse
    one_error_line(lra("data", "prepare", "retrieval", "--preset", "smoke", "--source",
                       tmp_path / "tsv", "--data-dir", data, *SMALL), progress_lines=3)
    after = {p: p.read_bytes() for p in cached.iterdir()}
    assert after == before
    kept = sorted([f"{cached.name}/{p.name}" for p in before] + [cached.name])
    assert leftovers(data / "prepared" / "retrieval") == kept


def test_prepare_is_idempotent_and_notices_a_changed_source(tmp_path):
    data = tmp_path / "data"
    write_aan(tmp_path / "tsv")
    args = ["data", "prepare", "retrieval", "--preset", "smoke", "--source", tmp_path / "tsv",
            "--data-dir", data, *SMALL]
    assert "retrieval/smoke: prepared" in lra(*args).stdout
    manifest = cache_dir(data, "retrieval", SMALL) / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    second = lra(*args)
    assert "already prepared" in second.stdout and manifest.stat().st_mtime_ns == stamp
    os.utime(tmp_path / "tsv" / "new_aan_pairs.eval.tsv", ns=(1, 1))  # the source changed
    assert "retrieval/smoke: prepared" in lra(*args).stdout
    m = json.loads(manifest.read_text())
    assert m["splits"]["train"]["count"] == 6 and m["config"]["max_length"] == 16
    assert len(m["splits"]["train"]["inputs"]["sha256"]) == 64
    info = lra("data", "info", "--data-dir", data, "--verify")
    assert info.exit_code == 0 and "retrieval" in info.stdout and " ok" in info.stdout
    np.save(manifest.parent / "val.labels.npy", np.ones(6, np.int32))
    assert lra("data", "info", "--data-dir", data, "--verify").exit_code == 1


def test_run_on_unprepared_or_differently_prepared_data_names_the_command(tmp_path):
    data, results = tmp_path / "data", tmp_path / "results"
    line = one_error_line(lra("run", "-m", "transformer", "-t", "text", "--data-dir", data,
                              "--results-dir", results))
    assert f"run: lra data prepare text --preset smoke --data-dir {data}" in line
    write_aan(tmp_path / "tsv")
    lra("data", "prepare", "retrieval", "--preset", "smoke", "--source", tmp_path / "tsv",
        "--data-dir", data, *SMALL)
    line = one_error_line(lra("run", "-m", "transformer", "-t", "retrieval", "--data-dir", data,
                              "--results-dir", results, *SMALL[:-2], "--set", "data.num_test=2"))
    # each configuration has its own cache: another --set names the command that makes it
    assert "is not prepared" in line and "--set data.num_test=2" in line
    assert not results.exists()


def test_generate_without_the_generator_module_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lra_bench.data.pathfinder_gen", None)
    line = one_error_line(lra("data", "prepare", "pathfinder", "--preset", "smoke", "--generate",
                              "--data-dir", tmp_path / "data"))
    assert "pathfinder_gen) is not installed" in line
    line = one_error_line(lra("data", "prepare", "text", "--generate", "--data-dir", tmp_path))
    assert "has no generator" in line


def fake_generator(calls: list):
    """Stands in for lra_bench.data.pathfinder_gen: a valid release tree, labels alternating,
    pixel (0, 0) bright on positives."""

    def generate_release(out_dir, resolution, difficulty, num_images, seed, style, progress):
        calls.append((resolution, difficulty, num_images, seed, style))
        folder = Path(out_dir) / f"pathfinder{resolution}" / difficulty
        (folder / "imgs" / "0").mkdir(parents=True)
        (folder / "metadata").mkdir()
        lines = []
        for i in range(num_images):
            px = np.zeros((resolution, resolution), np.uint8)
            px[0, 0] = 255 * (i % 2)
            Image.fromarray(px, "L").save(folder / "imgs" / "0" / f"sample_{i}.png")
            lines.append(f"imgs/0 sample_{i}.png {i} {i % 2}\n")
        (folder / "metadata" / "0.npy").write_text("".join(lines))
        progress(num_images)

    from lra_bench.data.pathfinder_gen import check_style

    return types.SimpleNamespace(generate_release=generate_release, check_style=check_style)


def test_run_generates_a_generated_preset_and_trains_on_it(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "lra_bench.data.pathfinder_gen", fake_generator(calls))
    data, results = tmp_path / "data", tmp_path / "results"
    small = ["--set", "data.num_images=40", "--set", "data.resolution=8", "--set",
             "data.max_length=64", "--set", "data.grid=[8, 8]"]
    tiny = ["--set", "train.batch_size=4", "--set", "train.eval_every=2", "--set", "model.emb_dim=8",
            "--set", "model.qkv_dim=8", "--set", "model.mlp_dim=8", "--steps", "2"]
    r = lra("run", "-m", "transformer", "-t", "pathfinder", "--data-dir", data,
            "--results-dir", results, *small, *tiny)
    assert r.exit_code == 0, r.output
    assert calls == [(8, "curv_contour_length_14", 40, 0, "snakes2")]
    summary = json.loads(next(results.glob("runs/*/summary.json")).read_text())
    assert summary["status"] == "completed" and summary["train_examples"] == 32
    # the generated cache is current: preparing again does nothing
    again = lra("data", "prepare", "pathfinder", "--preset", "smoke", "--data-dir", data, *small)
    assert "already prepared" in again.stdout and len(calls) == 1


def test_data_from_an_older_generator_version_is_never_reused(tmp_path, monkeypatch):
    """When the generator's images change (GENERATOR_VERSION bumped, e.g. issue 27's grey
    levels), a folder or cache it made before is drawn again, and a run does not train on it."""
    from lra_bench.data import pathfinder

    calls = []
    monkeypatch.setitem(sys.modules, "lra_bench.data.pathfinder_gen", fake_generator(calls))
    data, results = tmp_path / "data", tmp_path / "results"
    small = ["--set", "data.num_images=20", "--set", "data.resolution=8", "--set",
             "data.max_length=64", "--set", "data.grid=[8, 8]"]
    prep = ["data", "prepare", "pathfinder", "--preset", "smoke", "--data-dir", data, *small]
    lra(*prep)
    assert "already prepared" in lra(*prep).stdout and len(calls) == 1
    monkeypatch.setattr(pathfinder, "GENERATOR_VERSION", pathfinder.GENERATOR_VERSION + 1)
    line = one_error_line(lra("run", "-m", "transformer", "-t", "pathfinder", "--data-dir", data,
                              "--results-dir", results, *small, "--set", "data.generate=false"))
    assert "generated by an older version" in line and "--generate" in line
    r = lra(*prep)
    assert "prepared in" in r.stdout and "already" not in r.stdout and len(calls) == 2
    (stamp,) = data.glob("pathfinder/*/generated.json")
    assert json.loads(stamp.read_text())["generator_version"] == pathfinder.GENERATOR_VERSION
    (manifest,) = data.glob("prepared/pathfinder/*/manifest.json")
    assert json.loads(manifest.read_text())["source"]["generator_version"] == \
        pathfinder.GENERATOR_VERSION
    assert "already prepared" in lra(*prep).stdout and len(calls) == 2


def test_the_style_is_recorded_and_caches_never_mix(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "lra_bench.data.pathfinder_gen", fake_generator(calls))
    data = tmp_path / "data"
    small = ["--set", "data.num_images=20", "--set", "data.resolution=8", "--set",
             "data.max_length=64", "--set", "data.grid=[8, 8]"]
    lra("data", "prepare", "pathfinder", "--preset", "smoke", "--data-dir", data, *small)
    prepared = data / "prepared" / "pathfinder"
    (first,) = list(prepared.glob("smoke*/manifest.json"))
    assert json.loads(first.read_text())["config"]["style"] == "snakes2"
    r = lra("data", "prepare", "pathfinder", "--preset", "smoke", "--data-dir", data, *small,
            "--set", "data.style=separated")
    assert "prepared in" in r.stdout and "already" not in r.stdout
    assert [c[-1] for c in calls] == ["snakes2", "separated"]
    # Caches are keyed by their settings: the separated one has its own folder, the first stays.
    styles = {json.loads(m.read_text())["config"]["style"]: m.parent
              for m in prepared.glob("smoke*/manifest.json")}
    assert set(styles) == {"snakes2", "separated"} and styles["snakes2"] == first.parent
    line = one_error_line(lra("data", "prepare", "pathfinder", "--preset", "smoke",
                              "--data-dir", data, *small, "--set", "data.style=clean"),
                          progress_lines=1)
    assert "data.style must be one of snakes2, separated" in line


@pytest.mark.parametrize("signum, code, word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                (signal.SIGINT, 130, "interrupted (SIGINT)")])
def test_a_signal_during_generation_stops_cleanly(tmp_path, signum, code, word):
    """SIGTERM / Ctrl-C while worker processes draw images: one line, exit 143 / 130, no
    traceback, no cache and no generated folder left behind."""
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from lra_bench.cli import main; main()", "data", "prepare",
         "pathfinder", "--preset", "smoke", "--data-dir", str(data),
         "--set", "data.num_images=20000"],
        stderr=subprocess.PIPE, text=True,
        # a test run in the background (or an earlier test) may leave SIGINT ignored, and a
        # Python started with SIGINT ignored never raises KeyboardInterrupt: start from default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = proc.stderr.readline()  # "pathfinder: drawing ...": the workers are starting
    assert "drawing" in first, first
    time.sleep(1.0)
    proc.send_signal(signum)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == code
    lines = rest.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(word), rest
    assert not (data / "prepared").exists()
    assert not (data / "pathfinder").exists() or not list((data / "pathfinder").iterdir())
