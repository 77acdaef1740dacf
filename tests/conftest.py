import os

# Tests run on the CPU, deterministic and quiet, whatever machine they are on.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

from lra_bench import config  # noqa: E402
from lra_bench.data import listops  # noqa: E402


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
