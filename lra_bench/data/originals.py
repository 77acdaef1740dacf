"""Text and Image have two sources, tfds or the original archive; both give the same examples in
the same order.

LRA read IMDB and CIFAR-10 through tfds. `tfds.data_source` reads a prepared tfds folder without
TensorFlow, but preparing one (tfds's `download_and_prepare`) needs TensorFlow, which this
project does not install. So the original archive is a source of its own: `lra data download
text|image` fetches it into the data directory (its SHA-256 is pinned), and the loaders read it
as tfds's builders do:
- in tfds's order: tfds stores a split sorted by the MD5 of the split's name followed by the
  example's key (`tensorflow_datasets/core/hashing.py`, `Hasher(salt=split)`; `core/shuffle.py`).
  cifar10's key is the running index over data_batch_1..5 (test: test_batch), imdb_reviews'
  the member's path in the archive;
- IMDB reviews are stripped of surrounding whitespace, as imdb_reviews' `_generate_examples`
  does.
This was checked against tfds 4.9.10's own builders, run with TensorFlow in a scratch
environment on fabricated archives; `tests/fixtures/tfds_order.json` holds the orders they
produced, and `tests/test_data_loaders.py` checks the archive readers against them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from lra_bench.data.prepare import files_fingerprint
from lra_bench.errors import UserError

Log = Callable[[str], None]


@dataclass(frozen=True)
class Original:
    """A task's original archive: where it comes from and what it must be."""

    task: str
    file: str            # its name in the data directory
    url: str
    sha256: str
    bytes: int
    tfds_name: str
    limits: str          # its section of data/limits.toml
    kind: str            # how manifests name it

    def hint(self) -> str:
        return (f"`lra data download {self.task}` fetches the original {self.file} "
                f"({self.bytes / 1e6:.0f} MB, SHA-256 checked) into the data directory; or give "
                f"--source PATH/{self.file}, or --source tfds:DIR for a prepared tfds folder")


def tfds_source(source: str) -> tuple[bool, str | None]:
    """('tfds' -> (True, None)), ('tfds:DIR' -> (True, DIR)), a path -> (False, None)."""
    if source == "tfds":
        return True, None
    if source.startswith("tfds:"):
        return True, source[5:]
    return False, None


def default_source(original: Original, data_dir: Path) -> str:
    """The archive when it is in the data directory, else tfds."""
    archive = Path(data_dir) / original.file
    return str(archive) if archive.is_file() else "tfds"


# What the archive readers do differently from a plain read: part of an archive's fingerprint,
# so caches made by an older reader are rebuilt.
ARCHIVE_READER = "as tfds's builders: md5 order of split + key, IMDB reviews stripped"


def fingerprint(original: Original, source: str) -> dict:
    is_tfds, tfds_dir = tfds_source(source)
    if is_tfds:
        return {"kind": "tfds", "name": original.tfds_name, "data_dir": tfds_dir}
    path = Path(source)
    if path.is_dir():  # the folder that holds the archive, most likely: name the file in it
        inside = path / original.file
        fix = (f"give the archive itself: --source {inside}" if inside.is_file() else
               f"give the archive file, --source PATH/{original.file}, or --source tfds:{path} "
               "if it is a prepared tfds folder")
        raise UserError(f"--source {path} is a folder, not the {original.file} archive; {fix}")
    if not path.is_file():
        raise UserError(f"{path} not found; {original.hint()}")
    return {"kind": original.kind, "reader": ARCHIVE_READER, **files_fingerprint([path])}


def tfds_order(keys: Sequence[str | int], split: str) -> np.ndarray:
    """The positions of `keys` in the order tfds stores a split generated with them."""
    salted = hashlib.md5(split.encode())

    def digest(key) -> int:
        h = salted.copy()
        h.update(str(key).encode())
        return int(h.hexdigest(), 16)

    return np.asarray(sorted(range(len(keys)), key=lambda i: digest(keys[i])), np.int64)


@contextlib.contextmanager
def _contained_tfds():
    """tfds's DatasetInfo makes a mkdtemp("tfds") folder per builder and never removes it: give
    it a folder of ours for the call, removed after. Its absl warnings about a missing set are
    held back too: the error that follows says it in one line."""
    saved = tempfile.tempdir
    mine = tempfile.mkdtemp(prefix="lra-tfds-")
    tempfile.tempdir = mine
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)
        tempfile.tempdir = saved
        shutil.rmtree(mine, ignore_errors=True)


def tensorflow_installed() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def read_tfds(original: Original, splits: tuple[str, ...], data_dir: str | None,
              fields: tuple[str, str], log: Log = lambda m: None):
    """{split: (features list, labels)} from tfds.data_source. tfds prepares a missing set only
    with TensorFlow installed; without it, a missing set fails at once (not after an 84-170 MB
    download that cannot be used) and says how to get the original archive."""
    can_prepare = tensorflow_installed()
    try:
        # tensorflow_datasets (TensorFlow too, where installed): slow to import, and only
        # reading an original set needs it
        import tensorflow_datasets as tfds

        out = {}
        with _contained_tfds():
            for split in splits:
                ds = tfds.data_source(original.tfds_name, split=split, data_dir=data_dir,
                                      download=can_prepare,
                                      builder_kwargs={"file_format": "array_record"})
                log(f"{original.tfds_name}: reading {len(ds)} {split} examples from tfds")
                xs, ys = [], []
                for i in range(len(ds)):
                    ex = ds[i]
                    xs.append(ex[fields[0]])
                    ys.append(int(ex[fields[1]]))
                out[split] = (xs, np.asarray(ys, np.int32))
        return out
    except UserError:
        raise
    except Exception as e:  # tfds raises many types (network, missing files, format); all mean "no data"
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        where = f"in {data_dir}" if data_dir else "in tfds's data dir"
        why = "" if can_prepare else ", and tfds cannot prepare it without TensorFlow"
        raise UserError(f"tfds has no '{original.tfds_name}' {where}{why} ({type(e).__name__}: "
                        f"{first[:160]}); {original.hint()}") from None
