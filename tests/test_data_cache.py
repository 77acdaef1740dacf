"""The prepared cache: atomic writes, memory-mapped reads checked against the manifest, and
ListOps (generated or official TSVs) on the same cache."""

from __future__ import annotations

import numpy as np
import pytest

from lra_bench import config
from lra_bench.data import cache, listops, prepare
from lra_bench.data.pipeline import eval_batches, gather
from lra_bench.errors import UserError


def write_splits(writer, n=5, L=4):
    for split in ("train", "val", "test"):
        writer.put(split, np.arange(n) % 2, np.arange(n * L, dtype=np.uint16).reshape(n, L) + 1)


def test_writer_commits_atomically_and_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "task" / "v"
    with pytest.raises(RuntimeError):
        with cache.CacheWriter(dest) as w:
            write_splits(w)
            raise RuntimeError("interrupted halfway")
    assert list(tmp_path.iterdir()) == []  # not even the empty task folder
    with cache.CacheWriter(dest) as w:
        write_splits(w)
        manifest = w.commit({"config": {"a": 1}, "source": {}})
    assert sorted(p.name for p in (tmp_path / "task").iterdir()) == ["v"]
    splits = cache.read(dest, cache.read_manifest(dest))
    assert isinstance(splits["train"]["inputs"], np.memmap)
    assert manifest["splits"]["train"]["max_id"] == 20 and cache.verify(dest, manifest) == []
    # a replaced cache swaps in whole; a damaged file is caught on read
    with cache.CacheWriter(dest) as w:
        write_splits(w, n=3)
        w.commit({"config": {"a": 2}, "source": {}})
    assert cache.read_manifest(dest)["config"] == {"a": 2}
    assert sorted(p.name for p in (tmp_path / "task").iterdir()) == ["v"]
    np.save(dest / "val.inputs.npy", np.zeros((3, 5), np.uint16))
    with pytest.raises(UserError, match="does not match its manifest"):
        cache.read(dest, cache.read_manifest(dest))


def test_batches_widen_stored_ids_to_int32():
    split = {"inputs": np.array([[1, 300], [2, 0], [3, 4]], np.uint16),
             "labels": np.array([0, 1, 0], np.int32)}
    b = gather(split, np.array([0, 2]))
    assert b["inputs"].dtype == np.int32 and b["inputs"].tolist() == [[1, 300], [3, 4]]
    batch = next(eval_batches(split, 2))
    assert batch["inputs"].dtype == np.int32 and batch["weights"].tolist() == [1.0, 1.0]


def test_listops_reads_official_tsvs_and_names_bad_lines(tmp_path):
    src = tmp_path / "data" / "lra_release" / "listops-1000"  # where `lra data download` puts it
    src.mkdir(parents=True)
    rows = [("( ( [MAX 2 ) 9 ) ] )", 9), ("( ( [SM 3 ) 4 ) ] )", 7)]
    for split in ("train", "val", "test"):
        listops.write_tsv(src / f"basic_{split}.tsv", rows)
    data = config.resolve_data("listops", "lra", ["data.max_length=6"])
    dest, manifest, wrote = prepare.prepare("listops", "lra", data, tmp_path / "data", log=print)
    splits = cache.read(dest, manifest)
    assert wrote and splits["test"]["inputs"].dtype == np.uint8
    # the lra preset reads the stream Table 1 had (data.tokens = "alphanumeric": no brackets)
    assert listops.detokenize(splits["train"]["inputs"][0]) == "[MAX 2 9"
    assert splits["train"]["labels"].tolist() == [9, 7]
    with open(src / "basic_val.tsv", "a") as f:
        f.write("( [MAX 2 ( 3 ) ] )\tnine\n")
    with pytest.raises(UserError, match=r"basic_val\.tsv:4: expected 'Source<TAB>Target'"):
        prepare.prepare("listops", "lra", data, tmp_path / "data", log=print)


def test_generated_listops_is_reused_and_matches_a_direct_generation(tmp_path):
    sets = ["data.num_train=40", "data.num_val=8", "data.num_test=8"]
    data = config.resolve_data("listops", "smoke", sets)
    dest, manifest, _ = prepare.prepare("listops", "smoke", data, tmp_path, log=lambda m: None)
    assert manifest["source"]["generated"] is True
    rows = listops.generate(56, seed=0, min_length=data["min_length"],
                            max_length=data["gen_max_length"], max_depth=data["max_depth"],
                            max_args=data["max_args"])
    want = listops.encode(rows[48:], data["max_length"], tmp_path)
    got = cache.read(dest, manifest)["test"]
    assert (np.asarray(got["inputs"]) == want["inputs"]).all()
    assert (np.asarray(got["labels"]) == want["labels"]).all()
    _, _, wrote = prepare.prepare("listops", "smoke", data, tmp_path, log=lambda m: None)
    assert not wrote
    # a new max_length re-prepares the cache from the same generated TSVs
    keyed = prepare.cache_name("listops", "smoke", data, listops.GENERATOR_KEYS)
    marker = prepare.generated_path(tmp_path, "listops", keyed) / "generated.json"
    stamp = marker.stat().st_mtime_ns
    longer = config.resolve_data("listops", "smoke", sets + ["data.max_length=200"])
    _, manifest, wrote = prepare.prepare("listops", "smoke", longer, tmp_path, log=lambda m: None)
    assert wrote and manifest["splits"]["test"]["inputs"]["shape"] == [8, 200]
    assert marker.stat().st_mtime_ns == stamp


PREPARE_TINY = """
import sys
from lra_bench import config
from lra_bench.data import prepare
data = config.resolve_data("listops", "smoke", ["data.num_train=40", "data.num_val=8",
                                                "data.num_test=8"])
prepare.prepare("listops", "smoke", data, sys.argv[1])
"""


def test_concurrent_preparers_wait_for_each_other_and_prepare_once(tmp_path):
    import subprocess
    import sys
    import time

    def start(folder):
        return subprocess.Popen([sys.executable, "-c", PREPARE_TINY, str(folder)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    messages = []
    with prepare.one_preparer(tmp_path, messages.append):
        waiting = start(tmp_path)
        time.sleep(4)  # ample for it to start and reach the lock (it prepares in ~1 s unlocked)
        assert waiting.poll() is None and not (tmp_path / "listops").exists()
    _, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert "waiting for another process preparing data" in err
    assert "preparing from" in err

    # Two at once on a new folder: both succeed, the cache is prepared once.
    fresh = tmp_path / "fresh"
    procs = [start(fresh) for _ in range(2)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert sum("preparing from" in e for e in errs) == 1, errs
    assert not messages


def test_a_damaged_cache_is_named_with_the_command_that_rebuilds_it(tmp_path):
    from typer.testing import CliRunner

    from lra_bench.cli import app

    def lra(*args):
        return CliRunner().invoke(app, [*map(str, args), "--data-dir", tmp_path])

    assert lra("data", "prepare", "listops", "--preset", "smoke").exit_code == 0
    dest = tmp_path / "prepared" / "listops" / "smoke"
    for damage in ("manifest", "array"):
        if damage == "manifest":
            (dest / "manifest.json").write_text("{not json")
        else:
            with open(dest / "train.inputs.npy", "r+b") as f:
                f.truncate(100)
        r = lra("run", "-m", "transformer", "-t", "listops", "--steps", 1)
        assert r.exit_code == 2 and "Traceback" not in r.output
        fix = f"run: lra data prepare listops --preset smoke --data-dir {tmp_path} --force"
        assert r.stderr.strip().endswith(fix), r.stderr
        if damage == "manifest":  # data info lists it as damaged, and fails
            r = lra("data", "info")
            assert r.exit_code == 1 and "damaged: " in r.stderr and "--force" in r.stderr
        assert lra("data", "prepare", "listops", "--preset", "smoke", "--force").exit_code == 0
        assert lra("data", "info").exit_code == 0
