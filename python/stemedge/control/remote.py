"""RemoteMicroscope: the Microscope interface through a Pyro5 proxy (stemedge serve).

    scope = RemoteMicroscope("PYRO:stemedge.microscope@microscope-pc:9090", "~/.stemedge/tls",
                             token=os.environ["STEMEDGE_TOKEN"])
    image = scope.survey((256, 256))

Calls share one connection (taken over by whichever thread calls: a pipeline's producer thread
streams a scan on it, no new TLS handshake per scan); :meth:`abort` opens its own, so it reaches
an acquisition that is running.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from stemedge.control.certs import CertificatePaths
from stemedge.control.microscope import Microscope, MicroscopeState, SurveyImage
from stemedge.control.server import configure_tls, pack, unpack
from stemedge.geometry import ScanGeometry
from stemedge.sources.base import Chunk, Source

__all__ = ["RemoteMicroscope"]


class RemoteMicroscope(Microscope):
    """A proxy for a Microscope served by :func:`stemedge.control.server.serve`."""

    def __init__(self, uri: str, certs: str | CertificatePaths, *, token: str) -> None:
        import Pyro5.api  # noqa: F401 (fail early if the extra is missing)

        self.uri = str(uri)
        self._certs = certs if isinstance(certs, CertificatePaths) else CertificatePaths(certs)
        self._token = token
        self._lock = threading.Lock()
        self._conn = None
        configure_tls(self._certs, server=False)

    def _call(self, name: str, *args: Any) -> Any:
        """One remote call on the shared connection (one call at a time)."""
        with self._lock:
            if self._conn is None:
                self._conn = self._new_proxy()
            self._conn._pyroClaimOwnership()
            return getattr(self._conn, name)(*args)

    def _new_proxy(self):
        """A connection to the server, authenticated with the token."""
        import Pyro5.api

        p = Pyro5.api.Proxy(self.uri)
        p._pyroHandshake = self._token
        p._pyroSerializer = "marshal"
        return p

    def _proxy(self):
        """The shared Pyro5 proxy, claimed for this thread (for tests of the raw protocol)."""
        self._call("ping")
        self._conn._pyroClaimOwnership()
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn._pyroClaimOwnership()
                self._conn._pyroRelease()
                self._conn = None

    def state(self) -> MicroscopeState:
        d = self._call("state")
        for key in ("probe_A", "fov_A", "camera_shape", "stage_nm"):
            d[key] = tuple(d[key])
        return MicroscopeState(**d)

    def survey(self, size=(256, 256), *, fov_A=None, dwell_us=2.0, detector="HAADF") -> SurveyImage:
        d = self._call("survey", [int(size[0]), int(size[1])], fov_A, float(dwell_us), detector)
        return SurveyImage(unpack(d["image"]), tuple(d["pixel_A"]), d["detector"], d["dwell_us"])

    def move_probe(self, position_A: Any) -> None:
        y, x = (float(v) for v in np.asarray(position_A, dtype=np.float64).reshape(2))
        self._call("move_probe", [y, x])

    def frames_at(self, positions_A: Any, *, exposure_ms: float = 1.0) -> np.ndarray:
        pos = np.asarray(positions_A, dtype=np.float64)
        return unpack(self._call("frames_at", pack(pos), float(exposure_ms)))

    def spectra_at(
        self, positions_A: Any, *, exposure_ms: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        pos = np.asarray(positions_A, dtype=np.float64)
        d = self._call("spectra_at", pack(pos), float(exposure_ms))
        return unpack(d["spectra"]), unpack(d["energy_eV"])

    def scan_4d(self, size, *, exposure_ms: float = 1.0) -> Source:
        return _RemoteScan(self, (int(size[0]), int(size[1])), float(exposure_ms))

    def scan_spectra(self, size, *, exposure_ms: float = 1.0) -> Source:
        return _RemoteScan(self, (int(size[0]), int(size[1])), float(exposure_ms), "spectra")

    def spectrum_image(self, size, *, exposure_ms: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        d = self._call("spectrum_image", [int(size[0]), int(size[1])], float(exposure_ms))
        return unpack(d["cube"]), unpack(d["energy_eV"])

    def show(self, title: str, data: Any, *, pixel_A: tuple[float, float] | None = None) -> None:
        pixel = None if pixel_A is None else [float(pixel_A[0]), float(pixel_A[1])]
        self._call("show", title, pack(np.asarray(data)), pixel)

    def abort(self) -> None:
        with self._new_proxy() as p:  # its own connection: the others may be busy
            p.abort()


class _RemoteScan(Source):
    def __init__(
        self, scope: RemoteMicroscope, size: tuple[int, int], exposure_ms: float, kind="4d"
    ) -> None:
        self._scope = scope
        self._size = size
        self._kind = kind
        # The geometry comes from the server; the scan starts when it is first streamed.
        info = scope._call("scan_start", list(size), exposure_ms, 256, kind)
        self._scan_id = info["scan_id"]
        self.geometry = ScanGeometry.from_dict(info["geometry"])
        if "energy_eV" in info:
            self.energy_eV = unpack(info["energy_eV"])

    def describe(self) -> dict[str, Any]:
        return {
            "kind": f"RemoteMicroscope.scan_{'spectra' if self._kind == 'spectra' else '4d'}",
            "uri": self._scope.uri,
            "scan": list(self._size),
        }

    def chunks(self, max_frames: int) -> Iterator[Chunk]:
        while True:
            d = self._scope._call("scan_next", self._scan_id)
            if d is None:
                return
            frames, idx = unpack(d["frames"]), unpack(d["indices"])
            for i in range(0, len(idx), max(1, max_frames)):
                yield Chunk(frames[i : i + max_frames], idx[i : i + max_frames])
