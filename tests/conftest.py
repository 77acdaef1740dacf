import os
import shutil
import tempfile

# Tests run on the CPU, deterministic and quiet, whatever machine they are on.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent compilation cache for the session: the same small programs (a smoke model's
# train step, the CLI's runs in subprocesses) are compiled in many files, two workers and dozens
# of `lra` processes; all but the first load the executable. A cache hit is the same program, so
# no result changes. Made here, before jax is imported, by the first process to load this file
# (pytest-xdist's controller), so its workers and every subprocess inherit it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="lra-tests-jax-cache-")
    os.environ["LRA_TESTS_OWN_JAX_CACHE"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import contextlib  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402
# Imported here, outside any CliRunner: submitit's logging handler keeps the sys.stderr it found
# on import, and a CliRunner's stream is closed when its invoke returns.
import submitit  # noqa: E402,F401

from lra_bench import config  # noqa: E402
from lra_bench.data import listops  # noqa: E402


def pytest_unconfigure(config):
    # the process that made the cache removes it (a worker's pytest_unconfigure runs first)
    own = os.environ.get("LRA_TESTS_OWN_JAX_CACHE")
    if own and not hasattr(config, "workerinput"):
        shutil.rmtree(own, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def free_each_module():
    """Every module compiles its own programs in this process. When it ends they are dropped
    (jax.clear_caches) and the heap they fragmented goes back to the OS (malloc_trim); kept,
    they grow the pytest process by ~25 MB per compile. (Compile flags are left alone here:
    test_reliability resumes in this process a run made in a subprocess and expects identical
    numbers, which needs identical XLA options.)"""
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


@contextlib.contextmanager
def most_optimizations_off():
    """Programs that only have to run, not run fast, compiled without most XLA passes (LLVM's
    expensive ones): compiling is nearly all of a small test's cost, and this halves it, while the
    HLO graph, and so what is tested, is the same. The previous setting is restored."""
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture
def fast_compile():
    """`most_optimizations_off` for one test."""
    with most_optimizations_off():
        yield


@pytest.fixture(scope="module")
def fast_compile_module():
    """`most_optimizations_off` for a whole test file:
    `pytestmark = pytest.mark.usefixtures("fast_compile_module")`."""
    with most_optimizations_off():
        yield


@pytest.fixture
def x64():
    """float64 for one test (the equation and parity tests): `jax.enable_x64` in newer jax, the
    experimental context manager in older."""
    if hasattr(jax, "enable_x64"):
        ctx = jax.enable_x64(True)
    else:
        from jax.experimental import enable_x64  # older jax only: absent in newer
        ctx = enable_x64()
    with ctx:
        yield


@pytest.fixture
def results_dir(tmp_path):
    return tmp_path / "results"
