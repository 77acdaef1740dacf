"""Image: CIFAR-10 as sequences of 1024 grey levels (LRA `image/input_pipeline.py`).

Grey level = `tf.image.rgb_to_grayscale` of the uint8 image, reproduced bit for bit in numpy:
uint8 * float32(1/255), weighted sum with float32 (0.2989, 0.5870, 0.1140), times 255.5 and
truncated to uint8 (`tf.image.convert_image_dtype`). Pixels are read row by row.

Ids are grey level + 1 (vocab 257), pad 0: the original embedded levels 0-255 directly and its
encoder masked id 0 as padding, so black pixels were masked out of attention (queries and keys;
its mean pooling still averaged every position). A black pixel is a pixel; the shift keeps it one.
`data.black_is_padding = true` (the `lra` and `nystrom` presets) undoes the shift in the encoder,
so black is the pad id again, as the official runs had it.

Sources (`lra_bench.data.originals`): the original `cifar-10-python.tar.gz` (`lra data download
image` puts it in the data directory, where it is the default) or tfds
(`tfds.data_source('cifar10')`; `tfds:DIR` names a data dir). The archive's images are put in
tfds's order, so both give the same splits. Splits as LRA: train[:90%] / train[90%:] / test.
The archive's pickled batches are read with a restricted unpickler (`CifarUnpickler`): a crafted
batch cannot run code (docs/security.md).
"""

from __future__ import annotations

import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from lra_bench.data import originals
from lra_bench.data.prepare import archive_record, fraction_boundary, subset_rows
from lra_bench.data.safety import TarGuard
from lra_bench.errors import UserError

CIFAR_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
CIFAR_BYTES = 170_498_071
ORIGINAL = originals.Original(
    task="image", file="cifar-10-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    sha256=CIFAR_SHA256, bytes=CIFAR_BYTES, tfds_name="cifar10", limits="cifar10",
    kind="cifar-10-python tar")
SOURCE_HINT = ORIGINAL.hint()
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)


def rgb_to_grayscale(rgb: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) -> uint8 (...), as tf.image.rgb_to_grayscale computes it."""
    x = rgb.astype(np.float32) * np.float32(1.0 / 255)
    # tensordot accumulates r, g, b in order; spelled out so numpy cannot reorder or fuse it
    gray = x[..., 0] * GRAY_WEIGHTS[0] + x[..., 1] * GRAY_WEIGHTS[1]
    gray = gray + x[..., 2] * GRAY_WEIGHTS[2]
    return (gray * np.float32(255.5)).astype(np.uint8)  # float -> int casts truncate, as TF's


def downsample(gray: np.ndarray, k: int) -> np.ndarray:
    """uint8 images (n, h, w) -> uint8 (n, h/k, w/k): the mean grey level of each k x k block,
    rounded half up. `data.downsample` (1 = off): a shorter sequence for a laptop run, not the LRA
    task (docs/data.md)."""
    if k == 1:
        return gray
    n, h, w = gray.shape
    blocks = gray.reshape(n, h // k, k, w // k, k).astype(np.uint32).sum(axis=(2, 4))
    return ((2 * blocks + k * k) // (2 * k * k)).astype(np.uint8)  # integer round half up


def pixel_ids(gray: np.ndarray) -> np.ndarray:
    """uint8 images (n, h, w) -> (n, h*w) uint16 ids, grey level + 1."""
    return gray.reshape(len(gray), -1).astype(np.uint16) + 1


# What the official batches reference: they are Python 2 pickles (protocol 2) of a dict holding
# str, list of int, list of str and one uint8 array, which pickle rebuilds through numpy's
# `_reconstruct`, `ndarray` and `dtype`. Nothing else may be named, so a crafted batch cannot
# make the unpickler call anything (pickle's find_class is the only door to code).
INT_DTYPES = frozenset({"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"})


class _NdarrayName:
    """Stands for numpy.ndarray inside a pickle: usable as `_reconstruct`'s subtype, not callable,
    so a pickle cannot allocate an array of any size it likes."""


_NDARRAY = _NdarrayName()


class ForbiddenGlobal(pickle.UnpicklingError):
    pass


def _reconstruct(subtype, shape, dtype):
    if subtype is not _NDARRAY or tuple(shape) != (0,):
        raise pickle.UnpicklingError("numpy _reconstruct called with other than (ndarray, (0,))")
    return (getattr(np, "_core", None) or np.core).multiarray._reconstruct(np.ndarray, (0,), b"b")


def _dtype(spec, align=False, copy=False):
    code = spec.decode("latin1") if isinstance(spec, bytes) else spec
    if not isinstance(code, str) or code.lstrip("<>|=") not in INT_DTYPES:
        raise pickle.UnpicklingError(f"numpy dtype {spec!r} is not an integer type")
    return np.dtype(code, bool(align), bool(copy))


def _latin1(text, encoding="utf-8", errors="strict"):
    """How Python 3 pickles bytes at protocol 2 (`_codecs.encode(str, 'latin1')`)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode used for other than latin-1 bytes")
    return text.encode("latin1")


_ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy", "dtype"): _dtype,
            ("_codecs", "encode"): _latin1}


class CifarUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise ForbiddenGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not part of a CIFAR batch")


def _plain(obj, depth: int = 0) -> bool:
    """Only dicts, lists, bytes, str, ints and integer arrays, nested at most three deep."""
    if depth > 3:
        return False
    if isinstance(obj, (bytes, str, int)):
        return True
    if isinstance(obj, np.ndarray):
        return type(obj) is np.ndarray and obj.dtype.kind in "ui" and obj.dtype.fields is None
    if isinstance(obj, (list, tuple)):
        return all(_plain(x, depth + 1) for x in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, (bytes, str)) and _plain(v, depth + 1) for k, v in obj.items())
    return False


def load_batch(f, where: str) -> dict:
    """One CIFAR batch from an untrusted stream, with the restricted unpickler."""
    try:
        batch = CifarUnpickler(f, encoding="bytes").load()
    except ForbiddenGlobal as e:
        raise UserError(f"{where} names {str(e)[:120]}, which no CIFAR batch holds; refusing it "
                        "(nothing was run: only numpy arrays, lists, str, bytes and ints are "
                        "unpickled)") from None
    except Exception as e:  # noqa: BLE001 - every failure of a crafted pickle is a data error
        raise UserError(f"{where}: malformed CIFAR batch ({type(e).__name__}: "
                        f"{str(e)[:120]})") from None
    if not isinstance(batch, dict) or not _plain(batch):
        raise UserError(f"{where}: malformed CIFAR batch (expected a dict of arrays, lists, "
                        "bytes and ints)")
    return batch


def read_cifar_tar(path: Path, log=lambda m: None) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """({train|test: (uint8 images (n, 32, 32, 3), labels)}, archive record) from
    cifar-10-python.tar.gz, in tfds's order: tfds's cifar10 keys each image by its index over
    the batches in order (it reads the binary release, whose batches hold the same images in the
    same order)."""
    guard = TarGuard(path, "cifar10")
    batches: dict[str, dict] = {}
    try:
        size = guard.check_archive()
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                member = guard.admit(m)
                name = member.rsplit("/", 1)[-1] if member else ""
                if name.startswith("data_batch_") or name == "test_batch":
                    guard.take(m)
                    batches[name] = load_batch(tar.extractfile(m), f"{path}: member {m.name}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise UserError(f"{path}: not a readable cifar-10-python archive ({e})") from None
    train_names = sorted(n for n in batches if n.startswith("data_batch_"))
    if not train_names or "test_batch" not in batches:
        raise UserError(f"{path}: expected cifar-10-batches-py/data_batch_* and test_batch inside")

    def stack(names):
        try:
            data = np.concatenate([np.asarray(batches[n][b"data"], np.uint8) for n in names])
            labels = np.concatenate([np.asarray(batches[n][b"labels"], np.int32) for n in names])
        except (KeyError, ValueError, TypeError) as e:
            raise UserError(f"{path}: malformed CIFAR batch ({e})") from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise UserError(f"{path}: CIFAR batches must hold (n, 3072) pixels and n labels")
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels

    def in_tfds_order(split, names):
        images, labels = stack(names)
        order = originals.tfds_order(range(len(labels)), split)
        return images[order], labels[order]

    record = archive_record(path, size, CIFAR_SHA256, CIFAR_BYTES, log)
    record["skipped_members"] = guard.report(log)
    return {"train": in_tfds_order("train", train_names),
            "test": in_tfds_order("test", ["test_batch"])}, record


# The loader protocol (see lra_bench.data.prepare).

def default_source(data: dict, data_dir: Path) -> str:
    return originals.default_source(ORIGINAL, data_dir)


def fingerprint(source: str, data: dict) -> dict:
    return originals.fingerprint(ORIGINAL, source)


def build(source: str, data: dict, writer, log) -> dict:
    is_tfds, tfds_dir = originals.tfds_source(source)
    archive = None
    if is_tfds:
        raw = originals.read_tfds(ORIGINAL, ("train", "test"), tfds_dir, ("image", "label"), log)
        raw = {s: (np.stack(xs).astype(np.uint8), ys) for s, (xs, ys) in raw.items()}
    else:
        raw, archive = read_cifar_tar(Path(source), log)
    images, labels = raw["train"]
    cut = fraction_boundary(len(labels), data["train_fraction"])
    parts = {"train": (images[:cut], labels[:cut]), "val": (images[cut:], labels[cut:]),
             "test": raw["test"]}
    for split, (x, y) in parts.items():
        if x.shape[1:] != (32, 32, 3):
            raise UserError(f"{source}: expected 32x32 RGB images, got {x.shape[1:]}")
        rows = subset_rows(len(y), data[f"num_{split}"], data["split_seed"])
        writer.put(split, y[rows], pixel_ids(downsample(rgb_to_grayscale(x[rows]),
                                                       data.get("downsample", 1))))
    return {**({"archive": archive} if archive else {}), "protocol": {
        "tokens": "grey level + 1 (black is a pixel, not padding), vocab 257",
        "grayscale": "tf.image.rgb_to_grayscale: float32 weights 0.2989/0.5870/0.1140, "
                     "x 255.5, truncated",
        "splits": f"train[:{data['train_fraction']:.0%}] / train[{data['train_fraction']:.0%}:] "
                  "/ test, in tfds's order",
        "subset": {k: data[k] for k in ("num_train", "num_val", "num_test") if data[k]},
        **downsample_record(data),
    }}


def downsample_record(data: dict) -> dict:
    """What a manifest says of `data.downsample`: nothing when it is off."""
    k = data.get("downsample", 1)
    if k == 1:
        return {}
    return {"downsample": f"{k} x {k} average pooling of the grey levels (rounded), "
                          f"{data['max_length']} tokens: a smaller input than the LRA task's"}
