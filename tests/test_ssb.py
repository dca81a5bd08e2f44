"""Single-sideband ptychography: native kernels against numpy, physics against ground truth
(PHYSICS.md §5.1.8, §5.2), the live route against the offline one, and clear errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import stemedge
from _helpers import ssb_scan
from stemedge import _native
from stemedge.analysis import SSBAnalysis, run_offline
from stemedge.geometry import ScanGeometry
from stemedge.pipeline import Pipeline
from stemedge.ptycho import SSBPlan, ssb_reference
from stemedge.sim import lattice, simulate_4dstem
from stemedge.sources.sim import SimSource

# The benchmark optics (80 kV, 25 mrad, 0.26 Å, ~2.5 mrad/px) on a 64² scan: scan and
# detector sample the same frequencies, so the thin-object simulation is exact for SSB.
OPTICS = dict(scan_step_A=0.26, det_shape=(64, 64), voltage_kV=80.0, convergence_mrad=25.0)
DTYPES = [np.uint8, np.uint16, np.uint32, np.float32]


def _metrics(a, b):
    """Pearson correlation and least-squares scale of a against b (means removed)."""
    a = a - a.mean()
    b = b - b.mean()
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1]), float((a * b).sum() / (b * b).sum())


def _filtered(phase, transfer):
    """Ground truth as SSB should see it: each frequency times the transfer (DC kept)."""
    f = np.fft.fft2(phase)
    t = transfer.astype(np.float64).copy()
    t[0, 0] = 1.0
    return np.fft.ifft2(f * t).real


@pytest.fixture(scope="module")
def sample():
    return lattice((64, 64), 0.26, phase_rad=0.05, dopant_fraction=0.1, seed=1)


@pytest.fixture(scope="module")
def wpo(sample):
    return simulate_4dstem(sample.phase, **OPTICS)


# --- native pieces against numpy ------------------------------------------------------------------


@pytest.mark.parametrize("binning", [1, 2, 3])
@pytest.mark.parametrize("origin", [None, (10.3, 9.6)])
def test_bright_field_pixels_are_the_disk_and_bins_sum_their_pixels(binning, origin):
    data, cal = ssb_scan(det=(23, 21), det_origin_px=origin)
    plan = SSBPlan(cal, data.shape[:2], data.shape[2:], binning=binning)
    cy, cx = cal.origin_for(data.shape[2:])
    cube, mean = plan.gather(data, center=False)
    flat = data.reshape(-1, 23 * 21).astype(np.float64)
    if binning == 1:
        yy, xx = np.meshgrid(np.arange(23) - cy, np.arange(21) - cx, indexing="ij")
        disk = yy**2 + xx**2 <= cal.bf_radius_px**2
        assert plan.n_pixels == disk.sum()
        np.testing.assert_allclose(cube, flat[:, disk.ravel()], rtol=1e-6)
    # Whatever the binning, every detector pixel is used at most once and bins sum their pixels.
    total = cube.astype(np.float64).sum(axis=1)
    assert np.all(total <= flat.sum(axis=1) + 1e-3)
    np.testing.assert_allclose(mean, cube.astype(np.float64).mean(axis=0), rtol=1e-6)
    # The binned offsets are centred: the disk of bins is symmetric about the origin.
    np.testing.assert_allclose(plan.k.mean(axis=0), 0.0, atol=0.6 * binning * cal.k_per_px)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_every_dtype_and_empty_stack(dtype):
    data, cal = ssb_scan(dtype=dtype)
    plan = SSBPlan(cal, data.shape[:2], data.shape[2:])
    cube, mean = plan.gather(data)  # centred
    raw, _ = plan.gather(data, center=False)
    np.testing.assert_allclose(cube + mean.astype(np.float32), raw, atol=1e-4 * raw.max())
    np.testing.assert_allclose(cube.astype(np.float64).mean(axis=0), 0.0, atol=1e-4)
    # A sliced (strided) scan is read in place.
    part, _ = plan.gather(data[::2, 1::3], center=False)
    np.testing.assert_array_equal(part, raw.reshape(15, 17, -1)[::2, 1::3].reshape(part.shape))
    empty, m0 = plan.gather(data[:0, :0].reshape(0, *data.shape[2:]))
    assert empty.shape == (0, plan.n_pixels) and np.all(m0 == 0)


def test_nan_in_a_float_frame_propagates_to_the_whole_image():
    data, cal = ssb_scan()
    plan = SSBPlan(cal, data.shape[:2], data.shape[2:])
    cy, cx = (int(v) for v in cal.origin_for(data.shape[2:]))
    data[3, 4, cy, cx] = np.nan
    assert np.isnan(stemedge.ssb(data, cal).phase).all()  # as numpy's FFT route would
    frames = data.reshape(-1, *data.shape[2:])
    F = plan.new_accumulator()
    plan.accumulate(F, frames, np.arange(len(frames), dtype=np.int64))
    assert np.isnan(F).any()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"normalization": "matched"},
        {"cutoff": 6},
        {"aberrations": {"C10": -40.0, "C12": 15.0, "phi12": 0.4, "C30": 2e4}},
        {"aberrations": {"C21": 300.0, "phi21": 1.0, "C23": 200.0, "phi23": -0.3}},
    ],
    ids=["flat", "matched", "cutoff", "C10-C12-C30", "C21-C23"],
)
@pytest.mark.parametrize("rotation", [(0.0, False), (33.0, True)])
def test_native_offline_route_equals_the_numpy_reference(options, rotation):
    data, cal = ssb_scan(rotation_deg=rotation[0], flip_y=rotation[1])
    got = stemedge.ssb(data, cal, **options)
    ref = ssb_reference(data, cal, **options)
    scale = np.abs(ref - ref.mean()).max()
    np.testing.assert_allclose(got.wave, ref, rtol=0, atol=1e-5 * scale)
    assert got.wave.dtype == np.complex64 and got.phase.dtype == np.float32


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (8, 1), (2, 3)])
def test_tiny_and_degenerate_scans(shape):
    data, cal = ssb_scan(scan=shape)
    got = stemedge.ssb(data, cal)
    ref = ssb_reference(data, cal)
    np.testing.assert_allclose(got.wave, ref, atol=1e-5 * max(1.0, np.abs(ref).max()))


def test_weights_symmetry_on_the_full_plane(wpo):
    """F(−Q) = −F*(Q), computed directly on every Q (native weights and sums, no mirroring)."""
    cal = wpo.calibration
    plan = SSBPlan(cal, (64, 64), (64, 64))
    n = 64
    qy, qx = np.meshgrid(np.fft.fftfreq(n, 0.26), np.fft.fftfreq(n, 0.26), indexing="ij")
    t = _native.SsbTrotters(
        plan.k[:, 0].copy(),
        plan.k[:, 1].copy(),
        qy.ravel(),
        qx.ravel(),
        cal.k_alpha,
        cal.wavelength_A,
        [0.0] * 8,
    )
    cube, mean = plan.gather(wpo.data)
    g = np.fft.fft2(cube.reshape(n, n, -1), axes=(0, 1)).astype(np.complex64)
    g[0, 0] = n * n * mean
    f = np.zeros(n * n, np.complex128)
    f[t.kept] = _native.ssb_apply(t, g.reshape(n * n, -1), t.kept.astype(np.int64))
    f = f.reshape(n, n)
    mirrored = f[(-np.arange(n)) % n][:, (-np.arange(n)) % n]
    nonzero = np.ones((n, n), bool)
    nonzero[0, 0] = False
    scale = np.abs(f[nonzero]).max()
    np.testing.assert_allclose(mirrored[nonzero], -np.conj(f[nonzero]), atol=1e-6 * scale)
    assert np.array_equal(np.sort(t.kept), t.kept) and len(t.kept) > 2 * (plan.n_frequencies - 40)


# --- physics ------------------------------------------------------------------------------------


def test_noise_free_weak_phase_object_matches_band_limited_truth(wpo):
    r = stemedge.ssb(wpo)
    corr, scale = _metrics(r.phase, _filtered(wpo.phase, r.transfer))
    assert corr >= 0.9999 and abs(scale - 1) <= 0.01, (corr, scale)
    assert r.plan.band_coverage > 0.9  # the weights cover the band 0 < |Q| < 2k_α
    # Sign (PHYSICS.md §5.1.5): the phase is highest on the atoms (positive potential).
    assert r.phase.ravel()[np.argmax(wpo.phase)] > np.percentile(r.phase, 99)


def test_defocus_compensation_recovers_the_phase(sample):
    sim = simulate_4dstem(sample.phase, aberrations={"C10": -50.0}, **OPTICS)
    plain = stemedge.ssb(sim)
    truth = _filtered(sim.phase, plain.transfer)
    corr0, scale0 = _metrics(plain.phase, truth)
    corr, scale = _metrics(stemedge.ssb(sim, aberrations={"C10": -50.0}).phase, truth)
    corr_wrong, scale_wrong = _metrics(stemedge.ssb(sim, aberrations={"C10": 50.0}).phase, truth)
    assert corr >= 0.9999 and abs(scale - 1) <= 0.01, (corr, scale)
    assert scale0 < 0.8 and corr0 < corr  # uncompensated: smeared, contrast lost
    assert corr_wrong < 0.9 and scale_wrong < 0.2  # the wrong χ sign is worse still


@pytest.mark.parametrize(
    "rotation_deg, flip_y, tol",
    [(90.0, False, 1e-6), (0.0, True, 1e-6), (90.0, True, 1e-6), (30.0, False, 2e-3)],
)
def test_rotated_and_flipped_detectors_are_handled_by_the_calibration(
    sample, wpo, rotation_deg, flip_y, tol
):
    ref = stemedge.ssb(wpo).phase
    sim = simulate_4dstem(sample.phase, rotation_deg=rotation_deg, flip_y=flip_y, **OPTICS)
    corr, _ = _metrics(stemedge.ssb(sim).phase, ref)
    # Multiples of 90° are exact permutations; 30° goes through the simulator's bilinear
    # resampling, which blurs the patterns a little.
    assert corr >= 1 - tol, corr
    ignored = sim.calibration.replace(rotation_deg=0.0, flip_y=False)
    assert _metrics(stemedge.ssb(sim.data, ignored).phase, ref)[0] < 1 - 2 * tol


def test_poisson_error_variance_scales_as_one_over_dose(sample, wpo):
    clean = stemedge.ssb(wpo).phase
    var = {}
    for dose in (2e4, 8e4):
        errs = []
        for seed in range(3):
            noisy = simulate_4dstem(sample.phase, dose=dose, seed=seed, **OPTICS)
            errs.append(np.var(stemedge.ssb(noisy).phase - clean))
        var[dose] = np.mean(errs)
    ratio = var[2e4] / var[8e4]
    assert 3.2 < ratio < 4.8, ratio


def test_matched_normalisation_transfer_and_binning(wpo):
    m = stemedge.ssb(wpo, normalization="matched")
    t = m.transfer[m.transfer > 0]
    assert t.max() <= 1.0 and t.min() > 0
    corr, scale = _metrics(m.phase, _filtered(wpo.phase, m.transfer))
    assert corr >= 0.9999 and abs(scale - 1) <= 0.01, (corr, scale)
    flat = stemedge.ssb(wpo).phase
    binned = stemedge.ssb(wpo, binning=2)
    assert binned.plan.n_pixels < stemedge.ssb(wpo).plan.n_pixels / 3
    assert _metrics(binned.phase, flat)[0] > 0.99


# --- live route ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stack", [1, 7, 64, 100])
def test_live_accumulation_equals_offline(dtype, stack):
    data, cal = ssb_scan(dtype=dtype, seed=stack)
    off = stemedge.ssb(data, cal)
    plan = off.plan
    frames = data.reshape(-1, *data.shape[2:])
    order = np.random.default_rng(stack).permutation(len(frames)).astype(np.int64)
    F = plan.new_accumulator()
    for i in range(0, len(order), stack):
        idx = order[i : i + stack]
        plan.accumulate(F, np.ascontiguousarray(frames[idx]), idx)
    wave = plan.wave(F, len(frames))
    scale = np.abs(off.wave - off.wave.mean()).max()
    np.testing.assert_allclose(wave, off.wave, rtol=0, atol=1e-5 * scale)


def test_live_analysis_equals_offline_on_the_simulated_wpo(wpo):
    """The issue's criterion: at the end of a scan, live == offline to 1e-5 relative (float32)."""
    off = stemedge.ssb(wpo)
    for mode in ("accumulate", "refresh"):
        live = run_offline(wpo.data, SSBAnalysis(wpo.calibration, mode=mode), chunk_frames=48)
        phase = live["ssb"]["phase_rad"]
        rel = np.abs(phase - off.phase).max() / np.abs(off.phase).max()
        assert rel <= 1e-5, (mode, rel)


def test_partial_scan_gives_an_image_and_both_modes_agree(wpo):
    geometry = ScanGeometry((64, 64), (64, 64), np.dtype(np.float32), wpo.calibration)
    frames = wpo.data.reshape(-1, 64, 64)
    half = np.arange(64 * 40, dtype=np.int64)  # the first 40 lines
    coverage = np.zeros((64, 64), np.int64)
    coverage.reshape(-1)[half] = 1
    out = {}
    for mode in ("accumulate", "refresh"):
        a = SSBAnalysis(mode=mode)
        a.bind(geometry)
        p = a.new_partial()
        for i in range(0, len(half), 100):
            a.process(p, frames[half[i : i + 100]], half[i : i + 100])
        out[mode] = a.finalize(p, coverage)["phase_rad"]
    seen = out["accumulate"][:40]
    assert np.isnan(out["accumulate"][40:]).all() and np.isfinite(seen).all()
    np.testing.assert_allclose(out["refresh"][:40], seen, atol=1e-5 * np.abs(seen).max())
    # Away from the window's edges the partial image already shows the object.
    truth = stemedge.ssb(wpo).phase[8:32]
    assert _metrics(seen[8:32], truth)[0] > 0.95


def test_pipeline_with_ssb_equals_offline(wpo):
    off = stemedge.ssb(wpo)
    res = Pipeline(SimSource(wpo), [SSBAnalysis()], workers=2, slot_frames=32).run()
    assert res.complete
    phase = res.results["ssb"]["phase_rad"]
    np.testing.assert_allclose(phase, off.phase, atol=1e-5 * np.abs(off.phase).max())


def test_accumulate_releases_the_gil():
    data, cal = ssb_scan(scan=(48, 48), det=(40, 40), convergence_mrad=30.0)
    plan = SSBPlan(cal, data.shape[:2], data.shape[2:], nthreads=1)
    frames = data.reshape(-1, 40, 40)
    ticks = []
    done = threading.Event()

    def count():
        while not done.is_set():
            ticks.append(1)

    t = threading.Thread(target=count)
    t.start()
    F = plan.new_accumulator()
    try:
        for _ in range(3):
            plan.accumulate(F, frames, np.arange(len(frames), dtype=np.int64))
    finally:
        done.set()
        t.join()
    assert len(ticks) > 100


# --- bad input ---------------------------------------------------------------------------------


def test_bad_input_gets_clear_errors():
    data, cal = ssb_scan()
    with pytest.raises(TypeError, match="dtype float64"):
        stemedge.ssb(data.astype(np.float64), cal)
    with pytest.raises(TypeError, match="dtype int16"):
        stemedge.ssb(data.astype(np.int16), cal)
    with pytest.raises(ValueError, match="scan_y, scan_x, det_y, det_x"):
        stemedge.ssb(data[0], cal)
    with pytest.raises(TypeError, match="numpy array"):
        stemedge.ssb(data.tolist(), cal)
    with pytest.raises(TypeError, match="calibration"):
        stemedge.ssb(data)
    with pytest.raises(ValueError, match="normalization"):
        stemedge.ssb(data, cal, normalization="unit")
    with pytest.raises(ValueError, match="cutoff"):
        stemedge.ssb(data, cal, cutoff=0)
    with pytest.raises(ValueError, match="binning"):
        stemedge.ssb(data, cal, binning=1.5)
    with pytest.raises(ValueError, match="unknown aberration"):
        stemedge.ssb(data, cal, aberrations={"defocus": 10})
    with pytest.raises(ValueError, match="no detector pixel"):
        stemedge.ssb(data, cal.replace(det_origin_px=(500.0, 500.0)))
    plan = SSBPlan(cal, data.shape[:2], data.shape[2:])
    with pytest.raises(ValueError, match="plan was made for"):
        stemedge.ssb(data[:3], cal, plan=plan)
    frames = data.reshape(-1, *data.shape[2:])
    F = plan.new_accumulator()
    with pytest.raises(IndexError, match="outside"):
        plan.accumulate(F, frames[:2], np.array([0, 15 * 17], np.int64))
    with pytest.raises(TypeError, match="F: pass"):
        plan.accumulate(F.astype(np.complex64), frames[:2], np.array([0, 1], np.int64))
    with pytest.raises(ValueError, match="positions"):
        plan.accumulate(F, frames[:2], np.array([0], np.int64))
    assert np.all(F == 0)  # nothing was folded in by the refused calls
    with pytest.raises(ValueError, match="outside a detector"):
        _native.SsbPixels((4, 4), np.array([0, 1], np.uint32), np.array([16], np.uint32))
    a = SSBAnalysis()
    with pytest.raises(ValueError, match="needs a calibration"):
        a.bind(ScanGeometry((15, 17), (23, 21), np.dtype(np.float32)))
    with pytest.raises(ValueError, match="mode"):
        SSBAnalysis(mode="fast")
