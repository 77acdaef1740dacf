"""Each loader on small sources made here: what lands in the cache is what the protocol says."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lra_bench import config
from lra_bench.data import cache, prepare
from lra_bench.data.image import downsample, read_cifar_tar, rgb_to_grayscale
from lra_bench.data.text import read_acl_tar
from lra_bench.errors import UserError


def quiet(_msg):
    pass


# Orders measured from tfds's own builders (with TensorFlow) on fabricated archives; see _about.
TFDS_ORDER = json.loads((Path(__file__).parent / "fixtures" / "tfds_order.json").read_text())


def run_prepare(task, tmp_path, sets=(), preset="smoke", **kw):
    data = config.resolve_data(task, preset, list(sets))
    dest, manifest, wrote = prepare.prepare(task, preset, data, tmp_path / "data", log=quiet, **kw)
    return cache.read(dest, manifest), manifest


def add_bytes(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


# ---------------------------------------------------------------- text

REVIEWS = {  # (split, polarity) -> reviews; non-ASCII to check bytes, not characters
    ("train", "pos"): ["Great film \u00e9\u00e9", "loved it", "a b c d e f g h i j k l"],
    ("train", "neg"): ["awful", "boring <br /> really", "no"],
    ("test", "pos"): ["superb"],
    ("test", "neg"): ["dull", "meh"],
}


def make_acl_tar(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for (split, pol), texts in REVIEWS.items():
            for i, t in enumerate(texts):
                add_bytes(tar, f"aclImdb/{split}/{pol}/{i}_7.txt", t.encode())
        add_bytes(tar, "aclImdb/train/unsup/0_0.txt", b"unlabelled, must be ignored")


def decode(ids: np.ndarray) -> bytes:
    return bytes(int(i) - 1 for i in ids if i != 0)


def test_text_from_acl_tar_is_bytes_plus_one_with_test_as_validation(tmp_path):
    make_acl_tar(tmp_path / "acl.tar.gz")
    splits, manifest = run_prepare("text", tmp_path, ["data.max_length=12", "data.num_train=0",
                                                      "data.num_test=0"], source=tmp_path / "acl.tar.gz")
    train = splits["train"]
    assert train["inputs"].shape == (6, 12) and train["inputs"].dtype == np.uint16
    got = {(decode(x), int(y)) for x, y in zip(train["inputs"], train["labels"])}
    want = {(t.encode()[:12], int(pol == "pos")) for (s, pol), ts in REVIEWS.items() if s == "train"
            for t in ts}
    assert got == want  # truncated to 12 bytes (the 2-byte é counts twice), labels pos = 1
    assert train["inputs"][0, 0] != 0 and train["inputs"].max() <= 256
    assert manifest["splits"]["val"] == {"same_as": "test"}
    assert splits["val"]["labels"].tolist() == splits["test"]["labels"].tolist()
    assert "test split doubles as validation" in manifest["protocol"]["validation"]


def test_text_holdout_protocol_holds_out_part_of_train(tmp_path):
    make_acl_tar(tmp_path / "acl.tar.gz")
    splits, manifest = run_prepare("text", tmp_path, ["data.max_length=32", "data.num_train=0",
                                                      "data.num_test=0", "data.validation=\"holdout\"",
                                                      "data.holdout_fraction=0.34"],
                                   source=tmp_path / "acl.tar.gz")
    train = {decode(x) for x in splits["train"]["inputs"]}
    val = {decode(x) for x in splits["val"]["inputs"]}
    assert len(val) == 2 and len(train) == 4 and not train & val
    assert len(splits["test"]["labels"]) == 3 and "same_as" not in manifest["splits"]["val"]


@pytest.fixture
def tfds_temp(tmp_path, monkeypatch):
    """tfds's DatasetInfo leaves an empty mkdtemp("tfds") folder behind when it cannot reach its
    bucket; keep those inside the test's own folder instead of /tmp."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def test_text_from_tfds_mock_matches_the_source(tmp_path, tfds_temp):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        splits, manifest = run_prepare("text", tmp_path, ["data.max_length=20", "data.num_train=0",
                                                          "data.num_test=0"])
        ds = tfds.data_source("imdb_reviews", split="train")
        for i in range(len(ds)):
            text = ds[i]["text"]
            raw = text.encode() if isinstance(text, str) else text
            assert decode(splits["train"]["inputs"][i]) == raw[:20]
            assert splits["train"]["labels"][i] == int(ds[i]["label"])
    assert manifest["source"]["kind"] == "tfds"


def test_tfds_without_the_set_or_tensorflow_fails_at_once_naming_the_download(tmp_path,
                                                                              monkeypatch):
    import tempfile

    from lra_bench.data import originals

    monkeypatch.setattr(originals, "tensorflow_installed", lambda: False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with pytest.raises(UserError) as e:
        run_prepare("text", tmp_path, source=f"tfds:{tmp_path / 'tfds'}")
    message = str(e.value)
    assert "cannot prepare it without TensorFlow" in message
    assert "`lra data download text` fetches the original aclImdb_v1.tar.gz" in message
    assert not list((tmp_path / "tmp").iterdir())  # tfds's own temporary folder is removed


def test_text_rejects_a_broken_archive(tmp_path):
    (tmp_path / "acl.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(UserError, match="not a readable aclImdb"):
        run_prepare("text", tmp_path, source=tmp_path / "acl.tar.gz")
    with pytest.raises(UserError, match="not found"):
        run_prepare("text", tmp_path, source=tmp_path / "missing.tar.gz")


# ---------------------------------------------------------------- retrieval

def write_aan(folder: Path, rows_per_split=4, bad_line: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv",
             "test": "new_aan_pairs.test.tsv"}
    for split, name in names.items():
        lines = [f"{i % 2}\tid{i}a\tid{i}b\t\"quoted, text\" {split} {i}\tsecond doc {i} of {split}"
                 for i in range(rows_per_split)]
        if bad_line is not None and split == "val":
            lines.insert(1, bad_line)
        (folder / name).write_text("\n".join(lines) + "\n")


def test_retrieval_pairs_are_dual_inputs_and_quotes_are_text(tmp_path):
    write_aan(tmp_path / "tsv")
    splits, manifest = run_prepare("retrieval", tmp_path, ["data.max_length=24", "data.num_train=0",
                                                           "data.num_val=0", "data.num_test=0"],
                                   source=tmp_path / "tsv")
    x = splits["val"]["inputs"]
    assert x.shape == (4, 2, 24)
    assert decode(x[3, 0]) == b'"quoted, text" val 3'
    assert decode(x[3, 1]) == b"second doc 3 of val"[:24]
    assert splits["val"]["labels"].tolist() == [0, 1, 0, 1]


def test_retrieval_malformed_line_names_file_and_line(tmp_path):
    write_aan(tmp_path / "tsv", bad_line="1\tonly\tfour\tfields")
    with pytest.raises(UserError, match=r"new_aan_pairs\.eval\.tsv:2: expected 5 tab-separated"):
        run_prepare("retrieval", tmp_path, source=tmp_path / "tsv")
    write_aan(tmp_path / "tsv2", bad_line="7\ta\tb\tc\td")
    with pytest.raises(UserError, match=r"eval\.tsv:2: the label must be 0 or 1"):
        run_prepare("retrieval", tmp_path, source=tmp_path / "tsv2")


# ---------------------------------------------------------------- image

def test_grayscale_reproduces_tf_rgb_to_grayscale():
    # tf: trunc(float32(sum(x/255 * w)) * 255.5); these values were worked out by hand
    rgb = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255],
                    [10, 200, 30]], np.uint8)
    assert rgb_to_grayscale(rgb).tolist() == [0, 255, 76, 149, 29, 124]


def test_downsample_averages_blocks_rounding_half_up():
    gray = np.array([[[0, 1, 10, 10], [0, 0, 10, 11], [255, 255, 3, 4], [255, 254, 5, 6]]],
                    np.uint8)
    # block means 0.25, 10.25, 254.75, 4.5 -> 0, 10, 255, 5
    assert downsample(gray, 2).tolist() == [[[0, 10], [255, 5]]]
    assert downsample(gray, 4).tolist() == [[[67]]]  # 1079 / 16 = 67.4
    assert downsample(gray, 1) is gray


DOWN2 = ["data.downsample=2", "data.max_length=256", "data.grid=[16, 16]"]


def make_cifar_tar(path: Path, per_batch=5) -> list[np.ndarray]:
    """Two training batches and a test batch; pixel (0, 0) carries the image's index."""
    images = []
    with tarfile.open(path, "w:gz") as tar:
        for b, name in enumerate(["data_batch_1", "data_batch_2", "test_batch"]):
            imgs = np.zeros((per_batch, 32, 32, 3), np.uint8)
            imgs[:, :, :, 0] = 255  # red everywhere: grey 76
            imgs[:, 0, 0, :] = np.arange(per_batch)[:, None] + 10 * b  # grey level of a grey pixel
            imgs[:, 0, 1, :] = 0  # a black pixel
            images.append(imgs)
            planes = imgs.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # the archive's layout
            batch = {b"data": planes, b"labels": ((np.arange(per_batch) + b) % 10).tolist(),
                     b"batch_label": f"batch {b}".encode(), b"filenames": [b"x.png"] * per_batch}
            # protocol 2 and Python ints, as the official (Python 2) batches
            add_bytes(tar, f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=2))
    return images


def test_image_from_cifar_tar_splits_90_10_and_keeps_black_pixels(tmp_path):
    make_cifar_tar(tmp_path / "cifar.tar.gz")
    splits, manifest = run_prepare("image", tmp_path, ["data.num_train=0", "data.num_val=0",
                                                       "data.num_test=0"],
                                   source=tmp_path / "cifar.tar.gz")
    tr, va, te = splits["train"]["inputs"], splits["val"]["inputs"], splits["test"]["inputs"]
    assert (len(tr), len(va), len(te)) == (9, 1, 5)  # train[:90%] of 10, in tfds's order
    train = [i for i in TFDS_ORDER["cifar10"]["train"] if i < 10]  # indices over the batches
    test = [i for i in TFDS_ORDER["cifar10"]["test"] if i < 5]
    grey = [i % 5 + 10 * (i // 5) for i in train]  # what make_cifar_tar put in pixel (0, 0)
    assert (tr[:, 0] - 1).tolist() == grey[:9] and va[0, 0] - 1 == grey[9]
    assert (te[:, 0] - 1).tolist() == [20 + i for i in test]
    assert (tr[:, 1] == 1).all()  # black is id 1: a pixel, not padding
    assert (tr[:, 2:] == 77).all()  # pure red -> grey 76, row by row
    assert splits["train"]["labels"].tolist() == [(i % 5 + i // 5) % 10 for i in train[:9]]


def test_image_downsampled_is_16_by_16_and_says_so(tmp_path):
    make_cifar_tar(tmp_path / "cifar.tar.gz")
    splits, manifest = run_prepare("image", tmp_path, ["data.num_train=0", "data.num_val=0",
                                                       "data.num_test=0", *DOWN2],
                                   source=tmp_path / "cifar.tar.gz")
    tr = splits["train"]["inputs"]
    assert tr.shape == (9, 256)
    grey = np.array([i % 5 + 10 * (i // 5) for i in TFDS_ORDER["cifar10"]["train"] if i < 10])
    # pixel block (0, 0) holds the index grey, black, and two reds (76): round((g + 152) / 4)
    assert ((tr[:, 0] - 1) == (grey[:9] + 152 + 2) // 4).all()
    assert (tr[:, 1:] == 77).all()
    assert "2 x 2 average pooling" in manifest["protocol"]["downsample"]


def test_archives_are_read_as_tfds_stores_them(tmp_path):
    """The original archives give tfds's order (and IMDB's stripped text), so an archive and a
    prepared tfds folder make the same cache: LRA's train/validation cut of CIFAR-10 included."""
    imdb = TFDS_ORDER["imdb_reviews"]
    with tarfile.open(tmp_path / "acl.tar.gz", "w:gz") as tar:
        for split in ("test", "train"):  # not tfds's order, nor sorted
            for name in sorted(imdb[split], reverse=True):
                add_bytes(tar, name, f" {name} \n".encode())
        add_bytes(tar, "aclImdb/train/unsup/0_0.txt", b"ignored")
    raw, _ = read_acl_tar(tmp_path / "acl.tar.gz")
    for split in ("train", "test"):
        texts, labels = raw[split]
        assert [t.decode() for t in texts] == imdb[split]
        assert labels.tolist() == [int("/pos/" in t) for t in imdb[split]]

    cifar = TFDS_ORDER["cifar10"]
    with tarfile.open(tmp_path / "cifar.tar.gz", "w:gz") as tar:
        names = [("data_batch_%d" % (b + 1), 7, 7 * b) for b in range(5)] + [("test_batch", 9, 0)]
        for name, n, first in names:
            planes = np.zeros((n, 3072), np.uint8)
            planes[:, 0] = np.arange(first, first + n)  # red of pixel (0, 0): the index
            add_bytes(tar, f"cifar-10-batches-py/{name}", pickle.dumps(
                {b"data": planes, b"labels": [0] * n}, protocol=2))
    raw, _ = read_cifar_tar(tmp_path / "cifar.tar.gz")
    for split in ("train", "test"):
        assert raw[split][0][:, 0, 0, 0].tolist() == cifar[split]


def test_image_from_tfds_mock(tmp_path, tfds_temp):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=10):
        splits, manifest = run_prepare("image", tmp_path, ["data.num_train=0", "data.num_val=0",
                                                           "data.num_test=0"])
        img = tfds.data_source("cifar10", split="train")[9]["image"]
    assert [len(splits[s]["labels"]) for s in ("train", "val", "test")] == [9, 1, 10]
    assert (splits["val"]["inputs"][0] == rgb_to_grayscale(img).reshape(-1) + 1).all()


# ---------------------------------------------------------------- pathfinder

def make_pathfinder_tree(root: Path, n=40, res=32, damage=True, rgb_every=7) -> Path:
    """The release layout; pixel (0, 0) is 200 on positives, 0 on negatives; the first
    image is RGB-encoded; four images are damaged (empty, garbage, missing, wrong size)."""
    folder = root / f"pathfinder{res}" / "curv_contour_length_14"
    lines = {0: [], 1: []}
    for i in range(n):
        label = i % 2
        sub = folder / "imgs" / str(i // 20)
        sub.mkdir(parents=True, exist_ok=True)
        px = np.full((res, res), 5, np.uint8)
        px[0, 0] = 200 * label
        name = f"sample_{i}.png"
        if i % rgb_every == 0:
            Image.fromarray(np.repeat(px[..., None], 3, axis=-1), "RGB").save(sub / name)
        else:
            Image.fromarray(px, "L").save(sub / name)
        lines[i // 20].append(f"imgs/{i // 20} {name} {i} {label} 2 1.5 7\n")
    (folder / "metadata").mkdir()
    for k, ls in lines.items():
        (folder / "metadata" / f"{k}.npy").write_text("".join(ls))
    if damage:
        (folder / "imgs/0/sample_1.png").write_bytes(b"")
        (folder / "imgs/0/sample_2.png").write_bytes(b"\x89PNG garbage")
        (folder / "imgs/0/sample_3.png").unlink()
        Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(folder / "imgs/0/sample_4.png")
    return folder


def test_pathfinder_reads_release_layout_splits_80_10_10_and_counts_skips(tmp_path):
    make_pathfinder_tree(tmp_path / "release")
    said = []
    data = config.resolve_data("pathfinder", "smoke")
    dest, manifest, _ = prepare.prepare("pathfinder", "smoke", data, tmp_path / "data",
                                        log=said.append, source=tmp_path / "release")
    splits = cache.read(dest, manifest)
    assert manifest["skipped"] == {"missing": 1, "empty": 1, "corrupt": 2, "unsafe": 0,
                                   "oversized": 0}
    # said in words, not as a Python dict (issue 28, case 14)
    assert "pathfinder: skipped 4 of 40 images (1 missing, 1 empty, 2 corrupt)" in said, said
    sizes = [len(splits[s]["labels"]) for s in ("train", "val", "test")]
    assert sizes == [29, 3, 4]  # round(0.8 * 36), round(0.9 * 36) - 29, the rest
    for s in ("train", "val", "test"):
        x, y = splits[s]["inputs"], splits[s]["labels"]
        assert x.shape[1] == 1024
        assert (x[:, 0] == np.where(y == 1, 201, 1)).all()  # each label stays with its image
        assert (x[:, 1:] == 6).all()  # grey 5 -> id 6, RGB PNGs included
    # the fixed seed makes the split the same in any other place
    again, _ = run_prepare("pathfinder", tmp_path / "elsewhere", source=tmp_path / "release")
    assert all((np.asarray(again[s]["inputs"]) == np.asarray(splits[s]["inputs"])).all()
               for s in ("train", "val", "test"))


def test_pathfinder_downsampled_keeps_labels_and_is_a_cache_of_its_own(tmp_path):
    make_pathfinder_tree(tmp_path / "release", damage=False)
    full, _ = run_prepare("pathfinder", tmp_path, source=tmp_path / "release")
    small, manifest = run_prepare("pathfinder", tmp_path, DOWN2, source=tmp_path / "release")
    for s in ("train", "val", "test"):
        x, y = small[s]["inputs"], small[s]["labels"]
        assert x.shape[1] == 256 and (y == full[s]["labels"]).all()
        # block (0, 0): (200 + 3 * 5) / 4 = 53.75 -> 54 (id 55); (0 + 3 * 5) / 4 = 3.75 -> 4 (id 5)
        assert (x[:, 0] == np.where(y == 1, 55, 5)).all()
        assert (x[:, 1:] == 6).all()
    assert "2 x 2 average pooling" in manifest["protocol"]["downsample"]
    assert manifest["config"]["downsample"] == 2
    assert np.asarray(full["train"]["inputs"]).shape[1] == 1024  # the 32 px cache is untouched


def test_pathfinder_malformed_metadata_names_file_and_line(tmp_path):
    folder = make_pathfinder_tree(tmp_path / "release", n=4, damage=False)
    (folder / "metadata" / "1.npy").write_text("imgs/0 sample_0.png 0 1\nimgs/0 sample_1.png 1\n")
    with pytest.raises(UserError, match=r"metadata/1\.npy:2: expected"):
        run_prepare("pathfinder", tmp_path, source=tmp_path / "release")
