"""One image, as snakes2's from_wrapper drew it: two target contours grown paddle by paddle, the
distractors, the markers; a batch of images with exactly balanced labels."""

from __future__ import annotations

from math import pi

import numpy as np

from lra_bench.data.pathfinder_gen.datasets import Batch, Settings
from lra_bench.data.pathfinder_gen.render import Stamps, _ceil_step, _circle, _paste, _to_uint8


MAX_PADDLE_RETRIAL = 2  # snakes2_wrapper defaults LRA kept: 3 draws per paddle
MAX_DISTRACTOR_RETRIAL = 4  # 5 tries per distractor
ACCEPT_BELOW = 1.8  # snakes2's overlap test: max(mask + paddle mask) < 1.8
FREE_AT_MOST = 0.3  # a seed may start where ceil(mask - 0.3) == 0
STOP_AVAILABILITY = 0.01  # distractors stop once under 1% of the image is free


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
