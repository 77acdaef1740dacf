import os

# Tests run on the CPU, deterministic and quiet, whatever machine they are on.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import ctypes  # noqa: E402
import gc  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from lra_bench import config  # noqa: E402
from lra_bench.data import listops  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def compile_fast_and_free_each_module():
    """The suite is compile-bound: every module compiles its own tiny programs, in this process.

    - LLVM's expensive passes are skipped (the HLO, and so what is tested, is the same; about
      half the CPU time of a compile). Subprocesses (`lra run`, sweep points) keep the defaults.
    - When a module ends, its compiled programs are dropped (jax.clear_caches) and the heap they
      fragmented is handed back to the OS (malloc_trim): kept, they grew one pytest process by
      ~25 MB per compile, to ~21 GB over the whole suite.
    """
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.clear_caches()
    gc.collect()
    if _libc is not None:
        _libc.malloc_trim(0)


try:  # glibc only; elsewhere the heap is simply kept
    _libc = ctypes.CDLL("libc.so.6")
    _libc.malloc_trim
except (OSError, AttributeError):
    _libc = None


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A data dir holding the ListOps smoke set, generated once per test session."""
    root = tmp_path_factory.mktemp("data")
    rc = config.resolve("transformer", "listops", "smoke")
    listops.generate_files(root / "listops" / rc.data["variant"], rc.data, seed=0)
    return root


@pytest.fixture
def results_dir(tmp_path):
    return tmp_path / "results"
