"""Runs in a fresh process for tests/test_scaling.py: XLA's host device count is fixed when JAX
starts, so the 4-device runs cannot share the test process.

    python tests/scaling_worker.py '<json list of --set overrides>'

prints one JSON object: the loss curves of the same run on a 1-device mesh, on a 4-device mesh,
and on 4 devices with 4 micro-batches per step, and the error for a batch the devices cannot
split.
"""

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

from lra_bench import config, data  # noqa: E402
from lra_bench.distributed import DataParallel  # noqa: E402
from lra_bench.errors import UserError  # noqa: E402
from lra_bench.trainer import build, train_and_evaluate  # noqa: E402


def curve(rc, dp):
    evals = []
    summary = train_and_evaluate(rc, data.load(rc, "."), on_eval=evals.append, data_parallel=dp)
    return {"train_loss": [e["train_loss"] for e in evals],
            "val_loss": [e["val_loss"] for e in evals],
            "test_accuracy": summary["test_accuracy"],
            "describe": {k: summary[k] for k in ("device_count", "process_count", "mesh_shape",
                                                 "grad_accum", "micro_batch_size", "dtype")}}


def main(overrides):
    assert jax.device_count() == 4, jax.devices()
    resolve = lambda *extra: config.resolve("transformer", "listops", "smoke",  # noqa: E731
                                            overrides=[*overrides, *extra])
    one, four = DataParallel.over(jax.devices()[:1]), DataParallel.over()
    out = {"one": curve(resolve(), one), "four": curve(resolve(), four),
           "four_k4": curve(resolve("train.grad_accum=4"), four)}
    try:
        build(resolve("train.batch_size=6"), four)
        out["indivisible"] = None
    except UserError as e:
        out["indivisible"] = str(e)
    print(json.dumps(out))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
