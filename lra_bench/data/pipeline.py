"""Batches for the trainer: shuffled with a seed, assembled and put on the device off the
training thread, so the jitted step never waits on Python.

The training stream's position is (epoch, batch index); the permutation of epoch e is a pure
function of (seed, e), so a stream can be re-created at any position.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import jax
import numpy as np


def gather(split: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The given rows of every array, integers widened to int32 (caches store token ids in
    uint8/uint16 and are memory-mapped, so this is also where the rows are read from disk)."""
    out = {}
    for k, v in split.items():
        b = np.asarray(v[rows])
        out[k] = b.astype(np.int32) if b.dtype.kind in "ui" and b.dtype != np.int32 else b
    return out


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class TrainStream:
    """Endless shuffled batches (the last incomplete batch of an epoch is dropped).

    `rows` picks this process's part of every global batch of `batch_size` rows (multi-host: see
    `lra_bench.distributed`); only those rows are gathered and handed to `device_put`.
    """

    def __init__(self, split: dict[str, np.ndarray], batch_size: int, seed: int,
                 prefetch: int = 4, start: tuple[int, int] = (0, 0), device_put=jax.device_put,
                 rows: slice = slice(None)):
        n = len(split["labels"])
        if n < batch_size:
            raise ValueError(f"the training split has {n} examples, fewer than one batch ({batch_size})")
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.batches_per_epoch = n // batch_size
        self.position = start  # of the next batch handed to the trainer
        self._device_put = device_put
        self._rows = rows
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(start,), daemon=True)
        self._thread.start()

    def _fill(self, start: tuple[int, int]) -> None:
        epoch, index = start
        try:
            while not self._stop.is_set():
                order = epoch_order(len(self.split["labels"]), self.seed, epoch)
                for b in range(index, self.batches_per_epoch):
                    rows = np.sort(order[b * self.batch_size:(b + 1) * self.batch_size])[self._rows]
                    batch = gather(self.split, rows)
                    item = ((epoch, b), self._device_put(batch))
                    while not self._stop.is_set():
                        try:
                            self._queue.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if self._stop.is_set():
                        return
                epoch, index = epoch + 1, 0
        except BaseException as e:  # surface the producer's failure in the consumer
            self._queue.put(("error", e))

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        pos, batch = self._queue.get()
        if pos == "error":
            raise batch
        epoch, b = pos
        self.position = (epoch, b + 1) if b + 1 < self.batches_per_epoch else (epoch + 1, 0)
        return batch

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def whole_batches(split: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """The split without the rows of its last partial batch (tf.data's drop_remainder, PyTorch's
    drop_last): views, nothing is copied."""
    keep = len(split["labels"]) // batch_size * batch_size
    return {k: v[:keep] for k, v in split.items()}


def eval_batches(split: dict[str, np.ndarray], batch_size: int, max_batches: int = 0):
    """Fixed-size batches over a whole split, in order; the last one is padded with rows of
    weight 0 so every batch has one shape and the eval step compiles once."""
    n = len(split["labels"])
    stops = range(0, n, batch_size)
    if max_batches:
        stops = stops[:max_batches]
    for start in stops:
        rows = np.arange(start, start + batch_size)
        valid = rows < n
        rows = np.where(valid, rows, 0)
        batch = gather(split, rows)
        batch["weights"] = valid.astype(np.float32)
        yield batch
