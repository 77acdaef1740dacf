"""`lra data download` against a small archive served on 127.0.0.1, including transfers that
break off and resume with HTTP Range."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lra_bench.cli import app
from lra_bench.data import download

runner = CliRunner()

MEMBERS = {  # archive path -> wanted (extracted) or not
    "lra_release/lra_release/listops-1000/basic_train.tsv": True,
    "lra_release/lra_release/tsv_data/new_aan_pairs.eval.tsv": True,
    "lra_release/lra_release/tsv_data/aan_vocab.txt": False,
    "lra_release/lra_release/pathfinder32/curv_contour_length_14/imgs/0/sample_0.png": True,
    "lra_release/lra_release/pathfinder32/curv_contour_length_14/metadata/0.npy": True,
    "lra_release/lra_release/pathfinder32/curv_baseline/metadata/0.npy": False,
    "lra_release/lra_release/pathfinder64/curv_contour_length_14/metadata/0.npy": False,
    "lra_release/lra_release/pathfinder128/curv_contour_length_14/metadata/0.npy": True,
    "lra_release/README": False,
}


@pytest.fixture(scope="module")
def archive() -> tuple[bytes, dict[str, bytes]]:
    rng = __import__("random").Random(0)
    contents = {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in MEMBERS:
            # incompressible bytes, so the archive is big enough to break off in the middle
            payload = bytes(rng.getrandbits(8) for _ in range(30_000))
            contents[name] = payload
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue(), contents


class Server:
    """Serves one body; `cut_after` makes the next responses stop after that many bytes."""

    def __init__(self, body: bytes, ranges: bool = True):
        self.body, self.ranges, self.cut_after, self.requests = body, ranges, [], []
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append(self.headers.get("Range"))
                if outer.status != 200:
                    self.send_error(outer.status)
                    return
                start = 0
                m = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
                if m and outer.ranges:
                    start = int(m.group(1))
                    if start >= len(outer.body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(outer.body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(outer.body) - 1}/{len(outer.body)}")
                else:
                    self.send_response(200)
                chunk = outer.body[start:]
                self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                cut = outer.cut_after.pop(0) if outer.cut_after else None
                self.wfile.write(chunk[:cut] if cut is not None else chunk)
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/lra_release.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(archive):
    s = Server(archive[0])
    yield s
    s.close()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(download, "BACKOFF_S", 0.0)


def lra(*args):
    # the test server is plain http on 127.0.0.1
    return runner.invoke(app, ["data", "download", "--insecure", *map(str, args)])


def check_extracted(to: Path, contents: dict[str, bytes]) -> None:
    release = to / "lra_release"
    for name, wanted in MEMBERS.items():
        rel = name.split("lra_release/lra_release/")[-1]
        assert (release / rel).exists() == wanted, rel
        if wanted:
            assert (release / rel).read_bytes() == contents[name]


def test_a_transfer_that_breaks_off_resumes_with_range_within_one_call(tmp_path, server, archive):
    body, contents = archive
    server.cut_after = [len(body) // 3, 1000]  # two breaks, then the rest
    r = lra("--to", tmp_path, "--url", server.url)
    assert r.exit_code == 0, r.output
    assert server.requests == [None, f"bytes={len(body) // 3}-", f"bytes={len(body) // 3 + 1000}-"]
    assert (tmp_path / "lra_release.gz").read_bytes() == body
    assert not (tmp_path / "lra_release.gz.part").exists()
    check_extracted(tmp_path, contents)
    # done is done: a second call neither downloads nor extracts again
    again = lra("--to", tmp_path, "--url", server.url)
    assert again.exit_code == 0 and "already extracted" in again.stderr and len(server.requests) == 3


def test_an_interrupted_download_resumes_in_the_next_call(tmp_path, server, archive):
    body, contents = archive
    server.cut_after = [5000]
    r = lra("--to", tmp_path, "--url", server.url, "--retries", "0")
    assert r.exit_code == 2 and "run the same command to resume" in r.stderr
    assert (tmp_path / "lra_release.gz.part").stat().st_size == 5000
    assert not (tmp_path / "lra_release.gz").exists() and not (tmp_path / "lra_release").exists()
    r = lra("--to", tmp_path, "--url", server.url, "--no-keep-archive")
    assert r.exit_code == 0, r.output
    assert server.requests[-1] == "bytes=5000-"
    check_extracted(tmp_path, contents)
    assert not (tmp_path / "lra_release.gz").exists()


def test_a_server_that_ignores_range_restarts_from_zero(tmp_path, archive):
    body, contents = archive
    s = Server(body, ranges=False)
    try:
        s.cut_after = [7000]
        r = lra("--to", tmp_path, "--url", s.url)
        assert r.exit_code == 0, r.output
        assert s.requests == [None, "bytes=7000-"]  # asked to resume, got the whole file: rewritten
        assert (tmp_path / "lra_release.gz").read_bytes() == body
    finally:
        s.close()


def test_http_errors_and_damaged_archives_fail_in_one_line_leaving_nothing(tmp_path, server):
    server.status = 404
    r = lra("--to", tmp_path / "a", "--url", server.url)
    assert r.exit_code == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "HTTP 404" in r.stderr and not (tmp_path / "a" / "lra_release").exists()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "lra_release.gz").write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(3000))
    r = lra("--to", tmp_path / "b", "--url", server.url)
    assert r.exit_code == 2 and "is damaged" in r.stderr and "Traceback" not in r.output
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["lra_release.gz"]


def test_an_original_archive_is_fetched_resumably_and_must_be_the_official_one(
        tmp_path, server, archive, monkeypatch):
    from lra_bench.data import text

    body = archive[0]  # stands for aclImdb_v1.tar.gz: its hash is pinned for the test
    monkeypatch.setattr(text, "ORIGINAL", dataclasses.replace(
        text.ORIGINAL, sha256=hashlib.sha256(body).hexdigest()))
    assert text.default_source({}, tmp_path) == "tfds"  # no archive yet
    server.cut_after = [len(body) // 2]
    r = lra("text", "--to", tmp_path, "--url", server.url)
    assert r.exit_code == 0, r.output
    assert server.requests == [None, f"bytes={len(body) // 2}-"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aclImdb_v1.tar.gz"]
    assert (tmp_path / "aclImdb_v1.tar.gz").read_bytes() == body
    assert text.default_source({}, tmp_path) == str(tmp_path / "aclImdb_v1.tar.gz")
    again = lra("text", "--to", tmp_path, "--url", server.url)
    assert again.exit_code == 0 and len(server.requests) == 2  # checked, not fetched again

    monkeypatch.setattr(text, "ORIGINAL", dataclasses.replace(text.ORIGINAL, sha256="0" * 64))
    r = lra("text", "--to", tmp_path / "new", "--url", server.url)
    assert r.exit_code == 2 and "not the official" in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "new").exists()  # the refused archive and its folder are gone
    r = lra("text", "--to", tmp_path, "--url", server.url, "--sha256", "0" * 64)
    assert r.exit_code == 2 and "pinned SHA-256" in r.stderr
    # a task of the release (ListOps) fetches the release, as the bare command does
    r = lra("listops", "--to", tmp_path / "rel", "--url", server.url)
    assert r.exit_code == 0 and (tmp_path / "rel" / "lra_release" / "listops-1000").is_dir()
    r = lra("nosuch", "--to", tmp_path / "x")
    assert r.exit_code == 2 and "unknown task 'nosuch'" in r.stderr
