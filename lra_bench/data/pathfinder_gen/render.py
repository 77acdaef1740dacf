"""Rendering with Pillow, as snakes2 did (scipy.misc.imresize = min-max to uint8, then resize):
paddle stamps and their exclusion masks, cached per margin and orientation, and the markers."""

from __future__ import annotations

import math
from math import ceil, pi

import numpy as np
from PIL import Image, ImageDraw

from lra_bench.data.pathfinder_gen.datasets import Settings


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """scipy.misc's bytescale: uint8 passes unchanged, anything else is min-max stretched."""
    if a.dtype == np.uint8:
        return a
    lo, hi = float(a.min()), float(a.max())
    scale = 255.0 / ((hi - lo) or 1.0)
    return ((a - lo) * scale).clip(0, 255).__add__(0.5).astype(np.uint8)


def _lanczos(a: np.ndarray, size: int) -> np.ndarray:
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
