"""Text: IMDB reviews, byte level (LRA `text_classification/input_pipeline.py`).

Tokens are UTF-8 bytes + 1 (tfds `ByteTextEncoder`'s ids), 0 is padding, vocab 257; each review
is truncated to `max_length` bytes (LRA's config: 1000; the paper: 4000) and padded with 0.
Label 1 = positive.

Sources (`lra_bench.data.originals`): the original `aclImdb_v1.tar.gz` (train/test x pos/neg,
`unsup` ignored; `lra data download text` puts it in the data directory, where it is the default)
or tfds (`tfds.data_source('imdb_reviews')`, array_record, no TensorFlow; `tfds:DIR` names a tfds
data dir). Both give the same reviews in the same order. IMDB has no validation split. `data.validation` records the protocol:
  "test"     LRA's: the test split doubles as validation (the best-val checkpoint is then
             chosen on test; the manifest says so)
  "holdout"  a seeded `holdout_fraction` of train is held out as validation; test stays unseen
"""

from __future__ import annotations

import os
import tarfile
import zlib
from pathlib import Path

import numpy as np

from lra_bench.data import originals
from lra_bench.data.prepare import archive_record, fraction_boundary, subset_rows
from lra_bench.data.safety import TarGuard
from lra_bench.errors import UserError

ACL_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"  # tfds 4.9.10
ACL_BYTES = 84_125_825
ORIGINAL = originals.Original(
    task="text", file="aclImdb_v1.tar.gz",
    url="https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
    sha256=ACL_SHA256, bytes=ACL_BYTES, tfds_name="imdb_reviews", limits="aclimdb",
    kind="aclImdb tar")
SOURCE_HINT = ORIGINAL.hint()
VALIDATION = ("test", "holdout")


def byte_ids(texts, max_length: int) -> np.ndarray:
    """(n, max_length) uint16 ids: the first max_length UTF-8 bytes + 1, padded with 0."""
    out = np.zeros((len(texts), max_length), np.uint16)
    for i, t in enumerate(texts):
        b = t.encode("utf-8") if isinstance(t, str) else bytes(t)
        ids = np.frombuffer(b[:max_length], np.uint8)
        out[i, : len(ids)] = ids.astype(np.uint16) + 1
    return out


def read_acl_tar(path: Path, log=lambda m: None) -> tuple[dict[str, tuple[list[bytes], np.ndarray]], dict]:
    """({train|test: (texts, labels)}, archive record) from aclImdb_v1.tar.gz, as tfds's
    imdb_reviews builder reads it: reviews stripped of surrounding whitespace, in tfds's order
    (keyed by the member's path)."""
    guard = TarGuard(path, "aclimdb")
    found: dict[str, list[tuple[str, bytes, int]]] = {"train": [], "test": []}
    try:
        size = guard.check_archive()
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                member = guard.admit(m)
                parts = member.split("/") if member else []
                if (len(parts) < 4 or parts[-3] not in found
                        or parts[-2] not in ("pos", "neg") or not parts[-1].endswith(".txt")):
                    continue
                guard.take(m)
                text = tar.extractfile(m).read().strip()
                found[parts[-3]].append((os.path.normpath(m.name), text, int(parts[-2] == "pos")))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise UserError(f"{path}: not a readable aclImdb tar archive ({e})") from None
    for split, rows in found.items():
        if not rows:
            raise UserError(f"{path}: no aclImdb/{split}/{{pos,neg}}/*.txt reviews inside; "
                            "expected the original aclImdb_v1.tar.gz")
    out = {}
    for split, rows in found.items():
        rows = [rows[i] for i in originals.tfds_order([r[0] for r in rows], split)]
        out[split] = ([r[1] for r in rows], np.asarray([r[2] for r in rows], np.int32))
    record = archive_record(path, size, ACL_SHA256, ACL_BYTES, log)
    record["skipped_members"] = guard.report(log)
    return out, record


# The loader protocol (see lra_bench.data.prepare).

def default_source(data: dict, data_dir: Path) -> str:
    return originals.default_source(ORIGINAL, data_dir)


def fingerprint(source: str, data: dict) -> dict:
    return originals.fingerprint(ORIGINAL, source)


def build(source: str, data: dict, writer, log) -> dict:
    if data["validation"] not in VALIDATION:
        raise UserError(f"data.validation must be one of {', '.join(VALIDATION)}, "
                        f"got '{data['validation']}'")
    is_tfds, tfds_dir = originals.tfds_source(source)
    archive = None
    if is_tfds:
        raw = originals.read_tfds(ORIGINAL, ("train", "test"), tfds_dir, ("text", "label"), log)
    else:
        raw, archive = read_acl_tar(Path(source), log)
    seed, L = data["split_seed"], data["max_length"]
    texts, labels = raw["train"]
    if data["validation"] == "holdout":
        order = np.random.default_rng(seed).permutation(len(labels))
        cut = fraction_boundary(len(labels), data["holdout_fraction"])
        parts = {"val": np.sort(order[:cut]), "train": np.sort(order[cut:])}
    else:
        parts = {"train": np.arange(len(labels))}
    for split, rows in parts.items():
        rows = rows[subset_rows(len(rows), data[f"num_{split}"], seed)]
        writer.put(split, labels[rows], byte_ids([texts[i] for i in rows], L))
    texts, labels = raw["test"]
    rows = subset_rows(len(labels), data["num_test"], seed)
    writer.put("test", labels[rows], byte_ids([texts[i] for i in rows], L))
    if data["validation"] == "test":
        writer.alias("val", "test")
    return {**({"archive": archive} if archive else {}), "protocol": {
        "tokens": "UTF-8 byte + 1, pad 0, vocab 257",
        "truncation": f"first {L} bytes",
        "validation": ("LRA: the test split doubles as validation (IMDB has none), so the "
                       "best-val checkpoint is chosen on test" if data["validation"] == "test"
                       else f"a seeded {data['holdout_fraction']:.0%} of train (seed {seed}) "
                            "is held out as validation; test is unseen until the end"),
        "subset": {k: data[k] for k in ("num_train", "num_val", "num_test") if data[k]},
    }}
