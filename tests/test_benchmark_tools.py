"""The kernel table's page update and the operation profile (benchmarks/kernels.py,
benchmarks/profile_ops.py): tools whose output goes into docs/kernels.md."""

import argparse

import pytest

from benchmarks import kernels, profile_ops


def report(ms):
    return {"command": "python benchmarks/kernels.py", "commit": "abc1234", "date": "today",
            "device": {"device_kind": "cpu", "platform": "cpu"},
            "versions": {"jax": "x", "flax": "y"}, "malloc_tuned": True,
            "config": {"batch": 2, "dim": 64, "heads": 4, "dtype": "float32", "repeats": 5},
            "results": [{"kernel": "softmax", "length": 1024, "min_ms": ms, "median_ms": ms,
                         "compile_s": 1.0, "xla_estimate_mib": 14.0}]}


def test_update_replaces_only_the_generated_tables():
    page = "\n".join(["# Kernels", "written above", kernels.BEGIN, "old table", kernels.END,
                      "## Against the official layers", "written below", ""])
    once = kernels.update_page(page, kernels.markdown(report(32.1)))
    assert "old table" not in once and "| softmax | 32.1 |" in once
    assert once.startswith("# Kernels\nwritten above\n") and once.endswith("written below\n")
    assert once.count("# Kernel costs") == 0  # the generated page's own title is dropped
    twice = kernels.update_page(once, kernels.markdown(report(30.0)))
    assert "| softmax | 30.0 |" in twice and "32.1" not in twice
    with pytest.raises(SystemExit, match="BEGIN"):
        kernels.update_page("# no markers\n", kernels.markdown(report(1.0)))


def test_profile_classes_the_traced_operations(fast_compile):
    args = argparse.Namespace(batch=1, dim=16, repeats=1)
    point = profile_ops.profile_point("softmax", 64, args, head_dim=8, rate=0.1, roof=50.0)
    classes = point["classes"]
    assert classes["products"]["ms"] > 0 and classes["products"]["gflop"] > 0
    assert point["heads"] == 2 and point["attention_dropout"] == 0.1
    # every operation the trace timed is one the compiled program has: nothing left unclassed
    assert classes.get("other", {"ms": 0.0})["ms"] < 0.05 * point["leaves_ms"]
    assert abs(sum(c["share"] for c in classes.values()) - 1) < 1e-9
