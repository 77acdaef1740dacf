"""Random token data of a task's exact shapes: what efficiency measurements need (the LRA
Table 2 protocol times steps on token batches, not on a real data set) and what smoke tests of
every model x task use when the real data is not there. Accuracy on it means nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZES = {"train": 256, "val": 64, "test": 64}


def make_split(data: dict, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (n, 2, data["max_length"]) if data.get("dual") else (n, data["max_length"])
    # Ids start at 1: every position is a real token, the longest case for every mixer.
    inputs = rng.integers(1, data["vocab_size"], size=shape, dtype=np.int32)
    labels = rng.integers(0, data["num_classes"], size=(n,), dtype=np.int32)
    return {"inputs": inputs, "labels": labels}


def load(rc, data_dir: Path | None = None) -> dict[str, dict[str, np.ndarray]]:
    return {s: make_split(rc.data, max(n, rc.train["batch_size"]), rc.seed + i)
            for i, (s, n) in enumerate(SIZES.items())}
