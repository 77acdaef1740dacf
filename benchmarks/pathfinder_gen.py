"""Pathfinder / Path-X generator speed: images per second of CPU time on one core, per data set.

    python benchmarks/pathfinder_gen.py [--repeats 3] [--images 200] [--images-128 10]

Each repeat draws a fresh batch in this process (one core, no worker processes) after a warm-up
batch that fills the stamp caches, and reports the min and median images/s over the repeats;
CPU time (process_time), not wall time, so that a shared machine's load does not enter. The
official snakes2 code makes about 8 hard (contour 14) 32 px images per CPU second
(docs/pathfinder-generator.md)."""

from __future__ import annotations

import argparse
import time

import numpy as np

from lra_bench.data import pathfinder_gen as pg


def rate(st, n: int, seed: int) -> float:
    t = time.process_time()
    pg.generate_batch(st, n, np.random.default_rng(seed))
    return n / (time.process_time() - t)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=200, help="images per repeat at 32 px")
    p.add_argument("--images-128", type=int, default=10, help="images per repeat at 128 px")
    args = p.parse_args(argv)
    print(f"{'set':34s} {'images':>6s} {'min img/s':>10s} {'median img/s':>13s}")
    for res, difficulty in [(32, "curv_baseline"), (32, "curv_contour_length_9"),
                            (32, "curv_contour_length_14"), (128, "curv_contour_length_14")]:
        st = pg.settings(res, difficulty)
        n = args.images if res == 32 else args.images_128
        pg.generate_batch(st, max(2, n // 4), np.random.default_rng(0))  # warm the caches
        rates = [rate(st, n, seed) for seed in range(1, args.repeats + 1)]
        print(f"{res} px {difficulty:28s} {n:6d} {min(rates):10.1f} {np.median(rates):13.1f}",
              flush=True)


if __name__ == "__main__":
    main()
