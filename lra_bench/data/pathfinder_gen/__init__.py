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
`separated` (never the default; it is not LRA's task).

    datasets          the data sets (resolution, difficulty, style) and LRA's settings for each
    render            paddle stamps, masks and markers, rendered with Pillow as snakes2 did
    snakes2           one image as snakes2 drew it; a batch with balanced labels
    separated_scene   the separated style's settings and the growth of its contours
    separated         the separated style's rendering, its label test and its batches
    release           folders of 1000 in LRA's release layout, in worker processes; the command
                      line (`python -m lra_bench.data.pathfinder_gen`, see `__main__`)
"""

from lra_bench.data.pathfinder_gen.datasets import (DIFFICULTIES, RESOLUTIONS, STYLES, Batch,
                                                    Settings, check_style, contour_length,
                                                    settings)
from lra_bench.data.pathfinder_gen.render import Stamps
from lra_bench.data.pathfinder_gen.snakes2 import draw_image, generate_batch, stamps
from lra_bench.data.pathfinder_gen.release import (IMAGES_PER_FOLDER, generate_arrays,
                                                   generate_release, main)

__all__ = ["DIFFICULTIES", "IMAGES_PER_FOLDER", "RESOLUTIONS", "STYLES", "Batch", "Settings",
           "Stamps", "check_style", "contour_length", "draw_image", "generate_arrays",
           "generate_batch", "generate_release", "main", "settings", "stamps"]
