"""Crafted data files (docs/security.md): no pickle runs code, no archive member escapes its
folder or fills the disk, no image is decoded before its size is checked, no crafted JSON in a
results or data folder leads a command outside it. Every file is made here, in tmp_path."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lra_bench import results
from lra_bench.cli import app
from lra_bench.data import cache, download, image, safety
from lra_bench.errors import UserError

runner = CliRunner()


def lra(*args):
    return runner.invoke(app, [str(a) for a in args])


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def outside(root: Path, target: Path) -> set[str]:
    """Everything under root that is not target or inside it."""
    rel = str(target.relative_to(root))
    return {p for p in files(root) if p != rel and not p.startswith(rel + "/")}


def one_error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and lines[-1].startswith("error: "), r.output
    return lines[-1]


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], mode="w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.GNU_FORMAT) as tar:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def reg(name: str, payload: bytes = b"data") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), payload


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def lying_header(name: str, size: int) -> bytes:
    """A gzipped tar whose one member claims `size` bytes and holds none: a decompression bomb's
    header, without the bomb."""
    info = tarfile.TarInfo(name)
    info.size = size
    return gzip.compress(info.tobuf(tarfile.GNU_FORMAT) + b"\0" * 1024)


@pytest.fixture
def small_limits(monkeypatch):
    """Shrink the caps (a real bomb would take minutes to make); returns the dict to edit."""
    patched = {k: dict(v) for k, v in safety._all_limits().items()}
    monkeypatch.setattr(safety, "_all_limits", lambda: patched)
    return patched


# ------------------------------------------------------------------- CIFAR pickles

class Payload:
    """Unpickling this opens (creates) `path`: what a crafted batch would do with os.system."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def cifar_tar(path: Path, test_batch: bytes) -> None:
    good = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"batch_label": b"b"}
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in (("data_batch_1", pickle.dumps(good, protocol=2)),
                              ("test_batch", test_batch)):
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_a_cifar_batch_with_a_reduce_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": Payload(marker)}
    cifar_tar(tmp_path / "cifar.tar.gz", pickle.dumps(batch, protocol=2))
    # the payload really would run under plain pickle
    pickle.loads(pickle.dumps(Payload(tmp_path / "control")))
    assert (tmp_path / "control").exists()
    r = lra("data", "prepare", "image", "--preset", "smoke", "--source", tmp_path / "cifar.tar.gz",
            "--data-dir", tmp_path / "data")
    line = one_error_line(r)
    assert "cifar.tar.gz: member cifar-10-batches-py/test_batch names io.open," in line
    assert not marker.exists()
    assert files(tmp_path / "data") == set()  # nothing written, not even empty folders


@pytest.mark.parametrize("batch, message", [
    # numpy's own reconstruction, but an object array: its items could be anything
    (np.array([1, "a"], dtype=object), "not an integer type"),
    # a float array is not what CIFAR holds
    (np.zeros(3, np.float64), "malformed CIFAR batch"),
    # protocol 5 (out of the official format) rebuilds arrays through another global
    (pickle.dumps(np.zeros(3, np.uint8), protocol=5), "names numpy"),
])
def test_other_numpy_globals_and_dtypes_are_refused(tmp_path, batch, message):
    payload = batch if isinstance(batch, bytes) else pickle.dumps({b"data": batch}, protocol=2)
    with pytest.raises(UserError, match=message):
        image.load_batch(io.BytesIO(payload), "batch")


def test_an_ndarray_cannot_be_called_to_allocate_memory(tmp_path):
    # GLOBAL numpy ndarray; (shape,) ; REDUCE: numpy.ndarray((2**40,)) would reserve a terabyte
    crafted = b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x01\x85R."
    with pytest.raises(UserError, match="malformed CIFAR batch"):
        image.load_batch(io.BytesIO(crafted), "batch")


def test_a_cifar_member_larger_than_any_batch_is_refused_unread(tmp_path):
    (tmp_path / "cifar.tar.gz").write_bytes(lying_header("cifar-10-batches-py/data_batch_1",
                                                         10 * 2**30))
    with pytest.raises(UserError, match="decompression bomb"):
        image.read_cifar_tar(tmp_path / "cifar.tar.gz")


# ------------------------------------------------------------------- lra data download / extract

GOOD = "lra_release/listops-1000/basic_train.tsv"
UNSAFE_MEMBERS = {  # case -> (member, reason counted)
    "dotdot": (reg("lra_release/listops-1000/../../../../escape.txt"), "'..' in path"),
    "symlink": (special("lra_release/listops-1000/basic_val.tsv", tarfile.SYMTYPE, "../../../escape.txt"),
                "symlink"),
    "hardlink": (special("lra_release/listops-1000/basic_test.tsv", tarfile.LNKTYPE, GOOD),
                 "hard link"),
    "device": (special("lra_release/listops-1000/dev", tarfile.CHRTYPE), "device or fifo"),
    "fifo": (special("lra_release/listops-1000/fifo", tarfile.FIFOTYPE), "device or fifo"),
}


def release_archive(to: Path, extra: list) -> Path:
    to.mkdir(parents=True, exist_ok=True)
    (to / download.ARCHIVE).write_bytes(tar_bytes([reg(GOOD, b"( [MAX 1 ] )\t1\n"), *extra]))
    return to / download.ARCHIVE


@pytest.mark.parametrize("case", sorted(UNSAFE_MEMBERS))
def test_unsafe_release_members_are_skipped_counted_and_nothing_escapes(tmp_path, case):
    member, reason = UNSAFE_MEMBERS[case]
    to = tmp_path / "data"
    release_archive(to, [member])
    r = lra("data", "download", "--to", to)
    assert r.exit_code == 0, r.output
    assert outside(tmp_path, to) == set()  # nothing outside --to
    assert files(to / "lra_release") == {"listops-1000", "listops-1000/basic_train.tsv",
                                         "extracted.json"}
    marker = json.loads((to / "lra_release" / "extracted.json").read_text())
    assert marker["skipped_members"] == {reason: 1} and reason in r.stderr


def test_an_absolute_member_is_skipped_and_not_written_where_it_points(tmp_path):
    target = tmp_path / "abs" / "listops-1000" / "basic_val.tsv"
    to = tmp_path / "data"
    release_archive(to, [reg(str(target))])
    r = lra("data", "download", "--to", to)
    assert r.exit_code == 0, r.output
    assert not target.exists() and outside(tmp_path, to) == set()
    assert not (to / "lra_release" / "listops-1000" / "basic_val.tsv").exists()
    assert json.loads((to / "lra_release" / "extracted.json").read_text())[
        "skipped_members"] == {"absolute path": 1}


def check_refused(tmp_path: Path, to: Path, r, words: str) -> None:
    assert words in one_error_line(r)
    assert outside(tmp_path, to) == set()
    assert files(to) == {download.ARCHIVE}  # no release folder, no temporary folder


def test_a_member_claiming_a_huge_size_is_refused_before_it_is_decompressed(tmp_path):
    to = tmp_path / "data"
    to.mkdir()
    (to / download.ARCHIVE).write_bytes(lying_header(f"lra_release/{GOOD}", 100 * 2**30))
    check_refused(tmp_path, to, lra("data", "download", "--to", to), "decompression bomb")


def test_a_stream_expanding_past_its_cap_is_refused(tmp_path, small_limits):
    small_limits["lra_release"]["expanded_bytes"] = 50_000
    to = tmp_path / "data"
    # zeros: a few hundred bytes of gzip that expand 100-fold, in members nobody extracts
    release_archive(to, [reg(f"lra_release/README{i}", b"\0" * 20_000) for i in range(5)])
    assert (to / download.ARCHIVE).stat().st_size < 2_000
    check_refused(tmp_path, to, lra("data", "download", "--to", to), "would expand the archive")


def test_members_taking_more_than_the_cap_are_refused(tmp_path, small_limits):
    small_limits["lra_release"]["taken_bytes"] = 30_000
    to = tmp_path / "data"
    release_archive(to, [reg(f"lra_release/listops-1000/basic_{s}.tsv", b"1" * 20_000)
                         for s in ("val", "test")])
    check_refused(tmp_path, to, lra("data", "download", "--to", to), "brings what is read to")


def test_extraction_refuses_to_fill_the_disk(tmp_path, small_limits):
    small_limits["disk"]["min_free_bytes"] = 2**60
    to = tmp_path / "data"
    release_archive(to, [])
    check_refused(tmp_path, to, lra("data", "download", "--to", to), "must stay free")


def test_an_archive_larger_than_the_release_is_refused(tmp_path, small_limits):
    small_limits["lra_release"]["archive_bytes"] = 100
    to = tmp_path / "data"
    release_archive(to, [])
    check_refused(tmp_path, to, lra("data", "download", "--to", to), "more than any real")


def test_the_marker_records_the_archive_hash_and_a_wrong_sha256_is_refused(tmp_path):
    to = tmp_path / "data"
    archive = release_archive(to, [])
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    r = lra("data", "download", "--to", to, "--sha256", "0" * 64)
    check_refused(tmp_path, to, r, "not the 0000")
    r = lra("data", "download", "--to", to)
    assert r.exit_code == 0, r.output
    marker = json.loads((to / "lra_release" / "extracted.json").read_text())
    assert marker["archive_sha256"] == digest and marker["archive_bytes"] == archive.stat().st_size
    assert marker["sha256_checked"] is False and "no official SHA-256" in marker["sha256_note"]
    r = lra("data", "download", "--to", to, "--sha256", digest.upper())
    assert r.exit_code == 0 and "already extracted" in r.stderr


@pytest.mark.parametrize("url, words", [
    ("http://example.org/lra_release.gz", "plain http"),
    ("ftp://example.org/lra_release.gz", "only https://"),
    ("file:///etc/passwd", "only https://"),
])
def test_only_https_is_downloaded_without_insecure(tmp_path, url, words):
    r = lra("data", "download", "--to", tmp_path / "data", "--url", url)
    assert words in one_error_line(r) and files(tmp_path) == set()


def test_a_redirect_from_https_to_http_is_refused():
    handler = download._SameSchemeRedirects(insecure=False)
    with pytest.raises(UserError, match="plain http"):
        handler.redirect_request(None, None, 302, "Found", {}, "http://evil.example/x.gz")


# ------------------------------------------------------------------- aclImdb tar

def test_acl_links_and_escaping_members_are_skipped_and_counted(tmp_path):
    from lra_bench.data import text

    members = [reg(f"aclImdb/{s}/{p}/0_1.txt", b"fine") for s in ("train", "test")
               for p in ("pos", "neg")]
    members += [special("aclImdb/train/pos/1_1.txt", tarfile.SYMTYPE, "/etc/passwd"),
                special("aclImdb/train/neg/1_1.txt", tarfile.LNKTYPE, "aclImdb/test/pos/0_1.txt"),
                reg("aclImdb/../../train/pos/2_1.txt"), reg("/aclImdb/train/pos/3_1.txt")]
    (tmp_path / "acl.tar.gz").write_bytes(tar_bytes(members))
    raw, record = text.read_acl_tar(tmp_path / "acl.tar.gz")
    assert len(raw["train"][0]) == 2 and record["official"] is False
    assert record["skipped_members"] == {"symlink": 1, "hard link": 1, "'..' in path": 1,
                                         "absolute path": 1}
    assert files(tmp_path) == {"acl.tar.gz"}


def test_an_acl_review_larger_than_any_review_is_refused(tmp_path):
    from lra_bench.data import text

    (tmp_path / "acl.tar.gz").write_bytes(lying_header("aclImdb/train/pos/0_1.txt", 2**30))
    with pytest.raises(UserError, match="decompression bomb"):
        text.read_acl_tar(tmp_path / "acl.tar.gz")


# ------------------------------------------------------------------- Pathfinder trees and PNGs

def png(width: int, height: int) -> bytes:
    """A grey PNG of any size, written by hand (all-black rows compress to almost nothing)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    rows = zlib.compress(b"\0" * ((width + 1) * height), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_pathfinder_skips_escaping_linked_special_and_oversized_images(tmp_path, small_limits,
                                                                     monkeypatch):
    root = tmp_path / "release" / "pathfinder32" / "curv_contour_length_14"
    (root / "imgs" / "0").mkdir(parents=True)
    (root / "metadata").mkdir()
    escape_png = tmp_path / "outside.png"
    escape_png.write_bytes(png(32, 32))
    (tmp_path / "outside_dir").mkdir()
    (tmp_path / "outside_dir" / "s.png").write_bytes(png(32, 32))
    for i in range(10):
        (root / "imgs" / "0" / f"sample_{i}.png").write_bytes(png(32, 32))
    (root / "imgs" / "0" / "link.png").symlink_to(escape_png)
    (root / "imgs" / "linkdir").symlink_to(tmp_path / "outside_dir")
    os.mkfifo(root / "imgs" / "0" / "fifo.png")  # opening it would block forever
    (root / "imgs" / "0" / "big.png").write_bytes(png(32, 32) + b"\0" * 70_000)
    (root / "imgs" / "0" / "bomb.png").write_bytes(png(4000, 4000))  # 16 MP in 16 KB
    small_limits["pathfinder"]["png_bytes"] = 65_536
    lines = [f"imgs/0 sample_{i}.png 0 {i % 2}" for i in range(10)]
    lines += ["imgs/0 ../../../../../outside.png 0 1", f"{tmp_path} outside.png 0 1",
              "imgs/0 link.png 0 1", "imgs/linkdir s.png 0 1", "imgs/0 fifo.png 0 1",
              "imgs/0 big.png 0 1", "imgs/0 bomb.png 0 1"]
    (root / "metadata" / "0.npy").write_text("\n".join(lines) + "\n")

    from PIL import Image

    decoded_sizes = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load",
                        lambda im: decoded_sizes.append(im.size) or real_load(im))
    before = files(tmp_path)
    r = lra("data", "prepare", "pathfinder", "--preset", "smoke", "--source", tmp_path / "release",
            "--data-dir", tmp_path / "data")
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "data/prepared/pathfinder/smoke/manifest.json").read_text())
    assert manifest["skipped"] == {"missing": 0, "empty": 0, "corrupt": 1, "unsafe": 5,
                                   "oversized": 1}
    assert set(decoded_sizes) == {(32, 32)}  # the 4000 px bomb was never decoded
    assert outside(tmp_path, tmp_path / "data") == before


def test_pathfinder_metadata_listing_too_many_images_is_refused(tmp_path, small_limits):
    root = tmp_path / "pathfinder32" / "curv_contour_length_14"
    (root / "metadata").mkdir(parents=True)
    (root / "metadata" / "0.npy").write_text("imgs/0 a.png 0 1\n" * 50)
    small_limits["pathfinder"]["listed_images"] = 10
    r = lra("data", "prepare", "pathfinder", "--preset", "smoke", "--source", tmp_path,
            "--data-dir", tmp_path / "data")
    assert "more than 10 images" in one_error_line(r) and not (tmp_path / "data").exists()


# ------------------------------------------------------------------- prepared caches

def prepared_listops(tmp_path: Path) -> Path:
    r = lra("data", "prepare", "listops", "--preset", "smoke", "--generate", "--data-dir",
            tmp_path / "data", "--set", "data.num_train=8", "--set", "data.num_val=4",
            "--set", "data.num_test=4")
    assert r.exit_code == 0, r.output
    # the overrides key the cache: prepared/listops/smoke-<hash>/
    (dest,) = (tmp_path / "data" / "prepared" / "listops").glob("smoke*")
    return dest


def test_a_pickled_npy_in_a_cache_is_never_unpickled(tmp_path):
    dest = prepared_listops(tmp_path)
    manifest = cache.read_manifest(dest)
    path = dest / "train.labels.npy"
    path.unlink()
    np.save(path, np.array([Payload(tmp_path / "pwned")] * 8, dtype=object), allow_pickle=True)
    info = manifest["splits"]["train"]["labels"]
    info.update(bytes=path.stat().st_size, dtype="object", shape=[8])
    with pytest.raises(UserError, match="cannot read"):
        cache.read(dest, manifest)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("edit, words", [
    (lambda m: m["splits"]["train"]["inputs"].update(file="../../../../secret.npy"),
     "train inputs file must be train.inputs.npy"),
    (lambda m: m["splits"]["val"].update(same_as="val"), "same as an unknown split"),
    (lambda m: m["splits"]["test"]["labels"].update(shape="big"), "shape, bytes"),
    (lambda m: m.update(source={"files": 3}), "source files"),
])
def test_a_crafted_manifest_is_refused_in_one_line(tmp_path, edit, words):
    dest = prepared_listops(tmp_path)
    manifest = json.loads((dest / "manifest.json").read_text())
    edit(manifest)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    r = lra("data", "info", "--data-dir", tmp_path / "data")  # names it damaged, no traceback
    assert r.exit_code == 1 and "nothing prepared" in r.stdout, r.output
    assert words in r.stderr and "Traceback" not in r.output
    with pytest.raises(UserError, match=words):
        cache.read_manifest(dest)


def test_a_symlinked_cache_file_is_refused(tmp_path):
    dest = prepared_listops(tmp_path)
    (tmp_path / "elsewhere.npy").write_bytes((dest / "val.labels.npy").read_bytes())
    (dest / "val.labels.npy").unlink()
    (dest / "val.labels.npy").symlink_to(tmp_path / "elsewhere.npy")
    with pytest.raises(UserError, match="not a regular file"):
        cache.read(dest, cache.read_manifest(dest))


def test_a_variant_that_is_a_path_is_refused(tmp_path):
    r = lra("data", "prepare", "listops", "--preset", "smoke", "--generate", "--data-dir",
            tmp_path / "data", "--set", 'data.variant="../../escape"')
    assert "cannot name a folder" in one_error_line(r) and files(tmp_path) == set()


# ------------------------------------------------------------------- results folders

def crafted_run(rdir: Path, config: dict, summary: dict | None = None, run_id="r1") -> Path:
    run = rdir / "runs" / run_id
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config))
    (run / "summary.json").write_text(json.dumps(summary or {
        "model": "transformer", "task": "listops", "status": "interrupted", "seed": 0}))
    return run


@pytest.fixture(scope="module")
def saved():
    from lra_bench import config

    return config.resolve("transformer", "listops", "smoke").to_dict()


def edited(saved: dict, section: str | None, key: str, value) -> dict:
    doc = json.loads(json.dumps(saved))
    (doc[section] if section else doc)[key] = value
    return doc


@pytest.mark.parametrize("section, key, value, words", [
    ("data", "variant", "../../../../escape", "cannot name a folder"),
    (None, "task_name", "../../escape", "names what this checkout lacks"),
    ("train", "steps", "10", "expected a int"),
    ("train", "batch_size", -4, "holds values this checkout refuses"),
    ("model", "unknown_key", 1, "another [model]"),
    (None, "seed", True, "no seed >= 0"),
    ("mixer", "kind", 3, "expected a str"),
])
def test_a_crafted_config_json_cannot_be_resumed(tmp_path, saved, section, key, value, words):
    doc = edited(saved, section, key, value)
    rdir = tmp_path / "results"
    crafted_run(rdir, doc)
    before = files(tmp_path)
    r = lra("run", "--resume", "r1", "--results-dir", rdir, "--data-dir", tmp_path / "data")
    assert words in one_error_line(r)
    assert files(tmp_path) == before  # nothing written anywhere (not even a lock or a cache)


def test_a_crafted_summary_is_skipped_by_report_and_refused_by_resume(tmp_path, saved):
    rdir = tmp_path / "results"
    crafted_run(rdir, saved, {"model": "transformer", "task": "listops", "status": "completed",
                              "test_accuracy": "99%", "run_id": "../../../escape"})
    crafted_run(rdir, saved, {"model": ["x"], "task": "listops", "status": "completed"},
                run_id="r2")
    crafted_run(rdir, saved, {"model": "transformer", "task": "listops", "status": "completed",
                              "preset": "smoke", "seed": 0, "test_accuracy": 0.5,
                              "test_accuracy_last": 0.5, "val_accuracy": 0.5, "step_time_ms": 1.0,
                              "best_step": 1, "params": 10,
                              "run_id": "../../../escape2"}, run_id="r3")
    crafted_run(rdir, saved, {"model": "transformer", "task": "listops", "status": "completed"},
                run_id="r4")
    r = lra("report", "--results-dir", rdir, "--format", "csv")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert "'test_accuracy' must be a number" in r.stderr and "'model' must be text" in r.stderr
    assert "r4/summary.json: a completed run without test_accuracy" in r.stderr
    assert "50.0" in r.stdout
    for fmt in ("table", "markdown", "json"):  # r3 has no efficiency fields: no row, no crash
        r = lra("report", "--results-dir", rdir, "--format", fmt)
        assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    r = lra("report", "--results-dir", rdir, "--runs", "--format", "csv")
    assert "r3" in r.stdout and "escape" not in r.stdout  # the folder is the run id
    assert outside(tmp_path, rdir) == set()
    r = lra("run", "--resume", "r1", "--results-dir", rdir, "--data-dir", tmp_path / "data")
    assert "summary.json is malformed" in one_error_line(r)
    r = lra("run", "--resume", "../r1", "--results-dir", rdir)
    assert "no run '../r1'" in one_error_line(r)


def test_saved_config_accepts_what_a_run_writes(saved):
    rc = results.saved_config(json.loads(json.dumps(saved)), "r")
    assert rc.to_dict() == json.loads(json.dumps(saved))


@pytest.mark.parametrize("edit, words", [
    (lambda d: d["settings"].update(lengths=["1024; rm -rf"]), "'settings.lengths[0]' must be"),
    (lambda d: d["settings"].update(batch_size="32"), "'settings.batch_size' must be"),
    (lambda d: d["settings"].update(mode="backward"), "'settings.mode' must be"),
    (lambda d: d["settings"].update(shell="rm -rf"), "unknown settings shell"),
    (lambda d: d["rows"][0].update(length="big"), "'rows[0].length' must be a whole number"),
    (lambda d: d["rows"][0].update(status="great"), "'rows[0].status' must be"),
    (lambda d: d["rows"][0].update(steps_per_second="fast"), "'rows[0].steps_per_second'"),
    (lambda d: d.update(rows={"a": 1}), "'rows' must be a list"),
    (lambda d: d.clear(), "'settings' is missing"),
])
def test_a_crafted_sweep_file_is_refused_in_one_line(tmp_path, edit, words):
    from lra_bench import sweep

    row = {"model": "transformer", "length": 1024, "status": "ok", "steps_per_second": 2.0}
    sweep.save(tmp_path, "20300101-000000-text-train-aaaaaa", sweep.Settings(), [row])
    path = tmp_path / "sweeps" / "20300101-000000-text-train-aaaaaa.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    r = lra("report", "--sweep", "--results-dir", tmp_path)
    assert words in one_error_line(r)


def test_the_sweep_schema_covers_every_column_and_setting():
    """records.SWEEP (where sweep files are checked, with every other record) names each column
    and setting lra_bench.sweep writes, so none goes unchecked."""
    from dataclasses import fields

    from lra_bench import records, sweep

    row = {"model", "length", "status", *records.SWEEP_TEXT, *records.SWEEP_NUMBERS}
    assert row == set(sweep.COLUMNS)
    named = {getattr(k, "schema", k) for k in records.SWEEP_SETTINGS}
    assert named == {f.name for f in fields(sweep.Settings)}


def test_a_crafted_checkpoint_progress_is_refused(tmp_path):
    from lra_bench.checkpoint import check_progress

    good = {"position": [0, 3], "best_accuracy": 0.5, "best_step": 2, "evals": [{}],
            "step_times": [0.1], "data_waits": []}
    assert check_progress(good, tmp_path, 2) is good
    for bad in ({**good, "position": [-1, 0]}, {**good, "evals": "all"},
                {**good, "step_times": ["x"]}, {**good, "best_accuracy": None}, []):
        with pytest.raises(UserError, match="progress is malformed"):
            check_progress(bad, tmp_path, 2)


def test_a_listops_tsv_larger_than_any_split_is_refused(tmp_path, small_limits):
    from lra_bench.data import listops

    small_limits["listops"]["tsv_bytes"] = 100
    (tmp_path / "basic_train.tsv").write_text("Source\tTarget\n" + "( [MAX 1 ] )\t1\n" * 20)
    with pytest.raises(UserError, match="more than any ListOps split"):
        listops.read_tsv(tmp_path / "basic_train.tsv")


@pytest.mark.parametrize("announce", [True, False])
def test_a_download_larger_than_the_release_stops_at_the_cap(tmp_path, small_limits, announce):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Endless(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            if announce:
                self.send_header("Content-Length", str(10**12))
            self.end_headers()
            try:  # without a length: as much as the client takes
                for _ in range(200):
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                pass

    small_limits["lra_release"]["archive_bytes"] = 1_000_000
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/lra_release.gz"
        r = lra("data", "download", "--to", tmp_path / "data", "--url", url, "--insecure")
        assert "more than the LRA release can be" in one_error_line(r)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert files(tmp_path / "data") == set()  # the partial download is deleted too
