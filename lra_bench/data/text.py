"""Text: IMDB reviews, byte level (LRA `text_classification/input_pipeline.py`).

Tokens are UTF-8 bytes + 1 (tfds `ByteTextEncoder`'s ids), 0 is padding, vocab 257; each review
is truncated to `max_length` bytes (LRA's config: 1000; the paper: 4000) and padded with 0.
Label 1 = positive.

Sources: `tfds` (`tfds.data_source('imdb_reviews')`, array_record, no TensorFlow; `tfds:DIR`
names a tfds data dir) or the original `aclImdb_v1.tar.gz` (train/test x pos/neg, `unsup`
ignored). IMDB has no validation split. `data.validation` records the protocol:
  "test"     LRA's: the test split doubles as validation (the best-val checkpoint is then
             chosen on test; the manifest says so)
  "holdout"  a seeded `holdout_fraction` of train is held out as validation; test stays unseen
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path

import numpy as np

from lra_bench.data.prepare import archive_record, files_fingerprint, fraction_boundary, subset_rows
from lra_bench.data.safety import TarGuard
from lra_bench.errors import UserError

SOURCE_HINT = ("the default source is tfds 'imdb_reviews' (tfds downloads it when it can); "
               "or add --source PATH/aclImdb_v1.tar.gz")
TFDS_NAME = "imdb_reviews"
VALIDATION = ("test", "holdout")


def byte_ids(texts, max_length: int) -> np.ndarray:
    """(n, max_length) uint16 ids: the first max_length UTF-8 bytes + 1, padded with 0."""
    out = np.zeros((len(texts), max_length), np.uint16)
    for i, t in enumerate(texts):
        b = t.encode("utf-8") if isinstance(t, str) else bytes(t)
        ids = np.frombuffer(b[:max_length], np.uint8)
        out[i, : len(ids)] = ids.astype(np.uint16) + 1
    return out


def tfds_source(source: str) -> tuple[bool, str | None]:
    """('tfds' -> (True, None)), ('tfds:DIR' -> (True, DIR)), a path -> (False, None)."""
    if source == "tfds":
        return True, None
    if source.startswith("tfds:"):
        return True, source[5:]
    return False, None


def read_tfds(name: str, splits: tuple[str, ...], data_dir: str | None, fields: tuple[str, str],
              log=lambda m: None):
    """{split: (features list, labels)} from tfds.data_source, downloading if tfds can."""
    try:
        import tensorflow_datasets as tfds

        out = {}
        for split in splits:
            ds = tfds.data_source(name, split=split, data_dir=data_dir, download=True,
                                  builder_kwargs={"file_format": "array_record"})
            log(f"{name}: reading {len(ds)} {split} examples from tfds")
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
        raise UserError(f"tfds could not provide '{name}' ({type(e).__name__}: {first[:200]}); "
                        "prepare it with tfds on a machine with internet, or give the original "
                        "archive with --source") from None


ACL_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"  # tfds 4.9.10
ACL_BYTES = 84_125_825


def read_acl_tar(path: Path, log=lambda m: None) -> tuple[dict[str, tuple[list[bytes], np.ndarray]], dict]:
    """({train|test: (texts, labels)}, archive record) from aclImdb_v1.tar.gz, in sorted member
    order."""
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
                text = tar.extractfile(m).read()
                found[parts[-3]].append((m.name, text, int(parts[-2] == "pos")))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise UserError(f"{path}: not a readable aclImdb tar archive ({e})") from None
    for split, rows in found.items():
        if not rows:
            raise UserError(f"{path}: no aclImdb/{split}/{{pos,neg}}/*.txt reviews inside; "
                            "expected the original aclImdb_v1.tar.gz")
    out = {}
    for split, rows in found.items():
        rows.sort()
        out[split] = ([r[1] for r in rows], np.asarray([r[2] for r in rows], np.int32))
    record = archive_record(path, size, ACL_SHA256, ACL_BYTES, log)
    record["skipped_members"] = guard.report(log)
    return out, record


# The loader protocol (see lra_bench.data.prepare).

def default_source(data: dict, data_dir: Path) -> str:
    return "tfds"


def fingerprint(source: str, data: dict) -> dict:
    is_tfds, tfds_dir = tfds_source(source)
    if is_tfds:
        return {"kind": "tfds", "name": TFDS_NAME, "data_dir": tfds_dir}
    path = Path(source)
    if not path.is_file():
        raise UserError(f"{path} not found; {SOURCE_HINT}")
    return {"kind": "aclImdb tar", **files_fingerprint([path])}


def build(source: str, data: dict, writer, log) -> dict:
    if data["validation"] not in VALIDATION:
        raise UserError(f"data.validation must be one of {', '.join(VALIDATION)}, "
                        f"got '{data['validation']}'")
    is_tfds, tfds_dir = tfds_source(source)
    archive = None
    if is_tfds:
        raw = read_tfds(TFDS_NAME, ("train", "test"), tfds_dir, ("text", "label"), log)
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
