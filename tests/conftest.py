"""Shared fixtures: kernel backends, GPU detection."""

from __future__ import annotations

import pytest

from stemedge import _native
from stemedge._build import cuda_report

BACKENDS = _native.available_backends()


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run the test once per CPU backend this machine supports, restoring the default after."""
    previous = _native.active_backend()
    _native.set_backend(request.param)
    try:
        yield request.param
    finally:
        _native.set_backend(previous)


def _gpu_available() -> bool:
    report = cuda_report()
    return bool(report.get("compiled")) and bool(report.get("devices"))


def pytest_collection_modifyitems(config, items):
    if _gpu_available():
        return
    reason = cuda_report().get("error") or "no CUDA GPU"
    skip = pytest.mark.skip(reason=f"needs a GPU: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
