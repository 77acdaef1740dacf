"""Retrieval: ACL Anthology Network citation pairs, byte level (LRA `matching/input_pipeline.py`).

Source: the release's `tsv_data/new_aan_pairs.{train,eval,test}.tsv` (`lra data download`): no
header, five tab-separated columns label, id1, id2, text1, text2, quotes not special (LRA reads
them with `use_quote_delim=False`). Each document becomes UTF-8 bytes + 1, truncated to
`max_length` (4000) and padded with 0, so inputs are (n, 2, max_length) for the dual encoder.
A malformed line is an error naming the file and line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lra_bench.data.prepare import files_fingerprint, subset_rows
from lra_bench.errors import UserError

SPLIT_FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv",
               "test": "new_aan_pairs.test.tsv"}
SOURCE_HINT = ("the AAN TSVs arrive with `lra data download`; --source takes the folder of "
               "new_aan_pairs.{train,eval,test}.tsv")
COLUMNS = "label, id1, id2, text1, text2"


def parse_line(line: bytes, where: str) -> tuple[int, bytes, bytes]:
    fields = line.rstrip(b"\r\n").split(b"\t")
    if len(fields) != 5:
        raise UserError(f"{where}: expected 5 tab-separated fields ({COLUMNS}), found {len(fields)}")
    try:
        label = float(fields[0])
    except ValueError:
        label = -1.0
    if label not in (0.0, 1.0):
        got = fields[0][:20].decode("utf-8", "replace")  # the text as the file shows it
        raise UserError(f"{where}: the label must be 0 or 1, got {got!r}")
    return int(label), fields[3], fields[4]


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def read_pairs(path: Path, rows_wanted: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """Fill inputs (k, 2, L) with the wanted non-blank lines' documents; return their labels."""
    L = inputs.shape[-1]
    want = np.zeros(int(rows_wanted.max(initial=-1)) + 1, bool)
    want[rows_wanted] = True
    labels = np.zeros(len(rows_wanted), np.int32)
    row = k = 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            label, t1, t2 = parse_line(line, f"{path}:{lineno}")
            if row < len(want) and want[row]:
                for j, t in enumerate((t1, t2)):
                    ids = np.frombuffer(t[:L], np.uint8)
                    inputs[k, j, : len(ids)] = ids.astype(np.uint16) + 1
                labels[k] = label
                k += 1
            row += 1
    return labels


# The loader protocol (see lra_bench.data.prepare).

def default_source(data: dict, data_dir: Path) -> str:
    return str(data_dir / "lra_release" / "tsv_data")


def fingerprint(source: str, data: dict) -> dict:
    folder = Path(source)
    files = [folder / f for f in SPLIT_FILES.values()]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise UserError(f"AAN source {folder} lacks {', '.join(missing)}; {SOURCE_HINT}")
    return files_fingerprint(files, folder)


def build(source: str, data: dict, writer, log) -> dict:
    L = data["max_length"]
    for split, name in SPLIT_FILES.items():
        path = Path(source) / name
        rows = subset_rows(count_lines(path), data[f"num_{split}"], data["split_seed"])
        inputs = writer.empty_inputs(split, (len(rows), 2, L), np.uint16)
        labels = read_pairs(path, rows, inputs)
        del inputs
        writer.put(split, labels)
        log(f"retrieval: {split}: {len(rows)} pairs")
    return {"protocol": {
        "tokens": "UTF-8 byte + 1 per document, pad 0, vocab 257",
        "truncation": f"first {L} bytes of each document",
        "inputs": "(n, 2, max_length): one shared encoder over both documents (the dual "
                  "encoder's head: model.retrieval_head)",
        "splits": "new_aan_pairs train / eval / test as given",
        "subset": {k: data[k] for k in ("num_train", "num_val", "num_test") if data[k]},
    }}
