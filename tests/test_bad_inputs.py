"""Every bad input ends the same way: one `error:` line on stderr that names the fix, exit code 2,
no traceback, nothing on stdout, and the data and results folders exactly as they were (no empty
folders, no data made before a refusal that did not need it). The cases are those of issue 11;
each runs in-process through Typer's CliRunner on tiny inputs."""

from __future__ import annotations

import io
import json
import shutil
import signal
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lra_bench import paths
from lra_bench.cli import app

runner = CliRunner()

LISTOPS = ["run", "-m", "transformer", "-t", "listops"]
TINY = ["--set", "data.num_train=16", "--set", "data.num_val=8", "--set", "data.num_test=8",
        "--set", "train.batch_size=4", "--steps", "2"]


def write_aan(folder: Path, bad: str) -> Path:
    folder.mkdir(parents=True)
    for split in ("train", "eval", "test"):
        lines = [f"{i % 2}\ta{i}\tb{i}\tfirst {i}\tsecond {i}" for i in range(4)]
        if split == "eval":
            lines.insert(1, bad)
        (folder / f"new_aan_pairs.{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def pathfinder_release(root: Path, label: int) -> Path:
    from PIL import Image
    import numpy as np

    folder = root / "pathfinder32" / "curv_contour_length_14"
    (folder / "imgs" / "0").mkdir(parents=True)
    (folder / "metadata").mkdir()
    lines = []
    for i in range(4):
        Image.fromarray(np.zeros((32, 32), np.uint8), "L").save(folder / f"imgs/0/sample_{i}.png")
        lines.append(f"imgs/0 sample_{i}.png {i} {label if i == 2 else i % 2} 2 1.5 7\n")
    (folder / "metadata" / "0.npy").write_text("".join(lines))
    return root


def corrupt_tar(path: Path) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("aclImdb/train/pos/0_9.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"great"))
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # cut off halfway
    return path


def project_with(tmp: Path, folder: str, name: str, text: str | None) -> dict:
    """A copy of the tasks/ and models/ folders with one file added (text) or all removed (None),
    found through $LRA_HOME."""
    home = tmp / "home"
    for sub in ("tasks", "models"):
        shutil.copytree(paths.project_root() / sub, home / sub)
    if text is None:
        for p in (home / folder).glob("*.toml"):
            p.unlink()
    else:
        (home / folder / name).write_text(text)
    return {"LRA_HOME": str(home)}


def grid_with(tmp: Path, plan) -> dict:
    """A grid record G under {tmp}/results whose plan.json is `plan` (damaged)."""
    folder = tmp / "results" / "grids" / "G"
    folder.mkdir(parents=True)
    (folder / "plan.json").write_text(json.dumps(plan))
    return {}


SUMMARY = {"model": "transformer", "task": "listops", "preset": "smoke", "seed": 0,
           "status": "completed", "test_accuracy": 0.5, "test_accuracy_last": 0.5,
           "started_at": "2026-01-01T00:00:00+00:00"}


def runs_with(tmp: Path, a_config=None, a_summary=None) -> dict:
    """Two completed runs A and B under {tmp}/results; A's config.json or summary.json replaced
    by a damaged one when given."""
    for name in ("A", "B"):
        run = tmp / "results" / "runs" / name
        run.mkdir(parents=True)
        config = a_config if name == "A" and a_config is not None else {
            "model_name": "transformer", "task_name": "listops", "preset": "smoke", "seed": 0}
        summary = a_summary if name == "A" and a_summary is not None else SUMMARY
        (run / "config.json").write_text(json.dumps(config))
        (run / "summary.json").write_text(json.dumps(summary))
    return {}


def config_dir_with(tmp: Path, make) -> dict:
    """{tmp}/cfg/models with one odd entry, made by `make(models_folder)`."""
    (tmp / "cfg" / "models").mkdir(parents=True)
    make(tmp / "cfg" / "models")
    return {}


def user_task(tmp: Path, name: str, text: str) -> dict:
    """{tmp}/cfg/tasks/{name}.toml holding `text`, for --config-dir {tmp}/cfg."""
    (tmp / "cfg" / "tasks").mkdir(parents=True)
    (tmp / "cfg" / "tasks" / f"{name}.toml").write_text(text)
    return {}


def plugin_without_gradient(tmp: Path) -> dict:
    """{tmp}/cfg/models/p_nograd.toml naming a plugin mixer whose forward pass traces but whose
    gradient cannot (a while_loop with a traced bound), importable from {tmp}/src."""
    (tmp / "src").mkdir()
    (tmp / "src" / "plug_nograd.py").write_text(
        "import jax\nfrom flax import nnx\n\n\nclass Mixer(nnx.Module):\n"
        "    def __init__(self, spec, *, rngs):\n"
        "        self.proj = nnx.Linear(spec.dim, spec.dim, dtype=spec.dtype, rngs=rngs)\n\n"
        "    def __call__(self, x, mask, *, deterministic=True, rngs=None):\n"
        "        n = mask.sum(axis=1).max()\n"
        "        _, y = jax.lax.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, c[1] * 0.5),\n"
        "                                  (0, self.proj(x)))\n"
        "        return y, mask\n")
    config_dir_with(tmp, lambda m: (m / "p_nograd.toml").write_text(
        '[mixer]\nkind = "plug_nograd:Mixer"\n'))
    return {"PYTHONPATH": str(tmp / "src")}


# (case, arguments (with {tmp}, {data}, {results} filled in), the fix the error line names,
#  set-up: a function of the scratch folder that makes files and returns environment variables)
CASES = [
    ("results-dir below a file",
     [*LISTOPS, *TINY, "--results-dir", "{tmp}/file/results"], "is below the file",
     lambda t: (t / "file").write_text("x") and {}),
    ("results-dir that cannot be created",  # (as root, /proc refuses what permissions would)
     [*LISTOPS, *TINY, "--results-dir", "/proc/lra-results"],
     "--results-dir /proc/lra-results cannot be created", None),
    ("data-dir that cannot be created",
     ["data", "prepare", "listops", "--preset", "smoke", "--data-dir", "/proc/lra-data"],
     "--data-dir /proc/lra-data cannot be created", None),
    ("empty task TOML",
     ["list"], "empty.toml: lacks a [data] table",
     lambda t: project_with(t, "tasks", "empty.toml", "")),
    ("malformed model TOML",
     ["list"], "broken.toml: malformed TOML",
     lambda t: project_with(t, "models", "broken.toml", "[mixer\nkind = 1")),
    ("negative warm-up",
     [*LISTOPS, *TINY, "--set", "train.warmup_steps=-5"], "train.warmup_steps must be >= 0",
     None),
    ("dropout of 1",
     [*LISTOPS, *TINY, "--set", "model.dropout=1.0"], "model.dropout must be in [0, 1)", None),
    ("zero eval_every",
     [*LISTOPS, *TINY, "--set", "train.eval_every=0"], "train.eval_every must be >= 1", None),
    ("more landmarks than tokens",
     ["run", "-m", "nystromformer", "-t", "listops", *TINY, "--set", "mixer.num_landmarks=4096"],
     "set mixer.num_landmarks=64 or lower", None),
    ("memory limit from the environment",
     [*LISTOPS, *TINY], "no batch size fits at data.max_length=128",
     lambda t: {"LRA_MEMORY_LIMIT": "1MB"}),
    ("--memory-limit",
     [*LISTOPS, *TINY, "--memory-limit", "1MB"], "only 976.56 KiB is available (memory limit)",
     None),
    ("--memory-limit typo",
     [*LISTOPS, *TINY, "--memory-limit", "lots"], "cannot read memory size 'lots'", None),
    ("corrupt text archive",
     ["data", "prepare", "text", "--preset", "smoke", "--source", "{tmp}/acl.tar.gz"],
     "not a readable aclImdb", lambda t: corrupt_tar(t / "acl.tar.gz") and {}),
    ("/etc/passwd as the image source",
     ["data", "prepare", "image", "--preset", "smoke", "--source", "/etc/passwd"],
     "/etc/passwd", None),
    ("retrieval line with 4 columns",
     ["data", "prepare", "retrieval", "--preset", "smoke", "--source", "{tmp}/tsv"],
     "new_aan_pairs.eval.tsv:2: expected 5 tab-separated",
     lambda t: write_aan(t / "tsv", "1\tonly\tfour\tfields") and {}),
    ("retrieval label 7",
     ["data", "prepare", "retrieval", "--preset", "smoke", "--source", "{tmp}/tsv"],
     "new_aan_pairs.eval.tsv:2: the label must be 0 or 1, got '7'",
     lambda t: write_aan(t / "tsv", "7\ta\tb\tc\td") and {}),
    ("pathfinder label 7",
     ["data", "prepare", "pathfinder", "--preset", "smoke", "--source", "{tmp}/release"],
     "metadata/0.npy:3", lambda t: pathfinder_release(t / "release", 7) and {}),
    ("data-dir is a file (run)",
     [*LISTOPS, *TINY, "--data-dir", "{tmp}/file"], "--data-dir {tmp}/file is a file",
     lambda t: (t / "file").write_text("x") and {}),
    ("data-dir is a file (info)",
     ["data", "info", "--data-dir", "{tmp}/file"], "is a file, not a folder",
     lambda t: (t / "file").write_text("x") and {}),
    ("results-dir is a file (report)",
     ["report", "--results-dir", "{tmp}/file"], "is a file, not a folder",
     lambda t: (t / "file").write_text("x") and {}),
    ("sweep length 0",
     ["sweep", "--models", "transformer", "--lengths", "0"], "give lengths >= 1", None),
    ("sweep without models",
     ["sweep", "--models", ",", "--lengths", "64"], "names no model; give names from: ",
     None),
    ("no models registered",
     [*LISTOPS], "no models in", lambda t: project_with(t, "models", "", None)),
    ("task TOML without presets",
     ["run", "-m", "transformer", "-t", "bare"],
     "has no preset 'smoke'; choose one of: (none: add a [presets.",
     lambda t: project_with(t, "tasks", "bare.toml", '[data]\nloader = "synthetic"\n'
                            'max_length = 8\nvocab_size = 4\nnum_classes = 2\n')),
    ("ListOps smoke cut shorter than its expressions",
     [*LISTOPS, *TINY, "--set", "data.max_length=64"], "also set data.gen_max_length=64", None),
    ("download offline",
     ["data", "download", "--url", "http://127.0.0.1:9/lra_release.gz", "--retries", "0", "--insecure",
      "--to", "{tmp}/dl"], "run the same command", None),
    ("download into a file",
     ["data", "download", "--to", "{tmp}/file"], "--to {tmp}/file is a file",
     lambda t: (t / "file").write_text("x") and {}),
    ("plot into a missing folder",
     ["report", "--sweep", "--plot", "{tmp}/nonexistent/dir/x.png"], "does not exist", None),
    # issue 28: damaged records, extreme values, options that cannot go together
    ("grid plan.json is {} (status)",
     ["grid", "status", "G", "--results-dir", "{results}"], "plan.json 'grid_id' is missing",
     lambda t: grid_with(t, {})),
    ("grid plan.json is {} (resume)",
     ["grid", "resume", "G", "--results-dir", "{results}"], "start a new grid",
     lambda t: grid_with(t, {})),
    ("grid plan.json is {} (report --grid)",
     ["report", "--grid", "G"], "the grid cannot be followed without its plan",
     lambda t: grid_with(t, {})),
    ("grid plan.json with jobs 'oops'",
     ["grid", "status", "G", "--results-dir", "{results}"], "'jobs' must be a list, found str",
     lambda t: grid_with(t, {"grid_id": "G", "preset": "smoke", "models": [], "tasks": [],
                             "seeds": [], "overrides": [], "retries": 0,
                             "resources": {"executor": "local"}, "data_dir": "d",
                             "results_dir": str(t / "results"), "jobs": "oops"})),
    ("--compare with config.json []",
     ["report", "--compare", "A", "B"], "config.json the record must be an object, found list",
     lambda t: runs_with(t, a_config=[])),
    ("--compare with summary.json [1]",
     ["report", "--compare", "A", "B"], "summary.json the record must be an object",
     lambda t: runs_with(t, a_summary=[1])),
    ("--curves into a folder",
     ["report", "--curves", "{tmp}/c.png"], "is a folder; give a .png file path",
     lambda t: (t / "c.png").mkdir() or runs_with(t)),
    ("--config-dir TOML that is not UTF-8",
     ["--config-dir", "{tmp}/cfg", "list"], "bad.toml: not UTF-8 text",
     lambda t: config_dir_with(t, lambda m: (m / "bad.toml").write_bytes(b"[mixer]\nkind = 'x\xff'\n"))),
    ("--config-dir folder named like a TOML",
     ["--config-dir", "{tmp}/cfg", "list"], "weird.toml is a folder, not a TOML file",
     lambda t: config_dir_with(t, lambda m: (m / "weird.toml").mkdir())),
    ("batch of 10^12 in preflight",
     ["preflight", "-m", "transformer", "-t", "listops", "--set",
      "train.batch_size=1000000000000"], "train.batch_size must be <= 2147483647", None),
    ("sweep length of 10^9 tokens",
     ["sweep", "--models", "transformer", "--lengths", "1000000000"],
     "more than this machine's", None),
    ("sweep length of 10^23 tokens",
     ["sweep", "--models", "transformer", "--lengths", "99999999999999999999K"],
     "more tokens than 32-bit indexing addresses", None),
    ("10^23 steps",
     [*LISTOPS, *TINY[:-2], "--set", "train.steps=99999999999999999999999"],
     "train.steps must be <= 2147483647", None),
    ("infinite learning rate",
     [*LISTOPS, *TINY, "--set", "train.learning_rate=inf"],
     "train.learning_rate must be a finite number, got inf", None),
    ("--grid with --compare",
     ["report", "--grid", "latest", "--compare", "A", "B"], "--compare and --grid show "
     "different reports; give one of them", None),
    ("--compare with one run id",
     ["report", "--compare", "A", "--results-dir", "{results}"], "--compare takes two run ids",
     None),
    ("download with -1 retries",
     ["data", "download", "--retries", "-1", "--to", "{tmp}/dl"], "--retries must be >= 0",
     None),
    # issue 28, case 14: messages that named the wrong thing
    ("--source is a folder, not the archive",
     ["data", "prepare", "text", "--preset", "smoke", "--source", "{tmp}"],
     "--source {tmp} is a folder, not the aclImdb_v1.tar.gz archive; give the archive file", None),
    ("--source is the folder holding the archive",
     ["data", "prepare", "text", "--preset", "smoke", "--source", "{tmp}/dl"],
     "give the archive itself: --source {tmp}/dl/aclImdb_v1.tar.gz",
     lambda t: (t / "dl").mkdir() or corrupt_tar(t / "dl" / "aclImdb_v1.tar.gz") and {}),
    ("unknown loader in a user's task",
     ["--config-dir", "{tmp}/cfg", "run", "-m", "transformer", "-t", "mine"],
     "cfg/tasks/mine.toml: unknown data loader 'csvfile'; [data] loader must be one of: image, "
     "listops, pathfinder, retrieval, synthetic, text",
     lambda t: user_task(t, "mine", '[data]\nloader = "csvfile"\nmax_length = 8\n'
                         'vocab_size = 4\nnum_classes = 2\n')),
    ("wrong type in a --config-dir task",
     ["--config-dir", "{tmp}/cfg", "preflight", "-m", "transformer", "-t", "listops"],
     "{tmp}/cfg/tasks/listops.toml: 'data.max_length' must be a whole number, got 'long'",
     lambda t: user_task(t, "listops", (paths.tasks_dir() / "listops.toml").read_text().replace(
         "max_length = 2000", 'max_length = "long"', 1))),
    ("plugin whose gradient fails (preflight)",
     ["--config-dir", "{tmp}/cfg", "preflight", "-m", "p_nograd", "-t", "listops"],
     "its gradient cannot be traced", plugin_without_gradient),
    ("plugin whose gradient fails (run --no-preflight)",
     ["--config-dir", "{tmp}/cfg", "run", "-m", "p_nograd", "-t", "listops", "--no-preflight",
      *TINY], "its gradient cannot be traced", plugin_without_gradient),
]


# compiled without most XLA passes (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("fast_compile_module")


def snapshot(*folders: Path) -> dict[str, int | None]:
    """Every path below the folders, with file sizes (None for folders)."""
    return {str(p): (p.stat().st_size if p.is_file() else None)
            for f in folders if f.exists() for p in [f, *f.rglob("*")]}


@pytest.mark.parametrize("case, args, fix, setup", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_exit_2_and_leaves_nothing(case, args, fix, setup, tmp_path,
                                                               monkeypatch):
    data, results = tmp_path / "data", tmp_path / "results"
    for var in ("LRA_MEMORY_LIMIT", "LRA_DATA_DIR", "LRA_RESULTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    for var, value in (setup(tmp_path) if setup else {}).items():
        monkeypatch.setenv(var, value)
        if var == "PYTHONPATH":  # a plugin's module, imported by this process
            monkeypatch.syspath_prepend(value)
    fill = {"tmp": tmp_path, "data": data, "results": results}
    args = [a.format(**fill) for a in args]
    command = args[2] if args[0] == "--config-dir" else args[0]
    if "--data-dir" not in args and (command == "run" or args[:2] == ["data", "prepare"]):
        args += ["--data-dir", str(data)]
    if command in ("run", "report", "sweep") and "--results-dir" not in args:
        args += ["--results-dir", str(results)]
    before = snapshot(tmp_path)

    r = runner.invoke(app, args)
    paths.set_config_dirs([])  # --config-dir sets process state: leave none to other tests

    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 2, r.output
    assert len(errors) == 1 and fix.format(**fill) in errors[0], r.stderr
    assert r.stderr.rstrip().splitlines()[-1] == errors[0]  # nothing after the error
    assert "Traceback" not in r.output and r.stdout == ""
    assert snapshot(tmp_path) == before, case


def test_an_override_gets_its_own_cache_and_leaves_the_default_one(tmp_path):
    """--set data.max_length=... prepares a second cache beside the first, never over it."""
    sets = ["--set", "data.num_train=16", "--set", "data.num_val=8", "--set", "data.num_test=8"]
    prep = ["data", "prepare", "listops", "--preset", "smoke", "--data-dir", str(tmp_path), *sets]
    assert runner.invoke(app, prep).exit_code == 0
    (first,) = (tmp_path / "prepared" / "listops").iterdir()
    before = snapshot(first)
    r = runner.invoke(app, [*prep, "--set", "data.max_length=256"])
    assert r.exit_code == 0, r.output
    caches = sorted(p.name for p in (tmp_path / "prepared" / "listops").iterdir())
    assert len(caches) == 2 and first.name in caches and snapshot(first) == before
    # and each is current: preparing either again does nothing
    assert "already prepared" in runner.invoke(app, prep).stdout
    assert len(list((tmp_path / "listops").iterdir())) == 1  # one generated source serves both


def test_the_resume_hint_keeps_the_folders(capsys):
    from lra_bench.cli.run import _print_outcome

    _print_outcome({"status": "interrupted", "run_id": "r1", "signal": "SIGINT",
                    "interrupted_step": 3}, folders=["--results-dir /x/r"])
    assert "lra run --resume r1 --results-dir /x/r" in capsys.readouterr().err


def test_runs_listing_shows_the_validation_of_an_interrupted_run(tmp_path):
    run = tmp_path / "runs" / "transformer-listops-1"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({
        "run_id": run.name, "model": "transformer", "task": "listops", "preset": "smoke",
        "seed": 0, "status": "interrupted", "interrupted_step": 8, "started_at": "2026"}))
    evals = [{"step": 4, "val_accuracy": 0.25}, {"step": 8, "val_accuracy": 0.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    r = runner.invoke(app, ["report", "--runs", "--format", "json", "--results-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.stdout)["runs"]
    assert row["val_accuracy"] == 50.0 and row["best_step"] == 8 and row["test_accuracy"] is None


def test_sigterm_during_generation_ends_cleanly(tmp_path):
    """SIGTERM while Pathfinder images are drawn in worker processes: exit 143, no traceback,
    no data left."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lra_bench", "data", "prepare", "pathfinder", "--preset", "smoke",
         "--generate", "--data-dir", str(tmp_path / "data")],
        stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()  # the generator has started
    assert "pathfinder: drawing" in first, first
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, rest
    assert "Traceback" not in rest and "Error" not in rest, rest
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("args, says", [
    (["run", "--bogus"], "error: No such option: --bogus; see: lra run --help"),
    (["bogus"], "error: No such command 'bogus'; see: lra --help"),
    (["run", "-m", "transformer", "-t", "listops", "--steps", "abc"], "Invalid value for '--steps'"),
])
def test_parser_errors_are_one_line_too(args, says):
    # Through the installed `lra` script, as a user meets them (CliRunner bypasses main()).
    r = subprocess.run([str(Path(sys.executable).with_name("lra")), *args],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "_TYPER_FORCE_DISABLE_TERMINAL": "1"})
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], r.stderr
