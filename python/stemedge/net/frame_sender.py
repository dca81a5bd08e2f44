"""FrameSender: push the frames of a scan to a :class:`~stemedge.net.FrameReceiver` (SEFP).

Used by detector simulators and readout nodes, and as the pipeline's edge → HPC forwarder::

    with FrameSender("tcp://hpc-node:5555") as tx:
        tx.begin(geometry, metadata={"sample": "gold"})
        tx.send(frames, first_index)        # or tx.write_frames(frames, indices) as a sink
        tx.end()                            # close() ends the scan too

Thread-safe: every socket has its own lock held for the two parts of one message (ZeroMQ
sockets are not thread-safe), and ``end()`` waits for sends in flight so END always follows the
frames. With ``split_parts=k`` each frame is cut into k byte ranges sent from k sockets (one
sender each in the protocol's sense); ``parts=[p]`` sends only range p, as one readout node of
several would.
"""

from __future__ import annotations

import dataclasses
import itertools
import secrets
import threading
import time
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq

from stemedge.geometry import ScanGeometry
from stemedge.net.frame_protocol import (
    FLAG_CRC32,
    Header,
    MsgType,
    byte_ranges,
    dtype_code,
    encode_begin,
)

__all__ = ["HAND_OFF_MODES", "FrameSender"]

# How send() lets go of the caller's frames (benchmarks/bench_frame_protocol.py compares them):
#   track  (default) zero-copy; wait until libzmq has written the bytes to the socket, then
#          return. The fastest safe mode measured (sink case, 2 writer threads, 2 cores:
#          3.5-4.1 GB/s against 2.5 for "copy", tcp and ipc): the wait costs no CPU, and it
#          holds the ring slot, which is the backpressure we want.
#          After a TimeoutError the message may still leave later: abandon the scan then.
#   copy   libzmq gets its own copy (memcpy with the GIL released); return at once. Costs a
#          full extra pass over the data in the sender; use it when returning fast matters
#          more than CPU (bursty senders with deep queues).
#   borrow zero-copy, no wait: the caller must never modify the frames it sent (e.g. a fixed
#          test pattern); the sender keeps them alive until sent. Never for a sink.
HAND_OFF_MODES = ("copy", "track", "borrow")


@dataclasses.dataclass
class _Channel:
    """One PUSH socket = one sender of the protocol, sending byte range ``span`` of each frame."""

    sock: zmq.Socket
    endpoint: str
    rank: int
    span: tuple[int, int]  # (offset, nbytes) within a frame; set by begin()
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    pieces: int = 0  # frame pieces sent in the current scan (reported in END)
    messages: int = 0
    nbytes: int = 0


class FrameSender:
    """PUSH frames to a FrameReceiver.

    Parameters
    ----------
    endpoints : str or sequence of str
        ZeroMQ endpoint(s), e.g. ``"tcp://10.0.0.2:5555"`` or ``"ipc:///tmp/stemedge.ipc"``.
        Socket ``p`` uses ``endpoints[p % len(endpoints)]``; one socket never spreads over
        several endpoints (ZeroMQ would round-robin and END could overtake frames).
    bind : bool
        Bind instead of connect (the receiver then connects); needs one endpoint per socket.
    frames_per_message : int
        Consecutive frames grouped in one message. Match the receiver ring's ``slot_frames``
        (or a divisor of it) so every message lands in a slot in one piece.
    sndhwm : int
        Messages queued per socket before ``send`` blocks (backpressure from the receiver).
    split_parts : int
        Cut every frame into this many byte ranges, each sent from its own socket.
    parts : sequence of int, optional
        With ``split_parts``: the ranges this sender sends (default: all). A readout node of a
        detector read by k nodes runs ``FrameSender(ep, split_parts=k, parts=[node])``.
    crc : bool
        Send a CRC-32 of every payload (the receiver rejects mismatches): one more pass over
        the data on each side (zlib, ~4 GB/s per core here).
    hand_off : {'track', 'copy', 'borrow'}
        How ``send`` lets go of the caller's frames (``HAND_OFF_MODES`` in the source): when it
        returns, the frames may be reused ('track', 'copy') or must stay unchanged ('borrow').
    send_timeout_s : float
        A send blocked longer than this (no receiver taking frames) raises TimeoutError.
    linger_s : float
        How long ``close`` waits for queued messages to leave.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        bind: bool = False,
        frames_per_message: int = 16,
        sndhwm: int = 32,
        split_parts: int = 1,
        parts: Sequence[int] | None = None,
        crc: bool = False,
        hand_off: str = "track",
        send_timeout_s: float = 30.0,
        linger_s: float = 10.0,
    ) -> None:
        eps = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not eps or not all(isinstance(e, str) for e in eps):
            raise ValueError(
                f"endpoints must be a str or a non-empty list of str, got {endpoints!r}"
            )
        _check_positive("frames_per_message", frames_per_message)
        _check_positive("sndhwm", sndhwm)
        _check_positive("split_parts", split_parts)
        if split_parts > 0xFFFF:
            raise ValueError(f"split_parts must be at most 65535, got {split_parts}")
        ranks = list(range(split_parts)) if parts is None else [int(p) for p in parts]
        if (
            not ranks
            or len(set(ranks)) != len(ranks)
            or not all(0 <= p < split_parts for p in ranks)
        ):
            raise ValueError(
                f"parts must be distinct part numbers in 0 … {split_parts - 1}, got {parts!r}"
            )
        if hand_off not in HAND_OFF_MODES:
            raise ValueError(f"hand_off must be one of {HAND_OFF_MODES}, got {hand_off!r}")
        if bind and len(eps) < len(ranks):
            raise ValueError(
                f"bind=True needs one endpoint per socket ({len(ranks)}), got {len(eps)}"
            )
        self.frames_per_message = int(frames_per_message)
        self.split_parts = int(split_parts)
        self.crc = bool(crc)
        self.hand_off = hand_off
        self.send_timeout_s = float(send_timeout_s)
        self._ctx = zmq.Context()
        self._channels: list[_Channel] = []
        try:
            for i, rank in enumerate(ranks):
                sock = self._ctx.socket(zmq.PUSH)
                self._channels.append(_Channel(sock, eps[i % len(eps)], rank, (0, 0)))
                sock.setsockopt(zmq.SNDHWM, int(sndhwm))
                sock.setsockopt(zmq.SNDTIMEO, max(1, int(send_timeout_s * 1000)))
                sock.setsockopt(zmq.LINGER, max(0, int(linger_s * 1000)))
                (sock.bind if bind else sock.connect)(eps[i % len(eps)])
        except BaseException:
            self._close_sockets()
            raise
        # begin/end vs. sends in flight (end must follow every frame on every socket)
        self._cond = threading.Condition()
        self._inflight = 0
        self._geometry: ScanGeometry | None = None
        self._scan_id: int | None = None
        self._closed = False
        self._timed_out = False  # a send timed out: close() does not wait on END as well

    # -- scan -------------------------------------------------------------------------------------
    @property
    def scan_id(self) -> int | None:
        """The id of the scan being sent (None between scans)."""
        return self._scan_id

    @property
    def geometry(self) -> ScanGeometry | None:
        return self._geometry

    def begin(
        self,
        geometry: ScanGeometry,
        scan_id: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        """Start a scan: send BEGIN (geometry + metadata) on every socket. Returns the scan id
        (random unless given)."""
        if not isinstance(geometry, ScanGeometry):
            raise TypeError(f"geometry must be a ScanGeometry, got {type(geometry).__name__}")
        sid = secrets.randbits(63) if scan_id is None else int(scan_id)
        if not 0 <= sid < 1 << 64:
            raise ValueError(f"scan_id must fit in 64 unsigned bits, got {scan_id!r}")
        payload = encode_begin(geometry, metadata)
        spans = byte_ranges(geometry.frame_nbytes, self.split_parts, geometry.dtype.itemsize)
        with self._cond:
            self._check_open()
            if self._geometry is not None:
                raise RuntimeError("a scan is already being sent: call end() before begin()")
            for ch in self._channels:
                ch.span, ch.pieces = spans[ch.rank], 0
            base = self._base_header(geometry, sid)
            for ch in self._channels:
                self._send(ch, base._replace(type=MsgType.BEGIN), payload, owned=True)
            self._geometry, self._scan_id = geometry, sid
        return sid

    def end(self) -> dict[str, Any]:
        """End the scan: wait for sends in flight, send END (pieces sent) on every socket.
        Returns the sender's stats for the scan."""
        with self._cond:
            self._check_open()
            geometry, sid = self._geometry, self._scan_id
            if geometry is None or sid is None:
                raise RuntimeError("no scan to end: call begin(geometry) first")
            self._geometry = None  # new sends fail from here on
            self._cond.wait_for(lambda: self._inflight == 0)
            base = self._base_header(geometry, sid)
            for ch in self._channels:
                self._send(ch, base._replace(type=MsgType.END, n_frames=ch.pieces), b"", owned=True)
            stats = self.stats
            self._scan_id = None
        return stats

    # -- frames -----------------------------------------------------------------------------------
    def send(self, frames: np.ndarray, indices: Any) -> int:
        """Send a stack ``(n, det_y, det_x)`` (or one frame) at flat scan ``indices`` (n,) or
        starting at one first index. Consecutive indices travel together, up to
        ``frames_per_message`` per message. Returns n once the frames may be reused."""
        with self._cond:
            self._check_open()
            geometry, sid = self._geometry, self._scan_id
            if geometry is None or sid is None:
                raise RuntimeError("no scan begun: call begin(geometry) before sending frames")
            self._inflight += 1
        trackers: list[zmq.MessageTracker] = []
        try:
            frames, idx, consecutive = _check_frames(frames, indices, geometry)
            base = self._base_header(geometry, sid)
            u8 = frames.reshape(len(frames), -1).view(np.uint8)
            for a, b in _message_spans(idx, self.frames_per_message, consecutive):
                head = base._replace(first_index=int(idx[a]), n_frames=b - a)
                for ch in self._channels:
                    if (tracker := self._send_frames(ch, head, u8, a, b)) is not None:
                        trackers.append(tracker)
        finally:
            try:
                # every message of this call is queued before the first wait, so they travel
                # back to back; the frames are free only when all of them have left
                self._wait_sent(trackers)
            finally:
                with self._cond:
                    self._inflight -= 1
                    self._cond.notify_all()
        return len(idx)

    def write_frames(self, frames: np.ndarray, indices: np.ndarray) -> None:
        """Pipeline sink entry (``stemedge.pipeline.Sink``): the frames are ring-slot views,
        released when this returns, so they are handed off per ``hand_off`` ('borrow' is
        unsafe here). Call ``begin`` before the pipeline runs and ``close`` after."""
        self.send(frames, indices)

    def _send_frames(
        self, ch: _Channel, head: Header, u8: np.ndarray, a: int, b: int
    ) -> zmq.MessageTracker | None:
        off, nb = ch.span
        if self.split_parts == 1:
            payload, owned = u8[a:b], False  # contiguous rows of a C-contiguous stack
        elif b - a == 1:
            payload, owned = u8[a, off : off + nb], False
        else:
            # ranges of several frames are strided: one private copy, sent without further waits
            payload, owned = np.ascontiguousarray(u8[a:b, off : off + nb]), True
        head = head._replace(part=ch.rank, offset=off, payload_nbytes=payload.nbytes)
        return self._send(ch, head, payload, owned=owned, pieces=b - a)

    # -- sockets ----------------------------------------------------------------------------------
    def _base_header(self, geometry: ScanGeometry, sid: int) -> Header:
        fy, fx = geometry.frame_shape
        return Header(
            dtype=dtype_code(geometry.dtype),
            scan_id=sid,
            n_parts=self.split_parts,
            frame_nbytes=geometry.frame_nbytes,
            det_y=fy,
            det_x=fx,
            n_senders=self.split_parts,
        )

    def _send(
        self, ch: _Channel, head: Header, payload: Any, *, owned: bool, pieces: int = 0
    ) -> zmq.MessageTracker | None:
        """Send header + payload on one socket. Returns the tracker to wait for before
        ``payload`` may be reused ('track'), else None."""
        head = head._replace(sender=ch.rank, payload_nbytes=memoryview(payload).nbytes)
        if self.crc:
            head = head._replace(flags=head.flags | FLAG_CRC32, crc32=zlib.crc32(payload))
        mode = "borrow" if owned else self.hand_off
        tracker = None
        try:
            with ch.lock:
                ch.sock.send(head.pack(), zmq.SNDMORE)
                # ZeroMQ checks the high-water mark on a message's first part only: once the
                # header is queued the payload cannot block, so a message is never half-sent.
                if mode == "copy":
                    ch.sock.send(payload, copy=True)
                else:
                    tracker = ch.sock.send(payload, copy=False, track=mode == "track")
                ch.pieces += pieces
                ch.messages += 1
                ch.nbytes += head.payload_nbytes
        except zmq.Again:
            self._timed_out = True
            raise TimeoutError(self._timeout_message(ch.endpoint)) from None
        return tracker if mode == "track" else None

    def _wait_sent(self, trackers: list[zmq.MessageTracker]) -> None:
        deadline = time.monotonic() + self.send_timeout_s
        for tracker in trackers:
            try:
                tracker.wait(max(0.0, deadline - time.monotonic()))
            except zmq.NotDone:
                # the message may still leave later, reading the caller's memory: the scan is
                # not to be trusted after this error
                self._timed_out = True
                raise TimeoutError(self._timeout_message(self._channels[0].endpoint)) from None

    def _timeout_message(self, endpoint: str) -> str:
        return (
            f"no receiver took frames at {endpoint} within {self.send_timeout_s} s: is a "
            "FrameReceiver running there? (raise send_timeout_s for slow consumers)"
        )

    @property
    def stats(self) -> dict[str, Any]:
        """Messages, frame pieces and payload bytes sent, per socket (rank) and in total."""
        per = {
            ch.rank: {"pieces": ch.pieces, "messages": ch.messages, "bytes": ch.nbytes}
            for ch in self._channels
        }
        return {
            "scan_id": self._scan_id,
            "split_parts": self.split_parts,
            "hand_off": self.hand_off,
            "messages": sum(p["messages"] for p in per.values()),
            "bytes": sum(p["bytes"] for p in per.values()),
            "by_sender": per,
        }

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this FrameSender is closed")

    def close(self) -> None:
        """End the scan if one is open (so the receiver does not wait for it), then close the
        sockets, waiting up to ``linger_s`` for queued messages. Idempotent. After a send timed
        out no END is sent (the receiver reports the stream as stalled)."""
        if self._closed:
            return
        try:
            if self._geometry is not None and not self._timed_out:
                self.end()
        finally:
            with self._cond:
                self._closed = True
            self._close_sockets()

    def _close_sockets(self) -> None:
        for ch in self._channels:
            ch.sock.close()
        self._ctx.term()

    def __enter__(self) -> FrameSender:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except TimeoutError:
            if exc_type is None:
                raise
            # leaving on an error already: that one is reported, not the END that failed after


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_frames(
    frames: Any, indices: Any, geometry: ScanGeometry
) -> tuple[np.ndarray, np.ndarray, bool]:
    """The stack as (n, det_y, det_x) of the scan's dtype, C-contiguous, its indices (n,), and
    whether they are known to be consecutive (a first index was given)."""
    if isinstance(frames, np.ndarray) and frames.ndim == 2:
        frames = frames[np.newaxis]
    consecutive = np.ndim(indices) == 0
    idx = None if consecutive else geometry.as_indices(np.reshape(indices, -1))
    geometry.check_stack(frames, None if idx is None else len(idx))
    if not frames.flags.c_contiguous:
        # no silent copy of bulk data: the caller decides where the copy happens
        raise TypeError("frames must be C-contiguous: pass np.ascontiguousarray(frames)")
    if consecutive:
        idx = np.arange(int(indices), int(indices) + len(frames), dtype=np.int64)
    geometry.check_indices(idx)
    return frames, idx, consecutive


def _message_spans(idx: np.ndarray, per_message: int, consecutive: bool) -> list[tuple[int, int]]:
    """[a, b) spans of runs of consecutive indices, at most ``per_message`` long."""
    if consecutive:
        edges = [0, len(idx)]
    else:
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1
        edges = [0, *breaks.tolist(), len(idx)]
    spans = []
    for a, b in itertools.pairwise(edges):
        spans.extend((s, min(s + per_message, b)) for s in range(a, b, per_message))
    return spans
