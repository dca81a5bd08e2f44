"""SSB on the GPU (stemedge.ptycho.device), held to the CPU route.

Without a GPU: the device's weight generation (cuda/ssb_weights.cuh, run on the host through
``_cuda.ssb_weights_host``) must equal the CPU's SsbTrotters bit for bit, and the device route's
arithmetic (every candidate summed, left-out ones 0; the device branch of ``object_wave``) must
give the CPU's wave. With a GPU (``gpu`` marker): the whole route against ``stemedge.ssb`` on
numpy data, with the CPU's native steps switched off.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

import stemedge
from _helpers import ssb_scan
from stemedge import _native
from stemedge.ptycho.plan import SSBPlan, mirror_columns, object_wave, transfer_plane

ABERRATIONS = [None, {"C10": -40.0, "C12": 15.0, "phi12": 0.4, "C21": 300.0, "C30": 2e4}]


def _host_weights(plan: SSBPlan):
    _cuda = pytest.importorskip("stemedge._cuda", reason="built without the CUDA extension")
    cal = plan.calibration
    return _cuda.ssb_weights_host(
        plan.k[:, 0], plan.k[:, 1], plan.cand_qy, plan.cand_qx, cal.k_alpha, cal.wavelength_A,
        plan.aberration_values, plan.cutoff, plan.normalization,
    )  # fmt: skip


def _dense(trotters) -> np.ndarray:
    w = np.zeros((trotters.n_columns, trotters.n_pixels), np.complex64)
    weights = trotters.weights
    for c in range(trotters.n_columns):
        sl = slice(trotters.ptr[c], trotters.ptr[c + 1])
        w[c, trotters.idx[sl]] = weights[sl]
    return w


@pytest.mark.parametrize("aberrations", ABERRATIONS)
@pytest.mark.parametrize("normalization", ["flat", "matched"])
@pytest.mark.parametrize("cutoff", [1, 12, 10_000])
@pytest.mark.parametrize("geometry", ["plain", "rotated", "binned"])
def test_device_weights_equal_the_cpu_trotters_bit_for_bit(
    aberrations, normalization, cutoff, geometry
):
    cal = {"rotated": {"rotation_deg": 23.0, "flip_y": True, "det_origin_px": (10.3, 11.6)}}
    data, calibration = ssb_scan(**cal.get(geometry, {}))
    plan = SSBPlan(
        calibration, data.shape[:2], data.shape[2:], aberrations=aberrations,
        normalization=normalization, cutoff=cutoff, binning=2 if geometry == "binned" else 1,
    )  # fmt: skip
    kept, transfer, w = _host_weights(plan)
    t = plan.trotters
    np.testing.assert_array_equal(np.nonzero(kept)[0], t.kept)
    assert 0 < kept.sum() and (cutoff < 10_000) == (kept.sum() > 1)  # only Q = 0 survives 10k
    np.testing.assert_array_equal(w[kept], _dense(t))
    np.testing.assert_array_equal(transfer[kept], t.transfer)
    assert not np.any(w[~kept]) and not np.any(transfer[~kept])


@pytest.mark.parametrize("aberrations", ABERRATIONS)
@pytest.mark.parametrize("normalization", ["flat", "matched"])
@pytest.mark.parametrize("shape", [(15, 17), (16, 16), (9, 4)])
def test_device_route_arithmetic_gives_the_cpu_wave(aberrations, normalization, shape):
    """The device route's steps in numpy: centred cube, rfft2, sums over *all* candidates with
    the device weights, the device branch of object_wave and its transfer plane."""
    data, cal = ssb_scan(scan=shape, seed=3)
    ref = stemedge.ssb(data, cal, aberrations=aberrations, normalization=normalization, cutoff=2)
    plan = ref.plan
    _, transfer, w = _host_weights(plan)
    ny, nx = shape
    cube, mean = plan.gather(data)
    g = np.fft.rfft2(cube.reshape(ny, nx, -1), axes=(0, 1)).astype(np.complex64)
    g[0, 0, :] = ny * nx * mean
    cells = plan.cand_iy.astype(np.int64) * (nx // 2 + 1) + plan.cand_ix
    rows = g.reshape(-1, plan.n_pixels)[cells].astype(np.complex128)
    F = np.einsum("cp,cp->c", rows, w.astype(np.complex128))
    dc = int(np.nonzero((plan.cand_iy == 0) & (plan.cand_ix == 0))[0][0])
    mirror = mirror_columns(plan.cand_ix, nx)
    # numpy under another name: object_wave takes its device (cupy) branch
    device_ns = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if k[0] != "_"})
    wave = object_wave(F, plan.cand_iy, plan.cand_ix, mirror, dc, ny * nx, shape, xp=device_ns)
    assert wave.dtype == np.complex64
    np.testing.assert_allclose(wave, ref.wave, rtol=0, atol=2e-5 * np.abs(ref.wave).max())
    empty = object_wave(F * 0, plan.cand_iy, plan.cand_ix, mirror, dc, ny * nx, shape, xp=device_ns)
    assert np.isnan(empty).all()
    plane = transfer_plane(plan.cand_iy, plan.cand_ix, mirror, transfer, shape, xp=device_ns)
    np.testing.assert_array_equal(plane, ref.transfer)


def test_plan_builds_host_weights_only_when_asked():
    data, cal = ssb_scan()
    plan = SSBPlan(cal, data.shape[:2], data.shape[2:])
    assert "trotters" not in plan.__dict__  # the GPU route never needs them
    assert plan.n_frequencies == len(plan.trotters.kept) and "trotters" in plan.__dict__


# --- on a GPU -------------------------------------------------------------------------------------


@pytest.fixture
def cp():
    return pytest.importorskip("cupy")


def _cpu_forbidden(*a, **k):
    raise AssertionError("a CPU SSB step ran for GPU data")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.float32])
@pytest.mark.parametrize("aberrations", ABERRATIONS)
@pytest.mark.parametrize("binning", [1, 2])
def test_ssb_on_the_gpu_matches_the_cpu(cp, dtype, aberrations, binning):
    data, cal = ssb_scan(scan=(15, 18), dtype=dtype, seed=5)
    ref = stemedge.ssb(data, cal, aberrations=aberrations, binning=binning, cutoff=3)
    plan = SSBPlan(cal, data.shape[:2], data.shape[2:], aberrations=aberrations, binning=binning,
                   cutoff=3)  # fmt: skip
    dev = cp.asarray(data)
    with pytest.MonkeyPatch.context() as m:
        for name in ("ssb_gather", "ssb_apply", "SsbTrotters"):
            m.setattr(_native, name, _cpu_forbidden)
        got = stemedge.ssb(dev, cal, plan=plan)
    assert isinstance(got.wave, cp.ndarray) and got.wave.device == dev.device
    assert "trotters" not in plan.__dict__  # weights generated on the device only
    scale = float(np.abs(ref.wave).max())
    np.testing.assert_allclose(got.wave.get(), ref.wave, rtol=0, atol=2e-5 * scale)
    np.testing.assert_allclose(got.phase.get(), ref.phase, rtol=0, atol=2e-4)
    np.testing.assert_array_equal(got.transfer.get(), ref.transfer)


@pytest.mark.gpu
def test_ssb_on_the_gpu_honours_the_stream_and_reports_no_intensity(cp):
    data, cal = ssb_scan(scan=(12, 10), seed=6)
    ref = stemedge.ssb(data, cal)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        dev = cp.asarray(data)
    got = stemedge.ssb(dev, cal, stream=stream)
    stream.synchronize()
    np.testing.assert_allclose(got.wave.get(), ref.wave, rtol=0, atol=2e-5 * np.abs(ref.wave).max())
    dark = stemedge.ssb(cp.zeros_like(dev), cal)
    assert bool(cp.isnan(dark.wave).all())
    with pytest.raises(TypeError, match="C-contiguous"):
        stemedge.ssb(dev[:, :, ::2], cal)
    with pytest.raises(TypeError, match="float64"):
        stemedge.ssb(dev.astype(cp.float64), cal)
