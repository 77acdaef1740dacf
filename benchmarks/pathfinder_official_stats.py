"""Write tests/fixtures/pathfinder_official_stats.json from images made by the official snakes2.

    python benchmarks/pathfinder_official_stats.py --commit ab9c130 --note "..." \\
        32/curv_baseline=o32_6.npz 32/curv_contour_length_9=o32_9.npz ... > fixture.json

    python benchmarks/pathfinder_official_stats.py --levels-into tests/fixtures/... \\
        --commit ab9c130 --note "..." 32/curv_baseline=o32_6.npz ... > fixture.json

With --levels-into, the given fixture is written back with its "levels" block replaced by each
set's pooled grey-level histogram and share of pixels >= 200 (tests/pathfinder_stats.py
grey_levels), the rest unchanged. (The first form writes only "made_with" and "sets": carry
the "levels" and "stamps" blocks over when remaking it.)

Each .npz holds `images` uint8 (n, r, r), `markers` (n, 2, 2) integer (y, x) marker centres and
`placed` (n,) distractor contours placed, recorded while snakes2 ran (outside this repository;
docs/pathfinder-generator.md says how). Only the statistics (tests/pathfinder_stats.py) are
written, never images."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import pathfinder_stats as ps  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("sets", nargs="+", help="KEY=FILE.npz, KEY as 32/curv_baseline")
    p.add_argument("--commit", required=True)
    p.add_argument("--note", default="")
    p.add_argument("--levels-into", type=Path, help="fixture whose 'levels' block to replace")
    args = p.parse_args(argv)
    made_with = {"code": "github.com/drewlinsley/pathfinder snakes2.py / snakes.py",
                 "commit": args.commit, "note": args.note,
                 "date": datetime.date.today().isoformat()}
    if args.levels_into:
        out = json.loads(args.levels_into.read_text())
        out["levels"] = {"made_with": made_with, "sets": {}}
        for item in args.sets:
            key, path = item.split("=", 1)
            out["levels"]["sets"][key] = ps.grey_levels(np.load(path)["images"])
        json.dump(out, sys.stdout, indent=1, sort_keys=True)
        print()
        return
    out = {"made_with": made_with, "sets": {}}
    for item in args.sets:
        key, path = item.split("=", 1)
        d = np.load(path)
        n = len(d["images"])
        out["sets"][key] = {"n": n, "cpu_seconds": float(d["cpu"]) if "cpu" in d else None,
                            "stats": ps.summary(d["images"], d["markers"], d["placed"][:n])}
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
