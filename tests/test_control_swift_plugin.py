"""The Swift plugin as Swift's own plugin loader loads it: a headless Swift application (no Qt)
with nionswift-usim; the plugin serves over Pyro5 + TLS and a client in another process drives
the simulated instrument; Swift's shutdown stops the server."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

pytest.importorskip("nionswift_plugin.usim")
pytest.importorskip("Pyro5")

from _helpers import subprocess_env
from stemedge.analysis import CenterOfMassAnalysis
from stemedge.control.certs import make_certificates
from stemedge.pipeline import Pipeline

pytestmark = pytest.mark.swift
TOKEN = "stemedge-plugin-token-0123456789"

SWIFT_APP = textwrap.dedent(
    """
    import json, pathlib, queue, sys, tempfile, threading, time
    from nion.ui import TestUI
    from nion.swift import Application, Facade
    from nion.swift.test import TestContext

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="swift_"))
    for d in ("data", "docs", "config"):
        (tmp / d).mkdir()

    class UI(TestUI.UserInterface):
        proxy = None
        def get_data_location(self): return str(tmp / "data")
        def get_document_location(self): return str(tmp / "docs")
        def get_configuration_location(self): return tmp / "config"

    Facade.initialize()
    app = Application.Application(UI(), set_global=True)
    app.initialize(load_plug_ins=True, use_root_dir=False)   # Swift's own plugin loader
    ctx = TestContext.MemoryProfileContext()
    dm = ctx.create_document_model(auto_close=False)
    dc = app.create_document_controller(dm, "library")
    print("swift up", flush=True)
    commands = queue.Queue()
    reader = lambda: [commands.put(line.strip()) for line in sys.stdin]
    threading.Thread(target=reader, daemon=True).start()
    while True:   # Swift's UI loop: periodic() runs the queued tasks; the test says when to stop
        dc.periodic()
        try:
            command = commands.get(timeout=0.02)
        except queue.Empty:
            continue
        if command == "quit":
            break
        if command == "items":   # what the document holds, for the test to check
            items = [
                {
                    "title": d.title,
                    "shape": list(d.xdata.data.shape),
                    "sum": float(d.xdata.data.sum()),
                    "scale": [c.scale for c in d.xdata.dimensional_calibrations],
                    "units": [c.units for c in d.xdata.dimensional_calibrations],
                }
                for d in dm.data_items
            ]
            print(json.dumps(items), flush=True)
    dc.close()
    app.deinitialize()   # unloads plugins: the extension's close() stops the server
    print("swift closed", flush=True)
    """
)


def test_the_plugin_ships_its_manifest():
    import importlib.resources

    manifest = json.loads(
        (
            importlib.resources.files("nionswift_plugin.stemedge_control") / "manifest.json"
        ).read_text()
    )
    assert manifest["identifier"] == "stemedge.control"
    assert manifest["requires"] == ["nion.instrumentation-kit ~= 0.1"]  # loads after it


def test_plugin_serves_usim_from_inside_swift(tmp_path):
    from stemedge.control.remote import RemoteMicroscope

    certs = make_certificates(tmp_path / "tls")
    env = {**subprocess_env(), "STEMEDGE_TOKEN": TOKEN, "STEMEDGE_CERTS": str(certs.directory)}
    swift = subprocess.Popen(
        [sys.executable, "-c", SWIFT_APP],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert swift.stdout.readline().strip() == "swift up", swift.stderr.read()
        uri_file = certs.directory / "uri.txt"
        deadline = time.monotonic() + 60
        while not uri_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert uri_file.exists(), "the plugin did not start serving"
        remote = RemoteMicroscope(uri_file.read_text().strip(), certs, token=TOKEN)
        assert remote.state().voltage_kV > 0
        assert remote.survey((32, 32), fov_A=500.0).image.shape == (32, 32)
        assert remote.frames_at([[100.0, 100.0]], exposure_ms=2.0).shape[0] == 1
        res = Pipeline(
            remote.scan_4d((3, 4), exposure_ms=2.0), [CenterOfMassAnalysis(nthreads=1)]
        ).run()
        assert res.complete and res.counters.frames_processed == 12
        cube, energy = remote.spectrum_image((2, 3), exposure_ms=1.0)
        assert cube.shape == (2, 3, energy.size) and cube.sum() > 0
        # a result goes into Swift's document through its task queue
        phase = np.arange(12, dtype=np.float32).reshape(3, 4)
        remote.show("stemedge phase", phase, pixel_A=(2.5, 2.5))
        with pytest.raises(ValueError, match="1D or 2D"):
            remote.show("cube", cube)
        swift.stdin.write("items\n")
        swift.stdin.flush()
        items = [i for i in json.loads(swift.stdout.readline()) if i["title"] == "stemedge phase"]
        assert len(items) == 1  # (Swift files its own acquisitions beside it)
        assert items[0]["shape"] == [3, 4] and items[0]["sum"] == float(phase.sum())
        assert items[0]["scale"] == [0.25, 0.25] and items[0]["units"] == ["nm", "nm"]
        remote.close()
        swift.stdin.write("quit\n")
        swift.stdin.flush()
        assert swift.stdout.readline().strip() == "swift closed"
        assert swift.wait(timeout=60) == 0
    finally:
        if swift.poll() is None:
            swift.kill()
        for f in (swift.stdin, swift.stdout, swift.stderr):
            f.close()
