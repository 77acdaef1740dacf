"""`lra report --html DIR`: the static site, its refusals, and the site in a real browser
(headless Chromium: screenshots of the leaderboard and a run page, no JavaScript error, the sort
script run, every link inside DIR)."""

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from typer.testing import CliRunner

from lra_bench import results, sweep
from lra_bench.cli import app
from lra_bench.report import reproduce_command

runner = CliRunner()
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _run(root: Path, model, task, acc, seed=0, preset="quick", status="completed", run_id=None,
         **extra):
    """A run folder as the trainer writes it: summary.json, config.json, metrics.jsonl."""
    run_id = run_id or f"{preset}-{model}-{task}-{seed}"
    s = {"run_id": run_id, "model": model, "task": task, "preset": preset, "seed": seed,
         "status": status, "started_at": f"2026-01-01T00:00:0{seed}", "git_commit": "abc1234",
         "jax_version": "0.4.test", "flax_version": "0.10.test", "device_kind": "cpu",
         "platform": "cpu", "device_count": 1, "host": "testhost", "dtype": "float32",
         "test_majority": 0.17, "val_majority": 0.18, "overrides": [], **extra}
    if status == "completed":
        s.update(test_accuracy=acc, test_accuracy_last=acc, val_accuracy=acc, best_step=300,
                 step_time_ms=10.0, peak_memory_bytes=2**20, memory_source="xla compiled estimate",
                 compile_time_s=1.0, params=100, flops_per_step=1e6, batch_size=32,
                 max_length=128, wall_time_s=30.0)
    folder = root / "runs" / run_id
    results.write_json_atomic(folder / "summary.json", s)
    results.write_json_atomic(folder / "config.json", {
        "model_name": model, "task_name": task, "preset": preset, "seed": seed,
        "overrides": s["overrides"], "model": {"emb_dim": 64, "note": "<b>not bold</b>"},
        "train": {"steps": 300}})
    with open(folder / "metrics.jsonl", "w") as f:
        for step in (100, 200, 300):
            f.write(json.dumps({"step": step, "train_loss": 2.3 - step / 1000,
                                "val_accuracy": 0.18 + (acc - 0.18) * step / 300}) + "\n")
    return run_id


def _sweep(root: Path):
    rows = [{"sweep_id": "s", "model": m, "task": "text", "preset": "lra", "mode": "train",
             "length": n, "batch_size": 2, "dtype": "float32", "status": "ok",
             "steps_per_second": 100.0 / n, "step_time_ms": n / 10, "tokens_per_second": 1e4,
             "compile_time_s": 1.0, "peak_memory_bytes": n * 2**20, "memory_source": "xla",
             "device_kind": "cpu", "message": ""}
            for m in ("transformer", "linear") for n in (512, 1024)]
    sweep.save(root, "20260101-000000-text-train-aaaaaa",
               sweep.Settings(models=["transformer", "linear"], lengths=[512, 1024]), rows)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Three models of the quick preset (two seeds of one), a run that diverged, a model name
    with markup in it, a sweep; the site written by the CLI."""
    root = tmp_path_factory.mktemp("results")
    for seed in (0, 1):
        _run(root, "transformer", "listops", 0.40 + seed / 100, seed=seed)
    _run(root, "linear", "listops", 0.30, overrides=["train.steps=20"])
    _run(root, "fourier", "listops", 0.35)
    _run(root, "fourier", "listops", 0.2, seed=1, status="diverged", diverged_step=200)
    _run(root, "<script>alert(1)</script>", "listops", 0.25, run_id="quick-markup-listops-0")
    _sweep(root)
    out = tmp_path_factory.mktemp("site") / "report"  # a new folder, as a user would give
    r = runner.invoke(app, ["report", "--results-dir", str(root), "--html", str(out)])
    assert r.exit_code == 0, r.output
    assert f"HTML report written to {out / 'index.html'}" in r.stderr.replace("\n", "")
    return root, out


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.scripts = [], []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src") and value is not None:
                self.links.append(value)
        if tag == "script":
            self.scripts.append(dict(attrs))


def test_the_site_holds_the_leaderboard_runs_sweeps_and_notes(site):
    _, out = site
    index = (out / "index.html").read_text()
    for section in ("leaderboard", "published", "curves", "efficiency", "sweeps", "runs",
                    "machines", "notes"):
        assert f'id="{section}"' in index
    assert "40.50 ± 0.71 (n=2)" in index  # mean ± std over seeds, from the leaderboard's rows
    assert "majority class" in index and "+1 diverged" in index
    assert "quick [train.steps=20]" in index  # a changed setting is its own experiment
    assert "Transformer" in index and "LRA Table 1" in index  # published rows
    assert "20260101-000000-text-train-aaaaaa" in index and "testhost" in index
    assert "0.4.test" in index and "abc1234" in index  # machine and versions
    assert "fidelity" in index
    # each swept model beside its LRA Table 2 row (none at 512; Table 2 starts at 1K)
    assert "beside LRA paper Table 2" in index and "<td>Linear Transformer</td>" in index
    # user-provided strings are escaped, never markup
    assert "<script>alert(1)</script>" not in index
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in index
    assert len(list((out / "runs").glob("*.html"))) == 6
    assert {p.name for p in (out / "img").iterdir()} == {"curves-0.png", "curves-1.png",
                                                          "sweep-0.png"}
    page = (out / "runs" / "quick-linear-listops-0.html").read_text()
    assert "lra run --model linear --task listops --preset quick --seed 0 --set " \
           "train.steps=20" in page
    assert "&lt;b&gt;not bold&lt;/b&gt;" in page and "<b>not bold" not in page
    assert "<polyline" in page and "git checkout abc1234" in page


def test_the_sweeps_are_filtered_as_the_runs_are(site, tmp_path):
    root, _ = site

    def sweep_section(*filters):
        out = tmp_path / "-".join(filters)
        r = runner.invoke(app, ["report", "--results-dir", str(root), "--html", str(out),
                                *filters])
        assert r.exit_code == 0, r.output
        index = (out / "index.html").read_text()
        return index[index.index('id="sweeps"'):index.index('id="runs"')]

    only = sweep_section("-m", "transformer")
    assert "20260101-000000-text-train-aaaaaa" in only
    assert "<td>transformer</td>" in only and "<td>linear</td>" not in only
    gone = sweep_section("-t", "listops")  # the sweep timed the text task
    assert "20260101-000000-text-train-aaaaaa" not in gone
    assert "No sweep in this results folder measured what the filters let through" in gone
    assert "LRA Table 2" in gone  # the published rows stay, folded


def test_every_link_and_script_stays_inside_the_site(site):
    _, out = site
    for html_file in out.rglob("*.html"):
        parser = Links()
        parser.feed(html_file.read_text())
        assert all(not s.get("src") for s in parser.scripts), "scripts are inline"
        for link in parser.links:
            parts = urlsplit(link)
            assert not parts.scheme and not parts.netloc, f"{html_file.name}: {link} leaves DIR"
            if parts.path:
                target = (html_file.parent / unquote(parts.path)).resolve()
                assert target.is_file() and out.resolve() in target.parents, \
                    f"{html_file.name}: {link} is not a file in the site"


def test_reproduce_command_quotes_every_setting():
    cmd = reproduce_command({"model": "linear", "task": "text", "preset": "lra", "seed": 2,
                             "overrides": ['model.dtype="bfloat16"']}, None)
    assert cmd == "lra run --model linear --task text --preset lra --seed 2 --set " \
                  "'model.dtype=\"bfloat16\"'"


def test_a_second_report_replaces_the_first(site, tmp_path):
    root, first = site
    out = tmp_path / "again"
    shutil.copytree(first, out)
    r = runner.invoke(app, ["report", "--results-dir", str(root), "--html", str(out),
                            "-m", "linear", "--format", "csv"])
    assert r.exit_code == 0, r.output
    assert [p.name for p in (out / "runs").iterdir()] == ["quick-linear-listops-0.html"]
    assert [p.name for p in tmp_path.iterdir()] == ["again"]  # no build folder left behind


@pytest.mark.parametrize("kind", ["file", "foreign", "readonly", "under_a_file"])
def test_a_folder_that_cannot_hold_the_site_is_refused(site, tmp_path, kind, monkeypatch):
    root, _ = site
    target = tmp_path / "out"
    if kind == "file":
        target.write_text("x")
    elif kind == "foreign":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    elif kind == "readonly":
        tmp_path.chmod(0o555)
        if os.geteuid() == 0:  # root writes anywhere: the check asks os.access, so it says no
            access = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, **k: Path(p) != tmp_path
                                and access(p, mode, **k))
    else:
        (tmp_path / "f").write_text("x")
        target = tmp_path / "f" / "out"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    try:
        r = runner.invoke(app, ["report", "--results-dir", str(root), "--html", str(target)])
    finally:
        tmp_path.chmod(0o755)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_html_with_another_mode_is_refused(site, tmp_path):
    root, _ = site
    r = runner.invoke(app, ["report", "--results-dir", str(root), "--html", str(tmp_path / "o"),
                            "--sweep"])
    assert r.exit_code == 2 and "--html" in r.stderr and not (tmp_path / "o").exists()


# ---- in a real browser ---------------------------------------------------------------------

def _browser() -> str:
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip(f"no headless browser found ({', '.join(BROWSERS)} not on PATH); install "
                "Debian's: apt-get install -y chromium")


def _chromium(browser: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """One headless Chromium call, its console on stderr (`--enable-logging=stderr`)."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=2000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=tmp)


def _js_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if "CONSOLE" in line and re.search(r"Uncaught|Error", line)]


def test_the_site_in_headless_chromium(site, tmp_path):
    """~3-6 s on 2 cores: three browser starts (two screenshots, one DOM dump)."""
    browser = _browser()
    _, out = site
    index = (out / "index.html").as_uri()
    run_page = (out / "runs" / "quick-transformer-listops-1.html").as_uri()
    for name, url in (("leaderboard.png", index), ("run.png", run_page)):
        shot = tmp_path / name
        r = _chromium(browser, tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", url)
        assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", r.stderr[-2000:]
        assert shot.stat().st_size > 20_000, "a blank page"
        assert _js_errors(r.stderr) == []
    # The DOM after the scripts ran, sorted by the first task column (listops), lowest first.
    r = _chromium(browser, tmp_path, "--dump-dom", index + "#sort=table-leaderboard:2:asc")
    assert r.returncode == 0 and _js_errors(r.stderr) == [], r.stderr[-2000:]
    dom = r.stdout
    assert 'data-sort-ready="yes"' in dom
    board = dom.split('id="table-leaderboard"', 1)[1].split("</table>", 1)[0]
    assert 'aria-sort="ascending"' in board
    models = re.findall(r"<tr[^>]*><td>[^<]*</td><td>([^<]*)</td>", board)
    assert set(models) >= {"transformer", "linear", "fourier", "majority class"}
    scores = [float(m) for m in re.findall(r"<tr[^>]*><td>[^<]*</td><td>[^<]*</td><td>"
                                           r"([\d.]+)", board)]
    assert scores == sorted(scores) and len(scores) == len(models)
