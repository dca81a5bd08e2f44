"""RemoteMicroscope: the Microscope interface through a Pyro5 proxy (stemedge serve).

    scope = RemoteMicroscope("PYRO:stemedge.microscope@microscope-pc:9090", "~/.stemedge/tls",
                             token=os.environ["STEMEDGE_TOKEN"])
    image = scope.survey((256, 256))

Every thread gets its own connection (Pyro5 proxies are per thread), so :meth:`abort` from a
second thread reaches a running acquisition.
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
        self._local = threading.local()
        configure_tls(self._certs, server=False)

    def _proxy(self):
        p = getattr(self._local, "proxy", None)
        if p is None:
            import Pyro5.api

            p = Pyro5.api.Proxy(self.uri)
            p._pyroHandshake = self._token
            p._pyroSerializer = "marshal"
            self._local.proxy = p
        return p

    def close(self) -> None:
        p = getattr(self._local, "proxy", None)
        if p is not None:
            p._pyroRelease()
            self._local.proxy = None

    def state(self) -> MicroscopeState:
        d = self._proxy().state()
        for key in ("probe_A", "fov_A", "camera_shape", "stage_nm"):
            d[key] = tuple(d[key])
        return MicroscopeState(**d)

    def survey(self, size=(256, 256), *, fov_A=None, dwell_us=2.0, detector="HAADF") -> SurveyImage:
        d = self._proxy().survey([int(size[0]), int(size[1])], fov_A, float(dwell_us), detector)
        return SurveyImage(unpack(d["image"]), tuple(d["pixel_A"]), d["detector"], d["dwell_us"])

    def move_probe(self, position_A: Any) -> None:
        y, x = (float(v) for v in np.asarray(position_A, dtype=np.float64).reshape(2))
        self._proxy().move_probe([y, x])

    def frames_at(self, positions_A: Any, *, exposure_ms: float = 1.0) -> np.ndarray:
        pos = np.asarray(positions_A, dtype=np.float64)
        return unpack(self._proxy().frames_at(pack(pos), float(exposure_ms)))

    def scan_4d(self, size, *, exposure_ms: float = 1.0) -> Source:
        return _RemoteScan(self, (int(size[0]), int(size[1])), float(exposure_ms))

    def abort(self) -> None:
        import Pyro5.api

        with Pyro5.api.Proxy(self.uri) as p:  # its own connection: the others may be busy
            p._pyroHandshake = self._token
            p._pyroSerializer = "marshal"
            p.abort()


class _RemoteScan(Source):
    def __init__(self, scope: RemoteMicroscope, size: tuple[int, int], exposure_ms: float) -> None:
        self._scope = scope
        self._size = size
        self._exposure = exposure_ms
        self._started: dict[str, Any] | None = None
        self.geometry = None  # type: ignore[assignment]
        # The geometry comes from the server; the scan starts when it is first streamed.
        info = scope._proxy().scan_start(list(size), exposure_ms, 256)
        self._started = info
        self.geometry = ScanGeometry.from_dict(info["geometry"])

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "RemoteMicroscope.scan_4d",
            "uri": self._scope.uri,
            "scan": list(self._size),
        }

    def chunks(self, max_frames: int) -> Iterator[Chunk]:
        proxy = self._scope._proxy()
        scan_id = self._started["scan_id"]
        while True:
            d = proxy.scan_next(scan_id)
            if d is None:
                return
            frames, idx = unpack(d["frames"]), unpack(d["indices"])
            for i in range(0, len(idx), max(1, max_frames)):
                yield Chunk(frames[i : i + max_frames], idx[i : i + max_frames])
