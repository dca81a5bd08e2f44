"""What the build reports about itself, and the GPU marker's skip path."""

from __future__ import annotations

import pytest

import stemedge
from stemedge import _native


def test_build_info_reports_simd_threads_and_cuda():
    info = stemedge.build_info()
    assert info["version"] == stemedge.__version__
    assert info["simd_active"] in info["simd_available"]
    assert set(info["simd_available"]) <= set(info["simd_compiled"])
    assert "ref" in info["simd_compiled"]
    assert info["threads"] >= 1 and info["cpus_available"] >= 1
    cuda = info["cuda"]
    assert isinstance(cuda["compiled"], bool)
    # Without a usable GPU the report says why (driver missing, no device), never raises.
    assert cuda["devices"] or cuda["error"]


def test_backend_choice_is_reported():
    previous = _native.active_backend()
    try:
        _native.set_backend("ref")
        assert stemedge.build_info()["simd_active"] == "ref"
    finally:
        _native.set_backend(previous)


@pytest.mark.gpu
def test_cuda_extension_sees_a_gpu():
    """Runs only where the CUDA extension finds a device (skipped elsewhere by conftest)."""
    cuda = stemedge.build_info()["cuda"]
    assert cuda["compiled"] and cuda["devices"]
    assert cuda["devices"][0]["compute_capability"] >= 70
