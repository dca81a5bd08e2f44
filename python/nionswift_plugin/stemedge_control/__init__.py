"""stemedge's Nion Swift plugin: the microscope served over authenticated Pyro5 from inside Swift.

Swift loads it with its other plugins (namespace package ``nionswift_plugin``). It serves only
when configured, through the environment of the Swift process:

- ``STEMEDGE_CERTS``: a directory made by :func:`stemedge.control.certs.make_certificates`
  (``ca.pem``, ``server.pem``, ``server.key``);
- ``STEMEDGE_TOKEN``: the shared secret (≥ 16 characters);
- ``STEMEDGE_HOST`` / ``STEMEDGE_PORT``: where to listen (default 127.0.0.1, any free port).

Once Swift has registered its STEM controller, scan device and ronchigram camera, the daemon
runs on a background thread. Acquisitions run on Pyro5's threads and touch no document; results a
client shows (``RemoteMicroscope.show``) become data items through Swift's task queue, on Swift's
UI thread, and the call returns once the item exists. The URI goes to Swift's log and to
``$STEMEDGE_CERTS/uri.txt``. ``close()`` (Swift's shutdown) stops the daemon.
"""

from __future__ import annotations

import logging
import os
import threading
import time

_log = logging.getLogger("stemedge.control.swift_plugin")


class StemedgeControlExtension:
    """Swift builds it (class name ending in ``Extension``, with an ``extension_id``) at load."""

    extension_id = "stemedge.control"

    def __init__(self, api_broker) -> None:
        self._api = api_broker.get_api(version="~1.0")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.uri: str | None = None
        self._certs = os.environ.get("STEMEDGE_CERTS", "")
        self._token = os.environ.get("STEMEDGE_TOKEN", "")
        if not self._certs or len(self._token) < 16:
            _log.info("stemedge control: STEMEDGE_CERTS/STEMEDGE_TOKEN not set; not serving")
            return
        self._thread = threading.Thread(target=self._run, name="stemedge-control", daemon=True)
        self._thread.start()

    def _devices(self, timeout: float = 30.0):
        """The STEM controller, scan device and ronchigram camera, once Swift has registered them
        (device plugins register in their own run(), after this extension is built)."""
        from nion.utils import Registry

        deadline = time.monotonic() + timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            inst = Registry.get_component("stem_controller")
            scan = getattr(inst, "scan_controller", None) if inst is not None else None
            camera = getattr(inst, "ronchigram_camera", None) if inst is not None else None
            if scan is not None and camera is not None:
                return inst, scan, camera
            time.sleep(0.1)
        return None

    def _display(self, title: str, data, pixel_A) -> None:
        """Runs on a Pyro5 thread: the document is changed on Swift's thread, and we wait."""
        from stemedge.control.microscope import MicroscopeError

        done = threading.Event()
        failure: list[BaseException] = []

        def task() -> None:
            try:
                windows = self._api.application.document_windows
                if not windows:
                    raise MicroscopeError("Swift has no document window to show results in")
                item = windows[0].library.create_data_item_from_data(data.copy(), title)
                if pixel_A is not None and data.ndim == 2:
                    item.set_dimensional_calibrations(
                        [self._api.create_calibration(0.0, p / 10.0, "nm") for p in pixel_A]
                    )
            except BaseException as e:  # handed to the caller, not lost in Swift's log
                failure.append(e)
            finally:
                done.set()

        self._api.queue_task(task)
        if not done.wait(30.0):
            raise MicroscopeError("Swift did not run the display task within 30 s")
        if failure:
            raise MicroscopeError(f"Swift refused the data item: {failure[0]}")

    def _run(self) -> None:
        from stemedge.control.certs import CertificatePaths
        from stemedge.control.server import serve
        from stemedge.control.swift import SwiftMicroscope

        devices = self._devices()
        if devices is None:
            _log.warning("stemedge control: no STEM controller, scan device and ronchigram camera")
            return
        inst, scan, camera = devices
        certs = CertificatePaths(self._certs)

        def ready(uri: str) -> None:
            self.uri = uri
            (certs.directory / "uri.txt").write_text(uri + "\n")
            _log.info("stemedge control: serving %s", uri)

        try:
            serve(
                SwiftMicroscope(
                    inst,
                    scan,
                    camera,
                    getattr(inst, "eels_camera", None),
                    display=self._display,
                ),
                certs,
                self._token,
                host=os.environ.get("STEMEDGE_HOST", "127.0.0.1"),
                port=int(os.environ.get("STEMEDGE_PORT", "0")),
                ready=ready,
                stop=self._stop,
            )
        except Exception:
            _log.exception("stemedge control: the server stopped")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
