"""ListOps: the LRA generator, the official TSV format, and a fixed tokenizer.

The generator follows the original LRA release (`lra_benchmarks/data/listops.py`): operators
MIN, MAX, MED (median, truncated to int) and SM (sum mod 10) over the digits 0-9; a node is an
operator with probability 0.25 unless it is at the maximum depth; an operator takes 2..max_args
arguments; a tree is kept when its length (values + 2 per operator) lies strictly between
min_length and max_length. Differences, both for reproducibility: a seeded `random.Random`, and
de-duplication that keeps generation order (the original de-duplicated through a set, whose
iteration order, and so the split, changed from process to process).

Tokenisation (`data.tokens`), the two streams the release produced from the same TSV text:
  "alphanumeric"  LRA at 4954d9f (Nov 2020), behind LRA Table 1 and the Nystromformer runs: tfds's
                  `Tokenizer()` keeps runs of letters and digits only, so "(", ")" and "]" vanish
                  and "[MAX" becomes "MAX": 14 token types, no closing brackets (LRA issue #14).
  "whitespace"    LRA from c209b2a (2021-03-04): "]" is renamed "X", parentheses removed, then split
                  on whitespace: 15 token types, the closing brackets kept.
Both use one fixed, sorted vocabulary instead of one built from a Python set, so ids are the same
in every process: 0 is padding, then the 15 tokens below ("alphanumeric" never emits "]").
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

import numpy as np

from lra_bench import config
from lra_bench.data.cache import token_dtype
from lra_bench.data.prepare import files_fingerprint
from lra_bench.data.safety import limits
from lra_bench.sizes import format_bytes
from lra_bench.errors import UserError
from lra_bench.progress import Display

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
VOCAB = tuple(sorted([str(d) for d in range(10)] + [END] + list(OPERATORS)))
TOKEN_ID = {tok: i + 1 for i, tok in enumerate(VOCAB)}  # 0 is padding
VALUE_P = 0.25  # probability that a node below max depth is an operator


def generate_tree(rng: random.Random, depth: int, max_depth: int, max_args: int):
    """Return (tree, length); a tree is an int or (op, [children])."""
    if depth < max_depth and rng.random() <= VALUE_P:
        children, length = [], 2
        for _ in range(rng.randint(2, max_args)):
            child, n = generate_tree(rng, depth + 1, max_depth, max_args)
            children.append(child)
            length += n
        return (rng.choice(OPERATORS), children), length
    return rng.randrange(10), 1


def evaluate(tree) -> int:
    if isinstance(tree, int):
        return tree
    op, children = tree
    values = [evaluate(c) for c in children]
    if op == "[MIN":
        return min(values)
    if op == "[MAX":
        return max(values)
    if op == "[MED":
        return int(np.median(values))
    return sum(values) % 10


def to_source(tree) -> str:
    """The official TSV's Source text: each argument left-nested in brackets,
    `( ( ( [MAX a ) b ) c ) ] )` for [MAX a b c]."""
    if isinstance(tree, int):
        return str(tree)
    op, children = tree
    text = f"( {op} {to_source(children[0])} )"
    for child in children[1:]:
        text = f"( {text} {to_source(child)} )"
    return f"( {text} {END} )"


TOKEN_STREAMS = ("alphanumeric", "whitespace")


def tokenize(source: str, tokens: str = "whitespace") -> list[int]:
    """Source text -> token ids: parentheses dropped, "]" kept ("whitespace") or dropped with
    every other non-alphanumeric character ("alphanumeric"; "[MAX" and "MAX" are one token)."""
    ids = []
    for tok in source.split():
        if tok in ("(", ")") or (tok == END and tokens == "alphanumeric"):
            continue
        if tok not in TOKEN_ID:
            raise ValueError(f"unknown ListOps token {tok!r}")
        ids.append(TOKEN_ID[tok])
    return ids


def detokenize(ids) -> str:
    return " ".join(VOCAB[i - 1] for i in ids if i != 0)


def generate(num: int, *, seed: int, min_length: int, max_length: int, max_depth: int,
             max_args: int, progress=None) -> list[tuple[str, int]]:
    """`num` unique (source, label) pairs, deterministic given the seed."""
    rng = random.Random(seed)
    seen: dict[str, int] = {}
    while len(seen) < num:
        tree, length = generate_tree(rng, 1, max_depth, max_args)
        if min_length < length < max_length:
            src = to_source(tree)
            if src not in seen:
                seen[src] = evaluate(tree)
                if progress is not None:
                    progress(len(seen))
    return list(seen.items())


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["Source", "Target"])
        w.writerows(rows)
    tmp.replace(path)


def read_tsv(path: Path) -> list[tuple[str, int]]:
    cap = limits("listops")["tsv_bytes"]
    if Path(path).stat().st_size > cap:  # it is read whole: refuse what cannot be real
        raise UserError(f"{path} is {format_bytes(Path(path).stat().st_size)}, more than any ListOps "
                        f"split (cap {format_bytes(cap)}); is it the right file?")
    rows = []
    lineno = 1
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader, None)
            if header != ["Source", "Target"]:
                raise UserError(f"{path}:1: expected the header 'Source<TAB>Target', got {header}")
            for lineno, row in enumerate(reader, start=2):
                if len(row) != 2 or not row[1].strip().isdigit():
                    raise UserError(f"{path}:{lineno}: expected 'Source<TAB>Target' with an int target")
                rows.append((row[0], int(row[1])))
    except (csv.Error, UnicodeDecodeError) as e:
        raise UserError(f"{path}:{lineno + 1}: unreadable TSV ({e})") from None
    return rows


def generate_files(out: Path, data_cfg: dict, seed: int = 0, log=None) -> None:
    """Write basic_{train,val,test}.tsv to `out` in the official layout."""
    counts = {s: data_cfg[f"num_{s}"] for s in ("train", "val", "test")}
    total = sum(counts.values())
    # (no log: no progress, as for every loader)
    with Display("listops: samples", total, interactive=None if log else False) as bar:
        rows = generate(total, seed=seed, min_length=data_cfg["min_length"],
                        max_length=data_cfg["gen_max_length"], max_depth=data_cfg["max_depth"],
                        max_args=data_cfg["max_args"], progress=bar.update if log else None)
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, n in counts.items():
        write_tsv(out / f"basic_{split}.tsv", rows[start:start + n])
        start += n


def encode(rows: list[tuple[str, int]], max_length: int, where: Path,
           tokens: str = "whitespace") -> dict[str, np.ndarray]:
    inputs = np.zeros((len(rows), max_length), token_dtype(len(VOCAB)))
    labels = np.zeros((len(rows),), np.int32)
    for i, (src, label) in enumerate(rows):
        try:
            ids = tokenize(src, tokens)[:max_length]  # cut after tokenising, as the release
        except ValueError as e:
            raise UserError(f"{where}:{i + 2}: {e}") from None
        inputs[i, : len(ids)] = ids
        labels[i] = label
    return {"inputs": inputs, "labels": labels}


# The loader protocol (see lra_bench.data.prepare).
SPLIT_FILES = {s: f"basic_{s}.tsv" for s in ("train", "val", "test")}
SOURCE_HINT = ("the official TSVs arrive with `lra data download`, or add --generate to "
               "generate them; --source takes a folder of basic_{train,val,test}.tsv")


def default_source(data: dict, data_dir: Path) -> str:
    return str(data_dir / "lra_release" / "listops-1000")


def fingerprint(source: str, data: dict) -> dict:
    if data.get("tokens", "whitespace") not in TOKEN_STREAMS:  # before any file is read or written
        raise UserError(f"data.tokens must be one of {', '.join(TOKEN_STREAMS)}, got "
                        f"'{data['tokens']}'; e.g. --set data.tokens=whitespace")
    folder = Path(source)
    files = [folder / f for f in SPLIT_FILES.values()]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise UserError(f"ListOps source {folder} lacks {', '.join(missing)}; {SOURCE_HINT}")
    return files_fingerprint(files, folder)


def build(source: str, data: dict, writer, log) -> dict:
    for split, name in SPLIT_FILES.items():
        path = Path(source) / name
        enc = encode(read_tsv(path), data["max_length"], path, data.get("tokens", "whitespace"))
        bad = (enc["labels"] < 0) | (enc["labels"] > 9)
        if bad.any():
            raise UserError(f"{path}:{int(np.argmax(bad)) + 2}: the target must be a digit 0-9")
        writer.put(split, enc["labels"], enc["inputs"])
    return {"protocol": {
        "tokens": TOKEN_NOTES[data.get("tokens", "whitespace")],
        "splits": "basic_train / basic_val / basic_test as given",
        "truncation": f"first {data['max_length']} tokens",
    }}


TOKEN_NOTES = {
    "alphanumeric": "alphanumeric: 14 ListOps token types (digits, MIN/MAX/MED/SM); brackets and "
                    "parentheses dropped, as tfds's Tokenizer() did at LRA 4954d9f; pad 0",
    "whitespace": "whitespace: 15 ListOps token types (digits, [MIN/[MAX/[MED/[SM, ']'); "
                  "parentheses dropped, ']' kept, as LRA from c209b2a; pad 0",
}


GENERATOR_KEYS = ("num_train", "num_val", "num_test", "min_length", "gen_max_length", "max_depth",
                  "max_args", "generate_seed")


def generate_source(data: dict, out: Path, log) -> None:
    generate_files(out, data, seed=data["generate_seed"], log=log)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Generate ListOps in the official TSV layout.")
    p.add_argument("--preset", default="smoke", help="the listops task preset whose [data] to use")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="regenerate even if the files exist")
    args = p.parse_args(argv)
    try:
        rc = config.resolve("transformer", "listops", args.preset)
    except UserError as e:
        sys.exit(f"error: {e}")
    if (args.out / "basic_test.tsv").exists() and not args.force:
        print(f"listops: {args.out} already has data (use --force to regenerate)", file=sys.stderr)
        return
    generate_files(args.out, rc.data, seed=args.seed, log=lambda m: print(m, file=sys.stderr))
    print(f"listops: wrote {args.out}/basic_{{train,val,test}}.tsv", file=sys.stderr)


if __name__ == "__main__":
    main()
