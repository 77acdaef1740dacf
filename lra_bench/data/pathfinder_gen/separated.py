"""The "separated" Pathfinder / Path-X style (`data.style = "separated"`), vectorised over images.

NOT the default and NOT LRA's data: a cleaner variant in which every label can be read off the
pixels (see docs/pathfinder-generator.md). The default, faithful generator is
`lra_bench.data.pathfinder_gen`, which also writes the release layout for both styles.

The images follow Linsley et al. 2018 as LRA used them (`snakes2.py` of
github.com/drewlinsley/pathfinder with the settings in the docstrings of LRA's
`lra_benchmarks/data/pathfinder.py`): two target contours of `contour_length` short oriented
paddles whose first paddles start `seed_distance` apart near the centre, short distractor contours,
and a circular marker on two contour ends; the label is 1 when both markers sit on one contour, 0
when they sit on the two different ones. A contour is a chain of joints L + 2m apart (L the paddle
length, m the paddle margin); each paddle covers the middle L of its link, so consecutive paddles
are at most 2m apart. Each link turns from the last by an angle drawn with weight
cos^2(continuity * turn) (nothing beyond 90 / continuity degrees) among the directions inside the
image, and is checked against what is drawn, up to three draws. Paddles are drawn at `antialias`
times the resolution and box-filtered down; target paddles have contrast snake x paddle contrast,
distractor paddles snake contrast, markers 1; every image is stretched to a maximum of 255, as
`scipy.misc.imsave` did.

Where we differ from snakes2, and why (the README's "Pathfinder generator" section has numbers):
- Every label can be read off the pixels. Two ink pixels (value > 0) are linked when their
  Chebyshev distance is at most 2m, the largest gap inside a contour (the pixels holding paddle ends
  are always inked, as a line rasteriser does). Target contours keep 2m + contour_clearance (plus
  room for a marker at their ends) from every other contour, where snakes2 kept 2m everywhere, so
  that a distractor could sit as close to a contour as its own paddles and bridge the two targets
  of a negative. Then an image is kept only when, under that linking, each target is one component
  without markers and the two targets are different components with markers on all four ends.
  That test does not involve the label, which is drawn afterwards, so rejection biases no class.
- When a target paddle finds no room, that target is cut back BACKTRACK paddles and regrown
  (both restart from new first paddles after MAX_BACKTRACKS); snakes2 restarted the whole
  image. Contours this long in an image this small nearly always run into a border or each
  other: restarting costs tens of attempts per image, and cutting back yields the same kind of
  contour.
- Continuous coordinates and directions (snakes2 rounded to pixels); box filtering (snakes2:
  Lanczos, whose ringing spreads faint values around every paddle).
"""

from __future__ import annotations

from math import ceil

import numpy as np
from scipy import ndimage

from lra_bench.data.pathfinder_gen.separated_scene import (Batch, Settings, _add_distractors,
                                                           _grow_targets, _point_segment_sq,
                                                           _Scene, _target_ends, link_distance,
                                                           settings)

# `settings`, `Settings` and `Batch` live in the scene module and are this style's as well
__all__ = ["Batch", "Settings", "generate_batch", "link_components", "link_distance", "settings"]


# ---------------------------------------------------------------------------------------------
# Rendering: each paddle or marker is drawn at antialias x resolution in a small window around
# it (coverage of the fine pixel centres), box-filtered to the output resolution and composited
# with max, one slot at a time for all images at once.


def _fine_centres(origin, size, aa):
    return origin[:, None] + (np.arange(size * aa, dtype=np.float32) + 0.5) / aa


def _composite(canvas, oy, ox, window):
    """max-composite windows (n, W, W) at integer origins into canvas (n, H, H), which is
    padded by W on every side so no window falls off it."""
    n, w = window.shape[:2]
    r = np.arange(w)
    iy = (oy[:, None] + r)[:, :, None]
    ix = (ox[:, None] + r)[:, None, :]
    b = np.arange(n)[:, None, None]
    canvas[b, iy, ix] = np.maximum(canvas[b, iy, ix], window)


def _render_paddles(st: Settings, scene: _Scene, rows: np.ndarray):
    """Paddle intensities (n, r, r) float32 and, per slot, a flat index of a pixel the paddle
    inks (its brightest), for finding which component a paddle belongs to."""
    aa, r = st.antialias, st.resolution
    w = int(ceil(st.paddle_length + st.thickness)) + 3
    canvas = np.zeros((len(rows), r + 2 * w, r + 2 * w), np.float32)
    contrast = np.where(scene.owner < 2, st.snake_contrast * st.paddle_contrast, st.snake_contrast)
    brightest = np.zeros((len(rows), st.num_slots), np.int64)
    half_t2 = (st.thickness / 2) ** 2
    for s in range(st.num_slots):
        valid = scene.valid[rows, s]
        if not valid.any():
            continue
        ay, ax, by, bx = (scene.segs[rows, s, i] for i in range(4))
        # (slots left empty hold whatever their last failed try wrote: keep them on the canvas)
        oy = np.clip(np.floor(np.minimum(ay, by) - st.thickness).astype(int) - 1, -w, r)
        ox = np.clip(np.floor(np.minimum(ax, bx) - st.thickness).astype(int) - 1, -w, r)
        cy = _fine_centres(oy.astype(np.float32), w, aa)[:, :, None]
        cx = _fine_centres(ox.astype(np.float32), w, aa)[:, None, :]
        vy, vx = (by - ay)[:, None, None], (bx - ax)[:, None, None]
        inv = 1.0 / np.maximum(vy * vy + vx * vx, 1e-6)  # empty slots hold zero-length paddles
        d2 = _point_segment_sq(cy, cx, ay[:, None, None], ax[:, None, None], vy, vx, inv)
        fine = d2 <= half_t2
        # Like a line rasteriser (snakes2 drew with PIL), ink the fine pixels holding both ends,
        # so the ink of consecutive paddles is never further apart than their gap, 2m.
        i = np.arange(len(rows))
        for y, x in ((ay, ax), (by, bx)):
            fy = np.clip(np.floor((y - oy) * aa).astype(int), 0, w * aa - 1)
            fx = np.clip(np.floor((x - ox) * aa).astype(int), 0, w * aa - 1)
            fine[i, fy, fx] = True
        cover = fine.reshape(len(rows), w, aa, w, aa).mean((2, 4), dtype=np.float32)
        cover *= (contrast[s] * valid)[:, None, None]
        flat = cover.reshape(len(rows), -1).argmax(1)
        brightest[:, s] = (np.clip(oy + flat // w, 0, r - 1) * r
                           + np.clip(ox + flat % w, 0, r - 1))
        _composite(canvas, oy + w, ox + w, cover)
    return canvas[:, w:w + r, w:w + r], brightest


def _stamp_markers(st: Settings, image, centres):
    """max-composite discs of marker_radius (value 1) at centres (n, q, 2) into image (n, r, r)."""
    aa, r, rad = st.antialias, st.resolution, st.marker_radius
    w = int(ceil(2 * rad)) + 3
    canvas = np.pad(image, ((0, 0), (w, w), (w, w)))
    for q in range(centres.shape[1]):
        y, x = centres[:, q, 0], centres[:, q, 1]
        oy = np.floor(y - rad).astype(int) - 1
        ox = np.floor(x - rad).astype(int) - 1
        cy = _fine_centres(oy.astype(np.float32), w, aa)[:, :, None] - y[:, None, None]
        cx = _fine_centres(ox.astype(np.float32), w, aa)[:, None, :] - x[:, None, None]
        disc = (cy * cy + cx * cx <= rad * rad).reshape(len(y), w, aa, w, aa)
        _composite(canvas, oy + w, ox + w, disc.mean((2, 4), dtype=np.float32))
    return canvas[:, w:w + r, w:w + r]


def link_components(ink: np.ndarray, distance) -> np.ndarray:
    """Connected components (n, r, r) int of ink pixels (n, r, r) bool, two ink pixels being
    linked when their Chebyshev distance is at most `distance` (an int, or one per image):
    dilating each ink pixel into a distance x distance block anchored at it makes exactly those
    pairs' blocks overlap or touch, so 8-connected components of the dilation are the answer.
    Labels are unique across the batch; 0 is background."""
    distance = np.broadcast_to(np.asarray(distance), (len(ink),))
    labels = np.zeros(ink.shape, np.int32)
    eight = np.zeros((3, 3, 3), bool)
    eight[1] = True  # no links between images
    offset = 0
    for k in np.unique(distance):
        sel = np.flatnonzero(distance == k)
        grown = ink[sel].copy()
        for axis in (1, 2):  # a block dilation is separable
            src = grown.copy()
            for shift in range(1, int(k)):
                if axis == 1:
                    grown[:, shift:] |= src[:, :-shift]
                else:
                    grown[:, :, shift:] |= src[:, :, :-shift]
        lab, count = ndimage.label(grown, structure=eight)
        labels[sel] = np.where(ink[sel], lab + offset * (lab > 0), 0)
        offset += count
    return labels


def _unambiguous(st: Settings, paddles, brightest, ends, margins):
    """Keep an image only when each target contour is one linked component without markers and
    the two are different components with markers on all four ends (label-free test)."""
    n, N = len(paddles), st.contour_length
    k = link_distance(st, margins)
    b = np.arange(n)[:, None]
    plain = link_components(paddles > 0, k).reshape(n, -1)[b, brightest[:, :2 * N]]
    marked_image = _stamp_markers(st, paddles, ends.reshape(n, 4, 2))
    marked = link_components(marked_image > 0, k).reshape(n, -1)[b, brightest[:, [0, N]]]
    one_each = (plain[:, :N] == plain[:, :1]).all(1) & (plain[:, N:] == plain[:, N:N + 1]).all(1)
    return one_each & (marked[:, 0] != marked[:, 1])


def _attempt(st: Settings, rng, n: int):
    """Up to n accepted scenes: (paddle images, ends, margins) of the accepted ones."""
    margins = rng.choice(np.asarray(st.margins), n)
    scene = _Scene(st, margins)
    alive = _grow_targets(st, rng, scene)
    ends = _target_ends(st, scene)
    rows = np.flatnonzero(alive)
    _add_distractors(st, rng, scene, rows)
    paddles, brightest = _render_paddles(st, scene, rows)
    ok = _unambiguous(st, paddles, brightest, ends[rows], margins[rows])
    return paddles[ok], ends[rows][ok], margins[rows][ok]


def generate_batch(st: Settings, count: int, rng: np.random.Generator) -> Batch:
    """`count` images with exactly balanced labels (count // 2 or count // 2 + 1 positives)."""
    parts, have, tried = [], 0, 0
    while have < count:
        if tried > 50 * count + 10 * st.batch and have < tried / 1000:
            raise RuntimeError(f"Pathfinder generator: kept {have} of {tried} images; "
                               "the settings leave no room for the contours")
        rate = max(have / tried, 0.05) if tried else 0.75
        want = min(st.batch, int((count - have) / rate * 1.05) + 4)
        p, e, m = _attempt(st, rng, want)
        parts.append((p, e, m))
        have, tried = have + len(p), tried + want
    paddles = np.concatenate([p[0] for p in parts])[:count]
    ends = np.concatenate([p[1] for p in parts])[:count]
    margins = np.concatenate([p[2] for p in parts])[:count]
    labels = rng.permutation(np.arange(count) % 2)
    origin = rng.integers(0, 2, count)
    terminal = np.where(labels == 1, origin, 1 - origin)
    i = np.arange(count)
    markers = np.stack([ends[i, origin, 0], ends[i, terminal, 1]], 1)
    image = _stamp_markers(st, paddles, markers)
    peak = image.max((1, 2), keepdims=True)
    images = np.floor(image * (255.0 / peak) + 0.5).astype(np.uint8)
    return Batch(images, labels.astype(np.int64), markers.astype(np.float32), margins)
