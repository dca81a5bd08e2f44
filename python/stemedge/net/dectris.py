"""DECTRIS SIMPLON stream (API v1) receiver: detector → ZeroMQ → ring slots, compressed.

The detector (or :class:`stemedge.net.dectris_sim.DectrisSimulator`) binds a ZeroMQ PUSH socket
(port 9999 by default); the receiver connects a PULL socket and reads three kinds of multipart
messages (SIMPLON API reference, "stream" interface, stream API v1):

Global header, once per series when the detector is armed::

    1  {"htype": "dheader-1.0", "series": <id>, "header_detail": "all" | "basic" | "none"}
    2  basic, all: the detector configuration, one JSON object of config parameters
       (x_pixels_in_detector, y_pixels_in_detector, bit_depth_image, nimages, ntrigger,
       trigger_mode, count_time, frame_time, ...)
    3  all: {"htype": "dflatfield-1.0", "shape": [x, y], "type": "float32"}     4  its data
    5  all: {"htype": "dpixelmask-1.0", "shape": [x, y], "type": "uint32"}      6  its data
    7  all: {"htype": "dcountrate_table-1.0", "shape": [x, y], "type": "float32"} 8  its data
    last  the header_appendix, if the user set one

One message per image::

    1  {"htype": "dimage-1.0", "series": <id>, "frame": <0-based id>, "hash": "<md5 of 3>"}
    2  {"htype": "dimage_d-1.0", "shape": [x, y], "type": "uint16",
        "encoding": "bs16-lz4<" | "bs32-lz4<" | "bs8-lz4<" | "lz4<" | "<", "size": <bytes of 3>}
    3  the image: bitshuffle-LZ4 (12-byte header framing, as the bitshuffle HDF5 filter),
       a plain LZ4 block, or raw little-endian pixels
    4  {"htype": "dconfig-1.0", "start_time": <ns>, "stop_time": <ns>, "real_time": <ns>}
    5  the image_appendix, if the user set one

End of series: ``{"htype": "dseries_end-1.0", "series": <id>}``.

Shapes are ``[x, y]`` (width first); frames here are ``(y, x)``. The number of images is
``nimages * ntrigger`` (``ints``/``exts`` triggering) or ``ntrigger`` (``inte``/``exte``).

:meth:`DectrisReceiver.feed` receives each bitshuffle-LZ4 image with ``recv_into`` straight into
the ring slot at ``raw[i * frame_bytes:]`` and commits the slot with ``Encoding.BSLZ4`` and the
payload sizes; workers decode natively (:func:`stemedge.codecs.decode_stack`). Raw images go in as
frames (``Encoding.RAW``); plain LZ4 images, and bitshuffle-LZ4 payloads of incompressible frames
that are larger than the frame itself, are decoded natively into the slot on arrival. Every
image message is accepted, dropped (ring full under the drop policy) or rejected with a counted
reason (wrong series, frame id out of range or repeated, wrong shape/type/encoding, oversize,
malformed JSON, missing parts, corrupt header) — never silently lost, and a bad message never
touches frames already accepted.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import zmq

from stemedge import _native
from stemedge.calibration import Calibration
from stemedge.geometry import ScanGeometry
from stemedge.net.malloc_tuning import keep_freed_memory
from stemedge.ring import Encoding, FrameRing, RingClosed
from stemedge.sources.base import Chunk, Source, SourceError

__all__ = [
    "DEFAULT_ENDPOINT",
    "ENCODINGS",
    "DectrisReceiver",
    "SeriesHeader",
    "n_images_from_config",
]

DEFAULT_ENDPOINT = "tcp://127.0.0.1:9999"

HTYPE_HEADER = "dheader-1.0"
HTYPE_IMAGE = "dimage-1.0"
HTYPE_IMAGE_D = "dimage_d-1.0"
HTYPE_CONFIG = "dconfig-1.0"
HTYPE_END = "dseries_end-1.0"
HEADER_DATA_HTYPES = ("dflatfield-1.0", "dpixelmask-1.0", "dcountrate_table-1.0")

_BSLZ4, _LZ4, _RAW = "bslz4", "lz4", "raw"
_BSLZ4_BIG = "bslz4-big"  # a bitshuffle-LZ4 payload larger than the frame (incompressible)
# encoding string -> (kind, element bytes of the bitshuffle transform or None)
ENCODINGS: dict[str, tuple[str, int | None]] = {
    "bs8-lz4<": (_BSLZ4, 1),
    "bs16-lz4<": (_BSLZ4, 2),
    "bs32-lz4<": (_BSLZ4, 4),
    "lz4<": (_LZ4, None),
    "<": (_RAW, None),
}
_BIT_DEPTH_DTYPES = {8: np.dtype(np.uint8), 16: np.dtype(np.uint16), 32: np.dtype(np.uint32)}
_TYPES = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "float32": np.float32}

_REJECT_REASONS = (
    "malformed",  # a JSON part that does not parse, or lacks required fields
    "missing_parts",  # fewer parts than an image message has
    "series_mismatch",  # image of another series
    "frame_out_of_range",  # frame id not an int in [0, n_images)
    "duplicate",  # frame id already accepted
    "shape_mismatch",  # dimage_d shape/type differ from the series'
    "unsupported_encoding",  # encoding not in ENCODINGS (or big-endian, or wrong element size)
    "oversize",  # size beyond what any valid payload of a frame can take, or not positive
    "size_mismatch",  # data part not of the announced size
    "bad_payload",  # bitshuffle-LZ4 header disagrees with the frame, or LZ4 data corrupt
    "hash_mismatch",  # md5 differs (only with verify_hash=True)
)


_SCAN_ONCE = json.JSONDecoder().scan_once  # the C scanner json.loads ends up in


def _loads(part: bytes) -> Any:
    """``json.loads`` for the small per-image JSON parts, ~3x faster: the C scanner directly,
    without json.loads' encoding detection and wrappers; anything unusual (whitespace around
    the value, non-UTF-8, errors) goes through ``json.loads`` itself, so the result and the
    ValueError raised are exactly its."""
    try:
        text = part.decode()
        obj, end = _SCAN_ONCE(text, 0)
    except (UnicodeDecodeError, StopIteration, ValueError, AttributeError):
        return json.loads(part)
    if end != len(text):
        return json.loads(part)
    return obj


def _unwrap(value: Any) -> Any:
    """Config values are plain, or {"value": ..., ...} in some SIMPLON tools."""
    if isinstance(value, dict) and "value" in value:
        return value["value"]
    return value


def n_images_from_config(config: dict[str, Any]) -> int:
    """Images in a series: ``nimages * ntrigger`` (ints/exts), ``ntrigger`` (inte/exte)."""
    try:
        nimages = int(_unwrap(config["nimages"]))
    except (KeyError, TypeError, ValueError):
        raise SourceError("the detector config has no valid 'nimages'") from None
    ntrigger = int(_unwrap(config.get("ntrigger", 1)))
    mode = str(_unwrap(config.get("trigger_mode", "ints"))).lower()
    if nimages < 0 or ntrigger < 0:
        raise SourceError(f"the detector config has nimages={nimages}, ntrigger={ntrigger}")
    return ntrigger if mode in ("inte", "exte") else nimages * ntrigger


@dataclasses.dataclass(frozen=True, eq=False)
class SeriesHeader:
    """What the global header of a series said."""

    series: int
    header_detail: str
    config: dict[str, Any]  # detector configuration ({} for header_detail 'none')
    frame_shape: tuple[int, int] | None  # (y, x), None for 'none'
    dtype: np.dtype | None
    n_images: int | None
    flatfield: np.ndarray | None = None  # (y, x) float32, header_detail 'all'
    pixel_mask: np.ndarray | None = None  # (y, x) uint32, header_detail 'all'
    countrate_table: np.ndarray | None = None
    appendix: bytes | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "series": self.series,
            "header_detail": self.header_detail,
            "frame_shape": None if self.frame_shape is None else list(self.frame_shape),
            "dtype": None if self.dtype is None else self.dtype.str,
            "n_images": self.n_images,
            "config": self.config,
            "has_flatfield": self.flatfield is not None,
            "has_pixel_mask": self.pixel_mask is not None,
            "appendix_bytes": None if self.appendix is None else len(self.appendix),
        }


def _json(part: bytes, what: str) -> dict[str, Any]:
    try:
        d = json.loads(part)
    except ValueError:
        raise SourceError(f"{what}: not JSON ({bytes(part[:60])!r}…)") from None
    if not isinstance(d, dict):
        raise SourceError(f"{what}: expected a JSON object, got {type(d).__name__}")
    return d


def _header_array(meta: dict[str, Any], blob: bytes, htype: str) -> np.ndarray:
    try:
        x, y = (int(v) for v in meta["shape"][:2])
        dt = np.dtype(_TYPES[meta["type"]])
    except (KeyError, TypeError, ValueError):
        raise SourceError(f"{htype}: needs shape [x, y] and a known type, got {meta}") from None
    if len(blob) != x * y * dt.itemsize:
        raise SourceError(f"{htype}: {len(blob)} bytes for shape [{x}, {y}] of {dt}")
    return np.frombuffer(blob, dtype=dt).reshape(y, x).copy()


def parse_header(parts: list[bytes]) -> SeriesHeader:
    """Parse the parts of a ``dheader-1.0`` message (SourceError if malformed)."""
    d1 = _json(parts[0], "dheader-1.0")
    series = d1.get("series")
    if type(series) is not int:
        raise SourceError(f"dheader-1.0: series must be an int, got {series!r}")
    detail = d1.get("header_detail")
    if detail not in ("none", "basic", "all"):
        raise SourceError(f"dheader-1.0: header_detail must be none/basic/all, got {detail!r}")
    config: dict[str, Any] = {}
    frame_shape = dtype = n_images = None
    arrays: dict[str, np.ndarray] = {}
    i = 1
    if detail in ("basic", "all"):
        if len(parts) < 2:
            raise SourceError(
                f"dheader-1.0 (header_detail {detail!r}): the detector config is missing"
            )
        config = {k: _unwrap(v) for k, v in _json(parts[1], "detector config").items()}
        i = 2
        try:
            x = int(config["x_pixels_in_detector"])
            y = int(config["y_pixels_in_detector"])
            bits = int(config["bit_depth_image"])
        except KeyError as exc:
            raise SourceError(f"the detector config lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError):
            raise SourceError(
                "the detector config has non-integer pixel counts or bit depth"
            ) from None
        if x < 1 or y < 1:
            raise SourceError(f"the detector config has {x}×{y} pixels")
        if bits not in _BIT_DEPTH_DTYPES:
            raise SourceError(f"bit_depth_image {bits} is not 8, 16 or 32")
        frame_shape, dtype = (y, x), _BIT_DEPTH_DTYPES[bits]
        n_images = n_images_from_config(config)
    if detail == "all":
        while i + 1 < len(parts):
            try:
                meta = json.loads(parts[i])
            except ValueError:
                break
            if not isinstance(meta, dict) or meta.get("htype") not in HEADER_DATA_HTYPES:
                break
            arrays[meta["htype"]] = _header_array(meta, parts[i + 1], meta["htype"])
            i += 2
        missing = [h for h in HEADER_DATA_HTYPES if h not in arrays]
        if missing:
            raise SourceError(f"dheader-1.0 (header_detail 'all') lacks {', '.join(missing)}")
    appendix = bytes(parts[i]) if i < len(parts) else None
    return SeriesHeader(
        series=series,
        header_detail=detail,
        config=config,
        frame_shape=frame_shape,
        dtype=dtype,
        n_images=n_images,
        flatfield=arrays.get("dflatfield-1.0"),
        pixel_mask=arrays.get("dpixelmask-1.0"),
        countrate_table=arrays.get("dcountrate_table-1.0"),
        appendix=appendix,
    )


class _Stop(Exception):
    """Internal: the stop event was set or the ring closed while waiting."""


class DectrisReceiver(Source):
    """Receive one DECTRIS series (SIMPLON stream API v1) into a :class:`FrameRing`.

    Parameters
    ----------
    endpoint : str
        The detector's stream endpoint (``tcp://<detector>:9999``); the receiver connects.
    geometry : ScanGeometry, optional
        The whole geometry. Its frame shape and dtype are checked against the header; needed
        when the detector sends ``header_detail`` 'none'.
    scan_shape : (scan_y, scan_x), optional
        The scan only (DECTRIS does not know it); frame shape and dtype come from the header, so
        reading :attr:`geometry` waits for it (``begin_timeout_s``). With neither ``geometry``
        nor ``scan_shape``, the scan is one row of the series' images ``(1, n_images)``.
    calibration : Calibration, optional
        With ``scan_shape``: travels in the geometry.
    begin_timeout_s : float
        How long to wait for the series header (SourceError after).
    stall_timeout_s : float
        SourceError when a running series sends nothing for this long (what was accepted stays
        in the ring).
    max_latency_s : float
        Commit a partly filled slot once its first frame is this old (or the stream pauses), so
        slow streams are analysed promptly.
    verify_hash : bool
        Check each image's md5 (costs ~1.5 ms/MB of payload; off by default).
    rcvhwm : int
        ZeroMQ receive high-water mark (messages queued before TCP pushes back).
    poll_s : float
        Receive timeout of one poll: how often an idle receiver checks ``stop``, ``close()``,
        the stall timer and partly filled slots.
    tune_malloc : bool
        Keep freed message buffers in the process (process-wide glibc thresholds,
        :mod:`stemedge.net.malloc_tuning`), so images are not faulted in afresh.

    Frame ``f`` of the series goes to flat scan index ``f``. One receiver takes one series;
    make a new one for the next.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        geometry: ScanGeometry | None = None,
        scan_shape: tuple[int, int] | None = None,
        calibration: Calibration | None = None,
        begin_timeout_s: float = 30.0,
        stall_timeout_s: float = 5.0,
        max_latency_s: float = 0.05,
        verify_hash: bool = False,
        rcvhwm: int = 4096,
        poll_s: float = 0.02,
        tune_malloc: bool = True,
    ) -> None:
        if not hasattr(zmq.Socket, "recv_into"):
            raise ImportError(
                f"DectrisReceiver needs pyzmq >= 26.4 (recv_into); have {zmq.__version__}"
            )
        if geometry is not None and not isinstance(geometry, ScanGeometry):
            raise TypeError(f"geometry must be a ScanGeometry, got {type(geometry).__name__}")
        if (
            geometry is not None
            and scan_shape is not None
            and tuple(scan_shape) != geometry.scan_shape
        ):
            raise ValueError(
                f"scan_shape {scan_shape} differs from geometry.scan_shape "
                f"{geometry.scan_shape}; pass one of them"
            )
        if geometry is not None and calibration is not None:
            raise ValueError("calibration goes into the geometry; pass one of them")
        for name, v in (
            ("begin_timeout_s", begin_timeout_s),
            ("stall_timeout_s", stall_timeout_s),
            ("max_latency_s", max_latency_s),
            ("poll_s", poll_s),
        ):
            if not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {v!r}")
        if scan_shape is not None:  # validate early, with ScanGeometry's own checks
            ScanGeometry(scan_shape, (1, 1), np.uint8)
        self.endpoint = endpoint
        self._geometry = geometry
        self._scan_shape = tuple(scan_shape) if scan_shape is not None else None
        self._calibration = calibration
        self.begin_timeout_s = float(begin_timeout_s)
        self.stall_timeout_s = float(stall_timeout_s)
        self.max_latency_s = float(max_latency_s)
        self.verify_hash = bool(verify_hash)
        self.malloc_tuned = keep_freed_memory() if tune_malloc else False
        self.header: SeriesHeader | None = None
        self._n_images = 0
        self._lock = threading.Lock()  # one consumer of the socket at a time
        self._started = False
        self._closed = False
        # counters (written by the receiving thread, read anywhere)
        self.images_received = 0
        self.frames_accepted = 0
        self.frames_dropped = 0
        self.rejected: collections.Counter[str] = collections.Counter()
        self.stray_messages = 0  # before the header, other series' ends, unknown htypes
        self.end_received = False
        self._ctx = zmq.Context(io_threads=1)
        try:
            sock = self._ctx.socket(zmq.PULL)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, int(rcvhwm))
            sock.setsockopt(zmq.RCVTIMEO, max(1, round(poll_s * 1000)))
            sock.setsockopt(zmq.RCVBUF, 4 << 20)
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self._ctx.destroy(linger=0)
            raise ValueError(f"endpoint {endpoint!r}: {exc}") from None
        self._sock = sock

    # -- description ------------------------------------------------------------------------------
    @property
    def geometry(self) -> ScanGeometry:  # type: ignore[override]
        """The scan geometry; with only ``scan_shape`` given, waits for the series header."""
        if self._geometry is None:
            self.wait_for_header()
        assert self._geometry is not None  # set by wait_for_header or SourceError raised
        return self._geometry

    @property
    def n_images(self) -> int:
        """Images the series will send (from the header; the scan size for 'none')."""
        self.wait_for_header()
        return self._n_images

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "DectrisReceiver",
            "protocol": "DECTRIS SIMPLON stream v1",
            "endpoint": self.endpoint,
            "header": None if self.header is None else self.header.describe(),
            "verify_hash": self.verify_hash,
        }

    def counters(self) -> dict[str, Any]:
        """Accounting of every image message: ``images_received == frames_accepted +
        frames_dropped + frames_rejected``."""
        rejected = dict(self.rejected)
        return {
            "series": None if self.header is None else self.header.series,
            "n_images": self._n_images if self.header is not None else None,
            "images_received": self.images_received,
            "frames_accepted": self.frames_accepted,
            "frames_dropped": self.frames_dropped,
            "frames_rejected": sum(rejected.values()),
            "rejected_by_reason": rejected,
            "stray_messages": self.stray_messages,
            "end_received": self.end_received,
        }

    # -- header -----------------------------------------------------------------------------------
    def _drain(self) -> None:
        """Discard the remaining parts of the current message."""
        sock = self._sock
        while sock.getsockopt(zmq.RCVMORE):
            sock.recv_into(bytearray())

    def wait_for_header(
        self, timeout: float | None = None, stop: threading.Event | None = None
    ) -> SeriesHeader:
        """Receive until a series header arrives (once; later calls return it).

        Messages before it (images of a series already running, other series' ends) are
        discarded and counted in ``stray_messages``. SourceError after ``timeout``
        (default ``begin_timeout_s``) or for a malformed header.
        """
        if self.header is not None:
            return self.header
        with self._lock:
            if self.header is not None:
                return self.header
            self._check_open()
            limit = self.begin_timeout_s if timeout is None else float(timeout)
            deadline = time.monotonic() + limit
            sock = self._sock
            while True:
                if stop is not None and stop.is_set():
                    raise _Stop
                if self._closed:
                    raise RuntimeError("this DectrisReceiver was closed while waiting for a header")
                try:
                    p1 = sock.recv()
                except zmq.Again:
                    if time.monotonic() > deadline:
                        raise SourceError(
                            f"no DECTRIS series header (dheader-1.0) from {self.endpoint} within "
                            f"{limit:g} s: is the detector armed, with the stream interface "
                            "enabled and sending to this address?"
                        ) from None
                    continue
                try:
                    is_header = _loads(p1).get("htype") == HTYPE_HEADER
                except (ValueError, AttributeError):
                    is_header = False
                if not is_header:
                    self._drain()
                    self.stray_messages += 1
                    continue
                parts = [p1]
                while sock.getsockopt(zmq.RCVMORE):
                    parts.append(sock.recv())
                header = parse_header(parts)
                self._adopt(header)
                return header

    def _adopt(self, header: SeriesHeader) -> None:
        geo = self._geometry
        if header.frame_shape is None:  # header_detail 'none'
            if geo is None:
                raise SourceError(
                    "the detector sends header_detail 'none' (no detector config): set it to "
                    "'basic' or 'all', or pass geometry=ScanGeometry(scan, (y, x), dtype)"
                )
            n_images = geo.n_positions
        else:
            if geo is None:
                scan = self._scan_shape or (1, max(header.n_images, 1))  # one row by default
                geo = ScanGeometry(scan, header.frame_shape, header.dtype, self._calibration)
            elif geo.frame_shape != header.frame_shape or geo.dtype != header.dtype:
                raise SourceError(
                    f"the detector streams {header.frame_shape[0]}×{header.frame_shape[1]} "
                    f"{header.dtype} frames but geometry says {geo.frame_shape[0]}×"
                    f"{geo.frame_shape[1]} {geo.dtype}"
                )
            n_images = header.n_images
            if n_images > geo.n_positions:
                raise SourceError(
                    f"the series has {n_images} images but the scan only {geo.n_positions} "
                    f"positions ({geo.scan_shape[0]}×{geo.scan_shape[1]}); pass the right "
                    "scan_shape"
                )
        self._geometry = geo
        self._n_images = int(n_images)
        self.header = header

    # -- receiving --------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this DectrisReceiver is closed")

    def feed(self, ring: FrameRing, stop: threading.Event) -> None:
        """Receive the series into ``ring`` until its end message (or ``stop``).

        Waits for the header first (``begin_timeout_s``). Returns normally at the series end,
        or when every image arrived and no end message followed within ``stall_timeout_s``.
        Raises SourceError if the stream stalls mid-series or a new series starts; the frames
        accepted until then are committed. Does not close the ring.
        """
        try:
            self.wait_for_header(stop=stop)
        except _Stop:
            return
        geo = self.geometry
        if tuple(ring.frame_shape) != geo.frame_shape or ring.dtype != geo.dtype:
            raise ValueError(
                f"ring holds {ring.frame_shape} {ring.dtype} frames but the series has "
                f"{geo.frame_shape} {geo.dtype}"
            )
        with self._lock:
            self._check_open()
            if self._started:
                raise RuntimeError(
                    f"this receiver already took series {self.header.series}; make a new "
                    "DectrisReceiver for the next series"
                )
            self._started = True
            try:
                self._receive(ring, stop)
            except _Stop:
                return

    def _acquire(self, ring: FrameRing, stop: threading.Event):
        """A slot, or None when the ring is full under the drop policy."""
        if ring.policy == "drop":
            return ring.acquire()
        while True:
            try:
                return ring.acquire(timeout=0.1)
            except TimeoutError:
                if stop.is_set() or self._closed:
                    raise _Stop from None

    def _receive(self, ring: FrameRing, stop: threading.Event) -> None:
        hdr = self.header
        assert hdr is not None
        geo = self._geometry
        sock = self._sock
        recv, recv_into, getsockopt = sock.recv, sock.recv_into, sock.getsockopt
        RCVMORE = zmq.RCVMORE
        loads = _loads
        monotonic = time.monotonic
        unpack_from = struct.unpack_from
        series = hdr.series
        n_images = self._n_images
        fb = ring.frame_bytes
        slot_frames = ring.slot_frames
        itemsize = geo.dtype.itemsize
        exp_shape = [geo.frame_shape[1], geo.frame_shape[0]]
        exp_type = geo.dtype.name
        # Largest valid payloads: LZ4_compressBound for 'lz4<'; for bitshuffle-LZ4 of
        # incompressible frames, the header + per-block sizes and LZ4 overhead (8 KiB blocks).
        big_bound = 12 + 20 * (fb // 8192 + 2) + fb + fb // 255
        big_buf: bytearray | None = None
        discard = bytearray()
        seen = bytearray(n_images)
        rejected = self.rejected
        verify = self.verify_hash
        stall, max_latency = self.stall_timeout_s, self.max_latency_s
        enc_of = ENCODINGS.get

        slot = None
        slot_enc = Encoding.RAW
        k = 0
        raw = raw_mv = frames_view = indices = nbytes = None
        slot_t0 = 0.0
        last_msg = monotonic()

        def reject(reason: str) -> None:
            if getsockopt(RCVMORE):
                self._drain()
            rejected[reason] += 1

        try:
            while True:
                if stop.is_set() or self._closed:
                    return
                try:
                    p1 = recv()
                except zmq.Again:
                    now = monotonic()
                    if k:  # the stream paused: hand the partial slot over now
                        slot.commit(k, slot_enc)
                        slot, k = None, 0
                    if now - last_msg > stall:
                        if self.images_received - rejected["series_mismatch"] >= n_images:
                            return  # every image arrived; the end message did not
                        raise SourceError(
                            f"DECTRIS stream stalled: nothing for {stall:g} s after "
                            f"{self.frames_accepted} of {n_images} images of series {series} "
                            f"({self.endpoint})"
                        ) from None
                    continue
                now = last_msg = monotonic()
                try:
                    d1 = loads(p1)
                    htype = d1["htype"]
                except (ValueError, TypeError, KeyError):
                    self.images_received += 1  # unparseable: counted as a bad image message
                    reject("malformed")
                    continue

                if htype != HTYPE_IMAGE:
                    if htype == HTYPE_END and d1.get("series") == series:
                        self._drain()
                        self.end_received = True
                        return
                    if htype == HTYPE_HEADER:
                        self._drain()
                        raise SourceError(
                            f"series {series} ended without dseries_end after "
                            f"{self.frames_accepted} of {n_images} images: a new series "
                            f"({d1.get('series')!r}) began"
                        )
                    self._drain()
                    self.stray_messages += 1
                    continue

                # -- an image: parts 1 and 2 are JSON, 3 the data, 4 dconfig --------------------
                self.images_received += 1
                if not getsockopt(RCVMORE):
                    rejected["missing_parts"] += 1
                    continue
                try:
                    d2 = loads(recv())
                    if d2["htype"] != HTYPE_IMAGE_D:
                        reject("missing_parts")
                        continue
                    enc, size = d2["encoding"], d2["size"]
                except (ValueError, TypeError, KeyError):
                    reject("malformed")
                    continue
                if not getsockopt(RCVMORE):
                    rejected["missing_parts"] += 1
                    continue
                frame = d1.get("frame")
                image_series = d1.get("series")
                codec = enc_of(enc) if type(enc) is str else None
                reason = None
                if type(image_series) is not int or image_series != series:
                    reason = "series_mismatch"
                elif type(frame) is not int or not 0 <= frame < n_images:
                    reason = "frame_out_of_range"
                elif seen[frame]:
                    reason = "duplicate"
                elif d2.get("shape") != exp_shape or d2.get("type") != exp_type:
                    reason = "shape_mismatch"
                elif codec is None or (codec[1] is not None and codec[1] != itemsize):
                    reason = "unsupported_encoding"
                elif type(size) is not int or size <= 0 or size > big_bound:
                    reason = "oversize"
                elif codec[0] is _RAW and size != fb:
                    reason = "size_mismatch"
                if reason is not None:
                    recv_into(discard)
                    reject(reason)
                    continue

                kind = codec[0]
                if kind is _BSLZ4 and size > fb:
                    kind = _BSLZ4_BIG  # does not fit the slot's frame: decoded on arrival
                want = Encoding.BSLZ4 if kind is _BSLZ4 else Encoding.RAW
                if k and want != slot_enc:  # one encoding per slot
                    slot.commit(k, slot_enc)
                    slot, k = None, 0
                if slot is None:
                    slot = self._acquire(ring, stop)
                    if slot is None:  # ring full, drop policy
                        recv_into(discard)
                        if getsockopt(RCVMORE):
                            self._drain()
                        ring.count_dropped(1)
                        self.frames_dropped += 1
                        continue
                    raw, frames_view, indices, nbytes = (
                        slot.raw,
                        slot.frames,
                        slot.indices,
                        slot.nbytes,
                    )
                    raw_mv = memoryview(raw)
                    slot_enc, slot_t0 = want, now

                off = k * fb
                if kind is _LZ4 or kind is _BSLZ4_BIG:
                    if big_buf is None:
                        big_buf = bytearray(big_bound)
                    got = recv_into(big_buf)
                else:
                    got = recv_into(raw_mv[off : off + fb])
                if got != size:
                    reject("size_mismatch")
                    continue
                if not getsockopt(RCVMORE):
                    rejected["missing_parts"] += 1
                    continue
                if b"dconfig-1.0" not in recv():
                    reject("missing_parts")
                    continue
                if getsockopt(RCVMORE):
                    self._drain()  # image_appendix
                if kind is _BSLZ4:
                    total, block = unpack_from(">QI", raw_mv, off) if size >= 12 else (-1, 1)
                    if total != fb or block % itemsize or (block // itemsize) % 8:
                        rejected["bad_payload"] += 1
                        continue
                    payload = raw_mv[off : off + size]
                elif kind is _LZ4 or kind is _BSLZ4_BIG:
                    payload = memoryview(big_buf)[:size]
                    decode = _native.lz4_decode if kind is _LZ4 else _native.bslz4_decode
                    try:
                        decode(payload, frames_view[k])
                    except ValueError:
                        rejected["bad_payload"] += 1
                        continue
                else:
                    payload = raw_mv[off : off + size]
                if verify and hashlib.md5(payload).hexdigest() != d1.get("hash"):
                    rejected["hash_mismatch"] += 1
                    continue

                seen[frame] = 1
                indices[k] = frame
                nbytes[k] = size
                k += 1
                self.frames_accepted += 1
                if k == slot_frames or now - slot_t0 > max_latency:
                    slot.commit(k, slot_enc)
                    slot, k = None, 0
        except RingClosed:
            return  # the consumers went away (pipeline aborted)
        finally:
            if slot is not None:  # nothing accepted is lost (an aborted ring counts it)
                if k:
                    slot.commit(k, slot_enc)
                else:
                    slot.cancel()

    def chunks(self, max_frames: int) -> Iterator[Chunk]:
        """The series as decoded chunks (frames are views reused between chunks).

        Runs :meth:`feed` into a private ring in a thread and decodes each stack natively.
        """
        from stemedge import codecs

        if int(max_frames) < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames!r}")
        geo = self.geometry
        ring = FrameRing(
            geo.frame_shape, geo.dtype, slots=4, slot_frames=int(max_frames), pinned=False
        )
        stop = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self.feed(ring, stop)
            except BaseException as exc:  # re-raised in the consumer below
                errors.append(exc)
            finally:
                ring.close()

        thread = threading.Thread(target=run, name="stemedge-dectris", daemon=True)
        thread.start()
        scratch = codecs.scratch_for(ring)
        try:
            for stack in ring:
                yield Chunk(codecs.decode_stack(stack, scratch), stack.indices)
        finally:
            stop.set()
            ring.abort()
            thread.join()
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Close the socket and its context. Idempotent; a thread receiving on it stops within
        ``poll_s`` (feed returns, wait_for_header raises RuntimeError) before the socket closes."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self._sock.close(linger=0)
            self._ctx.term()
