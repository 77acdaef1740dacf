"""Per-image statistics of Pathfinder images, for comparing our generator with snakes2.

The same function produced tests/fixtures/pathfinder_official_stats.json from images made by the
official code (see docs/pathfinder-generator.md) and measures ours in test_pathfinder_gen.py.
numpy and scipy.ndimage only, so it also runs in the scratch environment that ran snakes2.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

STATS = ("mean", "std", "share_gt0", "share_gt64", "share_gt128", "halo_share", "components",
         "mass", "marker_peak", "marker_near_edge", "distractors")


def per_image(images: np.ndarray, markers: np.ndarray, distractors: np.ndarray) -> dict:
    """{stat: (n,) float array}. images uint8 (n, r, r); markers (n, 2, 2) integer (y, x) marker
    centres; distractors (n,) distractor contours placed.

    mean / std: of the pixel values of one image; share_gt*: share of pixels above 0 / 64 / 128;
    halo_share: share of faint pixels (1..12), the Lanczos halo; components: 8-connected
    components of pixels > 64; mass: sum of pixel values / 255; marker_peak: brightest pixel of
    the 3 x 3 around each marker centre, averaged over the two markers; marker_near_edge: share of
    the two marker centres within 3 px of the border (where snakes2's Lanczos cuts them)."""
    x = images.astype(np.float64)
    n, r = len(x), x.shape[1]
    flat = x.reshape(n, -1)
    eight = np.ones((3, 3), bool)
    peaks = np.zeros((n, 2))
    m = np.asarray(markers).astype(int)
    for q in range(2):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                y = np.clip(m[:, q, 0] + dy, 0, r - 1)
                xx = np.clip(m[:, q, 1] + dx, 0, r - 1)
                peaks[:, q] = np.maximum(peaks[:, q], x[np.arange(n), y, xx])
    return {
        "mean": flat.mean(1),
        "std": flat.std(1),
        "share_gt0": (flat > 0).mean(1),
        "share_gt64": (flat > 64).mean(1),
        "share_gt128": (flat > 128).mean(1),
        "halo_share": ((flat >= 1) & (flat <= 12)).mean(1),
        "components": np.array([ndimage.label(im > 64, eight)[1] for im in images], float),
        "mass": flat.sum(1) / 255.0,
        "marker_peak": peaks.mean(1),
        "marker_near_edge": (np.minimum(np.minimum(m[..., 0], m[..., 1]),
                                        np.minimum(r - 1 - m[..., 0], r - 1 - m[..., 1])) < 3
                             ).mean(1),
        "distractors": np.asarray(distractors, float),
    }


def summary(images, markers, distractors) -> dict:
    """{stat: {"mean", "sd", "n"}} over images."""
    s = per_image(images, markers, distractors)
    return {k: {"mean": float(v.mean()), "sd": float(v.std(ddof=1)), "n": int(len(v))}
            for k, v in s.items()}


def welch_z(ours: dict, ref: dict, stats=STATS) -> dict:
    """{stat: z} of the difference of means, ours minus reference, in standard errors."""
    out = {}
    for k in stats:
        a, b = ours[k], ref[k]
        # A reference sample that never varied (a rare event not seen) borrows our spread.
        ref_sd = b["sd"] if b["sd"] > 0 else a["sd"]
        se = np.sqrt(a["sd"] ** 2 / a["n"] + ref_sd ** 2 / b["n"])
        out[k] = (a["mean"] - b["mean"]) / se if se > 0 else (0.0 if a["mean"] == b["mean"]
                                                              else np.inf)
    return out


def grey_levels(images: np.ndarray) -> dict:
    """Pooled grey-level histogram of uint8 images (256 counts, a list) and the per-image share of
    pixels >= 200 ({"mean", "sd", "n"}): the bright levels issue 27 found one too high."""
    images = np.asarray(images)
    share = (images.reshape(len(images), -1) >= 200).mean(1)
    return {"n": int(len(images)),
            "histogram": np.bincount(images.ravel(), minlength=256).tolist(),
            "share_ge200": {"mean": float(share.mean()), "sd": float(share.std(ddof=1)),
                            "n": int(len(share))}}


def total_variation(h1, h2) -> float:
    """Total-variation distance between two grey-level histograms (counts), 0..1."""
    p, q = np.asarray(h1, float), np.asarray(h2, float)
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())
