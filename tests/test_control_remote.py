"""stemedge serve + RemoteMicroscope: a real Pyro5 server in another process, mutual TLS and a
token; results equal the in-process microscope, and every wrong client is refused."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("Pyro5")
pytest.importorskip("cryptography")

from _helpers import subprocess_env
from stemedge.analysis import CenterOfMassAnalysis
from stemedge.control import SimulatedMicroscope
from stemedge.control.certs import make_certificates
from stemedge.pipeline import Pipeline

TOKEN = "stemedge-test-token-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    certs = make_certificates(tmp_path_factory.mktemp("tls"))
    env = {**subprocess_env(), "STEMEDGE_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stemedge",
            "serve",
            "--certs",
            str(certs.directory),
            "--sim-dose",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()
    if "PYRO:" not in line:
        proc.kill()
        pytest.fail(f"server did not start: {line!r} {proc.stderr.read()}")
    uri = line.split("stemedge serve: ")[1].strip()
    yield uri, certs
    proc.terminate()
    proc.wait(timeout=10)
    proc.stdout.close()
    proc.stderr.close()


@pytest.fixture(scope="module")
def remote(server):
    from stemedge.control.remote import RemoteMicroscope

    uri, certs = server
    return RemoteMicroscope(uri, certs, token=TOKEN)


def test_remote_equals_in_process(remote):
    local = SimulatedMicroscope(dose_per_ms=None)
    assert remote.state().camera_shape == local.state().camera_shape
    s = remote.survey((64, 64))
    assert s.image.shape == (64, 64) and s.pixel_A == pytest.approx(local.survey((64, 64)).pixel_A)
    pos = [[1.0, 2.0], [10.4, 20.8], [30.0, 5.0]]
    np.testing.assert_array_equal(remote.frames_at(pos), local.frames_at(pos))
    remote.move_probe((5.0, 6.0))
    assert remote.state().probe_A == (5.0, 6.0)


def test_remote_4d_scan_through_the_pipeline(remote):
    remote.survey((64, 64), fov_A=20.8)
    res = Pipeline(remote.scan_4d((8, 8)), [CenterOfMassAnalysis(nthreads=1)], workers=1).run()
    assert res.complete and res.counters.frames_processed == 64
    local = SimulatedMicroscope(dose_per_ms=None)
    local.survey((64, 64), fov_A=20.8)
    ref = Pipeline(local.scan_4d((8, 8)), [CenterOfMassAnalysis(nthreads=1)], workers=1).run()
    np.testing.assert_array_equal(res.results["com"]["shifts_px"], ref.results["com"]["shifts_px"])


def test_remote_spectrum_image_equals_in_process(remote):
    remote.survey((64, 64), fov_A=20.8)
    cube, energy = remote.spectrum_image((6, 5))
    local = SimulatedMicroscope(dose_per_ms=None)
    local.survey((64, 64), fov_A=20.8)
    ref_cube, ref_energy = local.spectrum_image((6, 5))
    np.testing.assert_array_equal(cube, ref_cube)
    np.testing.assert_array_equal(energy, ref_energy)
    pos = [[1.0, 2.0], [10.0, 3.0]]
    np.testing.assert_array_equal(remote.spectra_at(pos)[0], local.spectra_at(pos)[0])
    # the streamed spectrum image, through the pipeline on this side
    from stemedge.analysis import MeanPattern

    src = remote.scan_spectra((6, 5))
    np.testing.assert_array_equal(src.energy_eV, energy)
    res = Pipeline(src, [MeanPattern()], workers=1).run()
    np.testing.assert_allclose(
        res.results["mean_pattern"]["mean"][0], cube.mean((0, 1)), rtol=1e-5, atol=1e-12
    )
    with pytest.raises(ValueError, match="exposure_ms"):
        remote.spectrum_image((2, 2), exposure_ms=-1.0)


def test_steering_loop_runs_over_pyro5(remote):
    pytest.importorskip("sklearn")
    from stemedge.steer import PeakEnergy, SteeringLoop

    opts = dict(budget=8, n_init=3, survey_size=(32, 32), survey_fov_A=60.0, patch=8, seed=1)
    res = SteeringLoop(remote, PeakEnergy(), **opts).run()
    assert len(set(res.measured.candidate.tolist())) == 8
    # the values are the (noise-free) server's spectra at the chosen places, scalarized here
    local = SimulatedMicroscope(dose_per_ms=None)
    local.survey((8, 8), fov_A=60.0)
    spectra, energy = local.spectra_at(res.measured.positions_A)
    np.testing.assert_allclose(res.measured.values, PeakEnergy()(spectra, energy))


def test_bad_arguments_and_disallowed_operations_are_refused(remote):
    with pytest.raises(ValueError, match="outside the field of view"):
        remote.move_probe((1e6, 0.0))
    with pytest.raises(ValueError, match="detector"):
        remote.survey((8, 8), detector="BF")
    proxy = remote._proxy()
    with pytest.raises(TypeError, match="size"):
        proxy.survey("8x8", None, 1.0, "HAADF")
    with pytest.raises(AttributeError):
        _ = proxy._scope  # private state is not exposed
    with pytest.raises(AttributeError):
        proxy.shutdown()  # nothing beyond the allow-list


CLIENT = textwrap.dedent(
    """
    import sys, Pyro5, Pyro5.api
    from stemedge.control.certs import CertificatePaths
    uri, certs, token, mode = sys.argv[1:5]
    c = CertificatePaths(certs)
    Pyro5.config.SERIALIZER = "marshal"
    if mode != "plain":
        Pyro5.config.SSL = True
        Pyro5.config.SSL_CACERTS = str(c.ca)
        if mode != "nocert":
            Pyro5.config.SSL_CLIENTCERT = str(c.client_cert)
            Pyro5.config.SSL_CLIENTKEY = str(c.client_key)
    p = Pyro5.api.Proxy(uri)
    p._pyroHandshake = token
    p._pyroTimeout = 5
    print(p.ping())
    """
)


@pytest.mark.parametrize("mode", ["ok", "wrong-token", "nocert", "wrong-ca", "plain"])
def test_only_clients_with_certificate_and_token_get_in(server, tmp_path, mode):
    uri, certs = server
    cert_dir, token = str(certs.directory), TOKEN
    if mode == "wrong-token":
        token = "not-the-token-0123456789"
    if mode == "wrong-ca":
        cert_dir = str(make_certificates(tmp_path / "other").directory)
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            CLIENT,
            uri,
            cert_dir,
            token,
            "nocert" if mode == "nocert" else mode,
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )
    if mode == "ok":
        assert run.returncode == 0 and run.stdout.strip() == "stemedge", run.stderr
    else:
        assert run.returncode != 0, run.stdout
        # plain TCP meets a TLS socket: the connection closes before any call
        words = ("SecurityError", "SSL", "CommunicationError", "ConnectionClosedError", "refused")
        assert any(w in run.stderr for w in words), run.stderr[-500:]


def test_abort_reaches_a_long_remote_acquisition(remote):
    """The server is threaded: abort on its own connection stops a call that is running."""
    import threading

    errors = []

    def long_call():
        try:
            remote.frames_at(np.tile([[5.0, 5.0]], (6000, 1)))
        except Exception as exc:
            errors.append(exc)

    t = threading.Thread(target=long_call)
    t.start()
    import time

    time.sleep(0.3)
    remote.abort()
    t.join(timeout=60)
    assert errors and "aborted" in str(errors[0])
    assert remote.frames_at([[1.0, 1.0]]).shape == (1, 64, 64)  # the next call works


def test_stemedge_steer_drives_a_remote_microscope(server, tmp_path):
    pytest.importorskip("sklearn")
    uri, certs = server
    out = tmp_path / "steer"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "stemedge",
            "steer",
            "--remote",
            uri,
            "--certs",
            str(certs.directory),
            "--budget",
            "6",
            "--init",
            "3",
            "--survey",
            "32",
            "--quiet",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**subprocess_env(), "STEMEDGE_TOKEN": TOKEN},
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "6 measurements" in run.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["measurements"] == 6 and "truth_max" not in summary  # remote: no truth
    assert (out / "steer.png").stat().st_size > 10_000 and (out / "steer.emd").exists()
