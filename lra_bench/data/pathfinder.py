"""Pathfinder (32x32) and Path-X (128x128): the release layout, read without TensorFlow.

    <root>/pathfinder<res>/<difficulty>/imgs/<n>/sample_<k>.png
    <root>/pathfinder<res>/<difficulty>/metadata/<n>.npy

Despite the suffix the metadata files are plain text, one line per image, space-separated:
field 0 the image folder (relative to the difficulty folder), field 1 the file name, field 3 the
label (LRA `data/pathfinder.py`). Difficulties: curv_baseline (contour length 6),
curv_contour_length_9, curv_contour_length_14; LRA used the last for both tasks.

As LRA, 80/10/10 train/val/test; LRA sliced tfds's record order, we permute with a fixed seed
(`data.split_seed`). Empty, unreadable or wrongly sized PNGs are skipped and counted in the
manifest (LRA filtered empty images too). Ids are grey level + 1, pad 0, vocab 257: as for Image,
the original masked black (0), the background of every Pathfinder image, as padding.

`--generate` writes the same layout with `lra_bench.data.pathfinder_gen`: by default
(`data.style = "snakes2"`) the distribution of LRA's own images; `data.style = "separated"`
selects a cleaner variant that is not LRA's task (docs/pathfinder-generator.md).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from lra_bench.data.image import downsample, downsample_record, rgb_to_grayscale
from lra_bench.data.prepare import fraction_boundary
from lra_bench.data.safety import inside, limits
from lra_bench.sizes import format_bytes
from lra_bench.errors import UserError
from lra_bench.progress import Display

SOURCE_HINT = ("the release images arrive with `lra data download`; --source takes the folder "
               "holding pathfinder<res>/; or add --generate to draw them offline")
OK, MISSING, EMPTY, CORRUPT, UNSAFE, OVERSIZED = 0, 1, 2, 3, 4, 5
# unsafe: a path outside the folder, through a symlink, or not a regular file (device, fifo);
# oversized: more bytes than any real image (limits.toml). Both are skipped unread.
STATUS = {MISSING: "missing", EMPTY: "empty", CORRUPT: "corrupt", UNSAFE: "unsafe",
          OVERSIZED: "oversized"}
FRACTIONS = (0.8, 0.9)  # train | val | test boundaries


def release_dir(source: str, data: dict) -> Path:
    """The difficulty folder; `source` may be the release root, pathfinder<res>/ or the folder."""
    root = Path(source)
    sub = Path(f"pathfinder{data['resolution']}") / data["difficulty"]
    for cand in (root / sub, root / data["difficulty"], root):
        if (cand / "metadata").is_dir():
            return cand
    raise UserError(f"no {sub}/metadata under {root}; {SOURCE_HINT}")


def metadata_files(folder: Path) -> list[Path]:
    # regular files only: a symlinked or device "metadata file" is not read
    files = [p for p in (folder / "metadata").iterdir()
             if p.suffix == ".npy" and stat.S_ISREG(p.lstat().st_mode)]
    # numeric order (0, 1, ..., 10), so the example order, and the split, are the same everywhere
    return sorted(files, key=lambda p: (not p.stem.isdigit(), int(p.stem) if p.stem.isdigit() else 0, p.stem))


def read_metadata(folder: Path) -> tuple[list[str], np.ndarray]:
    """(image paths relative to folder, labels) from every metadata file, in order."""
    paths, labels = [], []
    cap = limits("pathfinder")
    for meta in metadata_files(folder):
        if meta.stat().st_size > cap["metadata_bytes"]:
            raise UserError(f"{meta}: {format_bytes(meta.stat().st_size)} of metadata, more than any "
                            f"release file (cap {format_bytes(cap['metadata_bytes'])}); is it damaged?")
        try:
            lines = meta.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{meta}: unreadable metadata ({e})") from None
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            f = line.split()
            if len(f) < 4 or f[3] not in ("0", "1"):
                raise UserError(f"{meta}:{lineno}: expected 'folder file _ label ...' with "
                                f"label 0 or 1, got {line[:80]!r}")
            paths.append(f"{f[0]}/{f[1]}")
            labels.append(int(f[3]))
        if len(paths) > cap["listed_images"]:
            raise UserError(f"{folder}/metadata lists more than {cap['listed_images']:,} images, "
                            "more than any release folder; is it damaged?")
    if not paths:
        raise UserError(f"{folder}/metadata lists no images; {SOURCE_HINT}")
    return paths, np.asarray(labels, np.int32)


def decode_png(folder: Path, rel: str, resolution: int) -> tuple[int, np.ndarray | None]:
    """Decode folder/rel if it is a regular file inside folder, of a plausible size, whose header
    says resolution x resolution: checked before any pixel is decoded."""
    path = inside(folder, rel)
    if path is None:
        return UNSAFE, None
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return UNSAFE, None
        if st.st_size == 0:
            return EMPTY, None
        if st.st_size > limits("pathfinder")["png_bytes"]:
            return OVERSIZED, None
        with Image.open(path) as im:
            if im.size != (resolution, resolution):  # read from the header; nothing decoded yet
                return CORRUPT, None
            im.load()
            if im.mode == "L":
                gray = np.asarray(im, np.uint8)
            elif im.mode == "1":
                gray = np.asarray(im.convert("L"), np.uint8)
            else:
                gray = rgb_to_grayscale(np.asarray(im.convert("RGB"), np.uint8))
    except FileNotFoundError:
        return MISSING, None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return CORRUPT, None
    if gray.shape != (resolution, resolution):
        return CORRUPT, None
    return OK, gray


def read_images(folder: Path, paths: list[str], resolution: int, pixels: np.ndarray) -> np.ndarray:
    """Decode every PNG into pixels[i] (threads: PIL releases the GIL while decoding);
    returns the status of each."""
    status = np.zeros(len(paths), np.int8)
    chunk = 2048

    def work(start: int) -> None:
        for i in range(start, min(start + chunk, len(paths))):
            s, gray = decode_png(folder, paths[i], resolution)
            status[i] = s
            if s == OK:
                pixels[i] = gray.reshape(-1)

    starts = range(0, len(paths), chunk)
    # Pillow's decompression-bomb limit, for our size: it refuses (at open) any image over twice
    # this many pixels; decode_png refuses every other size before decoding too.
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, resolution * resolution
    try:
        with (ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool,
              Display("pathfinder: decoded", len(paths), unit="images") as bar):
            for n, _ in enumerate(pool.map(work, starts), start=1):
                bar.update(min(n * chunk, len(paths)))
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    return status


# The loader protocol (see lra_bench.data.prepare).

def default_source(data: dict, data_dir: Path) -> str:
    return str(data_dir / "lra_release")


def fingerprint(source: str, data: dict) -> dict:
    folder = release_dir(source, data)
    h = hashlib.sha256()
    files = metadata_files(folder)
    for p in files:
        st = p.stat()
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"kind": "release images", "root": str(folder.resolve()),
            "metadata_files": len(files), "metadata_sha256": h.hexdigest()}


def build(source: str, data: dict, writer, log) -> dict:
    res, k = data["resolution"], data.get("downsample", 1)
    side = res // k
    if data["max_length"] != side * side:
        raise UserError(f"data.max_length ({data['max_length']}) must be (resolution / "
                        f"downsample)^2 ({side * side})")
    folder = release_dir(source, data)
    paths, labels = read_metadata(folder)
    pixels = writer.scratch("pixels", (len(paths), res * res), np.uint8)
    status = read_images(folder, paths, res, pixels)
    valid = np.flatnonzero(status == OK)
    if len(valid) == 0:
        raise UserError(f"{folder}: none of the {len(paths)} listed images could be read")
    order = np.random.default_rng(data["split_seed"]).permutation(valid)
    a, b = (fraction_boundary(len(order), f) for f in FRACTIONS)
    for split, rows in (("train", order[:a]), ("val", order[a:b]), ("test", order[b:])):
        rows = np.sort(rows)
        inputs = writer.empty_inputs(split, (len(rows), side * side), np.uint16)
        for i in range(0, len(rows), 8192):
            gray = downsample(pixels[rows[i:i + 8192]].reshape(-1, res, res), k)
            inputs[i:i + 8192] = gray.reshape(-1, side * side).astype(np.uint16) + 1
        del inputs
        writer.put(split, labels[rows])
    del pixels
    skipped = {name: int((status == code).sum()) for code, name in STATUS.items()}
    if any(skipped.values()):
        counts = ", ".join(f"{n:,} {name}" for name, n in skipped.items() if n)
        log(f"pathfinder: skipped {sum(skipped.values()):,} of {len(status):,} images "
            f"({counts})")
    return {
        "skipped": skipped,
        "listed": len(paths),
        "protocol": {
            "images": f"pathfinder{res}/{data['difficulty']}",
            "tokens": "grey level + 1 (black is a pixel, not padding), vocab 257, row by row",
            "splits": f"80/10/10 of the readable images, seeded permutation (seed {data['split_seed']})",
            "skipped": "empty, unreadable or wrongly sized PNGs, and unsafe ones (outside the "
                       "folder, symlinks, devices, oversized files), counted under 'skipped'",
            **downsample_record(data),
        },
    }


GENERATOR_KEYS = ("resolution", "difficulty", "num_images", "generate_seed", "style")
# What pathfinder_gen draws for given settings: bump it whenever its images change, so that
# folders and caches generated before are drawn again instead of reused (lra_bench.data.prepare).
# 2: paddles and masks rounded to float32 as snakes2 stored them (grey levels, issue 27).
GENERATOR_VERSION = 2


def generate_source(data: dict, out: Path, log) -> None:
    try:
        pathfinder_gen = importlib.import_module("lra_bench.data.pathfinder_gen")
    except ModuleNotFoundError as e:
        if e.name != "lra_bench.data.pathfinder_gen":
            raise
        raise UserError("the Pathfinder generator (lra_bench.data.pathfinder_gen) is not "
                        "installed; prepare from the release images instead (`lra data download`, "
                        "then --source <data-dir>/lra_release)") from None
    style = pathfinder_gen.check_style(data.get("style", "snakes2"))
    log(f"pathfinder: drawing {data['num_images']} images of {data['resolution']} px, "
        f"{data['difficulty']}, seed {data['generate_seed']}, style {style}")
    with Display("pathfinder: drawn", data["num_images"], unit="images") as bar:
        pathfinder_gen.generate_release(out, data["resolution"], data["difficulty"],
                                        data["num_images"], data["generate_seed"], style=style,
                                        progress=bar.update)
