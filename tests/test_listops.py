import numpy as np
import pytest

from lra_bench import config
from lra_bench.data import listops
from lra_bench.errors import UserError

GEN = dict(min_length=16, max_length=128, max_depth=6, max_args=10)


def test_generator_is_deterministic_and_seed_dependent():
    a = listops.generate(50, seed=3, **GEN)
    b = listops.generate(50, seed=3, **GEN)
    c = listops.generate(50, seed=4, **GEN)
    assert a == b
    assert a != c


def test_generator_distribution_matches_the_lra_rules():
    rows = listops.generate(400, seed=0, **GEN)
    sources = [s for s, _ in rows]
    assert len(set(sources)) == len(sources), "samples must be unique"
    lengths = [len(listops.tokenize(s)) for s in sources]
    # Tree length counts values and 2 per operator (the op and its "]"): the token count.
    assert min(lengths) > GEN["min_length"] and max(lengths) < GEN["max_length"]
    labels = np.array([y for _, y in rows])
    assert set(labels) <= set(range(10)) and len(set(labels)) >= 8
    ops = {tok for s in sources for tok in s.split() if tok.startswith("[")}
    assert ops == set(listops.OPERATORS)
    for s, _ in rows:
        args = _arity(listops.tokenize(s))
        assert all(2 <= a <= GEN["max_args"] for a in args)


def _arity(ids):
    """Arguments per operator, from the token stream."""
    stack, out = [], []
    for i in ids:
        tok = listops.VOCAB[i - 1]
        if tok.startswith("["):
            if stack:
                stack[-1] += 1
            stack.append(0)
        elif tok == "]":
            out.append(stack.pop())
        elif stack:
            stack[-1] += 1
    return out


def test_evaluate_follows_the_operator_semantics():
    tree = ("[SM", [("[MAX", [3, 9]), ("[MIN", [4, 7, 2]), ("[MED", [1, 8, 5, 6])])
    # MAX=9, MIN=2, MED(1,5,6,8)=int(5.5)=5, SM=(9+2+5)%10=6
    assert listops.evaluate(tree) == 6


def test_source_format_and_tokenizer_round_trip():
    tree = ("[MAX", [2, ("[MIN", [4, 7]), 0])
    src = listops.to_source(tree)
    assert src == "( ( ( ( [MAX 2 ) ( ( ( [MIN 4 ) 7 ) ] ) ) 0 ) ] )"
    ids = listops.tokenize(src)
    assert listops.detokenize(ids) == "[MAX 2 [MIN 4 7 ] 0 ]"
    assert 0 not in ids and max(ids) == len(listops.VOCAB)
    # The vocabulary is fixed and sorted: ids never depend on the data or the process.
    assert list(listops.VOCAB) == sorted(listops.VOCAB)
    assert listops.TOKEN_ID["0"] == 1


def test_tokenizer_rejects_unknown_tokens():
    with pytest.raises(ValueError):
        listops.tokenize("( [MAX 2 [FOO ] )")


def test_tsv_round_trip_and_loader(tmp_path):
    rc = config.resolve("transformer", "listops", "smoke")
    folder = tmp_path / "listops" / rc.data["variant"]
    listops.generate_files(folder, rc.data, seed=1)
    header = (folder / "basic_train.tsv").read_text().splitlines()[0]
    assert header == "Source\tTarget"
    rows = listops.read_tsv(folder / "basic_val.tsv")
    assert len(rows) == rc.data["num_val"]
    from lra_bench import data

    splits = data.load(rc, tmp_path)  # builds the prepared cache from the TSVs
    train = splits["train"]
    assert train["inputs"].shape == (rc.data["num_train"], rc.data["max_length"])
    first = listops.read_tsv(folder / "basic_train.tsv")[0]
    n = len(listops.tokenize(first[0]))
    assert (train["inputs"][0, :n] > 0).all() and (train["inputs"][0, n:] == 0).all()
    assert train["labels"][0] == first[1]
    # No split leaks into another.
    texts = {s: {r[0] for r in listops.read_tsv(folder / f"basic_{s}.tsv")} for s in ("train", "val", "test")}
    assert not (texts["train"] & texts["test"]) and not (texts["train"] & texts["val"])


def test_malformed_tsv_names_file_and_line(tmp_path):
    bad = tmp_path / "basic_train.tsv"
    bad.write_text("Source\tTarget\n( [MAX 1 2 ] )\t3\n( [MAX 1 2 ] )\n")
    with pytest.raises(UserError, match="basic_train.tsv:3"):
        listops.read_tsv(bad)


def test_missing_lra_data_names_the_prepare_command(tmp_path):
    from lra_bench import data

    rc = config.resolve("transformer", "listops", "lra")
    with pytest.raises(UserError, match="lra data prepare listops"):
        data.load(rc, tmp_path)
