"""Tests for stemedge.dpc on synthetic fields with known answers (no simulator needed).

The reference object is a periodic phase φ made of Gaussian "atoms" (0.05 rad, σ 0.35 Å) on a
0.25 Å grid, band-limited by zeroing its Nyquist bins so that its FFT gradient is exactly
invertible; ⟨k⟩ = ∇φ/2π is computed spectrally (exact).
"""

from __future__ import annotations

import functools
import itertools
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stemedge.calibration import Calibration, rotation_matrix
from stemedge.dpc import (
    DPCResult,
    RotationResult,
    curl,
    deflection,
    descan_correct,
    descan_fit,
    divergence,
    dpc,
    find_rotation,
    idpc,
    to_scan_frame,
)

STEP = 0.25  # Å
SHAPE = (96, 80)


# --- synthetic objects --------------------------------------------------------------------------


def atom_phase(shape, step, centres_A, amp=0.05, sigma=0.35):
    """Periodic φ of Gaussian atoms and its exact ⟨k⟩ = ∇φ/2π [Å⁻¹] (last axis (y, x))."""
    ny, nx = shape
    sy, sx = (step, step) if np.isscalar(step) else step
    y = np.arange(ny)[:, None] * sy
    x = np.arange(nx)[None, :] * sx
    ly, lx = ny * sy, nx * sx
    phi = np.zeros(shape)
    for cy, cx in centres_A:
        ddy = (y - cy + ly / 2) % ly - ly / 2  # minimum-image distances: periodic atoms
        ddx = (x - cx + lx / 2) % lx - lx / 2
        phi += amp * np.exp(-(ddy**2 + ddx**2) / (2 * sigma**2))
    spec = np.fft.fft2(phi)
    if ny % 2 == 0:
        spec[ny // 2, :] = 0
    if nx % 2 == 0:
        spec[:, nx // 2] = 0
    phi = np.fft.ifft2(spec).real
    qy = np.fft.fftfreq(ny, sy)[:, None]
    qx = np.fft.fftfreq(nx, sx)[None, :]
    # F[∂φ/∂y] = 2πi·Q_y·Φ and ⟨k⟩ = ∇φ/2π  =>  F[⟨k⟩_y] = i·Q_y·Φ
    k = np.stack([np.fft.ifft2(1j * qy * spec).real, np.fft.ifft2(1j * qx * spec).real], axis=-1)
    return phi, k


@functools.cache
def reference_object():
    """12 atoms on grid points of the 96×80 grid (so 'atom centre' is a pixel)."""
    rng = np.random.default_rng(7)
    pix = np.stack([rng.integers(4, SHAPE[0] - 4, 12), rng.integers(4, SHAPE[1] - 4, 12)], 1)
    phi, k = atom_phase(SHAPE, STEP, pix * STEP)
    return phi, k, pix


@functools.cache
def discrete_gradient_object():
    """A field that is exactly the central-difference gradient of a periodic φ (zero discrete
    curl in the interior), to test the rotation search without discretisation bias."""
    phi, _, _ = reference_object()
    gy = (np.roll(phi, -1, 0) - np.roll(phi, 1, 0)) / (2 * STEP) / (2 * np.pi)
    gx = (np.roll(phi, -1, 1) - np.roll(phi, 1, 1)) / (2 * STEP) / (2 * np.pi)
    return np.stack([gy, gx], axis=-1)


def ang_dist(a, b, period=360.0):
    d = (a - b) % period
    return min(d, period - d)


def rel_rms(a, b):
    return np.sqrt(np.mean((a - b) ** 2)) / np.std(b)


def corr(a, b):
    return np.corrcoef(np.ravel(a), np.ravel(b))[0, 1]


# --- idpc -------------------------------------------------------------------------------------


def test_idpc_recovers_periodic_phase_exactly():
    phi, k, _ = reference_object()
    rec = idpc(k, STEP, pad=1)
    assert rec.shape == phi.shape
    assert abs(rec.mean()) < 1e-15
    assert rel_rms(rec, phi - phi.mean()) <= 1e-6


def test_idpc_factor_on_a_sinusoid():
    # φ = a·sin(2π Q0 x) => ⟨k⟩_x = a·Q0·cos(2π Q0 x): iDPC must return a·sin, with no stray 2π.
    ny, nx, a, m = 16, 64, 0.3, 5
    q0 = m / (nx * STEP)
    x = np.arange(nx) * STEP
    field = np.zeros((ny, nx, 2))
    field[..., 1] = a * q0 * np.cos(2 * np.pi * q0 * x)
    rec = idpc(field, STEP, pad=1)
    np.testing.assert_allclose(
        rec, np.broadcast_to(a * np.sin(2 * np.pi * q0 * x), rec.shape), atol=1e-13
    )
    # Same along y with a non-square step.
    field = np.zeros((64, 12, 2))
    y = np.arange(64) * 0.4
    q0 = 3 / (64 * 0.4)
    field[..., 0] = (a * q0 * np.cos(2 * np.pi * q0 * y))[:, None]
    rec = idpc(field, (0.4, 0.1), pad=1)
    np.testing.assert_allclose(rec[:, 0], a * np.sin(2 * np.pi * q0 * y), atol=1e-13)


@pytest.mark.parametrize("shape", [(30, 25), (31, 26)])
@pytest.mark.parametrize("pad", [1, 2, 3])
def test_idpc_matches_the_full_spectrum_formula(shape, pad):
    # φ = Re ifft2(−i(Q·K̂)/|Q|²) on the zero-padded grid, written out with fft2.
    rng = np.random.default_rng(3)
    f = rng.normal(size=(*shape, 2))
    step = (0.3, 0.2)
    ny, nx = shape
    z = np.zeros((pad * ny, pad * nx, 2))
    z[:ny, :nx] = f
    qy = np.fft.fftfreq(pad * ny, step[0])[:, None]
    qx = np.fft.fftfreq(pad * nx, step[1])[None, :]
    q2 = qy**2 + qx**2
    q2[0, 0] = 1
    spec = -1j * (qy * np.fft.fft2(z[..., 0]) + qx * np.fft.fft2(z[..., 1])) / q2
    spec[0, 0] = 0
    ref = np.fft.ifft2(spec).real[:ny, :nx]
    np.testing.assert_allclose(idpc(f, step, pad=pad), ref - ref.mean(), atol=1e-12)


def test_idpc_padding_on_a_non_periodic_window():
    rng = np.random.default_rng(0)
    big = (192, 160)
    centres = rng.uniform(0, 1, (80, 2)) * np.array(big) * STEP
    phi, k = atom_phase(big, STEP, centres)
    win = (slice(40, 136), slice(30, 110))  # 96×80, cutting through atoms at the edges
    truth, field = phi[win] - phi[win].mean(), k[win]
    c_none = corr(idpc(field, STEP, pad=1), truth)
    c_zero = corr(idpc(field, STEP, pad=2, pad_mode="zero"), truth)
    c_mirror = corr(idpc(field, STEP, pad=2, pad_mode="mirror"), truth)
    assert c_zero >= 0.99
    assert c_mirror >= 0.999
    assert c_none < c_zero < c_mirror  # wrap-around hurts; the mirrored field is a gradient


def test_idpc_mirror_is_exact_for_an_even_periodic_phase():
    # φ even about the half-sample points is exactly what the mirror extension assumes.
    phi, _, _ = reference_object()
    half = phi[:48, :40]
    full = np.block([[half, half[:, ::-1]], [half[::-1, :], half[::-1, ::-1]]])
    spec = np.fft.fft2(full)
    spec[48, :] = 0
    spec[:, 40] = 0
    full = np.fft.ifft2(spec).real
    qy = np.fft.fftfreq(96, STEP)[:, None]
    qx = np.fft.fftfreq(80, STEP)[None, :]
    k = np.stack([np.fft.ifft2(1j * qy * spec).real, np.fft.ifft2(1j * qx * spec).real], -1)
    rec = idpc(k[:48, :40], STEP, pad=2, pad_mode="mirror")
    truth = full[:48, :40] - full[:48, :40].mean()
    assert rel_rms(rec, truth) <= 1e-10


def test_idpc_eps_is_a_tikhonov_low_q_filter():
    phi, k, _ = reference_object()
    qy = np.fft.fftfreq(SHAPE[0], STEP)[:, None]
    qx = np.fft.fftfreq(SHAPE[1], STEP)[None, :]
    q2 = qy**2 + qx**2
    true_spec = np.fft.fft2(phi - phi.mean())
    low = (q2 > 0) & (q2 < 0.3**2)
    powers = []
    for eps in (0.0, 0.01, 0.1, 1.0):
        spec = np.fft.fft2(idpc(k, STEP, eps=eps, pad=1))
        # exact transfer |Q|²/(|Q|² + ε) at every Q
        denom = q2 + eps
        denom[0, 0] = 1.0  # both spectra are 0 at Q = 0 (mean removed)
        np.testing.assert_allclose(spec, true_spec * q2 / denom, atol=1e-12)
        powers.append(np.sum(np.abs(spec[low]) ** 2))
    assert all(a > b for a, b in itertools.pairwise(powers))
    assert powers[-1] < 0.2 * powers[0]


# --- derivatives ------------------------------------------------------------------------------


def test_div_curl_physical_units_on_a_linear_field():
    # E = (a·y + b·x, c·y + d·x) in physical coordinates: div = a + d, curl = b − c
    dy, dx = 0.4, 0.15
    yy, xx = np.meshgrid(np.arange(7) * dy, np.arange(9) * dx, indexing="ij")
    a, b, c, d = 0.3, -1.2, 0.7, 2.0
    field = np.stack([a * yy + b * xx, c * yy + d * xx], axis=-1)
    np.testing.assert_allclose(divergence(field, (dy, dx)), a + d, atol=1e-12)
    np.testing.assert_allclose(curl(field, (dy, dx)), b - c, atol=1e-12)
    # a scalar step means the same step along y and x
    np.testing.assert_allclose(divergence(field * [1, dy / dx], dy), a + d, atol=1e-12)


def test_gradient_field_is_curl_free_and_sinks_at_atoms():
    _, k, pix = reference_object()
    d = divergence(k, STEP)
    c = curl(k, STEP)
    # central differences of an exact gradient leave an O(Δ²) curl, small against |div| (5.6 %
    # here, for atoms only σ = 1.4 px wide)
    assert np.sqrt(np.mean(c[1:-1, 1:-1] ** 2)) < 0.08 * np.sqrt(np.mean(d**2))
    # the curl of a discrete gradient vanishes in the interior to round-off
    cd = curl(discrete_gradient_object(), STEP)
    assert np.abs(cd[1:-1, 1:-1]).max() < 1e-12 * np.abs(d).max()
    # atoms (positive phase) are sinks of ⟨k⟩
    at_atoms = d[pix[:, 0], pix[:, 1]]
    assert np.all(at_atoms < 0)
    assert np.all(at_atoms < -0.5 * np.abs(d).max())


# --- frames and units -------------------------------------------------------------------------


def test_to_scan_frame_matrices():
    ey, ex = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    # θ = 90°: T = [[0, 1], [−1, 0]]; +θ is clockwise on screen (y down): right → down
    np.testing.assert_allclose(to_scan_frame(ey, 90), [0.0, -1.0], atol=1e-15)
    np.testing.assert_allclose(to_scan_frame(ex, 90), [1.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(to_scan_frame(ey, 0, flip_y=True), [-1.0, 0.0])
    np.testing.assert_allclose(to_scan_frame(ex, 90, flip_y=True), [1.0, 0.0], atol=1e-15)
    rng = np.random.default_rng(0)
    s = rng.normal(size=(3, 4, 5, 2))
    for theta, flip in [(37.0, False), (251.0, True)]:
        t = rotation_matrix(theta, flip)
        np.testing.assert_allclose(
            to_scan_frame(s, theta, flip), np.einsum("ij,...j->...i", t, s), atol=1e-14
        )
    out32 = to_scan_frame(s.astype(np.float32), 30.0)
    assert out32.dtype == np.float32
    assert to_scan_frame(np.ones((2, 2), dtype=np.int16)).dtype == np.float64


def test_deflection_units():
    cal = Calibration(det_mrad_per_px=0.37, voltage_kV=200.0, rotation_deg=90.0, flip_y=True)
    rng = np.random.default_rng(1)
    s = rng.normal(size=(6, 5, 2))
    rot = to_scan_frame(s, 90.0, True)
    np.testing.assert_allclose(deflection(s, cal, "px"), rot)
    np.testing.assert_allclose(deflection(s, cal, "mrad"), rot * 0.37)
    np.testing.assert_allclose(deflection(s, cal), rot * 0.37)
    np.testing.assert_allclose(deflection(s, cal, "rad"), rot * 0.37e-3)
    # λ(200 kV) = 2.5079 pm (PHYSICS.md §1), so k_per_px = 0.37e-3 / 0.025079 Å⁻¹
    np.testing.assert_allclose(deflection(s, cal, "1/A"), rot * 0.37e-3 / 0.025079, rtol=2e-5)
    np.testing.assert_allclose(deflection(s, cal, "1/A"), rot * cal.k_per_px, rtol=1e-14)


# --- descan -----------------------------------------------------------------------------------


def plane(shape, coef):
    iy, ix = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    coef = np.asarray(coef, dtype=float)  # (3, 2): a, b, c per component
    return coef[0] + iy[..., None] * coef[1] + ix[..., None] * coef[2]


COEF = [[1.5, -0.7], [0.02, 0.013], [-0.031, 0.008]]


def test_descan_plane_recovered():
    p = plane(SHAPE, COEF)
    np.testing.assert_allclose(descan_fit(p), p, atol=1e-10)
    np.testing.assert_allclose(descan_correct(p), 0.0, atol=1e-10)
    # a plane fit commutes with the rotation (both are linear)
    _, k, _ = reference_object()
    s = k * 300 + p
    np.testing.assert_allclose(
        to_scan_frame(descan_correct(s), 37.0, True),
        descan_correct(to_scan_frame(s, 37.0, True)),
        atol=1e-10,
    )


def test_descan_mean():
    _, k, _ = reference_object()
    s = k * 300 + plane(SHAPE, COEF)
    fit = descan_fit(s, method="mean")
    np.testing.assert_allclose(fit, np.broadcast_to(s.mean(axis=(0, 1)), s.shape), atol=1e-12)
    np.testing.assert_allclose(descan_correct(s, "mean").mean(axis=(0, 1)), 0.0, atol=1e-12)


def test_descan_mask_uses_only_masked_points():
    _, k, _ = reference_object()
    field = 300 * k
    vacuum = np.zeros(SHAPE, dtype=bool)
    vacuum[:, :12] = True
    vacuum[:20, :] = True
    field[vacuum] = 0.0  # a vacuum region: only descan there
    p = plane(SHAPE, COEF)
    s = field + p
    np.testing.assert_allclose(descan_fit(s, mask=vacuum), p, atol=1e-10)
    np.testing.assert_allclose(descan_correct(s, mask=vacuum), field, atol=1e-10)
    # whatever happens outside the mask (even NaN) does not change the fit
    s2 = s.copy()
    s2[~vacuum] = 1e6
    s2[50, 50] = np.nan
    np.testing.assert_allclose(descan_fit(s2, mask=vacuum), p, atol=1e-10)
    # without the mask the specimen field biases the plane
    assert np.abs(descan_fit(s) - p).max() > 1e-3
    # mean over the mask only
    np.testing.assert_allclose(
        descan_fit(s, "mean", mask=vacuum)[0, 0], s[vacuum].mean(axis=0), atol=1e-12
    )


def test_descan_reference_subtraction_is_exact():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(10, 12, 2))
    _, k, _ = reference_object()
    field = k[:10, :12]
    np.testing.assert_array_equal(descan_correct(field + ref, reference=ref), field + ref - ref)
    with pytest.raises(ValueError, match="same shape"):
        descan_correct(field, reference=ref[:9])
    with pytest.raises(ValueError, match="not both"):
        descan_correct(field, reference=ref, mask=np.ones((10, 12), bool))


# --- rotation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("theta", [0, 37, 90, 143, 180, 251, 300])
def test_find_rotation_recovers_angle_and_flip(theta, flip):
    _, k, _ = reference_object()
    s = k @ rotation_matrix(theta, flip)  # s = Tᵀ·E for every position
    res = find_rotation(s)
    assert isinstance(res, RotationResult)
    assert res.flip_y is flip
    assert 0.0 <= res.rotation_deg < 360.0
    assert ang_dist(res.rotation_deg, theta) < 0.2  # includes the right 180° branch
    assert res.resolved_by == "divergence"
    assert res.divergence_sign < -0.5
    assert res.rms_curl < 0.1 * res.rms_div
    np.testing.assert_allclose(res.transform, rotation_matrix(theta, flip), atol=5e-3)
    # curl-free in the scan frame up to the O(Δ²) central-difference curl of the object itself
    e = to_scan_frame(s, res.rotation_deg, res.flip_y)
    assert np.abs(e - k).max() < 5e-3 * np.abs(k).max()
    # the grid answer is within half a step
    coarse = find_rotation(s, refine=False, step_deg=1.0)
    assert ang_dist(coarse.rotation_deg, theta) <= 0.5 + 1e-9
    assert coarse.flip_y is flip


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("theta", [12.5, 200.25])
def test_find_rotation_is_exact_on_a_discrete_gradient(theta, flip):
    e = discrete_gradient_object()
    res = find_rotation(e @ rotation_matrix(theta, flip))
    assert res.flip_y is flip
    assert ang_dist(res.rotation_deg, theta) < 1e-6
    assert res.rms_curl < 1e-10 * res.rms_div


@settings(max_examples=40, deadline=None)
@given(theta=st.floats(0.0, 359.999), flip=st.booleans())
def test_find_rotation_any_angle(theta, flip):
    e = discrete_gradient_object()
    res = find_rotation(e @ rotation_matrix(theta, flip))
    assert res.flip_y is flip
    assert ang_dist(res.rotation_deg, theta) < 1e-6
    none = find_rotation(e @ rotation_matrix(theta, flip), assume="none")
    assert 0.0 <= none.rotation_deg < 180.0
    assert ang_dist(none.rotation_deg, theta, 180.0) < 1e-6
    assert none.resolved_by == "ambiguous"


def test_find_rotation_curve_matches_brute_force():
    _, k, _ = reference_object()
    s = k @ rotation_matrix(63.0, True)
    res = find_rotation(s, step_deg=7.5)
    assert res.angles_deg.shape == (48,) and res.curve.shape == (2, 48)
    for i in (0, 5, 17, 30):
        for row, flip in enumerate((False, True)):
            c = curl(to_scan_frame(s, res.angles_deg[i], flip))[1:-1, 1:-1]
            assert res.curve[row, i] == pytest.approx(np.sqrt(np.mean(c**2)), rel=1e-9)
    # the curve has period 180° and its flip=True minimum is the lower one
    np.testing.assert_allclose(res.curve[:, :24], res.curve[:, 24:], rtol=1e-9)
    assert res.curve[1].min() < 0.2 * res.curve[0].min()


def test_find_rotation_options():
    _, k, _ = reference_object()
    s = k @ rotation_matrix(251.0, True)
    forced = find_rotation(s, flip=False)
    assert forced.flip_y is False
    assert forced.rms_curl > 5 * find_rotation(s).rms_curl
    none = find_rotation(s, assume="none")
    assert none.resolved_by == "ambiguous"
    assert ang_dist(none.rotation_deg, 71.0) < 0.2
    # non-square scan pixels: the derivatives must use the physical step
    centres = np.random.default_rng(3).uniform(0, 1, (10, 2)) * [16.0, 10.8]
    phi_k = atom_phase((64, 72), (0.25, 0.15), centres)[1]
    e = phi_k @ rotation_matrix(30.0, False)
    good = find_rotation(e, step_A=(0.25, 0.15))
    assert ang_dist(good.rotation_deg, 30.0) < 0.2 and good.flip_y is False
    bad = find_rotation(e)  # treating the pixels as square biases the angle and leaves curl
    assert ang_dist(bad.rotation_deg, 30.0) > 0.3
    assert bad.rms_curl / bad.rms_div > 2 * good.rms_curl / good.rms_div
    # NaN positions are skipped
    s_nan = s.copy()
    s_nan[10, 10] = np.nan
    s_nan[40, 3] = np.nan
    res = find_rotation(s_nan)
    assert ang_dist(res.rotation_deg, 251.0) < 0.2 and res.flip_y is True
    # applying the result to a calibration
    cal = res.apply_to(Calibration())
    assert cal.flip_y is True and cal.rotation_deg == res.rotation_deg


def _frame_com(frame):
    yy, xx = np.indices(frame.shape)
    return np.array([np.sum(yy * frame), np.sum(xx * frame)]) / frame.sum()


@pytest.mark.parametrize(
    ("op", "matrix", "expected"),
    [
        # np.rot90(frame, 1): a pattern shifted by (dy, dx) appears shifted by (−dx, dy)
        (lambda f: np.rot90(f, 1), [[0, -1], [1, 0]], (90.0, False)),
        # mirrored y axis: (dy, dx) → (−dy, dx)
        (lambda f: f[::-1, :], [[-1, 0], [0, 1]], (0.0, True)),
        # transpose: (dy, dx) → (dx, dy)
        (lambda f: f.T, [[0, 1], [1, 0]], (90.0, True)),
    ],
    ids=["rot90", "flip_y", "transpose"],
)
def test_detector_operations_match_libertem(op, matrix, expected):
    # Measure what the detector operation does to a CoM shift on an actual frame (PHYSICS §5.1.6).
    n, c = 33, 16  # odd: the centre pixel is fixed by every operation
    yy, xx = np.indices((n, n))
    measured = np.zeros((2, 2))
    for j, d in enumerate(([2.0, 0.0], [0.0, 2.0])):
        blob = np.exp(-((yy - c - d[0]) ** 2 + (xx - c - d[1]) ** 2) / (2 * 1.5**2))
        measured[:, j] = (_frame_com(op(blob)) - c) / 2.0
    np.testing.assert_allclose(measured, matrix, atol=1e-9)
    # Scan-frame truth E with T = identity; the modified detector sees s = M·E.
    _, k, _ = reference_object()
    s = k @ measured.T
    res = find_rotation(s)
    assert res.flip_y is expected[1]
    assert ang_dist(res.rotation_deg, expected[0]) < 0.2
    assert round(find_rotation(s, refine=False).rotation_deg) % 360 == expected[0]


def test_find_rotation_is_fast():
    rng = np.random.default_rng(5)
    centres = rng.uniform(0, 64, (300, 2))
    _, k = atom_phase((256, 256), STEP, centres)
    s = k @ rotation_matrix(123.0, True)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        res = find_rotation(s)
        best = min(best, time.perf_counter() - t0)
    assert ang_dist(res.rotation_deg, 123.0) < 0.2 and res.flip_y is True
    assert best < 0.25


# --- pipeline ---------------------------------------------------------------------------------


def test_dpc_pipeline():
    phi, k, pix = reference_object()
    cal = Calibration(
        scan_step_A=STEP, det_mrad_per_px=0.5, voltage_kV=300.0, rotation_deg=143.0, flip_y=True
    )
    s = (k / cal.k_per_px) @ cal.transform  # detector-frame shifts [px]
    ref = plane(SHAPE, COEF)
    res = dpc(s + ref, cal, descan=ref, pad=1)
    assert isinstance(res, DPCResult)
    np.testing.assert_allclose(res.field_kinv, k, atol=1e-12)
    np.testing.assert_allclose(res.field_mrad, k / cal.k_per_px * 0.5, atol=1e-9)
    np.testing.assert_allclose(res.divergence, divergence(k, STEP), atol=1e-9)
    np.testing.assert_allclose(res.curl, curl(k, STEP), atol=1e-9)
    assert rel_rms(res.phase, phi - phi.mean()) <= 1e-6
    assert np.all(res.divergence[pix[:, 0], pix[:, 1]] < 0)
    assert res.calibration is cal
    # default padding and the string descan options run the same chain
    res2 = dpc(s, cal, descan="mean")
    np.testing.assert_allclose(res2.shifts_px.mean(axis=(0, 1)), 0.0, atol=1e-10)
    assert corr(res2.phase, phi) > 0.99


# --- argument checks --------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    field = np.zeros((8, 9, 2))
    cal = Calibration()
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\)"):
        to_scan_frame(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\(scan_y, scan_x, 2\)"):
        divergence(np.zeros(10))
    with pytest.raises(ValueError, match=r"\(scan_y, scan_x, 2\)"):
        idpc(np.zeros((8, 9, 3)))
    with pytest.raises(ValueError, match=r"\(scan_y, scan_x, 2\)"):
        find_rotation(np.zeros((8, 2)))
    with pytest.raises(ValueError, match=r"\(scan_y, scan_x, 2\)"):
        descan_fit(np.zeros((2,)))
    with pytest.raises(ValueError, match="unit must be one of"):
        deflection(field, cal, unit="nm")
    with pytest.raises(TypeError, match=r"calibration must be a stemedge\.Calibration"):
        deflection(field, {"det_mrad_per_px": 1.0})
    with pytest.raises(ValueError, match="pad_mode must be one of"):
        idpc(field, pad_mode="reflect")
    with pytest.raises(ValueError, match="pad must be an integer"):
        idpc(field, pad=0)
    with pytest.raises(ValueError, match="pass pad=2"):
        idpc(field, pad=3, pad_mode="mirror")
    with pytest.raises(ValueError, match="eps must be"):
        idpc(field, eps=-1.0)
    with pytest.raises(ValueError, match="step_A must be"):
        curl(field, step_A=(0.2, -1.0))
    with pytest.raises(TypeError, match="real-valued numeric"):
        idpc(field.astype(complex))
    with pytest.raises(ValueError, match="method must be one of"):
        descan_fit(field, method="parabola")
    with pytest.raises(ValueError, match="mask must have the scan shape"):
        descan_fit(field, mask=np.ones((9, 8), bool))
    with pytest.raises(ValueError, match="at least 3 fitted positions"):
        descan_fit(field, mask=np.eye(8, 9, dtype=bool))
    with pytest.raises(ValueError, match="assume must be one of"):
        find_rotation(field, assume="holes")
    with pytest.raises(TypeError, match="flip must be None"):
        find_rotation(field, flip="yes")
    with pytest.raises(ValueError, match="step_deg must be"):
        find_rotation(field, step_deg=0)
    with pytest.raises(ValueError, match="at least 3 scan positions"):
        find_rotation(np.zeros((2, 9, 2)))
    with pytest.raises(ValueError, match="NaN"):
        idpc(np.full((4, 4, 2), np.nan))
    with pytest.raises(ValueError, match="descan must be one of"):
        dpc(field, cal, descan="median")
