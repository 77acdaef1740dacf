"""The data sets the generator draws: resolutions, difficulties and styles, each checked with one
error line, and LRA's settings of the snakes2 style for each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from lra_bench.errors import UserError


DIFFICULTIES = {"curv_baseline": 6, "curv_contour_length_9": 9, "curv_contour_length_14": 14}
RESOLUTIONS = (32, 128)
STYLES = ("snakes2", "separated")


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
