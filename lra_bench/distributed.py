"""Data parallelism over every device of one host or many, through `jax.sharding` only.

One `Mesh` with a single axis, 'data', spans the devices of every process. A global batch is
split along its first dimension over that axis (`NamedSharding(mesh, P('data'))`); parameters,
optimiser state and the rest of the train state are replicated (`P()`). The train step is the
same jitted function as on one device: XLA's SPMD partitioner adds the gradient all-reduce. The
batch size in the config is the global one, so a run's maths does not depend on the device count.

Multi-host: every process runs the same program. `initialize` starts `jax.distributed` when the
run is one of several processes; each process then assembles and transfers only its own rows of
every global batch (`local_rows`, `jax.make_array_from_process_local_data`), and only process 0
writes results (`is_primary`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lra_bench.errors import UserError

DATA_AXIS = "data"


def launched_as_several_processes(env=os.environ) -> bool:
    """Whether the environment says this process is one of several: JAX's own variables, or an
    `srun` / `mpirun` launch of more than one task (JAX detects the rest from those). A shell
    inside `salloc -n 4` is not a launch: only srun sets SLURM_STEP_NUM_TASKS."""
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    for count in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"):
        if int(env.get(count, "1") or 1) > 1:
            return True
    return False


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Start `jax.distributed` when the run is launched on several processes; return whether it
    did. Must run before anything touches a JAX device."""
    flags = (coordinator, num_processes, process_id)
    if all(f is None for f in flags):
        if not launched_as_several_processes():
            return False
        env = os.environ
        # JAX reads JAX_COORDINATOR_ADDRESS itself; the count and id may come from the same place.
        num_processes = int(env["JAX_NUM_PROCESSES"]) if env.get("JAX_NUM_PROCESSES") else None
        process_id = int(env["JAX_PROCESS_ID"]) if env.get("JAX_PROCESS_ID") else None
    if num_processes is not None and num_processes < 1:
        raise UserError(f"--num-processes must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise UserError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    except (ValueError, TypeError) as e:  # a value JAX could neither read nor detect
        raise UserError(f"cannot start a multi-process run ({e}); pass --coordinator host:port, "
                        "--num-processes N and --process-id I on every process") from None
    return True


def is_primary() -> bool:
    """The one process that writes the run folder (checkpoints are written by every process)."""
    return jax.process_index() == 0


def from_primary(text: str, size: int = 512) -> str:
    """Process 0's `text` on every process (a run id the others did not make)."""
    if jax.process_count() == 1:
        return text
    raw = np.zeros(size, np.uint8)
    data = text.encode()[:size]
    raw[:len(data)] = np.frombuffer(data, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(raw))
    return bytes(out).rstrip(b"\0").decode()


def any_process(flag: bool) -> bool:
    """True on every process when it is True on any: a stop asked of one process (each gets its
    own signal, maybe a step apart) is carried out by all at the same step."""
    if jax.process_count() == 1:
        return flag
    votes = multihost_utils.process_allgather(np.array([flag], np.int32))
    return bool(np.asarray(votes).any())


@dataclass(frozen=True)
class DataParallel:
    """Where a run's arrays live: batches split over the 'data' axis, all else replicated."""

    mesh: Mesh

    @classmethod
    def over(cls, devices=None) -> "DataParallel":
        """A 'data' mesh over `devices` (default: every device of every process), grouped by
        process so that each process's rows of a batch are one contiguous block."""
        devices = jax.devices() if devices is None else list(devices)
        ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
        return cls(Mesh(np.array(ordered), (DATA_AXIS,)))

    @property
    def device_count(self) -> int:
        return int(self.mesh.devices.size)

    @property
    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def micro_batch_sharding(self) -> NamedSharding:
        """(micro-batches, rows, ...): each micro-batch split over the devices like a batch."""
        return NamedSharding(self.mesh, PartitionSpec(None, DATA_AXIS))

    def check_batch(self, batch_size: int, grad_accum: int = 1) -> None:
        """Every device must get the same number of rows of every (micro-)batch."""
        n, micro = self.device_count, batch_size // max(grad_accum, 1)
        if micro % n:
            per = f"train.batch_size {batch_size}" + (
                f" / train.grad_accum {grad_accum} = {micro}" if grad_accum > 1 else "")
            raise UserError(f"{per} is not divisible by the {n} devices; set train.batch_size "
                            f"to a multiple of {n * grad_accum}")

    def replicate(self, tree):
        """A copy of `tree` on every device of the mesh. Several processes each hold their own,
        identical copy (the same seed built it), so each fills its own devices from it."""
        if jax.process_count() == 1:
            return jax.device_put(tree, self.replicated)

        def one(x):
            if isinstance(x, jax.core.Tracer):  # traced abstractly (preflight): nothing to place
                return x
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                return x  # a global array already (restored from a checkpoint onto the mesh)
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                return jax.random.wrap_key_data(one(jax.random.key_data(x)),
                                                impl=jax.random.key_impl(x))
            host = np.asarray(x)
            return jax.make_array_from_callback(host.shape, self.replicated, lambda i: host[i])

        return jax.tree.map(one, tree)

    def local_rows(self, batch_size: int) -> slice:
        """The rows of every global batch that this process's devices hold."""
        index = self.batch_sharding.addressable_devices_indices_map((batch_size,))
        starts = sorted(ix[0].start or 0 for ix in index.values())
        stops = sorted(batch_size if ix[0].stop is None else ix[0].stop for ix in index.values())
        rows = slice(starts[0], stops[-1])
        if stops[-1] - starts[0] != sum(b - a for a, b in zip(starts, stops)):
            raise RuntimeError(f"this process's devices hold non-contiguous rows {index}")
        return rows

    def put_local(self, batch: dict, batch_size: int) -> dict:
        """This process's rows of a global batch of `batch_size` rows -> global sharded arrays."""
        return {k: jax.make_array_from_process_local_data(
                    self.batch_sharding, v, (batch_size, *v.shape[1:]))
                for k, v in batch.items()}

    def put_global(self, batch: dict) -> dict:
        """A whole global batch (the same on every process) -> global sharded arrays."""
        size = len(next(iter(batch.values())))
        rows = self.local_rows(size)
        return self.put_local({k: v[rows] for k, v in batch.items()}, size)

    def describe(self) -> dict:
        return {"device_count": self.device_count, "process_count": jax.process_count(),
                "mesh_shape": {k: int(v) for k, v in self.mesh.shape.items()}}


def grad_accum_suggestion(batch_size: int, device_count: int, grad_accum: int = 1) -> int | None:
    """The smallest accumulation above `grad_accum` that keeps micro-batches divisible by the
    devices, for messages that tell an out-of-memory run what to try; None if there is none."""
    for k in range(grad_accum + 1, batch_size + 1):
        if batch_size % k == 0 and (batch_size // k) % device_count == 0:
            return k
    return None
