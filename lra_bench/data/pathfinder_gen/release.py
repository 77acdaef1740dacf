"""Data sets: folders of 1000, each from its own seeded stream, optionally in worker processes;
LRA's release layout on disk, and the command line (`python -m lra_bench.data.pathfinder_gen`)."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from lra_bench.data.pathfinder_gen.datasets import (DIFFICULTIES, RESOLUTIONS, STYLES, Batch,
                                                    check_style, settings)
from lra_bench.data.pathfinder_gen.snakes2 import generate_batch
from lra_bench.progress import Display

IMAGES_PER_FOLDER = 1000  # the release's imgs/<n>/ and metadata/<n>.npy each hold one batch


def _chunk_rng(resolution: int, contour_length: int, seed: int, chunk: int, style: str):
    # The data set (resolution, contour length, style) is part of the seed so that two data sets
    # made with one seed do not share their random draws. The separated style keeps its streams.
    key = [seed, resolution, contour_length, chunk] + ([1] if style == "snakes2" else [])
    return np.random.default_rng(key)


def _chunk_sizes(num_images: int) -> list[int]:
    full, rest = divmod(num_images, IMAGES_PER_FOLDER)
    return [IMAGES_PER_FOLDER] * full + ([rest] if rest else [])


def _batch(resolution: int, difficulty: str, count: int, seed: int, chunk: int, style: str):
    """(batch, continuity, distractor length, paddle length, thickness) of one folder."""
    if style == "separated":
        # scipy (ndimage): only the separated style needs it, so snakes2's workers never load it
        from lra_bench.data.pathfinder_gen import separated as sep

        st = sep.settings(resolution, difficulty)
        b = sep.generate_batch(st, count, _chunk_rng(resolution, st.contour_length, seed, chunk,
                                                     style))
        b = Batch(b.images, b.labels, b.markers, b.margins, np.full(count, -1))
    else:
        st = settings(resolution, difficulty)
        b = generate_batch(st, count, _chunk_rng(resolution, st.contour_length, seed, chunk, style))
    return b, st


def _generate_chunk(args) -> Batch:
    return _batch(*args)[0]


_STOPS = {signal.SIGINT, signal.SIGTERM}


def _worker_init():
    # Ctrl-C reaches the whole process group: workers ignore it and the parent stops them.
    # SIGTERM keeps its default, so a worker dies with its group (`timeout`, a batch system).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run(function, jobs, workers: int):
    """Yield function(job) in order, in `workers` spawned processes when more than one. Closing
    the generator (an error, Ctrl-C, SIGTERM turned into SystemExit) ends the workers and waits
    for them, so nothing writes behind the caller's cleanup."""
    workers = min(workers, len(jobs))
    if workers <= 1:
        yield from map(function, jobs)
        return
    # spawn: the caller may have started threads (JAX), which fork would copy half-alive. A stop
    # signal while the pool starts is held until it has started (one that came half-way would
    # leave a worker failing with a traceback), then delivered: the workers are stopped below.
    held: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum))
                for s in _STOPS} if main else {}
    try:
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    try:
        if held:
            signal.raise_signal(held[0])
        yield from pool.imap(function, jobs)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def generate_arrays(resolution: int, difficulty: str, n: int, seed: int, workers: int = 1,
                    return_markers: bool = False, style: str = "snakes2"):
    """(images uint8 (n, r, r), labels int64 (n,)) — the same images generate_release writes
    for these arguments; with return_markers also the marker centres (n, 2, 2) (y, x)."""
    settings(resolution, difficulty)  # validate before starting workers
    check_style(style)
    jobs = [(resolution, difficulty, c, seed, i, style) for i, c in enumerate(_chunk_sizes(n))]
    runner = _run(_generate_chunk, jobs, workers)
    try:
        batches = list(runner)
    finally:
        runner.close()
    images = np.concatenate([b.images for b in batches]) if batches else \
        np.zeros((0, resolution, resolution), np.uint8)
    labels = np.concatenate([b.labels for b in batches]) if batches else np.zeros(0, np.int64)
    if return_markers:
        markers = np.concatenate([b.markers for b in batches]) if batches else \
            np.zeros((0, 2, 2), np.float32)
        return images, labels, markers
    return images, labels


def _write_chunk(args) -> int:
    root, resolution, difficulty, count, seed, chunk, style = args
    batch, st = _batch(resolution, difficulty, count, seed, chunk, style)
    root = Path(root)
    folder = root / "imgs" / str(chunk)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for k in range(count):
        name = f"sample_{k}.png"
        Image.fromarray(batch.images[k]).save(folder / name, compress_level=1)  # uint8: mode L
        # snakes2's metadata row: subdir, file, index, label, continuity, contour length,
        # distractor length, paddle length, thickness, margin, number of paddle contrasts.
        lines.append(f"imgs/{chunk} {name} {k} {batch.labels[k]} {st.continuity:g} "
                     f"{st.contour_length} {st.distractor_length} {st.paddle_length:g} "
                     f"{st.thickness:g} {batch.margins[k]} 1\n")
    meta = root / "metadata" / f"{chunk}.npy"
    meta.parent.mkdir(parents=True, exist_ok=True)
    tmp = meta.with_suffix(".tmp")
    tmp.write_text("".join(lines))
    tmp.replace(meta)  # written last: a metadata file means its folder of images is complete
    return count


def generate_release(out_dir: Path, resolution: int, difficulty: str, num_images: int,
                     seed: int, workers: int | None = None, progress=None,
                     style: str = "snakes2") -> None:
    """Write `num_images` images in LRA's release layout:
    out_dir/pathfinder{resolution}/{difficulty}/imgs/<n>/sample_<k>.png (8-bit grayscale) and
    .../metadata/<n>.npy (plain text despite the name, one line per image, field 3 the label),
    1000 images per <n>. `progress(done_images)` is called as folders complete."""
    settings(resolution, difficulty)
    check_style(style)
    root = Path(out_dir) / f"pathfinder{resolution}" / difficulty
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    jobs = [(str(root), resolution, difficulty, c, seed, i, style)
            for i, c in enumerate(_chunk_sizes(num_images))]
    done = 0
    runner = _run(_write_chunk, jobs, workers or _default_workers())
    try:
        for count in runner:
            done += count
            if progress is not None:
                progress(done)
    finally:
        runner.close()  # workers end before the caller removes what they were writing into


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Generate Pathfinder / Path-X images in LRA's "
                                            "release layout.")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--resolution", type=int, default=32, choices=RESOLUTIONS)
    p.add_argument("--difficulty", default="curv_contour_length_14", choices=list(DIFFICULTIES))
    p.add_argument("--num-images", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--style", default="snakes2", choices=STYLES,
                   help="snakes2: LRA's data (default); separated: the cleaner variant")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = p.parse_args(argv)
    if args.num_images < 1:
        sys.exit("error: --num-images must be at least 1")
    with Display("pathfinder: drawn", args.num_images, unit="images") as bar:
        generate_release(args.out, args.resolution, args.difficulty, args.num_images, args.seed,
                         workers=args.workers, style=args.style, progress=bar.update)
    print(f"pathfinder: wrote {args.out}/pathfinder{args.resolution}/{args.difficulty}",
          file=sys.stderr)
