"""Installed anywhere: build the sdist and from it the wheel (offline, from the checkout's files),
install it into a fresh virtual environment that borrows this one's dependencies, install the
docs' example plugin package (docs/plugins.md, as written there) next to it, and run `lra` from a
folder outside the checkout with no LRA_HOME: configs come from inside the wheel, the plugin
through its entry point, user models through --config-dir, runs and sweeps through workers."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def sh(*cmd, cwd=None, env=None, timeout=600):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def docs_files(doc: Path) -> dict[str, str]:
    """The files docs/plugins.md shows: fenced blocks whose first line is `# <path>`."""
    blocks = re.findall(r"```(?:python|toml)\n# ([\w./-]+)\n(.*?)```", doc.read_text(), re.S)
    return {path: f"# {path}\n{body}" for path, body in blocks}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(lra executable, clean environment, work folder holding the docs' example files)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    try:  # what a fresh clone has: tracked files (and new, not ignored ones during development)
        files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                                "--exclude-standard"], cwd=REPO, capture_output=True,
                               check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs a git checkout to know which files a clone has")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    offline = ["--no-deps", "--no-build-isolation", "--no-index"]
    sh(sys.executable, "-c", f"from setuptools import build_meta as b; b.build_sdist({str(tmp)!r})",
       cwd=src)
    (sdist,) = tmp.glob("lra_bench-*.tar.gz")
    sh(*pip, "wheel", *offline, "-w", tmp / "wheels", sdist, cwd=tmp)
    (wheel,) = (tmp / "wheels").glob("lra_bench-*.whl")

    venv = tmp / "venv"
    sh(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = Path(sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .stdout.strip())
    # Borrow this environment's packages (jax, flax, setuptools...), after the venv's own.
    borrowed = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_borrowed.pth").write_text("\n".join(sorted(borrowed)) + "\n")
    sh(*pip, "--python", python, "install", *offline, wheel)

    work = tmp / "work"
    for path, text in docs_files(REPO / "docs" / "plugins.md").items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)
    sh(*pip, "--python", python, "install", *offline, "./lra-mean-mixer", cwd=work)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "LRA_HOME", "LRA_CONFIG_PATH", "LRA_DATA_DIR",
                        "LRA_RESULTS_DIR")}
    return venv / "bin" / "lra", env, work, wheel


def lra(installed, *args, timeout=600):
    exe, env, work, _ = installed
    return sh(exe, *args, cwd=work, env=env, timeout=timeout)


def test_the_wheel_carries_the_configs_and_lists_them_from_anywhere(installed):
    import zipfile

    exe, env, work, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    for kind in ("tasks", "models"):
        shipped = {Path(n).name for n in names if n.startswith(f"lra_bench/configs/{kind}/")}
        assert shipped == {p.name for p in (REPO / kind).glob("*.toml")}
    where = sh(exe.parent / "python", "-c", "import lra_bench; print(lra_bench.__file__)",
               cwd=work, env=env).stdout
    assert str(exe.parent.parent) in where  # the wheel's copy, not the checkout
    out = lra(installed, "--config-dir", "my-configs", "list").stdout
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if "│" in line}
    assert "built-in" in rows["listops"] and "built-in" in rows["transformer"]
    assert "plugin lra-mean-mixer" in rows["mean"]  # the entry point is a model of its own
    assert "my-configs" in rows["mean-nogate"] and "gate=False" in rows["mean-nogate"]


def test_a_smoke_run_from_the_wheel(installed, data_dir, tmp_path):
    r = lra(installed, "run", "--model", "transformer", "--task", "listops", "--preset", "smoke",
            "--steps", "2", "--set", "train.eval_every=2", "--no-preflight",
            "--data-dir", data_dir, "--results-dir", tmp_path)
    assert "test acc" in r.stdout


def test_the_docs_plugin_runs_and_sweeps_like_a_built_in(installed, data_dir, tmp_path):
    r = lra(installed, "--config-dir", "my-configs", "run", "--model", "mean-nogate", "--task",
            "listops", "--preset", "smoke", "--steps", "2", "--set", "train.eval_every=2",
            "--no-preflight", "--data-dir", data_dir, "--results-dir", tmp_path)
    assert "test acc" in r.stdout
    (run,) = (tmp_path / "runs").iterdir()
    saved = json.loads((run / "config.json").read_text())["mixer"]
    assert saved == {"kind": "mean", "gate": False}
    report = lra(installed, "report", "--results-dir", tmp_path, "--format", "csv").stdout
    assert '"smoke [train.eval_every=2, train.steps=2]",mean-nogate,' in report

    # Two lengths, each point in its own worker process, the user's model from --config-dir.
    lra(installed, "--config-dir", "my-configs", "sweep", "--task", "listops", "--preset",
        "smoke", "--models", "mean-nogate", "--lengths", "16,32", "--batch-size", "2",
        "--steps", "1", "--warmup", "0", "--mode", "forward", "--results-dir", tmp_path)
    (table,) = (tmp_path / "sweeps").glob("*.csv")
    rows = list(csv.DictReader(table.open()))
    assert [(r["model"], r["length"], r["status"]) for r in rows] == [
        ("mean-nogate", "16", "ok"), ("mean-nogate", "32", "ok")], rows
    table = lra(installed, "report", "--sweep", "--results-dir", tmp_path).stdout
    assert "mean-nogate" in table
