"""SimulatedMicroscope: the Microscope interface on stemedge's simulator — survey contrast, probe
moves, exact frames at positions, 4D scans through the pipeline, abort, and refused arguments."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from stemedge.analysis import CenterOfMassAnalysis
from stemedge.control import MicroscopeError, SimulatedMicroscope
from stemedge.pipeline import Pipeline, PipelineError
from stemedge.sim import frames_at, lattice, simulate_4dstem


@pytest.fixture(scope="module")
def scope():
    return SimulatedMicroscope(
        lattice((96, 96), 0.26, dopant_fraction=0.2, seed=2), dose_per_ms=None
    )


def test_state_is_a_json_snapshot(scope):
    state = scope.state()
    d = json.loads(json.dumps(state.to_dict()))
    assert d["voltage_kV"] == 80.0 and d["camera_shape"] == [64, 64]
    assert d["fov_A"] == pytest.approx([96 * 0.26, 96 * 0.26])
    assert state.camera_mrad_per_px == pytest.approx(1000 * 0.041757 / (64 * 0.26), rel=1e-3)


@pytest.mark.parametrize("detector, ratio", [("HAADF", 2.0), ("MAADF", 1.3)])
def test_survey_shows_heavier_dopants_brighter(scope, detector, ratio):
    s = scope.survey((96, 96), dwell_us=20.0, detector=detector)
    assert s.image.shape == (96, 96) and s.image.dtype == np.float32
    assert s.pixel_A == pytest.approx((0.26, 0.26)) and s.fov_A == pytest.approx((24.96, 24.96))
    pix = np.rint(scope.sample.positions_A / 0.26).astype(int) % 96
    value = s.image[pix[:, 0], pix[:, 1]]
    kinds = scope.sample.kinds
    assert value[kinds == "dopant"].mean() > ratio * value[kinds == "host"].mean()
    # more dwell, more counts
    assert (
        scope.survey((96, 96), dwell_us=40.0, detector=detector).image.sum() > 1.8 * s.image.sum()
    )


def test_frames_at_are_the_exact_thin_object_frames(scope):
    ref = simulate_4dstem(scope.sample.phase, scan_step_A=0.26, det_shape=(64, 64))
    positions = np.array([[0.0, 0.0], [2.6, 5.2], [20.8, 13.0]])
    frames = scope.frames_at(positions)
    pix = np.rint(positions / 0.26).astype(int)
    np.testing.assert_array_equal(frames, ref.data[pix[:, 0], pix[:, 1]])
    assert scope.state().probe_A == (20.8, 13.0)
    # the simulator's own function, for any integer pixels (wrapped)
    np.testing.assert_array_equal(
        frames_at(scope.sample.phase, pix, pixel_A=0.26), ref.data[pix[:, 0], pix[:, 1]]
    )


def test_counted_frames_have_the_dose():
    m = SimulatedMicroscope(lattice((64, 64), 0.26, seed=0), dose_per_ms=1e4)
    f = m.frames_at([[1.0, 1.0]] * 20, exposure_ms=2.0)
    assert f.dtype == np.uint32 and abs(f.sum(axis=(1, 2)).mean() / 2e4 - 1) < 0.01


def test_a_4d_scan_streams_through_the_pipeline(scope):
    scope.survey((96, 96))  # field of view: the whole specimen
    src = scope.scan_4d((12, 12))
    assert src.geometry.calibration.scan_step_A == pytest.approx((8 * 0.26, 8 * 0.26))
    res = Pipeline(src, [CenterOfMassAnalysis(nthreads=1)], workers=2).run()
    assert res.complete and res.counters.frames_processed == 144
    shifts = res.results["com"]["shifts_px"]
    assert np.isfinite(shifts).all() and np.abs(shifts).max() > 1e-3


def test_spectrum_image_maps_the_dopant_edge(scope):
    scope.survey((96, 96))
    cube, energy = scope.spectrum_image((24, 24))
    assert cube.shape == (24, 24, energy.size) and cube.dtype == np.float32
    assert np.all(np.diff(energy) > 0) and energy[0] < 284 and energy[-1] > 532
    np.testing.assert_allclose(cube.sum(axis=-1), 1.0, rtol=1e-5)  # noise-free: normalised
    above, below = np.searchsorted(energy, 532.0), np.searchsorted(energy, 532.0) - 1
    jump = cube[..., above] - cube[..., below] * (energy[below] / energy[above]) ** 3
    # the jump map peaks where the dopants sit (survey-pixel units: 4 simulator pixels)
    pix = np.rint(scope.sample.positions_A / (4 * 0.26)).astype(int) % 24
    at = jump[pix[:, 0], pix[:, 1]]
    kinds = scope.sample.kinds
    assert at[kinds == "dopant"].mean() > 3 * max(at[kinds == "host"].mean(), 1e-12)
    counted = SimulatedMicroscope(scope.sample, dose_per_ms=1e3)
    counted.survey((96, 96))
    c, _ = counted.spectrum_image((4, 4), exposure_ms=2.0)
    assert abs(c.sum(axis=-1).mean() / 2e3 - 1) < 0.02


def test_streamed_spectrum_image_maps_an_energy_window(scope):
    from stemedge.analysis import MeanPattern, VirtualDetectorAnalysis

    scope.survey((96, 96))
    cube, energy = scope.spectrum_image((6, 7))
    src = scope.scan_spectra((6, 7))
    np.testing.assert_array_equal(src.energy_eV, energy)
    assert src.geometry.frame_shape == (1, energy.size)
    window = ((energy >= 525) & (energy <= 560)).astype(np.float32)[None, :]  # the dopant edge
    res = Pipeline(
        src,
        [VirtualDetectorAnalysis({"edge": window}, nthreads=1), MeanPattern()],
        workers=2,
        slot_frames=5,
    ).run()
    assert res.complete and res.counters.frames_processed == 42
    np.testing.assert_allclose(
        res.results["virtual"]["edge"], (cube * window[0]).sum(-1), rtol=1e-5, atol=1e-12
    )
    np.testing.assert_allclose(
        res.results["mean_pattern"]["mean"][0], cube.mean((0, 1)), rtol=1e-5, atol=1e-12
    )


def test_spectra_at_carry_the_hidden_plasmon_energy(scope):
    scope.survey((96, 96))
    pos = np.array([[3.0, 4.0], [12.0, 12.0], [20.0, 7.5]])
    spectra, energy = scope.spectra_at(pos)
    assert spectra.shape == (3, energy.size) and scope.state().probe_A == (20.0, 7.5)
    window = (energy > 8) & (energy < 35)  # the plasmon's centroid is its energy
    s = spectra[:, window] - spectra[:, window].min(axis=1, keepdims=True)
    centroid = (s * energy[window]).sum(1) / s.sum(1)
    truth = scope.plasmon_eV(pos)
    assert np.all((truth >= 16) & (truth <= 24)) and np.ptp(truth) > 0.3
    np.testing.assert_allclose(centroid, truth, atol=0.15)
    with pytest.raises(ValueError, match="outside the field of view"):
        scope.spectra_at([[-1.0, 0.0]])


def test_show_keeps_results_for_the_operator():
    m = SimulatedMicroscope(lattice((32, 32), 0.26, seed=0))
    m.show("phase", np.ones((4, 5)), pixel_A=(0.5, 0.5))
    assert m.shown["phase"].shape == (4, 5)
    for bad in (np.ones((2, 2, 2)), np.array([], np.float32), np.ones(3, complex)):
        with pytest.raises(ValueError, match="1D or 2D"):
            m.show("x", bad)
    with pytest.raises(ValueError, match="title"):
        m.show("", np.ones(3))


def test_abort_stops_a_scan_and_an_acquisition_says_so():
    m = SimulatedMicroscope(lattice((64, 64), 0.26, seed=0), dose_per_ms=None, frame_rate=500.0)
    pipe = Pipeline(
        m.scan_4d((16, 16)), [CenterOfMassAnalysis(nthreads=1)], workers=1, slot_frames=4
    )
    threading.Timer(0.1, m.abort).start()
    with pytest.raises(PipelineError, match="aborted"):
        pipe.run()
    assert pipe.counters().frames_processed < 256
    m.abort()  # an abort with nothing running does not poison the next acquisition
    assert m.frames_at([[1.0, 1.0]]).shape == (1, 64, 64)
    assert issubclass(MicroscopeError, RuntimeError)


def test_bad_arguments_are_refused_before_anything_moves(scope):
    before = scope.state().probe_A
    with pytest.raises(ValueError, match="outside the field of view"):
        scope.move_probe((-1.0, 2.0))
    with pytest.raises(ValueError, match="outside the field of view"):
        scope.frames_at([[1.0, 1.0], [1e6, 0.0]])
    with pytest.raises(ValueError, match="finite"):
        scope.move_probe((np.nan, 1.0))
    with pytest.raises(ValueError, match="pairs"):
        scope.frames_at([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="detector"):
        scope.survey((8, 8), detector="BF")
    with pytest.raises(ValueError, match="size"):
        scope.survey((0, 8))
    with pytest.raises(ValueError, match="dwell_us"):
        scope.survey((8, 8), dwell_us=-1)
    with pytest.raises(ValueError, match="fov_A"):
        scope.survey((8, 8), fov_A=1e5)
    with pytest.raises(TypeError, match="number"):
        scope.frames_at([[1.0, 1.0]], exposure_ms="long")
    assert scope.state().probe_A == before
