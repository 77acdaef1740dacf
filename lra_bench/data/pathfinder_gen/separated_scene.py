"""The separated style's settings and its scene: the paddles of a batch of images in fixed slots,
grown with the clearance tests of the style (see `separated`)."""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil, pi
from typing import NamedTuple

import numpy as np

from lra_bench.data.pathfinder_gen.datasets import contour_length


TARGET_RETRIES = 20  # redraws of a target pair's first paddles before the image is redrawn
DISTRACTOR_ATTEMPTS = 5  # snakes2: max_distractor_contour_retrial = 4, so 5 tries per distractor
SEED_CANDIDATES = 24  # distractor start positions tried at once per attempt
PADDLE_TRIALS = 3  # snakes2: max_paddle_retrial = 2, so 3 draws per paddle
BACKTRACK = 2  # paddles a target is cut back by when a paddle finds no room
MAX_BACKTRACKS = 12  # cut-backs before the targets restart from new first paddles
MAX_RESTARTS = 8  # restarts before the image is drawn again from scratch
MAX_TICKS = 40  # bound on growth steps, in contour lengths


@dataclass(frozen=True)
class Settings:
    resolution: int
    contour_length: int
    paddle_length: float
    thickness: float
    margins: tuple[int, ...]  # one is drawn per image
    padding: float
    marker_radius: float
    seed_distance: float
    continuity: float
    antialias: int
    distractor_length: int
    num_distractors: int
    snake_contrast: float
    paddle_contrast: float
    contour_clearance: float  # between a target contour and any other, beyond 2m
    batch: int  # images grown at once (memory bound)

    @property
    def num_slots(self) -> int:
        return 2 * self.contour_length + self.num_distractors * self.distractor_length

    @property
    def num_directions(self) -> int:
        """Candidate directions per step: about one pixel of arc on the circle of radius L + m
        over the allowed cone, as snakes2 enumerated the pixels on that circle."""
        cone = pi / self.continuity
        return int(ceil(cone * (self.paddle_length + max(self.margins))))


def settings(resolution: int, difficulty: str) -> Settings:
    """LRA's settings (docstrings of `lra_benchmarks/data/pathfinder.py`) for one data set."""
    length = contour_length(resolution, difficulty)
    distractor_length = length // 3
    if resolution == 32:
        return Settings(resolution=32, contour_length=length, paddle_length=2, thickness=0.5,
                        margins=(1,), padding=1, marker_radius=1.5, seed_distance=7,
                        continuity=1.0, antialias=2, distractor_length=distractor_length,
                        num_distractors=20 // distractor_length, snake_contrast=2.0,
                        paddle_contrast=0.75, contour_clearance=1.0, batch=2000)
    # Path-X: paddle length 5 and paddle contrast 1 are the snakes2_wrapper defaults LRA kept.
    return Settings(resolution=128, contour_length=length, paddle_length=5, thickness=1.5,
                    margins=(2, 3), padding=1, marker_radius=3, seed_distance=20,
                    continuity=1.8, antialias=2, distractor_length=distractor_length,
                    num_distractors=35 // distractor_length, snake_contrast=0.9,
                    paddle_contrast=1.0, contour_clearance=2.0, batch=250)


def link_distance(st: Settings, margin) -> np.ndarray:
    """Largest Chebyshev distance (pixels) between the ink of consecutive paddles of a contour:
    their ends are at most 2m apart and the pixels holding the ends are inked, so 2m (an
    integer margin) bounds it."""
    return (2 * np.asarray(margin)).astype(int)


class Batch(NamedTuple):
    images: np.ndarray  # uint8 (n, r, r)
    labels: np.ndarray  # int64 (n,), 1 = the markers are on one contour
    markers: np.ndarray  # float32 (n, 2, 2): (origin, terminal) centres as (y, x) pixel coords
    margins: np.ndarray  # int (n,): the paddle margin each image was drawn with


# ---------------------------------------------------------------------------------------------
# Geometry: a paddle is a segment (ay, ax) -> (by, bx) in continuous pixel coordinates, pixel
# (i, j) covering [i, i+1) x [j, j+1).


def _point_segment_sq(py, px, ay, ax, vy, vx, inv_len2):
    t = np.clip(((py - ay) * vy + (px - ax) * vx) * inv_len2, 0.0, 1.0)
    ey = py - ay - t * vy
    ex = px - ax - t * vx
    return ey * ey + ex * ex


def segment_distance_sq(p, q):
    """Squared distance between segments p and q, each a tuple (ay, ax, by, bx) of broadcasting
    arrays; 0 when they cross."""
    pay, pax, pby, pbx = p
    qay, qax, qby, qbx = q
    pvy, pvx = pby - pay, pbx - pax
    qvy, qvx = qby - qay, qbx - qax
    pinv = 1.0 / (pvy * pvy + pvx * pvx)
    qinv = 1.0 / (qvy * qvy + qvx * qvx)
    d = np.minimum(
        np.minimum(_point_segment_sq(qay, qax, pay, pax, pvy, pvx, pinv),
                   _point_segment_sq(qby, qbx, pay, pax, pvy, pvx, pinv)),
        np.minimum(_point_segment_sq(pay, pax, qay, qax, qvy, qvx, qinv),
                   _point_segment_sq(pby, pbx, qay, qax, qvy, qvx, qinv)))
    # Proper crossing: each segment's end points lie on opposite sides of the other's line.
    s1 = pvy * (qax - pax) - pvx * (qay - pay)
    s2 = pvy * (qbx - pax) - pvx * (qby - pay)
    s3 = qvy * (pax - qax) - qvx * (pay - qay)
    s4 = qvy * (pbx - qax) - qvx * (pby - qay)
    return np.where((s1 * s2 < 0) & (s3 * s4 < 0), 0.0, d)


class _Scene:
    """The paddles of `n` images being grown, in fixed slots: target A's paddles, target B's,
    then each distractor's. A slot holds the paddle (ay, ax, by, bx) and the joint and angle it
    was grown from, so a contour can be cut back and regrown."""

    def __init__(self, st: Settings, margins: np.ndarray):
        n, N = len(margins), st.contour_length
        self.st = st
        self.m = margins.astype(np.float32)
        self.segs = np.zeros((n, st.num_slots, 4), np.float32)
        self.mid = np.zeros((n, st.num_slots, 2), np.float32)
        self.joint = np.zeros((n, st.num_slots, 2), np.float32)
        self.angle = np.zeros((n, st.num_slots), np.float32)
        self.valid = np.zeros((n, st.num_slots), bool)
        self.owner = np.concatenate([
            np.zeros(N, int), np.ones(N, int),
            2 + np.repeat(np.arange(st.num_distractors), st.distractor_length)])
        self.target = self.owner < 2
        # Markers sit on target ends; keep other contours that much further from end paddles.
        self.extra = np.zeros(st.num_slots, np.float32)
        self.extra[[0, N - 1, N, 2 * N - 1]] = st.marker_radius - st.thickness / 2
        self.widest = st.contour_clearance + 2 * self.extra.max()  # beyond 2m, for any pair

    def in_bounds(self, ay, ax, by, bx):
        lo, hi = self.st.padding, self.st.resolution - self.st.padding
        return ((np.minimum(ay, by) >= lo) & (np.maximum(ay, by) <= hi)
                & (np.minimum(ax, bx) >= lo) & (np.maximum(ax, bx) <= hi))

    def clear(self, rows, slot, cand):
        """(len(rows), K) bool: do candidate paddles `cand` ((len(rows), K) arrays) for `slot`
        (one per row) keep clear of the committed paddles? 2m from their own contour's (except
        the previous paddle, which they join) and from other distractors', as in snakes2;
        2m + contour_clearance (+ marker room at target ends) between a target contour and any
        other contour, so that targets never touch anything else."""
        r = np.arange(len(rows))
        valid = self.valid[rows]
        valid[r, slot] = False
        prev_same = (slot > 0) & (self.owner[np.maximum(slot - 1, 0)] == self.owner[slot])
        valid[r[prev_same], slot[prev_same] - 1] = False
        cols = np.flatnonzero(valid.any(0))
        shape = cand[0].shape
        ok = np.ones(shape, bool)
        if cols.size == 0:
            return ok
        # Cheap prefilter: paddles whose midpoints are further apart than a paddle length plus
        # the largest clearance cannot be too close; only the remaining pairs get the exact test.
        mid = self.mid[rows][:, cols]  # (r, S, 2)
        m = self.m[rows]
        reach = 2 * m + self.widest + self.st.paddle_length
        dy = ((cand[0] + cand[2]) * 0.5)[:, :, None] - mid[:, None, :, 0]
        dx = ((cand[1] + cand[3]) * 0.5)[:, :, None] - mid[:, None, :, 1]
        near = dy * dy + dx * dx < (reach * reach)[:, None, None]
        i, j, k = np.nonzero(near & valid[:, cols][:, None, :])  # (r, K, S)
        if i.size:
            there, here = cols[k], slot[i]
            apart = ((self.owner[there] != self.owner[here])
                     & (self.target[there] | self.target[here]))
            need = 2 * m[i] + apart * (self.st.contour_clearance + self.extra[there]
                                       + self.extra[here])
            p = tuple(c[i, j] for c in cand)
            q = tuple(self.segs[rows[i], there].T)
            bad = segment_distance_sq(p, q) < need * need
            ok[i[bad], j[bad]] = False
        return ok

    def place(self, rows, slot, seg, joint, angle, ok):
        self.segs[rows, slot] = seg
        self.mid[rows, slot] = (seg[:, :2] + seg[:, 2:]) * 0.5
        self.joint[rows, slot] = joint
        self.angle[rows, slot] = angle
        self.valid[rows[ok], slot[ok]] = True

    def extend(self, rng, rows, slot):
        """Grow paddle `slot` (one per row) after paddle slot - 1 of the same contour; returns
        the rows that found room. As snakes2 did, the turn is drawn with weight
        cos^2(continuity * turn) among the directions that stay in the image, then checked
        against what is drawn, up to PADDLE_TRIALS draws."""
        st, n = self.st, len(rows)
        m = self.m[rows][:, None]
        prev = slot - 1
        th0 = self.angle[rows, prev]
        step = 2 * m[:, 0] + st.paddle_length
        py = self.joint[rows, prev, 0] + step * np.sin(th0)
        px = self.joint[rows, prev, 1] + step * np.cos(th0)
        k = st.num_directions
        half = pi / (2 * st.continuity)
        turn = (np.arange(k) + rng.random((n, k), np.float32)) * np.float32(2 * half / k) - half
        ang = th0[:, None] + turn
        uy, ux = np.sin(ang), np.cos(ang)
        far = m + st.paddle_length
        cand = (py[:, None] + m * uy, px[:, None] + m * ux,
                py[:, None] + far * uy, px[:, None] + far * ux)
        w = np.where(self.in_bounds(*cand), np.cos(st.continuity * turn) ** 2, 0.0)
        cum = np.cumsum(w, 1)
        draws = rng.random((n, PADDLE_TRIALS), np.float32) * cum[:, -1:]
        pick = np.minimum((cum[:, None, :] <= draws[:, :, None]).sum(2), k - 1)  # (n, T)
        i = np.arange(n)
        tried = tuple(c[i[:, None], pick] for c in cand)
        ok = self.clear(rows, slot, tried) & (cum[:, -1:] > 0)
        first = ok.argmax(1)
        found = ok[i, first]
        pick = pick[i, first]
        seg = np.stack([c[i, pick] for c in cand], -1)
        self.place(rows, slot, seg, np.stack([py, px], -1), ang[i, pick], found)
        return found


def _seed_targets(st: Settings, rng, scene: _Scene, rows: np.ndarray) -> np.ndarray:
    """First paddles of both targets: as in snakes2, the first starts at least two seed distances
    from every border and the second one seed distance from it, in a random direction; returns
    which rows found a pair that keeps clear."""
    L, N, sd = st.paddle_length, st.contour_length, st.seed_distance
    todo = rows
    for _ in range(TARGET_RETRIES):
        k = len(todo)
        t1 = rng.uniform(2 * sd, st.resolution - 2 * sd, (k, 2)).astype(np.float32)
        phi = rng.uniform(0, 2 * pi, k).astype(np.float32)
        t2 = t1 + sd * np.stack([np.sin(phi), np.cos(phi)], -1)
        th = rng.uniform(-pi, pi, (k, 2)).astype(np.float32)
        ok = np.ones(k, bool)
        for c, t in ((0, t1), (1, t2)):
            u = np.stack([np.sin(th[:, c]), np.cos(th[:, c])], -1)
            seg = np.concatenate([t, t + L * u], -1)
            ok &= scene.in_bounds(*seg.T)
            if c == 1:  # the second must keep clear of the first
                ok &= scene.clear(todo, np.full(k, N), tuple(seg.T[:, :, None]))[:, 0]
            scene.place(todo, np.full(k, c * N), seg, t - scene.m[todo, None] * u, th[:, c], ok)
        scene.valid[todo[~ok], 0] = False
        todo = todo[~ok]
        if todo.size == 0:
            break
    done = np.ones(len(scene.m), bool)
    done[todo] = False
    return done[rows]


def _grow_targets(st: Settings, rng, scene: _Scene) -> np.ndarray:
    """Grow both targets to contour_length paddles, a paddle of each in turn as snakes2 did
    (the one behind grows next). Where snakes2 threw the whole image away when a paddle found no
    room, we cut that target back BACKTRACK paddles and regrow it (both restart from new first
    paddles after MAX_BACKTRACKS): most contours this long run into a border or each other, and
    restarting them costs tens of attempts per image. Returns which images got both contours."""
    n, N = len(scene.m), st.contour_length
    alive = _seed_targets(st, rng, scene, np.arange(n))
    grown = np.repeat(np.where(alive, 1, N)[:, None], 2, 1)  # paddles of each target (n, 2)
    fails = np.zeros(n, int)
    restarts = np.zeros(n, int)
    for _ in range(MAX_TICKS * N):
        rows = np.flatnonzero(grown.min(1) < N)
        if rows.size == 0:
            break
        c = (grown[rows, 1] < grown[rows, 0]).astype(int)  # the one behind; A on ties
        k = grown[rows, c]
        found = scene.extend(rng, rows, c * N + k)
        grown[rows[found], c[found]] += 1
        bad, c, k = rows[~found], c[~found], k[~found]
        fails[bad] += 1
        back = np.maximum(k - BACKTRACK, 1)
        cut = (np.arange(N) >= back[:, None]) & (np.arange(N) < k[:, None])  # (b, N)
        i, j = np.nonzero(cut)
        scene.valid[bad[i], c[i] * N + j] = False
        grown[bad, c] = back
        again = bad[fails[bad] > MAX_BACKTRACKS]
        if again.size:
            scene.valid[again, :2 * N] = False
            fails[again] = 0
            restarts[again] += 1
            seeded = _seed_targets(st, rng, scene, again) & (restarts[again] <= MAX_RESTARTS)
            grown[again] = np.where(seeded[:, None], 1, N)
            alive[again[~seeded]] = False
    alive &= scene.valid[:, :2 * N].all(1)
    return alive


def _target_ends(st: Settings, scene: _Scene) -> np.ndarray:
    """(n, 2 targets, 2 ends, yx): each target's first paddle start and last paddle end."""
    N = st.contour_length
    return np.stack([scene.segs[:, [0, N], :2], scene.segs[:, [N - 1, 2 * N - 1], 2:]], 2)


def _add_distractors(st: Settings, rng, scene: _Scene, rows: np.ndarray) -> None:
    """Up to num_distractors contours of distractor_length paddles, each tried
    DISTRACTOR_ATTEMPTS times and left out when it does not fit (snakes2's allow_incomplete)."""
    L, D = st.paddle_length, st.distractor_length
    for d in range(st.num_distractors):
        base = 2 * st.contour_length + d * D
        todo = rows
        for _ in range(DISTRACTOR_ATTEMPTS):
            if todo.size == 0:
                break
            k = len(todo)
            t = rng.uniform(st.padding, st.resolution - st.padding,
                            (k, SEED_CANDIDATES, 2)).astype(np.float32)
            th = rng.uniform(-pi, pi, (k, SEED_CANDIDATES)).astype(np.float32)
            cand = (t[..., 0], t[..., 1], t[..., 0] + L * np.sin(th), t[..., 1] + L * np.cos(th))
            ok = scene.in_bounds(*cand) & scene.clear(todo, np.full(k, base), cand)
            pick = ok.argmax(1)
            i = np.arange(k)
            placed = ok[i, pick]
            a = th[i, pick]
            u = np.stack([np.sin(a), np.cos(a)], -1)
            seg = np.stack([c[i, pick] for c in cand], -1)
            scene.place(todo, np.full(k, base), seg, seg[:, :2] - scene.m[todo, None] * u, a,
                        placed)
            for j in range(1, D):
                live = np.flatnonzero(placed)
                placed[live] = scene.extend(rng, todo[live], np.full(len(live), base + j))
            scene.valid[todo[~placed], base:base + D] = False
            todo = todo[~placed]
