"""CUDA twins of the frame kernels (stemedge.gpu), held to the CPU kernels.

The ``gpu`` tests run only where the CUDA extension finds a device (conftest skips them
elsewhere); the rest check, on any machine, that GPU arrays never fall back silently.
"""

from __future__ import annotations

import contextlib
import importlib.util

import numpy as np
import pytest

import stemedge
from stemedge import _native, masks

DTYPES = [np.uint8, np.uint16, np.uint32, np.float32]


def _frames(rng, n, det, dtype, nan=False):
    if np.dtype(dtype).kind == "f":
        f = rng.gamma(2.0, 50.0, (n, *det)).astype(np.float32)
        if nan:
            f[rng.random(f.shape) < 0.01] = np.nan
        return f
    hi = min(np.iinfo(dtype).max, 4000)
    return rng.integers(0, hi, (n, *det)).astype(dtype)


@pytest.fixture
def cp():
    return pytest.importorskip("cupy")


def _cpu_reduce_forbidden(*a, **k):
    raise AssertionError("the CPU reduction ran for GPU frames")


@contextlib.contextmanager
def gpu_only():
    """The GPU path must never use the CPU kernel: it is switched off inside."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(_native, "reduce", _cpu_reduce_forbidden)
        yield


def _close(gpu_value, cpu_value, rtol=1e-12):
    scale = max(1.0, float(np.nanmax(np.abs(cpu_value), initial=0.0)))
    np.testing.assert_allclose(gpu_value.get(), cpu_value, rtol=rtol, atol=1e-9 * scale)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("det", [(1, 1), (5, 3), (13, 17), (64, 64), (33, 130)])
def test_com_and_virtual_images_match_the_cpu(cp, dtype, det):
    rng = np.random.default_rng(0)
    host = _frames(rng, 37, det, dtype)
    ms = [masks.disk(det, det[0] / 4), masks.annulus(det, 1, det[0] / 2)] + [
        rng.random(det).astype(np.float32) * (rng.random(det) < 0.5) for _ in range(9)
    ]  # 11 masks: more than one kernel call
    f64 = {"dtype": np.float64}
    ref_com = stemedge.center_of_mass(host, **f64)
    ref_disk = stemedge.center_of_mass(host, radius=det[0] / 3, **f64)
    ref_vis = stemedge.virtual_images(host, ms, **f64)
    ref_mean = stemedge.virtual_images(host, ms[:2], normalize="mean", **f64)
    ref_fused = stemedge.com_and_virtual_images(host, ms[:3], radius=det[0] / 2, **f64)
    dev = cp.asarray(host)
    with gpu_only():
        com = stemedge.center_of_mass(dev, **f64)
        disk = stemedge.center_of_mass(dev, radius=det[0] / 3, **f64)
        vis = stemedge.virtual_images(dev, ms, **f64)
        mean = stemedge.virtual_images(dev, ms[:2], normalize="mean", **f64)
        fused = stemedge.com_and_virtual_images(dev, ms[:3], radius=det[0] / 2, **f64)
    assert isinstance(com.shifts, cp.ndarray) and com.shifts.device == dev.device
    _close(com.shifts, ref_com.shifts)
    _close(com.intensity, ref_com.intensity)
    _close(disk.shifts, ref_disk.shifts)
    _close(vis, ref_vis)
    _close(mean, ref_mean)
    _close(fused.shifts, ref_fused.shifts)
    _close(fused.images, ref_fused.images)


@pytest.mark.gpu
@pytest.mark.parametrize("threshold", [None, 0.5, 100.0, -5.0])
def test_thresholds_nan_scans_empty_stacks_and_streams(cp, threshold):
    rng = np.random.default_rng(1)
    host = _frames(rng, 24, (16, 20), np.float32, nan=True).reshape(4, 6, 16, 20)
    host[0, 0] = 0.0  # an empty frame: its shift is `empty`
    disk = masks.disk((16, 20), 5)
    ref = stemedge.center_of_mass(host, threshold=threshold, empty=-1.0, dtype=np.float64)
    ref_v = stemedge.virtual_images(host, disk, dtype=np.float64)
    stream = cp.cuda.Stream(non_blocking=True)
    with gpu_only(), stream:
        dev = cp.asarray(host)
        got = stemedge.center_of_mass(
            dev, threshold=threshold, empty=-1.0, dtype=np.float64, stream=stream
        )
        v = stemedge.virtual_images(dev, disk, dtype=np.float64)
        none = stemedge.center_of_mass(cp.zeros((0, 8, 8), cp.uint16))
    stream.synchronize()
    assert got.shifts.shape == (4, 6, 2) and v.shape == (4, 6) and none.shifts.shape == (0, 2)
    _close(got.shifts, ref.shifts)  # NaN where the CPU has NaN (no threshold), equal elsewhere
    _close(v, ref_v)


def test_gpu_arrays_never_fall_back_to_the_cpu():
    """Any array with __cuda_array_interface__ goes to stemedge.gpu; without cupy (or without a
    GPU) that is a clear error, not a silent copy to the host."""

    class DeviceArray:
        @property
        def __cuda_array_interface__(self):
            return {"shape": (2, 4, 4), "typestr": "<u2", "data": (0, False), "version": 3}

    frames = DeviceArray()
    calls = (
        lambda: stemedge.center_of_mass(frames),
        lambda: stemedge.virtual_images(frames, masks.disk((4, 4), 1)),
        lambda: stemedge.com_and_virtual_images(frames, masks.disk((4, 4), 1)),
    )
    for call in calls:
        if importlib.util.find_spec("cupy") is None:
            with pytest.raises(ImportError, match=r"stemedge\[gpu\]"):
                call()
        else:  # cupy present: a null pointer is refused by cupy or by CUDA, with its text
            with pytest.raises(Exception) as info:
                call()
            assert not isinstance(info.value, AssertionError)


def test_the_cuda_kernel_reports_cuda_errors_as_python_errors():
    cuda = pytest.importorskip("stemedge._cuda")
    report = cuda.device_report()
    if report["devices"]:
        pytest.skip("a GPU is present: the error path needs a machine without one")
    with pytest.raises(RuntimeError, match="cuda"):
        cuda.reduce(0, "uint16", 1, 4, 4, 0, 1, [True], [float("nan")], 0, 0)
    with pytest.raises(TypeError, match="uint8, uint16, uint32 or float32"):
        cuda.reduce(0, "float64", 1, 4, 4, 0, 1, [True], [float("nan")], 0, 0)
    with pytest.raises(ValueError, match="masks per call"):
        cuda.reduce(0, "uint16", 1, 4, 4, 0, cuda.MAX_MASKS + 1, [False] * 9, [0.0] * 9, 0, 0)
