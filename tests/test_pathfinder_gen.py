"""The offline Pathfinder generator: determinism, balance, value range, release layout, and that
every label can be read off the pixels (markers linked through ink for positives, not for
negatives), checked with an implementation independent of the generator's own."""

import dataclasses

import numpy as np
import pytest
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from lra_bench.data import pathfinder_gen as pg
from lra_bench.errors import UserError


def markers_linked(image: np.ndarray, markers: np.ndarray, distance: int) -> bool:
    """Are the two marker pixels joined by a chain of ink pixels (value > 0), each within
    Chebyshev `distance` of the next? (A k-d tree over the ink, not the generator's dilation.)"""
    ink = np.argwhere(image > 0)
    pairs = cKDTree(ink).query_pairs(distance, p=np.inf, output_type="ndarray")
    n = len(ink)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    index = {tuple(p): i for i, p in enumerate(ink)}
    a, b = (index[tuple(np.floor(m).astype(int))] for m in markers)
    return comp[a] == comp[b]


@pytest.fixture(scope="module")
def hard32():
    st = pg.settings(32, "curv_contour_length_14")
    return st, pg.generate_batch(st, 120, np.random.default_rng(5))


@pytest.fixture(scope="module")
def hard128():
    st = pg.settings(128, "curv_contour_length_14")
    return st, pg.generate_batch(st, 10, np.random.default_rng(5))


def test_same_seed_same_bytes_other_seed_other_images():
    a_img, a_lab = pg.generate_arrays(32, "curv_baseline", 40, seed=3)
    b_img, b_lab = pg.generate_arrays(32, "curv_baseline", 40, seed=3)
    c_img, _ = pg.generate_arrays(32, "curv_baseline", 40, seed=4)
    assert a_img.tobytes() == b_img.tobytes() and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)


def test_labels_are_balanced(hard32):
    _, batch = hard32
    assert batch.labels.sum() == 60
    odd = pg.generate_batch(pg.settings(32, "curv_baseline"), 7, np.random.default_rng(0)).labels
    assert odd.sum() in (3, 4)


@pytest.mark.parametrize("which", ["hard32", "hard128"])
def test_value_range_and_markers_bright(which, request):
    st, batch = request.getfixturevalue(which)
    r = st.resolution
    assert batch.images.dtype == np.uint8 and batch.images.shape == (len(batch.labels), r, r)
    assert (batch.images.reshape(len(batch.images), -1).max(1) == 255).all()
    assert (batch.images.reshape(len(batch.images), -1).min(1) == 0).all()
    centre = np.floor(batch.markers).astype(int)
    i = np.arange(len(batch.images))[:, None]
    assert (batch.images[i, centre[..., 0], centre[..., 1]] > 100).all()  # a marker is drawn


@pytest.mark.parametrize("which", ["hard32", "hard128"])
def test_positives_connected_negatives_not(which, request):
    st, batch = request.getfixturevalue(which)
    verdicts = [markers_linked(img, mk, int(pg.link_distance(st, m)))
                for img, mk, m in zip(batch.images, batch.markers, batch.margins)]
    assert verdicts == [bool(label) for label in batch.labels]


def test_connectivity_check_sees_a_bridge(hard32):
    """The check is not vacuous: a line drawn between a negative's markers connects them."""
    st, batch = hard32
    k = np.flatnonzero(batch.labels == 0)[0]
    img = batch.images[k].copy()
    (y0, x0), (y1, x1) = batch.markers[k]
    for t in np.linspace(0, 1, 200):
        img[int(y0 + t * (y1 - y0)), int(x0 + t * (x1 - x0))] = 255
    assert markers_linked(img, batch.markers[k], 2)
    assert not markers_linked(batch.images[k], batch.markers[k], 2)


def test_without_clearance_and_rejection_negatives_can_connect(monkeypatch):
    """What the generator guards against happens: with snakes2's spacing (2m between all
    contours) and no rejection, distractors and contours bridge some negatives' markers."""
    st = dataclasses.replace(pg.settings(32, "curv_contour_length_14"), contour_clearance=0.0)
    monkeypatch.setattr(pg, "_unambiguous", lambda st, paddles, *a: np.ones(len(paddles), bool))
    monkeypatch.setattr(pg._Scene, "__init__", _no_marker_room(pg._Scene.__init__))
    batch = pg.generate_batch(st, 60, np.random.default_rng(1))
    wrong = [markers_linked(img, mk, 2) for img, mk, lab in
             zip(batch.images, batch.markers, batch.labels) if lab == 0]
    assert any(wrong)


def _no_marker_room(init):
    def patched(self, st, margins):
        init(self, st, margins)
        self.target[:] = False  # every contour keeps only snakes2's 2m from every other
        self.extra[:] = 0
    return patched


def test_release_layout_and_metadata(tmp_path, monkeypatch):
    monkeypatch.setattr(pg, "IMAGES_PER_FOLDER", 10)
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
    expect_images, expect_labels = pg.generate_arrays(32, "curv_baseline", 25, seed=1)
    assert np.array_equal(np.stack(images), expect_images)
    assert labels == expect_labels.tolist()


def test_worker_processes_give_the_same_images(monkeypatch):
    monkeypatch.setattr(pg, "IMAGES_PER_FOLDER", 6)
    one = pg.generate_arrays(32, "curv_contour_length_9", 12, seed=2, workers=1)
    two = pg.generate_arrays(32, "curv_contour_length_9", 12, seed=2, workers=2)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])


@pytest.mark.parametrize("resolution, difficulty", [(64, "curv_baseline"), (32, "curv_length_7")])
def test_unknown_settings_are_user_errors(resolution, difficulty):
    with pytest.raises(UserError, match="must be one of"):
        pg.generate_arrays(resolution, difficulty, 4, seed=0)
