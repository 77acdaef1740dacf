import platform

import pytest

from lra_bench import host


def test_malloc_tuning_applies_on_glibc_and_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("LRA_MALLOC_TUNING", "0")
    assert host.tune_malloc() is False
    monkeypatch.delenv("LRA_MALLOC_TUNING")
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert host.tune_malloc() is True
