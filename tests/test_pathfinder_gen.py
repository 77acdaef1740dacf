"""The default Pathfinder generator reproduces snakes2's distribution: statistics against numbers
measured on images made by the official code (tests/fixtures/pathfinder_official_stats.json,
docs/pathfinder-generator.md), its quirks, determinism, balance, release layout; and the
"separated" style is kept apart and fails the same statistical test."""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from lra_bench.data import pathfinder_gen as pg
from lra_bench.data.pathfinder_gen import release, render, snakes2
from lra_bench.data.pathfinder_gen import separated as sep
from lra_bench.errors import UserError

import pathfinder_stats as ps

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "pathfinder_official_stats.json")
                     .read_text())
# |z| above this fails: two-sided 6e-5 per statistic, about 0.003 over the 44 comparisons, so a
# correct generator fails this test about once in 300 seeds; docs/pathfinder-generator.md gives
# the smallest difference each comparison detects.
Z_CRIT = 4.0
SAMPLE = {"32/curv_baseline": 400, "32/curv_contour_length_9": 400,
          "32/curv_contour_length_14": 300, "128/curv_contour_length_14": 24}


def sample(key: str, seed: int = 11):
    res, difficulty = key.split("/")
    st = pg.settings(int(res), difficulty)
    return pg.generate_batch(st, SAMPLE[key], np.random.default_rng(seed))


@pytest.fixture(scope="module")
def hard32():
    return sample("32/curv_contour_length_14")


@pytest.mark.parametrize("key", list(SAMPLE))
def test_statistics_match_official_snakes2(key, request):
    batch = request.getfixturevalue("hard32") if key == "32/curv_contour_length_14" else sample(key)
    ours = ps.summary(batch.images, batch.markers, batch.distractors)
    z = ps.welch_z(ours, FIXTURE["sets"][key]["stats"])
    far = {k: round(v, 1) for k, v in z.items() if abs(v) >= Z_CRIT}
    assert not far, f"{key}: statistics differ from snakes2's (z): {far}"


# Grey-level pairs (official, one higher) issue 27 found swapped at 32 px: the official levels fall
# on a half when imsave stretches the image and float32 rounding takes them down.
HALF_PAIRS = ((142, 143), (166, 167), (199, 200), (202, 203))


@pytest.mark.parametrize("key", ["32/curv_baseline", "32/curv_contour_length_14"])
def test_grey_levels_match_official_snakes2(key, request):
    """The histogram of grey levels against official images (fixture "levels"): the share of
    pixels >= 200 as the other statistics (|z| < Z_CRIT), and at the levels issue 27 found one too
    high, the share of those pixels on the upper level of each pair (official 0.28 at contour 14,
    0.49 at contour 6; the generator before the fix put 0.92 and 0.80 there)."""
    batch = request.getfixturevalue("hard32") if key == "32/curv_contour_length_14" else sample(key)
    ref = FIXTURE["levels"]["sets"][key]
    ours = ps.grey_levels(batch.images)
    z = ps.welch_z({"share_ge200": ours["share_ge200"]}, {"share_ge200": ref["share_ge200"]},
                   ("share_ge200",))["share_ge200"]
    assert abs(z) < Z_CRIT, f"{key}: share of pixels >= 200 differs from snakes2's (z = {z:.1f})"

    def upper(h):
        return sum(h[b] for _, b in HALF_PAIRS) / sum(h[a] + h[b] for a, b in HALF_PAIRS)

    assert abs(upper(ours["histogram"]) - upper(ref["histogram"])) < 0.15, \
        (key, upper(ours["histogram"]), upper(ref["histogram"]))
    # reported, not tested: sampling noise alone gives 0.005-0.014 at these sample sizes
    print(f"{key}: TV distance to snakes2's histogram "
          f"{ps.total_variation(ours['histogram'], ref['histogram']):.4f}")


def test_separated_style_fails_the_same_test():
    """The statistical test has teeth: the cleaner variant is rejected on several statistics."""
    st = sep.settings(32, "curv_contour_length_14")
    b = sep.generate_batch(st, 200, np.random.default_rng(0))
    ours = ps.summary(b.images, np.floor(b.markers), np.zeros(len(b.images)))
    z = ps.welch_z(ours, FIXTURE["sets"]["32/curv_contour_length_14"]["stats"])
    assert sum(abs(v) >= Z_CRIT for k, v in z.items() if k != "distractors") >= 4, z


def markers_linked(image: np.ndarray, markers: np.ndarray, distance: int = 2) -> bool:
    """Are the two marker pixels joined by ink (value > 0) with gaps of at most `distance`?"""
    ink = np.argwhere(image > 0)
    pairs = cKDTree(ink).query_pairs(distance, p=np.inf, output_type="ndarray")
    n = len(ink)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    index = {tuple(p): i for i, p in enumerate(ink)}
    a, b = (index[tuple(np.floor(m).astype(int))] for m in markers)
    return comp[a] == comp[b]


def test_labels_rest_on_continuation_not_connectivity(hard32):
    """As in LRA's data, contours touch and cross: "the markers are linked by ink" is far from
    the label (the separated style was built so that it is the label)."""
    linked = np.array([markers_linked(im, mk) for im, mk in zip(hard32.images, hard32.markers)])
    agree = (linked == hard32.labels.astype(bool)).mean()
    assert agree < 0.8
    assert linked[hard32.labels == 0].mean() > 0.3  # many negatives are joined by ink


def seed_orientations(resolution: int, paddle_length: int, thickness: float, margin: int,
                      antialias: int) -> list[int]:
    """The orientations (whole degrees, -180..179) from which snakes2 (drewlinsley/pathfinder
    ab9c130, snakes.py seed_snake) can seed a contour, counted here from its geometry rules and
    not by the port (lra_bench.data.pathfinder_gen), which must agree:

    1. The paddle's mask (draw_line_n_mask): on a canvas `antialias` times finer, of side
       2 * half * aa + 1 with half = L + ceil(thickness) + margin, a line from the centre c to
       (ceil(c + L aa sin a), ceil(c + L aa cos a)) of width round(thickness aa), value 255;
       grey-dilated by a disc of radius margin * aa; cast to uint8; Lanczos-resized to
       2 * half + 1 (scipy.misc.imresize: PIL's LANCZOS on the uint8 image); divided by 255.
    2. seed_snake's dilation kernel: that mask pasted, centred, on an n x n canvas,
       n = 2 (L + margin) + 1, at (L + margin + 1, L + margin + 1), one pixel past the centre,
       clipped; cast to uint8, so only pixels of the full value 255 (1.0) are taps.
    3. cv2.dilate with the anchor at the kernel's centre: an output pixel is the maximum of the
       source at (pixel + tap - anchor); taps outside the image count as -DBL_MAX. A pixel all of
       whose taps fall outside stays -DBL_MAX, find_available_coordinates sees a value below 0
       and returns no coordinate: the seed fails. So an orientation can seed exactly when every
       pixel of the image has at least one tap inside it.
    """
    L, m, aa, r = paddle_length, margin, antialias, resolution
    half = L + math.ceil(thickness) + m
    fine, c, side, n = 2 * half * aa + 1, half * aa, 2 * half + 1, 2 * (L + m) + 1
    y, x = np.ogrid[-m * aa:m * aa + 1, -m * aa:m * aa + 1]
    disc = x * x + y * y <= (m * aa) ** 2
    usable = []
    for deg in range(-180, 180):
        a = deg * math.pi / 180
        im = Image.new("F", (fine, fine), 0.0)
        head = (math.ceil(c + L * aa * math.cos(a)), math.ceil(c + L * aa * math.sin(a)))
        ImageDraw.Draw(im).line([(c, c), head], fill=255.0, width=round(thickness * aa))
        grown = ndimage.grey_dilation(np.asarray(im), footprint=disc, mode="constant", cval=0.0)
        mask = np.asarray(Image.fromarray(grown.astype(np.uint8)).resize(
            (side, side), Image.Resampling.LANCZOS))
        kernel = np.zeros((n, n), np.uint8)
        at = L + m + 1
        rows, cols = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        si, sj = rows - at + half, cols - at + half
        inside = (si >= 0) & (si < side) & (sj >= 0) & (sj < side)
        kernel[inside] = mask[si[inside], sj[inside]]
        taps = np.argwhere(kernel == 255) - n // 2
        covered = np.zeros((r, r), bool)
        for dy, dx in taps:  # the pixels p with p + (dy, dx) inside the image
            covered[max(0, -dy):min(r, r - dy), max(0, -dx):min(r, r - dx)] = True
        if len(taps) and covered.all():
            usable.append(deg)
    return usable


def test_seed_kernel_quirk():
    """snakes2's seed dilation kernel misses its anchor for most orientations, so most seeds
    fail: at 32 px only 30 of 360 orientations can seed a contour (counted from snakes2's rules
    in `seed_orientations`); at 128 px 354 at margin 2 and all 360 at margin 3. The port's
    verdicts are those orientations."""
    st = pg.settings(32, "curv_contour_length_14")
    assert (st.paddle_length, st.thickness, st.margins, st.antialias) == (2, 0.5, (1,), 2)
    usable = seed_orientations(32, 2, 0.5, 1, 2)
    assert usable == list(range(-150, -120))  # 30 neighbouring orientations
    s = pg.stamps(st, 1)
    assert [int(d) for d in s.valid_degrees] == usable
    assert len(s.seed_kernel(usable[0])) > 0
    bad = next(d for d in range(-180, 180) if s.seed_kernel(d) is None)
    assert bad not in usable
    big = pg.settings(128, "curv_contour_length_14")
    assert (big.paddle_length, big.thickness, big.margins) == (5, 1.5, (2, 3))
    for margin, count in ((2, 354), (3, 360)):
        usable = seed_orientations(128, 5, 1.5, margin, 2)
        assert len(usable) == count
        assert [int(d) for d in pg.stamps(big, margin).valid_degrees] == usable


@pytest.mark.parametrize("case", sorted(FIXTURE["stamps"]["cases"]))
def test_paddle_and_saved_grey_levels_equal_snakes2s(case):
    """Pixel for pixel, as the official code computes them (issue 27): one paddle per orientation
    with its contrast, a marker, and the saved image. snakes2 stores each paddle and its mask as
    float32 (draw_line_n_mask's l_im / m_im); kept as float64, grey levels that fall on a half when
    imsave stretches the image came out one higher (142, 166, 199, 202, ... at 32 px)."""
    ref = FIXTURE["stamps"]["cases"][case]
    k = ref["settings"]
    r = k["resolution"]
    st = pg.settings(r, "curv_baseline" if r == 32 else "curv_contour_length_14")
    s = pg.stamps(st, k["margin"])
    assert (st.paddle_length, st.thickness, st.antialias, st.marker_radius) == \
        (k["paddle_length"], k["thickness"], k["antialias"], k["marker_radius"])
    (py, px), (my, mx) = k["paddle_at"], k["marker_at"]
    marker = render._circle(st, my, mx) / 255.0
    lines, masks, saved = [], [], []
    for deg in range(-180, 180):
        a = deg * np.pi / 180
        c = snakes2._Canvas(st, s, None)
        c.draw(a, py, px, k["contrast"])
        mask = np.zeros_like(c.mask)
        render._paste(mask, s.paddle(a)[1], py + s.pad, px + s.pad, s.half)
        lines.append(c.inner(c.image).astype(np.float64))
        masks.append(c.inner(mask).astype(np.float64))
        saved.append(render._to_uint8(np.maximum(c.inner(c.image), marker)))  # as draw_image
    saved = np.stack(saved)
    hist = np.bincount(saved.ravel(), minlength=256)
    off = {v: (int(hist[v]), ref["histogram"][v]) for v in range(256)
           if hist[v] != ref["histogram"][v]}
    assert not off, f"{case}: grey levels (ours, official) differ: {off}"
    digest = {"saved": saved, "line_float64": np.stack(lines), "mask_float64": np.stack(masks)}
    for name, a in digest.items():
        assert hashlib.sha256(a.tobytes()).hexdigest() == ref[f"sha256_{name}"], name


def test_same_seed_same_bytes_other_seed_other_images():
    a_img, a_lab = pg.generate_arrays(32, "curv_baseline", 40, seed=3)
    b_img, b_lab = pg.generate_arrays(32, "curv_baseline", 40, seed=3)
    c_img, _ = pg.generate_arrays(32, "curv_baseline", 40, seed=4)
    assert a_img.tobytes() == b_img.tobytes() and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)


def test_labels_are_balanced_per_folder(hard32):
    assert hard32.labels.sum() == 150
    odd = pg.generate_batch(pg.settings(32, "curv_baseline"), 7, np.random.default_rng(0)).labels
    assert odd.sum() in (3, 4)


def test_value_range_and_markers(hard32):
    b = hard32
    flat = b.images.reshape(len(b.images), -1)
    assert b.images.dtype == np.uint8 and (flat.max(1) == 255).all() and (flat.min(1) == 0).all()
    centre = b.markers.astype(int)
    i = np.arange(len(b.images))[:, None]
    assert (b.images[i, centre[..., 0], centre[..., 1]] > 60).all()  # a marker is drawn


def test_marker_at_the_edge_is_cut_like_snakes2():
    """A marker is a disc Lanczos-resized over the whole image, so at the border it is cut and
    renormalised, not a shifted copy of an interior marker."""
    st = pg.settings(128, "curv_contour_length_14")
    inner, edge = render._circle(st, 60, 60), render._circle(st, 60, 0)
    right = inner[:, 60:65]  # the part of an interior marker that stays inside at x = 0
    assert np.abs(edge[:, :5] - right).max() <= 8 and not np.array_equal(edge[:, :5], right)
    assert edge[:, 5:].sum() < 0.05 * edge.sum() and edge.sum() < 0.75 * inner.sum()


def test_release_layout_and_metadata(tmp_path, monkeypatch):
    monkeypatch.setattr(release, "IMAGES_PER_FOLDER", 10)
    pg.main(["--out", str(tmp_path), "--resolution", "32", "--difficulty", "curv_baseline",
             "--num-images", "25", "--seed", "1", "--workers", "1"])
    root = tmp_path / "pathfinder32" / "curv_baseline"
    assert sorted(p.name for p in (root / "imgs").iterdir()) == ["0", "1", "2"]
    assert sorted(p.name for p in (root / "metadata").iterdir()) == ["0.npy", "1.npy", "2.npy"]
    images, labels = [], []
    for n in range(3):
        lines = (root / "metadata" / f"{n}.npy").read_text().splitlines()
        assert len(lines) == (10 if n < 2 else 5)
        for k, line in enumerate(lines):
            fields = line.split(" ")
            assert fields[:3] == [f"imgs/{n}", f"sample_{k}.png", str(k)]
            with Image.open(root / fields[0] / fields[1]) as im:
                assert im.mode == "L" and im.size == (32, 32)
                images.append(np.asarray(im))
            labels.append(int(fields[3]))
        assert sum(labels[-len(lines):]) in (len(lines) // 2, (len(lines) + 1) // 2)  # balanced
    expect_images, expect_labels = pg.generate_arrays(32, "curv_baseline", 25, seed=1)
    assert np.array_equal(np.stack(images), expect_images)
    assert labels == expect_labels.tolist()


def test_worker_processes_give_the_same_images(monkeypatch):
    monkeypatch.setattr(release, "IMAGES_PER_FOLDER", 6)
    one = pg.generate_arrays(32, "curv_baseline", 12, seed=2, workers=1)
    two = pg.generate_arrays(32, "curv_baseline", 12, seed=2, workers=2)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])


def test_styles_are_distinct():
    faithful, _ = pg.generate_arrays(32, "curv_baseline", 6, seed=0)
    separated, _ = pg.generate_arrays(32, "curv_baseline", 6, seed=0, style="separated")
    assert not np.array_equal(faithful, separated)
    with pytest.raises(UserError, match="data.style must be one of"):
        pg.generate_arrays(32, "curv_baseline", 2, seed=0, style="clean")


@pytest.mark.parametrize("resolution, difficulty", [(64, "curv_baseline"), (32, "curv_length_7")])
def test_unknown_settings_are_user_errors(resolution, difficulty):
    with pytest.raises(UserError, match="must be one of"):
        pg.generate_arrays(resolution, difficulty, 4, seed=0)
