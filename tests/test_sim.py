"""Tests of the 4D-STEM simulators against analytic results (PHYSICS.md §2.2, §5.1, §5.2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stemedge.sim.disks as disks_mod
from stemedge.calibration import interaction_constant, rotation_matrix, wavelength_A
from stemedge.sim import (
    DiskScan,
    Sample,
    SimulatedScan,
    gaussian_atoms,
    lattice,
    phase_from_potential,
    phase_ramp,
    shifted_disks,
    simulate_4dstem,
    sinusoid,
    vacuum_edge,
)
from stemedge.sim.disks import default_shift_field


# --- float64 numpy references -------------------------------------------------------------------
def com_px(data, origin=None):
    """Reference first moment ``Σ k·I / Σ I − origin`` [px], float64, shape (..., 2)."""
    i = np.asarray(data, dtype=np.float64)
    dy, dx = i.shape[-2:]
    oy, ox = (dy // 2, dx // 2) if origin is None else origin
    s = i.sum(axis=(-2, -1))
    cy = (i.sum(axis=-1) * np.arange(dy)).sum(axis=-1) / s - oy
    cx = (i.sum(axis=-2) * np.arange(dx)).sum(axis=-1) / s - ox
    return np.stack([cy, cx], axis=-1)


def grad_phase(phase, pixel_A):
    """Spectral ∇φ [rad/Å] on the periodic grid, (ny, nx, 2)."""
    f = np.fft.fft2(phase)
    qy = np.fft.fftfreq(phase.shape[0], pixel_A)[:, None]
    qx = np.fft.fftfreq(phase.shape[1], pixel_A)[None, :]
    gy = np.fft.ifft2(2j * np.pi * qy * f).real
    gx = np.fft.ifft2(2j * np.pi * qx * f).real
    return np.stack([gy, gx], axis=-1)


def probe_weighted(field, probe):
    """``Σ_r |P(r − R)|² field(r)`` for a probe centred at (D//2, D//2) on the same grid."""
    w = np.fft.fft2(np.fft.ifftshift(np.abs(probe) ** 2))
    return np.stack(
        [np.fft.ifft2(np.conj(w) * np.fft.fft2(field[..., m])).real for m in range(2)], axis=-1
    )


def small_lattice(n=32, pixel=0.26, **kw):
    return lattice((n, n), pixel, dopant_fraction=0.2, seed=3, **kw)


# --- simulate_4dstem: normalisation and noise ---------------------------------------------------
@pytest.mark.parametrize("aberrations", [None, {"C10": -60.0, "C12": 20.0, "phi12": 0.3}])
def test_noise_free_frames_sum_to_one(aberrations):
    s = small_lattice(phase_rad=0.5)  # strong object: t = exp(iφ) is not linearised
    r = simulate_4dstem(s.phase, det_shape=(32, 32), aberrations=aberrations)
    assert isinstance(r, SimulatedScan)
    assert r.data.dtype == np.float32 and r.data.shape == (32, 32, 32, 32)
    np.testing.assert_allclose(r.data.sum(axis=(2, 3), dtype=np.float64), 1.0, atol=2e-6)
    assert r.data.min() >= 0
    np.testing.assert_allclose(np.sum(np.abs(r.probe) ** 2), 1.0, rtol=1e-12)
    if aberrations is None:
        assert np.unravel_index(np.argmax(np.abs(r.probe)), (32, 32)) == (16, 16)


def test_calibration_and_ground_truth():
    phase = small_lattice(n=64, pixel=0.13).phase
    r = simulate_4dstem(phase, scan_step_A=0.26, oversample=2, det_shape=(48, 48), voltage_kV=300)
    cal = r.calibration
    assert r.data.shape == (32, 32, 48, 48)
    assert cal.scan_step_A == (0.26, 0.26)
    assert cal.det_origin_px == (24.0, 24.0)
    lam = wavelength_A(300)
    assert cal.det_mrad_per_px == pytest.approx(1000 * lam / (48 * 0.13), rel=1e-12)
    np.testing.assert_array_equal(r.phase, phase[::2, ::2])
    np.testing.assert_array_equal(r.object_phase, phase)


def test_poisson_dose_and_dtype():
    s = small_lattice(n=16)
    ref = simulate_4dstem(s.phase, det_shape=(32, 32))
    for dtype in (np.uint16, np.uint32, np.float32):
        r = simulate_4dstem(s.phase, det_shape=(32, 32), dose=2000.0, dtype=dtype, seed=1)
        assert r.data.dtype == dtype and r.dose == 2000.0
        sums = r.data.sum(axis=(2, 3), dtype=np.float64)
        # Frame sums are Poisson(2000): the mean of 256 of them lies within ±5σ/√256 = ±14.
        assert abs(sums.mean() - 2000.0) < 14
        assert 0.5 < sums.var() / 2000.0 < 1.6
        np.testing.assert_array_equal(r.data, np.round(r.data))
        # Pixel-wise mean over the scan follows dose·I.
        mean = r.data.mean(axis=(0, 1), dtype=np.float64)
        expect = 2000.0 * ref.data.mean(axis=(0, 1), dtype=np.float64)
        assert np.abs(mean - expect).max() < 6 * np.sqrt(expect.max() / 256)
    same = simulate_4dstem(s.phase, det_shape=(32, 32), dose=2000.0, dtype=np.uint16, seed=1)
    np.testing.assert_array_equal(same.data, r.data.astype(np.uint16))


def test_integer_overflow_refused_and_dose_required():
    s = small_lattice(n=16)
    with pytest.raises(ValueError, match="uint16"):
        simulate_4dstem(s.phase, det_shape=(32, 32), dose=1e5, dtype=np.uint8)
    with pytest.raises(ValueError, match="dose"):
        simulate_4dstem(s.phase, det_shape=(32, 32), dtype=np.uint16)
    with pytest.raises(TypeError, match="dtype"):
        simulate_4dstem(s.phase, det_shape=(32, 32), dose=10.0, dtype=np.int16)
    with pytest.raises(ValueError, match="dose"):
        simulate_4dstem(s.phase, det_shape=(32, 32), dose=-1.0)


# --- simulate_4dstem: physics -------------------------------------------------------------------
@pytest.mark.parametrize(("cycles", "oversample"), [((0, 2), 1), ((-3, 1), 1), ((2, -1), 2)])
def test_phase_ramp_shifts_pattern_by_integer_pixels(cycles, oversample):
    n = 32 * oversample
    ph, g = phase_ramp((n, n), 0.26 / oversample, cycles)
    r = simulate_4dstem(ph, oversample=oversample, det_shape=(n, n), dtype=np.float64)
    np.testing.assert_allclose(com_px(r.data), np.broadcast_to(cycles, (32, 32, 2)), atol=1e-5)
    # g / Δk is the same shift in Å⁻¹ units.
    dk = r.calibration.k_per_px
    np.testing.assert_allclose(np.array(g) / dk, cycles, rtol=1e-4)


def test_com_equals_probe_weighted_phase_gradient():
    n, dx = 64, 0.2
    s = lattice((n, n), dx, phase_rad=0.05, dopant_fraction=0.2, seed=1)
    r = simulate_4dstem(
        s.phase, scan_step_A=dx, det_shape=(n, n), voltage_kV=300, convergence_mrad=20
    )
    com_k = com_px(r.data) / (n * dx)  # Δk = 1/(D·dx) [Å⁻¹/px]
    ref = probe_weighted(grad_phase(s.phase, dx), r.probe) / (2 * np.pi)
    scale = np.abs(ref).max()
    assert scale > 1e-2
    assert np.abs(com_k - ref).max() < 1e-5 * scale + 1e-8


def test_com_exact_for_strong_object_with_aberrations():
    n, dx = 48, 0.2
    s = lattice((n, n), dx, phase_rad=0.6, seed=2)
    r = simulate_4dstem(
        s.phase,
        scan_step_A=dx,
        det_shape=(n, n),
        voltage_kV=300,
        convergence_mrad=20,
        aberrations={"C10": -40.0, "C30": 1e4},
    )
    com_k = com_px(r.data) / (n * dx)
    ref = probe_weighted(grad_phase(s.phase, dx), r.probe) / (2 * np.pi)
    assert np.abs(com_k - ref).max() < 1e-4 * np.abs(ref).max()


def test_com_points_towards_atoms():
    n, dx = 48, 0.2
    s = lattice((n, n), dx, a_A=4.8, phase_rad=0.05, seed=0)
    r = simulate_4dstem(s.phase, scan_step_A=dx, det_shape=(n, n), voltage_kV=300)
    com = com_px(r.data)
    div = (np.roll(com[..., 0], -1, 0) - np.roll(com[..., 0], 1, 0)) + (
        np.roll(com[..., 1], -1, 1) - np.roll(com[..., 1], 1, 1)
    )
    sites = np.round(s.positions_A / dx).astype(int) % n
    assert np.all(div[sites[:, 0], sites[:, 1]] < 0)
    # One pixel step to the right of an atom (+x), the CoM points back (−x), and vice versa.
    y, x = sites[0]
    assert com[y, (x + 2) % n, 1] < 0 < com[y, (x - 2) % n, 1]
    assert com[(y + 2) % n, x, 0] < 0 < com[(y - 2) % n, x, 0]


@pytest.mark.parametrize(
    ("theta", "flip", "tol"),
    [
        (90, False, 1e-5),
        (0, True, 1e-5),
        (90, True, 1e-5),
        (180, False, 1e-5),
        (270, True, 1e-5),
        (30, False, 0.03),
        (137, True, 0.03),
    ],
)
def test_rotation_maps_detector_shift_to_scan_frame(theta, flip, tol):
    t = rotation_matrix(theta, flip)
    # Phase ramp: a uniform scan-frame shift (1, 2), unequal to catch transpositions.
    ph, _ = phase_ramp((32, 32), 0.26, (1, 2))
    r = simulate_4dstem(ph, det_shape=(32, 32), rotation_deg=theta, flip_y=flip, dtype=np.float64)
    assert r.calibration.rotation_deg == theta and r.calibration.flip_y == flip
    np.testing.assert_allclose(r.calibration.transform, t)
    d = com_px(r.data)
    np.testing.assert_allclose(d @ t.T, np.broadcast_to([1.0, 2.0], d.shape), atol=tol)
    # A general object: T·(detector CoM) equals the unrotated scan-frame CoM at every position.
    s = small_lattice(phase_rad=0.3)
    ref = com_px(simulate_4dstem(s.phase, det_shape=(32, 32)).data)
    rot = simulate_4dstem(s.phase, det_shape=(32, 32), rotation_deg=theta, flip_y=flip)
    got = com_px(rot.data) @ t.T
    err = np.abs(got - ref).max()
    assert err < tol


def test_rot90_direction_explicit():
    """θ = 90°, no flip, is numpy's rot90 (counter-clockwise on screen) about (D//2, D//2)."""
    s = small_lattice(phase_rad=0.3)
    a = simulate_4dstem(s.phase, det_shape=(32, 32)).data
    b = simulate_4dstem(s.phase, det_shape=(32, 32), rotation_deg=90).data
    np.testing.assert_array_equal(b, np.roll(np.rot90(a, 1, axes=(2, 3)), 1, axis=2))
    f = simulate_4dstem(s.phase, det_shape=(32, 32), flip_y=True).data
    np.testing.assert_array_equal(f, np.roll(a[:, :, ::-1], 1, axis=2))


def test_non_right_angle_rotation_keeps_unit_sums():
    s = small_lattice()
    r = simulate_4dstem(s.phase, det_shape=(32, 32), rotation_deg=30)
    np.testing.assert_allclose(r.data.sum(axis=(2, 3), dtype=np.float64), 1.0, atol=2e-6)


def test_aberrations_change_probe_not_frame_sums():
    s = small_lattice()
    plain = simulate_4dstem(s.phase, det_shape=(32, 32))
    zero = simulate_4dstem(s.phase, det_shape=(32, 32), aberrations={"C10": 0.0})
    np.testing.assert_array_equal(zero.data, plain.data)
    np.testing.assert_array_equal(zero.probe, plain.probe)
    df = simulate_4dstem(s.phase, det_shape=(32, 32), aberrations={"C10": -80.0})
    assert np.abs(df.probe - plain.probe).max() > 0.1 * np.abs(plain.probe).max()
    assert np.abs(df.probe).max() < np.abs(plain.probe).max()  # defocus spreads the probe
    np.testing.assert_allclose(df.data.sum(axis=(2, 3), dtype=np.float64), 1.0, atol=2e-6)
    assert not np.allclose(df.data, plain.data, atol=1e-4)


def test_probe_spectrum_is_aperture_times_exp_minus_i_chi():
    d, dx, kv, alpha = 32, 0.26, 80.0, 25.0
    ab = {
        "C10": -50.0,
        "C12": 30.0,
        "phi12": 0.4,
        "C21": 500.0,
        "phi21": -1.0,
        "C23": 300.0,
        "phi23": 0.2,
        "C30": 2e4,
    }
    r = simulate_4dstem(np.zeros((8, 8)), det_shape=(d, d), aberrations=ab)
    lam = wavelength_A(kv)
    k = np.fft.fftfreq(d, dx)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    a, phi = lam * np.hypot(ky, kx), np.arctan2(ky, kx)
    chi = (2 * np.pi / lam) * (
        0.5 * a**2 * (ab["C10"] + ab["C12"] * np.cos(2 * (phi - ab["phi12"])))
        + a**3 / 3 * ab["C21"] * np.cos(phi - ab["phi21"])
        + a**3 / 3 * ab["C23"] * np.cos(3 * (phi - ab["phi23"]))
        + 0.25 * a**4 * ab["C30"]
    )
    ap = a <= alpha * 1e-3
    spec = np.fft.fft2(np.fft.ifftshift(r.probe))
    expect = ap * np.exp(-1j * chi)
    expect = expect / np.sqrt(np.sum(np.abs(expect) ** 2)) * np.sqrt(d * d)
    np.testing.assert_allclose(spec, expect, atol=1e-10)


def test_simulate_bad_arguments():
    ph = np.zeros((16, 16))
    with pytest.raises(ValueError, match="square"):
        simulate_4dstem(ph, det_shape=(32, 16))
    with pytest.raises(ValueError, match="divisible"):
        simulate_4dstem(np.zeros((15, 16)), oversample=2)
    with pytest.raises(ValueError, match="oversample"):
        simulate_4dstem(ph, oversample=0)
    with pytest.raises(ValueError, match="aberration"):
        simulate_4dstem(ph, aberrations={"defocus": 10.0})
    with pytest.raises(TypeError, match="aberrations"):
        simulate_4dstem(ph, aberrations=[("C10", 1.0)])
    with pytest.raises(ValueError, match="phase"):
        simulate_4dstem(np.zeros(16))
    with pytest.raises(ValueError, match="phase"):
        simulate_4dstem(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="scan_step_A"):
        simulate_4dstem(ph, scan_step_A=0)


def test_chunking_does_not_change_result():
    s = small_lattice()
    a = simulate_4dstem(s.phase, det_shape=(32, 32))
    b = simulate_4dstem(s.phase, det_shape=(32, 32), max_chunk_bytes=3 * 32 * 32 * 8)
    np.testing.assert_array_equal(a.data, b.data)


# --- samples ------------------------------------------------------------------------------------
def test_lattice_counts_dopants_vacancies():
    s = lattice((100, 100), 0.2, a_A=3.9, dopant_fraction=0.2, vacancy_fraction=0.12, seed=5)
    assert isinstance(s, Sample)
    assert s.a_A == pytest.approx((4.0, 4.0))  # 20 Å box / round(20 / 3.9) = 5 cells
    assert s.sites == 25
    assert len(s.positions_A) == 25 - 3 and len(s.kinds) == 22
    assert np.sum(s.kinds == "dopant") == 5 and np.sum(s.kinds == "host") == 17
    # Dopants carry the stronger phase, hosts the weaker one, vacancies none.
    idx = np.round(s.positions_A / 0.2).astype(int)
    peaks = s.phase[idx[:, 0], idx[:, 1]]
    np.testing.assert_allclose(peaks[s.kinds == "dopant"], 0.15, rtol=1e-6)
    np.testing.assert_allclose(peaks[s.kinds == "host"], 0.05, rtol=1e-6)
    all_sites = {(y, x) for y in range(10, 100, 20) for x in range(10, 100, 20)}
    vacant = sorted(all_sites - {tuple(p) for p in idx})
    assert len(vacant) == 3
    for y, x in vacant:
        assert s.phase[y, x] < 1e-6
    again = lattice((100, 100), 0.2, a_A=3.9, dopant_fraction=0.2, vacancy_fraction=0.12, seed=5)
    np.testing.assert_array_equal(again.phase, s.phase)


def test_lattice_tiles_box_and_wraps_smoothly():
    s = lattice((90, 60), 0.25, a_A=3.9, sigma_A=0.6)
    assert s.a_A == pytest.approx((22.5 / 6, 15.0 / 4))
    # Periodic: rolling the map by one cell reproduces it exactly.
    cell = (round(s.a_A[0] / 0.25), round(s.a_A[1] / 0.25))
    assert cell == (15, 15)
    np.testing.assert_allclose(np.roll(s.phase, cell, axis=(0, 1)), s.phase, atol=1e-12)
    # No seam: the jump across the box edge is no larger than inside.
    inner = np.abs(np.diff(s.phase, axis=1)).max()
    assert np.abs(s.phase[:, 0] - s.phase[:, -1]).max() <= inner + 1e-12


def test_gaussian_atoms_wrap_with_minimum_image():
    n, px = 64, 0.2
    centred = gaussian_atoms((n, n), px, [[6.4, 6.4]], 1.0)
    edge = gaussian_atoms((n, n), px, [[0.0, 12.6]], [1.0])  # 12.6 Å = L − 0.2 Å
    np.testing.assert_allclose(np.roll(centred, (-32, 31), axis=(0, 1)), edge, atol=1e-12)
    assert edge[0, 63] == pytest.approx(1.0) and edge[0, 0] > 0.8 and edge[63, 63] > 0.8
    with pytest.raises(ValueError, match="phase_rad"):
        gaussian_atoms((n, n), px, [[1.0, 1.0], [2.0, 2.0]], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="positions_A"):
        gaussian_atoms((n, n), px, [1.0, 1.0, 1.0], 1.0)


def test_vacuum_edge_has_zero_phase():
    n, px = 120, 0.2
    s = vacuum_edge((n, n), px, vacuum_fraction=0.4, dopant_fraction=0.1, seed=1)
    width = n * px
    assert np.all(s.positions_A[:, 1] < 0.6 * width)
    full = lattice((n, n), px, dopant_fraction=0.1, seed=1)
    assert len(s.positions_A) == np.sum(full.positions_A[:, 1] < 0.6 * width)
    x = np.arange(n) * px
    vac = (x >= 0.6 * width + 2.0) & (x <= width - 2.0)
    assert vac.sum() > 10
    assert np.abs(s.phase[:, vac]).max() < 1e-8
    assert s.phase[:, x < 0.6 * width].max() > 0.04
    with pytest.raises(ValueError, match="vacuum_fraction"):
        vacuum_edge((n, n), px, vacuum_fraction=1.5)


def test_sinusoid_and_ramp_are_periodic_single_frequencies():
    ph, q = sinusoid((32, 48), 0.25, 0.3, cycles=(2, 3))
    assert q == pytest.approx((2 / 8.0, 3 / 12.0))
    spec = np.abs(np.fft.fft2(ph))
    spec[2, 3] = spec[-2, -3] = 0
    assert spec.max() < 1e-9
    assert ph.max() == pytest.approx(0.3, rel=0.02)
    ramp, g = phase_ramp((32, 48), 0.25, cycles=(1, -2))
    assert g == pytest.approx((1 / 8.0, -2 / 12.0))
    assert ramp.min() >= -np.pi and ramp.max() < np.pi
    t = np.abs(np.fft.fft2(np.exp(1j * ramp)))
    assert t[1, -2] == pytest.approx(32 * 48)
    t[1, -2] = 0
    assert t.max() < 1e-8
    with pytest.raises(ValueError, match="cycles"):
        phase_ramp((32, 32), 0.25, cycles=(0.5, 1))


def test_phase_from_potential():
    assert interaction_constant(300.0) == pytest.approx(0.6526e-3, rel=1e-3)
    v = np.array([[0.0, 10.0], [100.0, -5.0]])
    np.testing.assert_allclose(phase_from_potential(v, 300.0), interaction_constant(300.0) * v)


def test_sample_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        lattice((0, 10), 0.2)
    with pytest.raises(ValueError, match="pixel_A"):
        lattice((10, 10), -0.2)
    with pytest.raises(ValueError, match="dopant_fraction"):
        lattice((10, 10), 0.2, dopant_fraction=0.7, vacancy_fraction=0.5)
    with pytest.raises(ValueError, match="vacancy_fraction"):
        lattice((10, 10), 0.2, vacancy_fraction=-0.1)


# --- shifted_disks ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.float32, np.float64])
def test_shifted_disks_ground_truth_matches_frame_com(dtype):
    r = shifted_disks((12, 10), (48, 40), 7.3, None, counts_per_px=90.0, dtype=dtype)
    assert isinstance(r, DiskScan)
    assert r.data.dtype == dtype and r.data.shape == (12, 10, 48, 40)
    assert r.shifts_px.shape == (12, 10, 2) and r.shifts_px.dtype == np.float64
    np.testing.assert_allclose(com_px(r.data), r.shifts_px, atol=1e-6, rtol=0)
    assert r.data.max() == 90
    # Requested default field reproduced to the quantisation step.
    yy, xx = np.meshgrid(np.arange(12), np.arange(10), indexing="ij")
    req = default_shift_field(yy, xx, (12, 10))
    assert np.abs(r.shifts_px - req).max() <= 1 / 16 + 0.01
    assert np.ptp(req[..., 0]) > 2


def test_shifted_disks_requested_shifts_within_half_step():
    rng = np.random.default_rng(0)
    req = rng.uniform(-6, 6, size=(9, 11, 2))
    for sub in (1, 4, 8):
        r = shifted_disks((9, 11), (64, 64), 12.0, req, subpixel=sub, dtype=np.float64)
        np.testing.assert_allclose(com_px(r.data), r.shifts_px, atol=1e-9)
        assert np.abs(r.shifts_px - req).max() <= 1 / (2 * sub) + 2e-3
        # Against the quantised request the only error is the antialiased template's.
        assert np.abs(r.shifts_px - np.round(req * sub) / sub).max() < 2e-3


def test_shifted_disks_out_is_filled_in_place():
    out = np.zeros((6, 7, 32, 32), dtype=np.uint16)
    r = shifted_disks((6, 7), (32, 32), 5.0, np.zeros((6, 7, 2)), out=out)
    assert r.data is out and np.shares_memory(r.data, out)
    assert out.sum() > 0
    np.testing.assert_allclose(r.shifts_px, 0.0, atol=1e-12)  # centred disk: symmetric
    with pytest.raises(TypeError, match="dtype"):
        shifted_disks((6, 7), (32, 32), 5.0, None, out=out, dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        shifted_disks((6, 6), (32, 32), 5.0, None, out=out)
    with pytest.raises(ValueError, match="contiguous"):
        shifted_disks((6, 7), (32, 16), 5.0, None, out=out[..., ::2])


def test_shifted_disks_callable_origin_background_and_clipping():
    def f(yy, xx):
        return np.stack([0.5 * yy - 2.0, 3.0 * xx - 6.0], axis=-1)

    r = shifted_disks(
        (5, 5), (32, 32), 6.0, f, origin=(14.3, 17.0), background=3.0, dtype=np.float32
    )
    np.testing.assert_allclose(com_px(r.data, origin=(14.3, 17.0)), r.shifts_px, atol=1e-5)
    assert r.data.min() == 3.0
    # The disk at x shift +6 touches the edge (17 + 6 + 6 = 29 < 32) but not at +6 with r = 6:
    # background pulls the CoM towards the frame centre, so the truth differs from the request.
    assert abs(r.shifts_px[0, 0, 1] - (-6.0)) > 0.1
    # A disk pushed out of the frame: only background, CoM of a uniform frame.
    far = shifted_disks((1, 1), (16, 16), 3.0, np.full((1, 1, 2), 40.0), background=1.0)
    np.testing.assert_allclose(far.shifts_px[0, 0], [-0.5, -0.5], atol=1e-12)
    empty = shifted_disks((1, 1), (16, 16), 3.0, np.full((1, 1, 2), 40.0))
    assert np.all(np.isnan(empty.shifts_px))


def test_shifted_disks_per_chunk_path_matches_global(monkeypatch):
    req = np.random.default_rng(1).uniform(-3, 3, size=(20, 20, 2))
    a = shifted_disks((20, 20), (32, 32), 6.0, req)
    monkeypatch.setattr(disks_mod, "_TEMPLATE_BUDGET", 0)
    monkeypatch.setattr(disks_mod, "_CHUNK_BYTES", 7 * 32 * 32 * 2)
    b = shifted_disks((20, 20), (32, 32), 6.0, req)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.shifts_px, b.shifts_px)


def test_shifted_disks_poisson_noise():
    clean = shifted_disks((16, 16), (32, 32), 8.0, np.zeros((16, 16, 2)), counts_per_px=50.0)
    noisy = shifted_disks(
        (16, 16), (32, 32), 8.0, np.zeros((16, 16, 2)), counts_per_px=50.0, noise="poisson"
    )
    assert noisy.data.dtype == np.uint16
    np.testing.assert_array_equal(noisy.shifts_px, clean.shifts_px)
    assert not np.array_equal(noisy.data, clean.data)
    diff = noisy.data.astype(np.float64) - clean.data
    total = clean.data.sum()
    assert abs(diff.sum()) < 5 * math.sqrt(total)
    inside = clean.data == 50
    assert 0.8 < diff[inside].var() / 50 < 1.2


def test_shifted_disks_bad_arguments():
    with pytest.raises(ValueError, match="overflows"):
        shifted_disks((2, 2), (16, 16), 3.0, None, counts_per_px=300, dtype=np.uint8)
    with pytest.raises(TypeError, match="dtype"):
        shifted_disks((2, 2), (16, 16), 3.0, None, dtype=np.int8)
    with pytest.raises(ValueError, match="radius_px"):
        shifted_disks((2, 2), (16, 16), 0.0, None)
    with pytest.raises(ValueError, match="shifts_px"):
        shifted_disks((2, 2), (16, 16), 3.0, np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="scan_shape"):
        shifted_disks((2,), (16, 16), 3.0, None)
    with pytest.raises(ValueError, match="subpixel"):
        shifted_disks((2, 2), (16, 16), 3.0, None, subpixel=0)
    with pytest.raises(ValueError, match="noise"):
        shifted_disks((2, 2), (16, 16), 3.0, None, noise="gaussian")
    with pytest.raises(TypeError, match="counts_per_px"):
        shifted_disks((2, 2), (16, 16), 3.0, None, counts_per_px="many")


@settings(max_examples=25, deadline=None)
@given(
    sy=st.floats(-5, 5),
    sx=st.floats(-5, 5),
    radius=st.floats(1.5, 9.0),
    sub=st.integers(1, 16),
    bg=st.floats(0, 5),
)
def test_shifted_disks_property(sy, sx, radius, sub, bg):
    r = shifted_disks(
        (1, 2),
        (32, 32),
        radius,
        np.array([[[sy, sx], [-sx, sy]]]),
        subpixel=sub,
        background=bg,
        dtype=np.float64,
    )
    np.testing.assert_allclose(com_px(r.data), r.shifts_px, atol=1e-9)
    if bg == 0:
        # The disk is sampled on a sub×sub grid per pixel: the sampled centroid can sit up to
        # ~1/sub px off for small disks (r = 1.6 px at sub = 7 gave 0.100 px > 1/(2·sub) + 0.02).
        tol = 1 / sub + 0.02
        assert np.abs(r.shifts_px - [[[sy, sx], [-sx, sy]]]).max() <= tol
