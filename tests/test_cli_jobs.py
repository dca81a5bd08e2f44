"""``stemedge process`` on real files: results equal the offline analyses, written as EMD."""

from __future__ import annotations

import numpy as np
import pytest

import stemedge
from _helpers import MERLIN, subprocess_env
from stemedge.analysis import CenterOfMassAnalysis, run_offline
from stemedge.cli import main
from stemedge.io.emd import read_emd, write_emd
from stemedge.masks import annulus, disk
from stemedge.sim import lattice, simulate_4dstem
from stemedge.sources.files import open_source

REALDATA = MERLIN


def _reference(path, **open_kw):
    source = open_source(path, **open_kw)
    shape = source.geometry.frame_shape
    masks = {"bf": disk(shape, 5), "adf": annulus(shape, 6, 9)}
    return run_offline(source, [CenterOfMassAnalysis(virtual=masks)])["com"]


@pytest.mark.parametrize("suffix", [".npy", ".emd"])
def test_process_file_matches_the_offline_analysis(tmp_path, suffix, capsys):
    data = np.random.default_rng(3).poisson(2.0, (6, 7, 20, 22)).astype(np.uint16)
    path = tmp_path / f"scan{suffix}"
    if suffix == ".npy":
        np.save(path, data)
    else:
        write_emd(path, data)
    out = tmp_path / "res.emd"
    argv = ["process", str(path), "--out", str(out), "--bf", "5", "--adf", "6", "9"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "42 frames processed" in printed and "dropped 0, rejected 0" in printed
    ref = _reference(path)
    with read_emd(out) as f:
        com = f.results["com"]
        for key in ("shifts_px", "intensity", "bf", "adf"):
            np.testing.assert_allclose(com[key], ref[key], rtol=1e-6, err_msg=key)
        assert f.results["mean_pattern"]["mean"].shape == (20, 22)
        assert f.provenance["stream"]["frames_processed"] == 42


def test_process_with_ssb_equals_stemedge_ssb(tmp_path, capsys):
    sim = simulate_4dstem(
        lattice((24, 24), 0.26, phase_rad=0.05).phase,
        scan_step_A=0.26,
        det_shape=(32, 32),
        voltage_kV=80.0,
        convergence_mrad=25.0,
    )
    path = write_emd(tmp_path / "scan.emd", sim.data, sim.calibration)
    out = tmp_path / "res.emd"
    assert main(["process", str(path), "--out", str(out), "--ssb", "--ssb-cutoff", "3"]) == 0
    ref = stemedge.ssb(sim, cutoff=3).phase
    with read_emd(out) as f:
        phase = f.results["ssb"]["phase_rad"]
    np.testing.assert_allclose(phase, ref, atol=1e-5 * np.abs(ref).max())
    # Without a calibration there is no SSB: one clear line.
    np.save(tmp_path / "raw.npy", sim.data)
    assert main(["process", str(tmp_path / "raw.npy"), "--ssb", "--quiet"]) == 2
    assert "--ssb needs a calibration" in capsys.readouterr().err


@pytest.mark.skipif(not REALDATA.is_dir(), reason="needs ../shared/realdata")
def test_process_real_merlin_file(tmp_path, capsys):
    mib = REALDATA / "001_4x2_6bit.mib"
    out = tmp_path / "mib.emd"
    assert main(["process", str(mib), "--out", str(out), "--bf", "5", "--adf", "6", "9"]) == 0
    assert "8 frames processed" in capsys.readouterr().out
    ref = _reference(mib)
    with read_emd(out) as f:
        np.testing.assert_allclose(f.results["com"]["intensity"], ref["intensity"])
        assert f.results["com"]["intensity"].shape == (2, 4)


def test_process_refuses_a_truncated_file_with_one_line(tmp_path, capsys):
    path = tmp_path / "cut.npy"
    np.save(path, np.zeros((4, 4, 8, 8), np.uint16))
    path.write_bytes(path.read_bytes()[:-100])
    assert main(["process", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stemedge process: error:") and "cut.npy" in err
    assert err.count("\n") == 1


def test_process_bad_adf_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "s.npy"
    np.save(path, np.zeros((2, 2, 8, 8), np.uint16))
    assert main(["process", str(path), "--adf", "5", "3", "--quiet"]) == 2
    assert "INNER" in capsys.readouterr().err


SENDER = """
import sys, numpy as np
from stemedge.geometry import ScanGeometry
from stemedge.net.frame_sender import FrameSender
from stemedge.calibration import Calibration
data = np.random.default_rng(5).poisson(2.0, (5, 6, 16, 18)).astype(np.uint16)
cal = Calibration(scan_step_A=0.5, det_mrad_per_px=1.0, voltage_kV=200, convergence_mrad=4)
g = ScanGeometry((5, 6), (16, 18), np.uint16, cal)
tx = FrameSender([sys.argv[1]])
tx.begin(g)
tx.send(data.reshape(30, 16, 18), 0)
tx.end()
tx.close()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stream_receives_a_scan_from_another_process(tmp_path, capsys):
    import subprocess
    import sys

    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    env = subprocess_env()
    sender = subprocess.Popen([sys.executable, "-c", SENDER, endpoint], env=env)
    out = tmp_path / "live.emd"
    try:
        code = main(
            [
                "stream",
                "--listen",
                endpoint,
                "--out",
                str(out),
                "--timeout",
                "20",
                "--adf",
                "5",
                "8",
                "--quiet",
            ]
        )
    finally:
        assert sender.wait(timeout=30) == 0
    assert code == 0
    data = np.random.default_rng(5).poisson(2.0, (5, 6, 16, 18)).astype(np.uint16)
    with read_emd(out) as f:
        np.testing.assert_array_equal(f.data[...], data)  # the frames, in place
        assert f.calibration.voltage_kV == 200
        ref = run_offline(
            data,
            [
                CenterOfMassAnalysis(
                    virtual={
                        "bf": disk(
                            (16, 18), f.calibration.bf_radius_px, f.calibration.origin_for((16, 18))
                        ),
                        "adf": annulus((16, 18), 5, 8, f.calibration.origin_for((16, 18))),
                    }
                )
            ],
        )["com"]
        for key in ("shifts_px", "bf", "adf"):
            np.testing.assert_allclose(f.results["com"][key], ref[key], rtol=1e-6, err_msg=key)
        assert f.provenance["stream"]["frames_in"] == 30
