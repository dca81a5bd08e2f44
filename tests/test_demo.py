"""Tests for ``stemedge demo`` (run_demo) and the ``stemedge`` command line.

Each demo run simulates its own scan, so the scans are kept small (≤ 32² positions of 64² px)
and the noise-free run is shared by the checks that only read its outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import stemedge
from stemedge.calibration import Calibration
from stemedge.cli import main
from stemedge.demo import ARRAY_FILES, EMD_FILE, DemoResult, pearson, run_demo
from stemedge.io.emd import read_emd

SCAN = 32
DET = 64

# Noise-free iDPC returns the object phase cross-correlated with the probe intensity |P|²
# (PHYSICS.md §2.2, §2.6), not the phase itself: at 80 kV and α = 25 mrad the probe (~1 Å)
# is wider than the atoms (σ = 0.35 Å), so the correlation with the raw ground truth saturates
# at 0.95 (measured 0.952 for 32² and 64² scans, 0.955 for 24²). 0.93 leaves room for the
# rounding of FFT/float32 arithmetic on other machines without hiding a real failure: a wrong
# rotation or sign gives ≤ 0.6 or negative values. Against the probe-limited truth, where only
# round-off and the zero-padded integration remain, we measured 0.9999.
MIN_CORRELATION = 0.93
MIN_CORRELATION_PROBE_LIMITED = 0.999


def _env() -> dict[str, str]:
    """Environment for subprocesses that finds this (possibly uninstalled) stemedge."""
    python_dir = str(Path(stemedge.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (python_dir, env.get("PYTHONPATH", "")) if p)
    return env


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stemedge", *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def noise_free(tmp_path_factory) -> DemoResult:
    out = tmp_path_factory.mktemp("demo") / "out"  # not yet there: run_demo must create it
    return run_demo(out, scan=SCAN, det=DET, dose=0, seed=1, progress=False)


# --- run_demo ---------------------------------------------------------------------------------


def test_writes_every_file(noise_free):
    names = {*ARRAY_FILES.values(), "summary.json", "summary.png", EMD_FILE}
    assert {p.name for p in noise_free.out_dir.iterdir()} == names
    assert set(noise_free.files) == {*ARRAY_FILES, "summary_json", "summary_png", "emd"}
    for path in noise_free.files.values():
        assert path.is_file() and path.stat().st_size > 0, path


@pytest.mark.parametrize(
    ("key", "shape"),
    [
        ("virtual_bf", (SCAN, SCAN)),
        ("virtual_adf", (SCAN, SCAN)),
        ("com_shifts_px", (SCAN, SCAN, 2)),
        ("field_mrad", (SCAN, SCAN, 2)),
        ("idpc_phase_rad", (SCAN, SCAN)),
        ("ground_truth_phase_rad", (SCAN, SCAN)),
    ],
)
def test_array_shapes_and_dtypes(noise_free, key, shape):
    arr = np.load(noise_free.files[key])
    assert arr.shape == shape
    assert arr.dtype == np.float32
    assert np.all(np.isfinite(arr))


def test_arrays_are_physical(noise_free):
    bf = np.load(noise_free.files["virtual_bf"])
    adf = np.load(noise_free.files["virtual_adf"])
    # Noise-free frames sum to 1: the BF disk holds most of the beam, the ADF ring a little.
    assert np.all((bf > 0.5) & (bf <= 1.0))
    assert np.all((adf >= 0) & (adf < 0.1))
    # ADF and BF are complementary on a phase object: what scatters out of the disk lands outside.
    assert pearson(bf, adf) < -0.9
    phase = np.load(noise_free.files["idpc_phase_rad"])
    assert abs(float(phase.mean())) < 1e-6  # a constant phase is not measurable: mean removed


def test_summary_json(noise_free):
    summary = json.loads(noise_free.files["summary_json"].read_text())
    expected = {
        "stemedge_version",
        "parameters",
        "calibration",
        "detectors",
        "rotation",
        "correlation",
        "timings_s",
        "stream",
        "simd_active",
        "files",
    }
    assert expected <= set(summary)
    cal = Calibration.from_dict(summary["calibration"])
    assert cal == noise_free.calibration
    assert cal.voltage_kV == 80 and cal.convergence_mrad == 25
    assert summary["parameters"]["scan"] == SCAN and summary["parameters"]["det"] == DET
    assert summary["parameters"]["dose_e_per_frame"] is None
    assert {"true_deg", "found_deg", "true_flip_y", "found_flip_y"} <= set(summary["rotation"])
    steps = {"simulate", "stream", "rotation", "DPC", "SSB", "compare", "bandwidth", "write"}
    steps.add("plot")
    steps.add("total")
    assert set(summary["timings_s"]) == steps
    assert all(t >= 0 for t in summary["timings_s"].values())
    stream = summary["stream"]
    n = SCAN * SCAN
    assert stream["frames_in"] == stream["frames_processed"] == n
    assert stream["frames_dropped"] == stream["frames_rejected"] == 0
    assert stream["frames_per_s"] > 0 and stream["read_gb_per_s"] > 0
    assert 0 < stream["capacity_to_read_bandwidth"] < 2
    assert summary["simd_active"] == stemedge.build_info()["simd_active"]
    assert summary["correlation"]["idpc_vs_ground_truth"] == pytest.approx(noise_free.correlation)
    corr_ssb = summary["correlation"]["ssb_vs_band_limited_truth"]
    assert corr_ssb == pytest.approx(noise_free.ssb_correlation)
    assert summary["ssb"]["cutoff"] >= 1 and summary["ssb"]["time_s"] > 0


def test_emd_file_holds_frames_results_and_provenance(noise_free):
    with read_emd(noise_free.files["emd"]) as f:
        assert f.geometry.scan_shape == (SCAN, SCAN) and f.geometry.frame_shape == (DET, DET)
        frames = f.data[...]
        assert np.all(np.isclose(frames.sum(axis=(2, 3)), 1.0, atol=1e-4))  # every frame written
        dpc = f.results["dpc"]
        np.testing.assert_array_equal(
            dpc["idpc_phase_rad"], np.load(noise_free.files["idpc_phase_rad"])
        )
        np.testing.assert_array_equal(
            dpc["ssb_phase_rad"], np.load(noise_free.files["ssb_phase_rad"])
        )
        assert f.results["patterns"]["mean"].shape == (DET, DET)
        prov = f.provenance
        assert prov["stream"]["frames_processed"] == SCAN * SCAN
        assert prov["source"]["kind"] == "simulator"
        assert Calibration.from_dict(prov["calibration_found"]) == noise_free.calibration


def test_paced_stream_runs_at_the_requested_rate(tmp_path):
    res = run_demo(tmp_path, scan=24, det=32, dose=0, rate=2000, progress=False)
    # 576 frames at 2000/s take ≥ 0.28 s whatever the machine; a loaded one may fall behind.
    assert res.frames_per_s <= 2000 * 1.1
    assert res.stream["frames_processed"] == 576 and res.stream["frames_dropped"] == 0


def test_summary_png_is_a_real_figure(noise_free):
    import matplotlib.image

    img = matplotlib.image.imread(noise_free.files["summary_png"])
    assert img.ndim == 3 and img.shape[0] >= 600 and img.shape[1] >= 900
    rgb = img[..., :3]
    # Not blank: many distinct colours and a good share of non-white pixels (the eight panels).
    assert rgb.std() > 0.1
    assert np.mean(np.all(rgb > 0.98, axis=-1)) < 0.8
    assert len(np.unique(rgb.reshape(-1, 3)[::7], axis=0)) > 500


def test_noise_free_idpc_matches_ground_truth(noise_free):
    assert noise_free.correlation >= MIN_CORRELATION
    assert noise_free.correlation_probe_limited >= MIN_CORRELATION_PROBE_LIMITED
    truth = np.load(noise_free.files["ground_truth_phase_rad"])
    phase = np.load(noise_free.files["idpc_phase_rad"])
    assert pearson(phase, truth) == pytest.approx(noise_free.correlation, abs=1e-5)
    # SSB recovers the band-limited phase itself (not a probe-blurred one): ≈ 1 without noise.
    assert noise_free.ssb_correlation >= 0.999


def test_unrotated_detector_is_recognised(noise_free):
    assert noise_free.found_flip_y is False
    assert abs(noise_free.rotation_error_deg) < 0.05
    assert noise_free.curl_to_div < 0.1


def test_recovers_rotation_and_flip(tmp_path):
    res = run_demo(tmp_path, scan=24, det=DET, dose=0, rotation_deg=90, flip_y=True, progress=False)
    assert res.found_flip_y is True
    assert res.found_rotation_deg == pytest.approx(90, abs=0.05)
    assert res.calibration.rotation_deg == res.found_rotation_deg and res.calibration.flip_y
    assert res.correlation >= MIN_CORRELATION


def test_noisy_run_writes_counts_summary(tmp_path):
    res = run_demo(tmp_path, scan=24, det=32, dose=2e4, progress=False)
    assert res.data_dtype == "uint16" and res.dose == 2e4
    # Measured 0.85–0.92 for 24²–64² scans at 2e4 e⁻/frame over seeds 0–2 (0.882 here); only
    # require a clearly useful image. (16² scans hold ~1 unit cell: the rotation search then
    # fails on noise for some seeds.)
    assert res.correlation > 0.7
    summary = json.loads(res.files["summary_json"].read_text())
    assert summary["parameters"]["dose_e_per_frame"] == 2e4
    assert "stemedge demo" in res.report() and str(res.files["summary_png"]) in res.report()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scan": 4},
        {"scan": 16.5},
        {"det": 8},
        {"dose": -1.0},
        {"dose": float("nan")},
        {"seed": -1},
        {"rotation_deg": float("inf")},
        {"scan": 4096, "det": 256},
    ],
)
def test_bad_arguments_are_refused_before_work(tmp_path, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs)).split("_")[0]):
        run_demo(tmp_path / "never", progress=False, **kwargs)
    assert not (tmp_path / "never").exists()


def test_unusable_out_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot write to output folder"):
        run_demo(blocker / "sub", scan=8, det=16, progress=False)


# --- the command line -------------------------------------------------------------------------


def test_cli_demo(tmp_path):
    proc = _cli("demo", "--out", "out", "--scan", "24", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # --quiet: neither progress nor summary
    for name in [*ARRAY_FILES.values(), "summary.json", "summary.png", EMD_FILE]:
        assert (tmp_path / "out" / name).is_file(), name


def test_cli_demo_prints_summary(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--scan", "8", "--det", "16", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["demo", "--out", str(tmp_path), "--scan", "8", "--det", "16", "--dose", "0"]) == 0
    out = capsys.readouterr().out
    assert "rotation" in out and "correlation" in out and "GB/s" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--scan", "-3"], "argument --scan: must be an integer ≥ 8, got -3"),
        (["demo", "--det", "x"], "argument --det: expected an integer, got 'x'"),
        (["demo", "--dose", "-5"], "argument --dose: must be ≥ 0"),
        (["demo", "--rotation", "nan"], "argument --rotation: must be finite"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_cli_usage_errors(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err  # one line, no traceback


def test_cli_unwritable_out_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["demo", "--out", str(blocker), "--scan", "8", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stemedge demo: error: cannot write to output folder")
    assert err.count("\n") == 1


def test_cli_subprocess_error_exit_code(tmp_path):
    proc = _cli("demo", "--scan", "-3", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--scan" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "stemedge-demo").exists()


def test_cli_info(tmp_path):
    proc = _cli("info", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = stemedge.build_info()
    assert "SIMD active" in proc.stdout and info["simd_active"] in proc.stdout
    assert "CUDA" in proc.stdout and stemedge.__version__ in proc.stdout


def test_cli_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["simd_active"] == stemedge.build_info()["simd_active"]
