"""The Pyro5 server in this process (so its state can be inspected): a client that goes away
in the middle of a scan does not leave the scan running on the server."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("Pyro5")
pytest.importorskip("cryptography")

from stemedge.control import SimulatedMicroscope
from stemedge.control.certs import make_certificates
from stemedge.control.remote import RemoteMicroscope
from stemedge.control.server import serve
from stemedge.sim import lattice

TOKEN = "stemedge-inprocess-token-0123456789"


def test_a_vanished_client_takes_its_scans_with_it(tmp_path):
    certs = make_certificates(tmp_path / "tls")
    scope = SimulatedMicroscope(lattice((64, 64), 0.26, seed=0), dose_per_ms=None, frame_rate=200)
    stop, up, box = threading.Event(), threading.Event(), []
    uri: list[str] = []

    def ready(u: str) -> None:
        uri.append(u)
        up.set()

    server = threading.Thread(
        target=serve,
        args=(scope, certs, TOKEN),
        kwargs={"ready": ready, "stop": stop, "service_out": box},
        daemon=True,
    )
    server.start()
    assert up.wait(20)
    service = box[0]
    try:
        client = RemoteMicroscope(uri[0], certs, token=TOKEN)
        chunks = client.scan_4d((16, 16)).chunks(16)  # 256 frames at 200/s: ~1.3 s
        next(chunks)
        assert service._running_scans() == 1
        client.close()  # the client goes away mid-scan, never asking for the rest
        deadline = time.monotonic() + 10
        while service._running_scans() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service._running_scans() == 0
        # the microscope is free again for the next client
        again = RemoteMicroscope(uri[0], certs, token=TOKEN)
        assert again.frames_at([[1.0, 1.0]]).shape == (1, 64, 64)
        again.close()
    finally:
        stop.set()
        server.join(timeout=10)
