"""Offline Pathfinder (32 px) and Path-X (128 px) generator that reproduces LRA's data.

LRA's images were made with `snakes2.py` / `snakes.py` of github.com/drewlinsley/pathfinder
(commit ab9c130) under the settings in the docstrings of LRA's `lra_benchmarks/data/pathfinder.py`.
This module is our own implementation of the same random process, quirks included, so that a
model trained here sees the task published LRA numbers were measured on (docs/pathfinder-generator.md
compares statistics with images made by the official code):

- Paddles. A paddle is drawn with Pillow at `antialias` times the resolution, from its start
  pixel (integer coordinates, ends rounded up as snakes2 did) in a window of
  2(L + ceil(t) + m) + 1 pixels, min-max rescaled to 0..255, Lanczos-resized, divided by 255,
  scaled by its contrast, rounded to float32 (snakes2's paddle images are float32: the saved grey
  levels depend on it) and max-combined into the image. Its exclusion mask is the fine line
  dilated by a disc of radius m * antialias, Lanczos-resized the same way. Every stamp depends only
  on the paddle's orientation, so each is rendered once and cached.
- Growth. Two target contours start `seed_distance` apart near the centre; each next paddle ends
  on a circle of radius L + m around a pivot L + 2m beyond the last, on the pixels that circle
  visits, with weight cos^2(continuity * turn) times (1 - the mask dilated by a disc of radius m).
  A draw is accepted when mask + the paddle's mask stays below 1.8 everywhere: contours may touch.
  Up to three draws per paddle; a target that finds no room redraws the whole image. Only the
  second target's last paddle enters the mask (snakes2 forgets the first's).
- Distractors (`distractor_length` paddles, up to 5 tries each) start where the mask dilated by
  the paddle's own shape is <= 0.3. That kernel is the paddle mask's fully saturated pixels placed
  one pixel off centre; for most orientations some border pixel then sees only taps outside the
  image, OpenCV's dilate gives it -DBL_MAX, and snakes2 finds "no available coordinates": most
  seeds fail, so few distractors are placed. We compute the same verdict per orientation.
- Markers: discs of `marker_radius` drawn at the antialias scale and Lanczos-resized, at the first
  pixel of a target's first paddle and the tip of a target's last paddle, max-combined; the image
  is min-max stretched to 0..255 on saving (`scipy.misc.imsave`).

Deliberate differences: labels are exactly balanced within each folder of 1000 (snakes2 flipped a
coin per image), and the random numbers come from numpy's Generator, so images match the official
distribution, not its bytes. `data.style = "separated"` selects the older, cleaner variant in
`pathfinder_separated` (never the default; it is not LRA's task).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
from dataclasses import dataclass
from math import ceil, pi
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lra_bench.errors import UserError

DIFFICULTIES = {"curv_baseline": 6, "curv_contour_length_9": 9, "curv_contour_length_14": 14}
RESOLUTIONS = (32, 128)
STYLES = ("snakes2", "separated")
IMAGES_PER_FOLDER = 1000  # the release's imgs/<n>/ and metadata/<n>.npy each hold one batch
MAX_PADDLE_RETRIAL = 2  # snakes2_wrapper defaults LRA kept: 3 draws per paddle
MAX_DISTRACTOR_RETRIAL = 4  # 5 tries per distractor
ACCEPT_BELOW = 1.8  # snakes2's overlap test: max(mask + paddle mask) < 1.8
FREE_AT_MOST = 0.3  # a seed may start where ceil(mask - 0.3) == 0
STOP_AVAILABILITY = 0.01  # distractors stop once under 1% of the image is free


@dataclass(frozen=True)
class Settings:
    resolution: int
    contour_length: int
    paddle_length: int
    thickness: float
    margins: tuple[int, ...]  # one is drawn per image
    padding: int
    marker_radius: float
    seed_distance: int
    continuity: float
    antialias: int
    distractor_length: int
    num_distractors: int
    snake_contrast: float  # distractor paddles; target paddles get snake x paddle contrast
    paddle_contrast: float


def contour_length(resolution: int, difficulty: str) -> int:
    """The data set's target contour length, after checking both names (one error line each)."""
    if resolution not in RESOLUTIONS:
        raise UserError(f"Pathfinder resolution must be one of {RESOLUTIONS}, not {resolution}")
    if difficulty not in DIFFICULTIES:
        raise UserError(f"Pathfinder difficulty must be one of {', '.join(DIFFICULTIES)}, "
                        f"not '{difficulty}'")
    return DIFFICULTIES[difficulty]


def settings(resolution: int, difficulty: str) -> Settings:
    """LRA's settings (docstrings of `lra_benchmarks/data/pathfinder.py`; the rest are
    snakes2_wrapper's defaults) for one data set. Lengths use Python 2's integer division, as
    the 128 px recipe's `contour_length / 3` did when it ran."""
    length = contour_length(resolution, difficulty)
    d = length // 3
    if resolution == 32:
        return Settings(32, length, paddle_length=2, thickness=0.5, margins=(1,), padding=1,
                        marker_radius=1.5, seed_distance=7, continuity=1.0, antialias=2,
                        distractor_length=d, num_distractors=20 // d, snake_contrast=2.0,
                        paddle_contrast=0.75)
    return Settings(128, length, paddle_length=5, thickness=1.5, margins=(2, 3), padding=1,
                    marker_radius=3, seed_distance=20, continuity=1.8, antialias=2,
                    distractor_length=d, num_distractors=35 // d, snake_contrast=0.9,
                    paddle_contrast=1.0)


def check_style(style: str) -> str:
    if style not in STYLES:
        raise UserError(f"data.style must be one of {', '.join(STYLES)}, not '{style}'")
    return style


class Batch(NamedTuple):
    images: np.ndarray  # uint8 (n, r, r)
    labels: np.ndarray  # int64 (n,), 1 = the markers are on one contour
    markers: np.ndarray  # float32 (n, 2, 2): (origin, terminal) marker centres (y, x), pixels
    margins: np.ndarray  # int (n,): the paddle margin each image was drawn with
    distractors: np.ndarray  # int (n,): distractor contours placed


# ---------------------------------------------------------------------------------------------
# Rendering with Pillow, as snakes2 did (scipy.misc.imresize = min-max to uint8, then resize).


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """scipy.misc's bytescale: uint8 passes unchanged, anything else is min-max stretched."""
    if a.dtype == np.uint8:
        return a
    lo, hi = float(a.min()), float(a.max())
    scale = 255.0 / ((hi - lo) or 1.0)
    return ((a - lo) * scale).clip(0, 255).__add__(0.5).astype(np.uint8)


def _lanczos(a: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(_to_uint8(a))  # 2-d uint8: mode L
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS), np.float64)


def _ceil_step(y: float, x: float, angle: float, dist: float) -> tuple[int, int]:
    """snakes2's translate_coord: move `dist` along `angle`, round both coordinates up."""
    return math.ceil(y + dist * math.sin(angle)), math.ceil(x + dist * math.cos(angle))


def _disc(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


def _dilate_disc(a: np.ndarray, radius: int) -> np.ndarray:
    """Grey dilation by a disc (values >= 0, outside ignored), with shifted maxima."""
    out = a.copy()
    h, w = a.shape
    for dy, dx in np.argwhere(_disc(radius)) - radius:
        if dy == 0 and dx == 0:
            continue
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        np.maximum(out[yd, xd], a[ys, xs], out=out[yd, xd])
    return out


class Stamps:
    """Paddle stamps (line, mask) of one margin, cached by orientation, and the per-pivot
    candidate lists of a growth step; shared by every image drawn with that margin.

    Images and masks are held with a border of `pad` pixels on every side, so that a stamp is
    pasted without clipping; the border stays out of every test (mask values there are 0, which
    can neither block a candidate nor fail the overlap test) and is cut off at the end."""

    def __init__(self, st: Settings, margin: int):
        self.st, self.m = st, margin
        L, aa, r = st.paddle_length, st.antialias, st.resolution
        self.half = L + int(ceil(st.thickness)) + margin
        self.size = 2 * self.half + 1
        self.width = int(round(st.thickness * aa))
        if self.width != st.thickness * aa:
            raise ValueError("thickness x antialias must be an integer")
        self.pad = self.half + 1
        self.full = r + 2 * self.pad
        disc = np.argwhere(_disc(margin)) - margin  # extension: mask dilated by a disc of m
        self.small_flat = disc[:, 0] * self.full + disc[:, 1]
        self._paddles: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        self._kernels: dict[int, np.ndarray | None] = {}
        self._circles: dict[tuple[int, int], tuple] = {}
        self._first_free: dict[int, np.ndarray] = {}
        self._weights: dict[tuple[int, int, float], np.ndarray] = {}
        # Candidate heads of a step: the points of the circle of radius L + m at angles spaced by
        # one pixel of arc, which snakes2 truncated to pixels.
        rad = L + margin
        ang = np.arange(0, 360, 360.0 / (2 * rad * np.pi)) * np.pi / 180
        self._circle_dy, self._circle_dx = rad * np.sin(ang), rad * np.cos(ang)
        self.valid_degrees = np.asarray([d for d in range(-180, 180)
                                         if self.seed_kernel(d) is not None])

    def paddle(self, angle: float) -> tuple[np.ndarray, np.ndarray]:
        """(line, mask) stamps, (size, size) float64 in 0..1, of a paddle leaving the centre
        pixel along `angle` (radians)."""
        hit = self._paddles.get(angle)
        if hit is not None:
            return hit
        from PIL import Image, ImageDraw

        st, aa = self.st, self.st.antialias
        fine = self.half * 2 * aa + 1
        c = self.half * aa
        hy, hx = _ceil_step(c, c, angle, st.paddle_length * aa)
        im = Image.new("F", (fine, fine), 0.0)
        ImageDraw.Draw(im).line([(c, c), (hx, hy)], fill=255.0, width=self.width)
        line = np.asarray(im, np.float32)
        mask = _dilate_disc(line, self.m * aa).astype(np.uint8)
        # snakes.draw_line_n_mask pastes both stamps into `np.array(Image.new('F', ...))`, a
        # float32 image: the mask is stored rounded to float32 (the line is rounded in `draw`,
        # after its contrast scaling).
        out = (_lanczos(line, self.size) / 255.0,
               (_lanczos(mask, self.size) / 255.0).astype(np.float32))
        self._paddles[angle] = out
        return out

    def seed_kernel(self, degrees: int) -> np.ndarray | None:
        """Tap offsets (k, 2) of the dilation a seed of this orientation uses, or None when that
        dilation leaves some pixel with only out-of-image taps (OpenCV gives it -DBL_MAX and the
        seed fails). The kernel is the paddle mask's pixels equal to 1 (the uint8 cast truncates
        the rest), drawn one pixel past the kernel's anchor."""
        if degrees in self._kernels:
            return self._kernels[degrees]
        st = self.st
        n = 2 * (st.paddle_length + self.m) + 1
        canvas = np.zeros((n + 2 * self.pad, n + 2 * self.pad))
        _paste(canvas, self.paddle(degrees * np.pi / 180)[1], n // 2 + 1 + self.pad,
               n // 2 + 1 + self.pad, self.half)
        canvas = canvas[self.pad:self.pad + n, self.pad:self.pad + n]
        taps = np.argwhere(canvas.astype(np.uint8) != 0) - n // 2
        r = st.resolution
        covered = np.zeros((r, r), bool)
        for dy, dx in taps:  # pixels with at least one tap inside the image
            covered[max(0, -dy):min(r, r - dy), max(0, -dx):min(r, r - dx)] = True
        out = taps if len(taps) and covered.all() else None
        self._kernels[degrees] = out
        return out

    def free(self, blocked: np.ndarray, degrees: int) -> np.ndarray:
        """Flat indices of the pixels a seed may start on: where the dilation of `blocked`
        (r, r) bool by the seed kernel is False."""
        r = self.st.resolution
        taken = np.zeros((r, r), bool)
        for dy, dx in self._kernels[degrees]:  # dilated(p) = max over taps of lined(p + tap)
            taken[max(0, -dy):min(r, r - dy), max(0, -dx):min(r, r - dx)] |= \
                blocked[max(0, dy):min(r, r + dy), max(0, dx):min(r, r + dx)]
        return np.flatnonzero(~taken)

    def first_free(self, degrees: int) -> np.ndarray:
        """`free` for the first target seed, whose mask is always the frame plus the band of
        two seed distances that snakes2 adds: cached per orientation."""
        hit = self._first_free.get(degrees)
        if hit is None:
            st, r = self.st, self.st.resolution
            band = np.zeros((r, r), bool)
            band[:st.padding], band[-st.padding:] = True, True
            band[:, :st.padding], band[:, -st.padding:] = True, True
            sd2 = 2 * st.seed_distance
            band[:sd2], band[r - sd2:], band[:, :sd2], band[:, r - sd2:] = True, True, True, True
            hit = self._first_free[degrees] = self.free(band, degrees)
        return hit

    def turn_weights(self, py: int, px: int, angle: float) -> np.ndarray:
        """cos^2(min(continuity * turn, 90 deg)) of each candidate around (py, px) after a paddle
        along `angle`; cached at 32 px, where pivots and angles are few."""
        key = (py, px, angle)
        hit = self._weights.get(key)
        if hit is not None:
            return hit
        turn = np.abs(self.candidates(py, px)[2] - angle)
        turn = np.minimum(np.minimum(turn, 2 * pi - turn) * self.st.continuity, 0.5 * pi)
        w = np.maximum(np.cos(turn), 0) ** 2
        if len(self._weights) < 50_000:  # ~20 MB; at 128 px the keys are too many to keep
            self._weights[key] = w
        return w

    def candidates(self, py: int, px: int):
        """Candidate heads (ys, xs) around pivot (py, px), unique and in row-major order, the
        orientation from the pivot to each, and the padded flat index of each."""
        hit = self._circles.get((py, px))
        if hit is not None:
            return hit
        r = self.st.resolution
        ys, xs = py + self._circle_dy, px + self._circle_dx
        keep = (ys >= 0) & (ys < r) & (xs >= 0) & (xs < r)
        coords = np.unique(np.stack([ys[keep], xs[keep]], 1).astype(int), axis=0)
        cy, cx = coords[:, 0].copy(), coords[:, 1].copy()
        flat = (cy + self.pad) * self.full + cx + self.pad
        out = (cy, cx, np.arctan2(cy - py, cx - px), flat)
        self._circles[(py, px)] = out
        return out


def _paste(canvas: np.ndarray, stamp: np.ndarray, y: int, x: int, half: int, scale=1.0):
    """max-combine `stamp` centred on padded coordinates (y, x) (it must fit)."""
    view = canvas[y - half:y + half + 1, x - half:x + half + 1]
    np.maximum(view, stamp * scale if scale != 1.0 else stamp, out=view)


def _circle(st: Settings, y: int, x: int) -> np.ndarray:
    """A marker as snakes2 drew it: a disc at the antialias scale, Lanczos-resized over the whole
    image (so a marker near the border is cut and renormalised there, as in snakes2)."""
    aa, r = st.antialias, st.resolution
    yy, xx = np.ogrid[-y * aa:(r - y) * aa, -x * aa:(r - x) * aa]
    fine = (xx * xx + yy * yy <= (st.marker_radius * aa) ** 2).astype(np.float64)
    return _lanczos(fine, r)


# ---------------------------------------------------------------------------------------------
# One image, as snakes2's from_wrapper drew it.


class _Canvas:
    """The image and exclusion mask being drawn (padded), and snakes2's growth moves on them."""

    def __init__(self, st: Settings, stamps: Stamps, rng: np.random.Generator):
        self.st, self.s, self.rng = st, stamps, rng
        r, p, P = st.resolution, st.padding, stamps.pad
        self.image = np.zeros((stamps.full, stamps.full))
        self.mask = np.zeros((stamps.full, stamps.full))
        inner = self.mask[P:P + r, P:P + r]
        inner[:p], inner[-p:], inner[:, :p], inner[:, -p:] = 1, 1, 1, 1

    def inner(self, a: np.ndarray) -> np.ndarray:
        P, r = self.s.pad, self.st.resolution
        return a[P:P + r, P:P + r]

    def draw(self, angle: float, y: int, x: int, contrast: float):
        # snakes2 scales the stamp (grey / 255, float64) by its contrast, then stores it in a
        # float32 image (draw_line_n_mask's l_im) before max-combining it into the float64
        # canvas. That float32 rounding decides the grey levels that fall on a half on saving
        # (e.g. 1.5 x 133 / 255 stretched by 255 / (1.5 x 170 / 255) is 199.5): without it,
        # levels 142, 166, 199, 202, ... come out one higher than snakes2's (issue 27).
        stamp = (self.s.paddle(angle)[0] * contrast).astype(np.float32)
        P = self.s.pad
        _paste(self.image, stamp, y + P, x + P, self.s.half)

    def add_mask(self, seg):
        P = self.s.pad
        _paste(self.mask, self.s.paddle(seg[0])[1], seg[1] + P, seg[2] + P, self.s.half)

    def inside(self, *points) -> bool:
        r = self.st.resolution
        return all(0 <= y < r and 0 <= x < r for y, x in points)

    def extend(self, pivot, angle, contrast):
        """One paddle after a paddle with `pivot` and `angle`: (new pivot, new angle, head,
        mask segment) or None when it finds no room (snakes2's extend_snake)."""
        st, s, rng = self.st, self.s, self.rng
        py, px = _ceil_step(pivot[0], pivot[1], angle, st.paddle_length + 2 * s.m)
        cy, cx, orient, flat = s.candidates(py, px)
        if len(cy) == 0:
            return None
        weight = s.turn_weights(py, px, angle)
        taps = flat[:, None] + s.small_flat  # the disc of m around each candidate
        pmf = (1 - self.mask.ravel()[taps].max(1)) * weight  # the mask dilated by that disc
        total = pmf.sum()
        if total < 1e-4:
            return None
        cmf = np.cumsum(pmf / total)
        h, P = s.half, s.pad
        for _ in range(MAX_PADDLE_RETRIAL + 1):
            k = int(cmf.searchsorted(rng.random(), "right"))
            k = 0 if k == len(cmf) else k  # snakes2's argmax(cmf - u > 0) when no entry is > u
            hy, hx, o = int(cy[k]), int(cx[k]), float(orient[k])
            back = o + pi if o < 0 else o - pi
            view = self.mask[hy + P - h:hy + P + h + 1, hx + P - h:hx + P + h + 1]
            if (view + s.paddle(back)[1]).max() < ACCEPT_BELOW:
                self.draw(back, hy, hx, contrast)
                return (py, px), o, (hy, hx), (back, hy, hx)
        return None

    def seed(self, contrast):
        """A distractor's first paddle (snakes2's seed_snake): (pivot, angle, mask segment) or
        None."""
        st, s, rng, r = self.st, self.s, self.rng, self.st.resolution
        L, m = st.paddle_length, s.m
        for _ in range(MAX_PADDLE_RETRIAL + 1):
            deg = int(rng.integers(-180, 180))
            a = deg * pi / 180
            if s.seed_kernel(deg) is None:  # (snakes2 tests availability first: same verdict)
                return None
            inner = self.inner(self.mask)
            blocked = inner > FREE_AT_MOST
            if 1 - blocked.mean() < STOP_AVAILABILITY:
                return None
            blocked[0], blocked[-1], blocked[:, 0], blocked[:, -1] = True, True, True, True
            free = s.free(blocked, deg)
            if len(free) == 0:
                return None
            ty, tx = divmod(int(free[rng.integers(len(free))]), r)
            head = _ceil_step(ty, tx, a, L)
            pivot = _ceil_step(head[0], head[1], a + pi if a < 0 else a - pi, L + m)
            if self.inside(head, pivot):
                self.draw(a, ty, tx, contrast)
                return pivot, a, (a, ty, tx)
        return None

    def two_seeds(self, contrast):
        """The targets' first paddles (snakes2's initialize_two_seeds): [(pivot, angle, tail,
        mask segment)] * 2, or None when the attempt fails.

        An attempt whose very first orientation has no usable kernel fails at once and the
        image is redrawn with fresh draws, so we draw that first orientation among the usable
        ones directly (the same distribution, without the wasted attempts); later draws keep
        the chance of failing."""
        st, s, rng, r = self.st, self.s, self.rng, self.st.resolution
        L, m, sd = st.paddle_length, s.m, st.seed_distance
        out, first = [], None
        for which in range(2):
            for trial in range(MAX_PADDLE_RETRIAL + 1):
                if which == 0 and trial == 0:
                    deg = int(s.valid_degrees[rng.integers(len(s.valid_degrees))])
                else:
                    deg = int(rng.integers(-180, 180))
                a = deg * pi / 180
                if which == 0:
                    if s.seed_kernel(deg) is None:
                        return None
                    free = s.first_free(deg)
                    if len(free) == 0:
                        return None
                    tail = divmod(int(free[rng.integers(len(free))]), r)
                else:
                    phi = int(rng.integers(0, 360)) * pi / 180
                    tail = (int(np.round(first[0] + sd * np.sin(phi))),
                            int(np.round(first[1] + sd * np.cos(phi))))
                head = _ceil_step(tail[0], tail[1], a, L)
                pivot = _ceil_step(head[0], head[1], a + pi if a < 0 else a - pi, L + m)
                if self.inside(head, pivot):
                    break
            else:
                return None
            first = tail
            out.append((pivot, a, tail, (a, tail[0], tail[1])))
        for pivot, a, tail, _ in out:
            self.draw(a, tail[0], tail[1], contrast)
        return out


def _targets(st: Settings, s: Stamps, rng):
    """Two target contours, redrawn from scratch until both reach full length (snakes2's
    `while not success: two_snakes(...)`): (canvas, origin tips, terminal tips)."""
    contrast = st.snake_contrast * st.paddle_contrast
    while True:
        c = _Canvas(st, s, rng)
        seeds = c.two_seeds(contrast)
        if seeds is None:
            continue
        state = [[p, a, seg] for p, a, _, seg in seeds]
        tips = [None, None]
        for _ in range(st.contour_length - 1):
            for k in range(2):
                pivot, angle, seg = state[k]
                step = c.extend(pivot, angle, contrast)
                if step is None:
                    break
                c.add_mask(seg)  # the previous paddle's mask enters once the next is placed
                state[k] = [step[0], step[1], step[3]]
                tips[k] = step[2]
            else:
                continue
            break
        else:
            c.add_mask(state[1][2])  # snakes2 adds only the second target's last paddle
            return c, [seeds[0][2], seeds[1][2]], tips


def _distractors(st: Settings, c: _Canvas) -> int:
    """snakes2's make_many_snakes for the distractor contours; returns how many were placed."""
    placed = 0
    for _ in range(st.num_distractors):
        for _ in range(MAX_DISTRACTOR_RETRIAL + 1):
            image, mask = c.image.copy(), c.mask.copy()
            first = c.seed(st.snake_contrast)
            ok = first is not None
            if ok:
                pivot, angle, seg = first
                for _ in range(st.distractor_length - 1):
                    step = c.extend(pivot, angle, st.snake_contrast)
                    if step is None:
                        ok = False
                        break
                    c.add_mask(seg)
                    pivot, angle, _, seg = step
            if ok:
                c.add_mask(seg)
                placed += 1
                break
            c.image, c.mask = image, mask
    return placed


def draw_image(st: Settings, s: Stamps, rng, label: int):
    """One image: (uint8 (r, r), marker centres (2, 2), distractors placed)."""
    c, origins, terminals = _targets(st, s, rng)
    placed = _distractors(st, c)
    origin = int(rng.integers(0, 2))
    terminal = origin if label == 1 else 1 - origin
    marks = [origins[origin], terminals[terminal]]
    markers = np.maximum(_circle(st, *marks[0]), _circle(st, *marks[1])) / 255.0
    return _to_uint8(np.maximum(c.inner(c.image), markers)), np.asarray(marks, np.float32), placed


_STAMPS: dict[tuple[Settings, int], Stamps] = {}


def stamps(st: Settings, margin: int) -> Stamps:
    key = (st, margin)
    if key not in _STAMPS:
        _STAMPS[key] = Stamps(st, margin)
    return _STAMPS[key]


def generate_batch(st: Settings, count: int, rng: np.random.Generator) -> Batch:
    """`count` images with exactly balanced labels (count // 2 or count // 2 + 1 positives)."""
    labels = rng.permutation(np.arange(count) % 2).astype(np.int64)
    margins = rng.choice(np.asarray(st.margins), count)
    images = np.zeros((count, st.resolution, st.resolution), np.uint8)
    markers = np.zeros((count, 2, 2), np.float32)
    placed = np.zeros(count, int)
    for i in range(count):
        images[i], markers[i], placed[i] = draw_image(st, stamps(st, int(margins[i])), rng,
                                                      int(labels[i]))
    return Batch(images, labels, markers, margins, placed)


# ---------------------------------------------------------------------------------------------
# Data sets: folders of 1000, each from its own seeded stream, optionally in worker processes.


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
        from lra_bench.data import pathfinder_separated as sep

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
    import multiprocessing
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
    from PIL import Image

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
    generate_release(args.out, args.resolution, args.difficulty, args.num_images, args.seed,
                     workers=args.workers, style=args.style,
                     progress=lambda d: print(f"pathfinder: {d}/{args.num_images} images",
                                              file=sys.stderr))
    print(f"pathfinder: wrote {args.out}/pathfinder{args.resolution}/{args.difficulty}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
