"""SwiftMicroscope on Nion Swift's simulated instrument (nionswift-usim), headless: in process,
and over Pyro5 from another process (stemedge serve --backend usim)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("nionswift_plugin.usim")
pytest.importorskip("Pyro5")

from _helpers import subprocess_env
from stemedge.analysis import CenterOfMassAnalysis
from stemedge.control import MicroscopeError
from stemedge.control.certs import make_certificates
from stemedge.pipeline import Pipeline

pytestmark = pytest.mark.swift
TOKEN = "stemedge-swift-token-0123456789"


@pytest.fixture(scope="module")
def usim():
    from stemedge.control.swift import SwiftMicroscope, start_usim

    cfg, stop = start_usim()
    try:
        yield SwiftMicroscope(cfg.instrument)
    finally:
        stop()


def test_survey_probe_frames_and_4d_scan(usim):
    state = usim.state()
    assert state.voltage_kV == pytest.approx(100.0) and state.camera_shape == (256, 256)
    assert state.camera_mrad_per_px == pytest.approx(
        usim.scan_4d((2, 2)).geometry.calibration.det_mrad_per_px
    )
    s = usim.survey((64, 64), fov_A=500.0)
    assert s.image.shape == (64, 64) and s.pixel_A == pytest.approx((500 / 64, 500 / 64))
    assert float(s.image.std()) > 0
    usim.move_probe((100.0, 200.0))
    assert usim.state().probe_A == pytest.approx((100.0, 200.0))
    frames = usim.frames_at([[100.0, 200.0], [400.0, 50.0]], exposure_ms=2.0)
    assert frames.shape == (2, 256, 256) and frames.sum() > 0
    src = usim.scan_4d((4, 4), exposure_ms=2.0)
    res = Pipeline(src, [CenterOfMassAnalysis(nthreads=1)], workers=1).run()
    assert res.complete and res.counters.frames_processed == 16
    # frames stream while Swift acquires: the first row arrives with the scan still running
    chunks = src.chunks(64)
    first = next(chunks)
    assert usim._lock.locked() and first.indices.tolist() == [0, 1, 2, 3]
    rest = np.concatenate([c.indices for c in chunks])
    assert rest.tolist() == list(range(4, 16)) and not usim._lock.locked()
    # abort during the streamed scan stops Swift's acquisition and says so
    chunks = usim.scan_4d((6, 4), exposure_ms=2.0).chunks(64)
    next(chunks)
    usim.abort()
    with pytest.raises(MicroscopeError, match="abort"):
        list(chunks)
    assert usim.frames_at([[10.0, 10.0]], exposure_ms=2.0).shape == (1, 256, 256)
    assert src.geometry.calibration.voltage_kV == pytest.approx(100.0)
    cube, energy = usim.spectrum_image((3, 4), exposure_ms=1.0)
    assert cube.shape == (3, 4, energy.size) and energy.size > 100 and cube.sum() > 0
    assert np.all(np.diff(energy) > 0)
    src = usim.scan_spectra((2, 3), exposure_ms=1.0)
    assert src.geometry.frame_shape == (1, energy.size)
    np.testing.assert_allclose(src.energy_eV, energy)
    chunks = list(src.chunks(64))
    assert np.concatenate([c.indices for c in chunks]).tolist() == list(range(6))
    assert sum(float(c.frames.sum()) for c in chunks) > 0
    spectra, energy = usim.spectra_at([[100.0, 200.0], [300.0, 10.0]], exposure_ms=1.0)
    assert spectra.shape == (2, energy.size) and spectra.sum() > 0
    with pytest.raises(ValueError, match="outside the field of view"):
        usim.move_probe((600.0, 0.0))


def test_remote_client_drives_usim_from_another_process(tmp_path):
    from stemedge.control.remote import RemoteMicroscope

    certs = make_certificates(tmp_path / "tls")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stemedge",
            "serve",
            "--backend",
            "swift",
            "--certs",
            str(certs.directory),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**subprocess_env(), "STEMEDGE_TOKEN": TOKEN},
        cwd=tmp_path,
    )
    try:
        line = proc.stdout.readline()
        assert "PYRO:" in line, proc.stderr.read()
        uri = line.split("stemedge serve: ")[1].strip()
        # refused on this server too: a wrong token, a disallowed operation, a bad range
        intruder = RemoteMicroscope(uri, certs, token="not-the-token-0123456789")
        with pytest.raises(Exception, match=r"(?i)handshake|denied|closed|token"):
            intruder.state()
        remote = RemoteMicroscope(uri, certs, token=TOKEN)
        with pytest.raises(AttributeError):
            remote._proxy().shutdown()
        with pytest.raises(ValueError, match="outside the field of view"):
            remote.move_probe((1e6, 0.0))
        s = remote.survey((32, 32), fov_A=500.0)
        assert s.image.shape == (32, 32)
        assert remote.frames_at([[10.0, 10.0]], exposure_ms=2.0).shape == (1, 256, 256)
        res = Pipeline(
            remote.scan_4d((4, 4), exposure_ms=2.0), [CenterOfMassAnalysis(nthreads=1)]
        ).run()
        assert res.complete and np.isfinite(res.results["com"]["shifts_px"]).all()
        # the steering loop drives Swift's simulator over Pyro5 like any Microscope
        pytest.importorskip("sklearn")
        from stemedge.steer import ComShift, SteeringLoop

        steer = SteeringLoop(
            remote, ComShift(), budget=5, n_init=3, survey_size=(32, 32), patch=8, seed=0
        ).run()
        assert len(steer.measured.values) == 5 and np.isfinite(steer.measured.values).all()
        assert steer.prediction.shape == (25, 25)
        remote.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        proc.stdout.close()
        proc.stderr.close()
