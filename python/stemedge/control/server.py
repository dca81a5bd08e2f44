"""The Microscope served over Pyro5: mutual TLS, a token, an allow-list, raw-byte arrays.

- **Transport:** TLS with client certificates from the server's CA
  (:mod:`stemedge.control.certs`); plain TCP and unknown certificates fail the TLS handshake.
- **Token:** the Pyro5 connection handshake carries a token, compared in constant time; a
  wrong or missing one closes the connection before any call.
- **Operations:** only the methods of :class:`MicroscopeService`, each checking its argument
  types here and its ranges in the Microscope. Pyro5 has no pickle, so no code travels.
- **Arrays** travel as ``{"dtype", "shape", "data": bytes}`` (marshal or msgpack serializers
  carry bytes as bytes), never as lists.
- **Threads:** a threaded server (one thread per connection), so ``abort`` on a second
  connection reaches an acquisition that is running.
"""

from __future__ import annotations

import hmac
import itertools
import math
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from stemedge.control.certs import CertificatePaths
from stemedge.control.microscope import Microscope

__all__ = ["OBJECT_ID", "MicroscopeService", "configure_tls", "pack", "serve", "unpack"]

OBJECT_ID = "stemedge.microscope"
_MAX_ARRAY_BYTES = 2**31


def pack(a: np.ndarray) -> dict[str, Any]:
    """An array as a dict of plain types with its bytes (C order, native little-endian)."""
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def unpack(d: Any) -> np.ndarray:
    """The inverse of :func:`pack`, refusing anything malformed."""
    if not isinstance(d, dict) or set(d) != {"dtype", "shape", "data"}:
        raise TypeError("expected a packed array {'dtype', 'shape', 'data'}")
    dtype = np.dtype(str(d["dtype"]))
    if dtype.kind not in "biuf" or dtype.itemsize > 8:
        raise TypeError(f"packed array: dtype {dtype} is not allowed")
    shape = tuple(int(s) for s in d["shape"])
    data = d["data"]
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("packed array: data must be bytes")
    if any(s < 0 for s in shape) or math.prod(shape) * dtype.itemsize != len(data):
        raise ValueError(f"packed array: {len(data)} bytes do not make {dtype} {shape}")
    return np.frombuffer(bytes(data), dtype).reshape(shape)


def _current_connection() -> Any:
    try:
        import Pyro5.api

        return Pyro5.api.current_context.client
    except Exception:  # called outside a Pyro5 request (tests, in-process use)
        return None


def _pair(value: Any, name: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise TypeError(f"{name} must be a (y, x) pair")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise TypeError(f"{name} must hold numbers")
    return float(value[0]), float(value[1])


def _size(value: Any) -> tuple[int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise TypeError("size must be a (ny, nx) pair")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TypeError("size must hold integers")
    return int(value[0]), int(value[1])


def _number(value: Any, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number")
    return float(value)


def _positions(value: Any) -> Any:
    pos = unpack(value) if isinstance(value, dict) else value
    if not isinstance(pos, np.ndarray):
        if not isinstance(pos, (list, tuple)):
            raise TypeError("positions must be a list of (y, x) pairs or a packed array")
        pos = [_pair(p, "position") for p in pos]
    return pos


class _Scan:
    """A running scan, pulled from its source by a thread of its own into a bounded queue.

    ``scan_next`` waits for the first stack, then takes whatever else has already arrived, up
    to ``max_frames``: a fast source is batched (few round trips), a slow one (an instrument
    acquiring) streams stack by stack as it acquires, instead of waiting for a full batch.
    """

    _END = object()

    def __init__(self, chunks, max_frames: int, owner: Any = None) -> None:
        self.max_frames = max_frames
        self.owner = owner  # the connection that started it: its scans end with it
        self.queue: queue.Queue = queue.Queue(maxsize=64)  # backpressure on the source
        self.done = False
        self.cancelled = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._pull, args=(chunks,), name="stemedge-scan", daemon=True
        )
        self.thread.start()

    def _pull(self, chunks) -> None:
        try:
            for chunk in chunks:
                if self.cancelled:
                    break
                # copies: a source may reuse its buffers once it is asked for the next stack
                self.queue.put((np.array(chunk.frames), np.asarray(chunk.indices, np.int64)))
        except BaseException as e:
            self.error = e
        finally:
            if self.cancelled:
                chunks.close()  # the source's own cleanup: an instrument stops acquiring
            self.queue.put(self._END)

    def cancel(self) -> None:
        """Stop pulling (the client is gone): unblock a full queue, end the source."""
        self.cancelled = True
        try:
            while True:
                self.queue.get_nowait()
        except queue.Empty:
            pass

    def take(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        frames: list[np.ndarray] = []
        indices: list[np.ndarray] = []
        n = 0
        while not self.done and n < self.max_frames:
            try:
                item = self.queue.get(block=not frames)
            except queue.Empty:
                break
            if item is self._END:
                self.done = True
                if self.error is not None:
                    raise self.error
                break
            frames.append(item[0])
            indices.append(item[1])
            n += len(item[1])
        return frames, indices


class MicroscopeService:
    """The allow-listed operations (Pyro5 exposes exactly these public methods)."""

    def __init__(self, microscope: Microscope) -> None:
        self._scope = microscope
        self._scans: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def ping(self) -> str:
        return "stemedge"

    def state(self) -> dict[str, Any]:
        d = self._scope.state().to_dict()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def survey(self, size: Any, fov_A: Any, dwell_us: Any, detector: Any) -> dict[str, Any]:
        fov = None if fov_A is None else _number(fov_A, "fov_A")
        if not isinstance(detector, str):
            raise TypeError("detector must be a string")
        s = self._scope.survey(
            _size(size), fov_A=fov, dwell_us=_number(dwell_us, "dwell_us"), detector=detector
        )
        return {
            "image": pack(s.image),
            "pixel_A": list(s.pixel_A),
            "detector": s.detector,
            "dwell_us": s.dwell_us,
        }

    def move_probe(self, position: Any) -> None:
        self._scope.move_probe(_pair(position, "position"))

    def frames_at(self, positions: Any, exposure_ms: Any) -> dict[str, Any]:
        return pack(
            self._scope.frames_at(
                _positions(positions), exposure_ms=_number(exposure_ms, "exposure_ms")
            )
        )

    def spectra_at(self, positions: Any, exposure_ms: Any) -> dict[str, Any]:
        spectra, energy = self._scope.spectra_at(
            _positions(positions), exposure_ms=_number(exposure_ms, "exposure_ms")
        )
        return {"spectra": pack(spectra), "energy_eV": pack(energy)}

    def scan_start(
        self, size: Any, exposure_ms: Any, max_frames: Any, kind: Any = "4d"
    ) -> dict[str, Any]:
        """Start a streamed scan: ``kind`` "4d" (camera frames) or "spectra" (EELS)."""
        n = int(_number(max_frames, "max_frames"))
        if not 1 <= n <= 4096:
            raise ValueError("max_frames must be in [1, 4096]")
        if kind not in ("4d", "spectra"):
            raise ValueError(f"kind must be '4d' or 'spectra', got {kind!r}")
        start = self._scope.scan_4d if kind == "4d" else self._scope.scan_spectra
        source = start(_size(size), exposure_ms=_number(exposure_ms, "exposure_ms"))
        scan_id = f"scan-{next(self._ids)}"
        owner = _current_connection()
        with self._lock:
            self._scans[scan_id] = _Scan(source.chunks(n), n, owner)
        reply = {"scan_id": scan_id, "geometry": source.geometry.to_dict()}
        if kind == "spectra":
            reply["energy_eV"] = pack(np.asarray(source.energy_eV, np.float32))
        return reply

    def scan_next(self, scan_id: Any) -> dict[str, Any] | None:
        """The next stack of a scan: packed frames and flat indices; None when it is complete."""
        if not isinstance(scan_id, str):
            raise TypeError("scan_id must be a string")
        with self._lock:
            it = self._scans.get(scan_id)
        if it is None:
            raise KeyError(f"no scan {scan_id!r} running")
        try:
            frames, indices = it.take()
        except Exception:
            with self._lock:
                self._scans.pop(scan_id, None)
            raise
        if not indices:
            with self._lock:
                self._scans.pop(scan_id, None)
            return None
        return {"frames": pack(np.concatenate(frames)), "indices": pack(np.concatenate(indices))}

    def spectrum_image(self, size: Any, exposure_ms: Any) -> dict[str, Any]:
        cube, energy = self._scope.spectrum_image(
            _size(size), exposure_ms=_number(exposure_ms, "exposure_ms")
        )
        return {"cube": pack(cube), "energy_eV": pack(energy)}

    def show(self, title: Any, data: Any, pixel_A: Any) -> None:
        pixel = None if pixel_A is None else _pair(pixel_A, "pixel_A")
        self._scope.show(title, unpack(data), pixel_A=pixel)

    def abort(self) -> None:
        self._scope.abort()

    def _drop_scans_of(self, connection: Any) -> int:
        """End the scans a disconnected client started (called by the daemon, not exposed)."""
        with self._lock:
            gone = [k for k, v in self._scans.items() if v.owner is connection]
            scans = [self._scans.pop(k) for k in gone]
        for scan in scans:
            scan.cancel()
        return len(scans)

    def _running_scans(self) -> int:
        with self._lock:
            return len(self._scans)


def _register_errors() -> None:
    """MicroscopeError crosses the wire as itself (Pyro5 refuses unknown classes otherwise)."""
    import Pyro5.api

    from stemedge.control.microscope import MicroscopeError

    name = f"{MicroscopeError.__module__}.{MicroscopeError.__name__}"
    Pyro5.api.register_class_to_dict(
        MicroscopeError, lambda e: {"__class__": name, "message": str(e)}
    )
    Pyro5.api.register_dict_to_class(
        name, lambda _cls, d: MicroscopeError(str(d.get("message", "")))
    )


def configure_tls(certs: CertificatePaths, *, server: bool) -> None:
    """Pyro5's process-wide TLS settings: mutual TLS with this CA (clients need a certificate)."""
    import Pyro5
    import Pyro5.socketutil

    _register_errors()

    cfg = Pyro5.config
    # Pyro5 builds its TLS context once per process and caches it: drop the cached one, so a
    # process can talk to servers of another CA (or serve with other certificates) later.
    key = "__ssl_server_context" if server else "__ssl_client_context"
    if hasattr(Pyro5.socketutil, key):
        setattr(Pyro5.socketutil, key, None)
    cfg.SSL = True
    cfg.SSL_CACERTS = str(certs.ca)
    cfg.SSL_REQUIRECLIENTCERT = True
    if server:
        cfg.SSL_SERVERCERT = str(certs.server_cert)
        cfg.SSL_SERVERKEY = str(certs.server_key)
    else:
        cfg.SSL_CLIENTCERT = str(certs.client_cert)
        cfg.SSL_CLIENTKEY = str(certs.client_key)
    cfg.SERIALIZER = "marshal"
    cfg.SERVERTYPE = "thread"
    cfg.SOCK_NODELAY = True  # small requests must not wait for Nagle + delayed ACKs (~40 ms)


def serve(
    microscope: Microscope,
    certs: CertificatePaths,
    token: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    service_out: list | None = None,
) -> None:
    """Serve ``microscope`` until ``stop`` is set (or forever). ``ready(uri)`` is called once the
    daemon listens; ``service_out``, a list, receives the served MicroscopeService (in-process
    inspection)."""
    import Pyro5.api
    import Pyro5.errors

    if not isinstance(token, str) or len(token) < 16:
        raise ValueError("the token must be a string of at least 16 characters")
    configure_tls(certs, server=True)

    service_cls = Pyro5.api.behavior(instance_mode="single")(Pyro5.api.expose(MicroscopeService))
    service = service_cls(microscope)

    class _Daemon(Pyro5.api.Daemon):
        def validateHandshake(self, conn, data):
            if not isinstance(data, str) or not hmac.compare_digest(data.encode(), token.encode()):
                raise Pyro5.errors.SecurityError("refused: wrong or missing token")
            return "stemedge"

        def clientDisconnect(self, conn):
            service._drop_scans_of(conn)  # nothing keeps acquiring for a client that is gone

    if service_out is not None:
        service_out.append(service)
    with _Daemon(host=host, port=port) as daemon:
        uri = daemon.register(service, OBJECT_ID)
        if ready is not None:
            ready(str(uri))
        flag = stop or threading.Event()
        daemon.requestLoop(loopCondition=lambda: not flag.is_set())
