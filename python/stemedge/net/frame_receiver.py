"""FrameReceiver: a :class:`~stemedge.sources.base.Source` that PULLs one scan sent with SEFP.

Whole frames go from the socket into ring slots: the header part is read with ``recv()``,
checked, and only then is the payload read. A message of at least ``lend_bytes`` is not copied
at all: its frames are lent to the ring as a view of libzmq's message (``WriteSlot.lend``), one
message per slot. Smaller messages are read with ``recv_into`` into the free part of the current
slot (libzmq's one copy out of its message, no Python-side buffer), at most as many bytes as the
checked header promises; such a slot is committed when full, when the next message does not fit,
when its first frame has waited ``flush_s`` (live latency), and at the end.

Split frames (byte ranges from several senders) are reassembled in a bounded cache keyed by
frame index (the scan id is fixed per receiver); a frame still incomplete after
``reassembly_timeout_s``, pushed out of a full cache, or left at the end is counted as rejected.
Complete frames are copied once into the slot.

Every message that is not accepted is counted in ``stats["rejected_by_reason"]`` (one count per
rejected message, per duplicated frame, per incomplete split frame) and never touches accepted
frames. Frames accounting: ``sent = accepted + dropped + rejected + missing``, where ``missing``
(frames the senders' END messages announce but that never arrived) is reported in ``stats`` and
``describe()``; it is not an error unless ``require_complete=True``, because a live scan that
lost frames is still worth analysing. A stalled stream raises :class:`SourceError` after
``stall_timeout_s``; everything received before stays committed.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import zmq

from stemedge.geometry import ScanGeometry
from stemedge.net.frame_protocol import (
    FLAG_CRC32,
    MAX_BEGIN_BYTES,
    Header,
    MsgType,
    ProtocolError,
    decode_begin,
    dtype_code,
)
from stemedge.net.malloc_tuning import keep_freed_memory
from stemedge.ring import RingClosed
from stemedge.sources.base import Chunk, Source, SourceError

__all__ = ["FrameReceiver"]

_TICK_S = 0.1  # longest poll: how quickly stop events and timeouts are noticed
_NOTHING = bytearray()  # recv_into(_NOTHING) discards a part without copying it

_DELIVERED, _LOST = 1, 2  # per scan position: accepted or dropped / split frame given up


class _Stopped(Exception):
    """The consumer side asked us to stop (stop event set, ring closed or aborted)."""


# -- where frames go: ring slots (feed) or private buffers (chunks) -------------------------------
class _RingTarget:
    def __init__(self, ring, stop: threading.Event) -> None:
        self.ring, self.stop, self.capacity = ring, stop, ring.slot_frames

    def check(self, geometry: ScanGeometry) -> None:
        if (tuple(self.ring.frame_shape), self.ring.dtype) != (
            geometry.frame_shape,
            geometry.dtype,
        ):
            raise ValueError(
                f"ring holds {self.ring.dtype} frames of {tuple(self.ring.frame_shape)} but the "
                f"scan sends {geometry.dtype} frames of {geometry.frame_shape}: make the ring "
                "with FrameRing(receiver.geometry.frame_shape, receiver.geometry.dtype)"
            )

    def acquire(self):
        # short waits so a stop request is seen while consumers hold every slot
        while True:
            try:
                return self.ring.acquire(timeout=_TICK_S)  # None: full under the drop policy
            except TimeoutError:
                if self.stop.is_set():
                    raise _Stopped from None
            except RingClosed:
                raise _Stopped from None

    def count_dropped(self, n: int) -> None:
        self.ring.count_dropped(n)


class _BufferSlot:
    __slots__ = ("_target", "frames", "indices", "raw")

    def __init__(self, target: _BufferTarget, frames: np.ndarray, indices: np.ndarray) -> None:
        self._target, self.frames, self.indices = target, frames, indices
        self.raw = frames.reshape(-1).view(np.uint8)

    def commit(self, n: int) -> None:
        self._target.ready.append((self, n))

    def cancel(self) -> None:
        self._target.free.append(self)


class _BufferTarget:
    """Slots for ``chunks()``: a buffer is reused only after the consumer moved past it."""

    def __init__(self, capacity: int, geometry: ScanGeometry) -> None:
        self.capacity, self.geometry = capacity, geometry
        self.free: list[_BufferSlot] = []
        self.ready: collections.deque[tuple[_BufferSlot, int]] = collections.deque()

    def check(self, geometry: ScanGeometry) -> None:
        pass

    def acquire(self) -> _BufferSlot:
        if self.free:
            return self.free.pop()
        g = self.geometry
        return _BufferSlot(
            self,
            np.empty((self.capacity, *g.frame_shape), g.dtype),
            np.empty(self.capacity, np.int64),
        )

    def count_dropped(self, n: int) -> None:  # never full
        pass

    def take(self) -> Iterator[Chunk]:
        while self.ready:
            slot, n = self.ready.popleft()
            yield Chunk(slot.frames[:n], slot.indices[:n])
            self.free.append(slot)


class _SlotWriter:
    """The slot being filled: frames land at ``pos``; ``commit`` publishes them."""

    def __init__(self, target, frame_nbytes: int) -> None:
        self.target, self.fb, self.cap = target, frame_nbytes, target.capacity
        self.slot = None
        self.pos = 0
        self.t_first = 0.0  # arrival of the slot's first frame (flush deadline)

    def reserve(self, n: int):
        """The current slot if ``n`` more frames fit, else a fresh one; None when the ring is
        full under the drop policy."""
        if self.slot is not None and self.cap - self.pos >= n:
            return self.slot
        self.commit()
        self.slot = self.target.acquire()
        return self.slot

    def filled(self, idx: np.ndarray) -> None:
        """``len(idx)`` frames were written at ``pos``: record their indices."""
        if self.pos == 0:
            self.t_first = time.monotonic()
        k = len(idx)
        self.slot.indices[self.pos : self.pos + k] = idx
        self.pos += k
        if self.pos == self.cap:
            self.commit()

    def place(self, rows: np.ndarray, idx: np.ndarray) -> tuple[int, int]:
        """Copy frames ``rows`` (m, frame_nbytes) uint8 into slots. Returns (placed, dropped)."""
        i = 0
        while i < len(idx):
            slot = self.reserve(1)
            if slot is None:  # ring full (drop policy): the rest of this batch is dropped
                self.target.count_dropped(len(idx) - i)
                return i, len(idx) - i
            m = min(self.cap - self.pos, len(idx) - i)
            slot.raw[self.pos * self.fb : (self.pos + m) * self.fb] = rows[i : i + m].reshape(-1)
            self.filled(idx[i : i + m])
            i += m
        return i, 0

    def due(self, flush_s: float) -> float | None:
        """When the partial slot must be committed (None: nothing waiting)."""
        return self.t_first + flush_s if self.slot is not None and self.pos else None

    def commit(self) -> None:
        slot, n = self.slot, self.pos
        self.slot, self.pos = None, 0
        if slot is None:
            return
        if n:
            slot.commit(n)
        else:
            slot.cancel()


# -- split frames ---------------------------------------------------------------------------------
@dataclasses.dataclass
class _Partial:
    buf: np.ndarray
    n_parts: int
    deadline: float
    parts: set[int] = dataclasses.field(default_factory=set)
    spans: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    nbytes: int = 0


class _Reassembly:
    """Incomplete split frames, oldest first (arrival order = deadline order), at most
    ``max_pending``; frame buffers are pooled so steady streams allocate nothing."""

    def __init__(self, frame_nbytes: int, max_pending: int, timeout_s: float) -> None:
        self.fb, self.max_pending, self.timeout_s = frame_nbytes, max_pending, timeout_s
        self.pending: collections.OrderedDict[int, _Partial] = collections.OrderedDict()
        self.pool: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.pending)

    def add(
        self, index: int, part: int, n_parts: int, offset: int, data: np.ndarray, now: float
    ) -> tuple[np.ndarray | None, list[int]]:
        """Store one byte range. Returns (the frame if now complete, frames evicted to make
        room). ProtocolError for a duplicated or inconsistent range."""
        evicted = []
        entry = self.pending.get(index)
        if entry is None:
            while len(self.pending) >= self.max_pending:
                old, e = self.pending.popitem(last=False)
                self.pool.append(e.buf)
                evicted.append(old)
            buf = self.pool.pop() if self.pool else np.empty(self.fb, np.uint8)
            entry = self.pending[index] = _Partial(buf, n_parts, now + self.timeout_s)
        end = offset + len(data)
        if part in entry.parts:
            raise ProtocolError("duplicate", f"part {part} of frame {index} arrived twice")
        if n_parts != entry.n_parts or any(a < end and offset < b for a, b in entry.spans):
            raise ProtocolError(
                "bad_split", f"part {part} of frame {index} does not fit the others"
            )
        entry.buf[offset:end] = data
        entry.parts.add(part)
        entry.spans.append((offset, end))
        entry.nbytes += len(data)
        if len(entry.parts) == n_parts and entry.nbytes == self.fb:
            del self.pending[index]
            return entry.buf, evicted
        return None, evicted

    def release(self, buf: np.ndarray) -> None:
        self.pool.append(buf)

    def next_deadline(self) -> float | None:
        return next(iter(self.pending.values())).deadline if self.pending else None

    def expire(self, now: float | None) -> list[int]:
        """Give up frames past their deadline (all frames when ``now`` is None)."""
        gone = []
        while self.pending:
            index, entry = next(iter(self.pending.items()))
            if now is not None and entry.deadline > now:
                break
            del self.pending[index]
            self.pool.append(entry.buf)
            gone.append(index)
        return gone


# -- the receiver ---------------------------------------------------------------------------------
class FrameReceiver(Source):
    """Receive one scan from :class:`~stemedge.net.FrameSender` (s) into a ring (module doc)::

        rx = FrameReceiver("tcp://*:5555")   # bind first: senders may start any time after
        g = rx.geometry                      # waits for BEGIN (or pass geometry=...)
        ring = FrameRing(g.frame_shape, g.dtype, slot_frames=16)
        rx.feed(ring, stop)                  # or Pipeline(rx, analyses).run()
        rx.stats                             # accepted / dropped / rejected / missing ...

    Parameters
    ----------
    endpoint : str or sequence of str
        Where to listen (``bind=True``, e.g. ``"tcp://*:5555"``) or connect.
    bind : bool
        Bind (the usual: senders connect to the receiver) or connect to binding senders.
    geometry : ScanGeometry, optional
        Use this instead of the BEGIN message's (e.g. to add a calibration); its scan and frame
        shape and dtype must match the BEGIN's.
    begin_timeout_s : float
        How long ``geometry``, ``feed`` and ``chunks`` wait for the first BEGIN.
    stall_timeout_s : float
        ``feed``/``chunks`` raise SourceError("stalled …") after this long without a valid
        message (junk does not keep a dead stream alive).
    max_pending_frames : int
        Incomplete split frames kept at once; the oldest is given up when more arrive.
    reassembly_timeout_s : float
        How long a split frame may wait for its missing ranges.
    flush_s : float
        Longest time a received frame waits in a partly filled slot before it is committed.
    rcvhwm : int
        Messages ZeroMQ queues before the senders block (backpressure).
    max_message_bytes : int
        Largest payload accepted; bigger ones are rejected before any byte lands in a slot.
    require_complete : bool
        Raise SourceError at the end if frames are missing (after committing what arrived).
    lend_bytes : int or None
        Payloads this large or larger are lent to the ring without a copy (default 256 KiB;
        None: always copy). Never into a ring pinned for CUDA (copied there, into page-locked
        memory) nor into ``chunks()``'s buffers.
    tune_malloc : bool
        Keep freed message buffers in the process (glibc's mmap threshold to 64 MiB, trim
        threshold to 256 MiB, process-wide: :mod:`stemedge.net.malloc_tuning`). Without it each
        large message is faulted in afresh: a third more receiver CPU per GB here.
    """

    def __init__(
        self,
        endpoint: str | Sequence[str],
        *,
        bind: bool = True,
        geometry: ScanGeometry | None = None,
        begin_timeout_s: float = 10.0,
        stall_timeout_s: float = 10.0,
        max_pending_frames: int = 64,
        reassembly_timeout_s: float = 2.0,
        flush_s: float = 0.005,
        rcvhwm: int = 64,
        max_message_bytes: int = 256 << 20,
        require_complete: bool = False,
        lend_bytes: int | None = 256 << 10,
        tune_malloc: bool = True,
    ) -> None:
        eps = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        if not eps or not all(isinstance(e, str) for e in eps):
            raise ValueError(f"endpoint must be a str or a non-empty list of str, got {endpoint!r}")
        if geometry is not None and not isinstance(geometry, ScanGeometry):
            raise TypeError(
                f"geometry must be a ScanGeometry or None, got {type(geometry).__name__}"
            )
        for name, v in (
            ("begin_timeout_s", begin_timeout_s),
            ("stall_timeout_s", stall_timeout_s),
            ("reassembly_timeout_s", reassembly_timeout_s),
            ("flush_s", flush_s),
        ):
            if not v > 0:
                raise ValueError(f"{name} must be positive, got {v!r}")
        for name, v in (
            ("max_pending_frames", max_pending_frames),
            ("rcvhwm", rcvhwm),
            ("max_message_bytes", max_message_bytes),
        ):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.begin_timeout_s, self.stall_timeout_s = float(begin_timeout_s), float(stall_timeout_s)
        self.max_pending_frames, self.reassembly_timeout_s = (
            max_pending_frames,
            reassembly_timeout_s,
        )
        self.flush_s, self.max_message_bytes = float(flush_s), max_message_bytes
        self.require_complete = bool(require_complete)
        if lend_bytes is not None and (not isinstance(lend_bytes, int) or lend_bytes < 1):
            raise ValueError(f"lend_bytes must be a positive int or None, got {lend_bytes!r}")
        self.lend_bytes = lend_bytes
        self.malloc_tuned = keep_freed_memory() if tune_malloc else False
        self._user_geometry = geometry
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PULL)
        try:
            self._sock.setsockopt(zmq.RCVHWM, rcvhwm)
            self._sock.setsockopt(zmq.LINGER, 0)
            for i, ep in enumerate(eps):
                if bind:
                    self._sock.bind(ep)
                    # the address really bound: "tcp://127.0.0.1:*" picks a free port
                    eps[i] = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
                else:
                    self._sock.connect(ep)
        except BaseException:
            self._sock.close()
            self._ctx.term()
            raise
        self.endpoints, self.bind = eps, bool(bind)
        self._lock = threading.Lock()  # the socket is used by one thread at a time
        self._begun = threading.Event()
        self._closed = self._used = False
        # scan state, set by the first BEGIN
        self._geometry: ScanGeometry | None = None
        self._metadata: dict[str, Any] = {}
        self._scan_id: int | None = None
        self._n_senders = 0
        self._senders: set[int] = set()
        self._ended: dict[int, tuple[int, int]] = {}  # sender → (pieces, parts per frame)
        self._state = np.zeros(0, np.uint8)
        self._frame_key: tuple[int, ...] = ()
        self._cache: _Reassembly | None = None
        self._scratch = np.empty(0, np.uint8)
        self._last_begin_problem = ""
        # counters
        self._rejected: collections.Counter[str] = collections.Counter()
        self._accepted = self._dropped = self._frames_rejected = 0
        self._messages = self._bytes = self._lent = 0
        self._stalled = False

    # -- public -----------------------------------------------------------------------------------
    @property
    def geometry(self) -> ScanGeometry:
        """The scan's geometry: from the constructor, else from BEGIN (waits for it up to
        ``begin_timeout_s``; SourceError if none comes)."""
        if self._geometry is None:
            self._wait_begin()
        return self._geometry

    @property
    def endpoint(self) -> str:
        """The (first) endpoint, as bound: senders connect here."""
        return self.endpoints[0]

    @property
    def scan_id(self) -> int | None:
        return self._scan_id

    @property
    def metadata(self) -> dict[str, Any]:
        """Free metadata from BEGIN ({} before it)."""
        return dict(self._metadata)

    @property
    def stats(self) -> dict[str, Any]:
        """Counters (frames unless named otherwise): accepted, dropped (ring full), rejected,
        rejected_by_reason (events, module docstring), expected (announced by END; None before
        every sender ended), missing, pending (incomplete split frames), messages, messages_lent
        (handed to the ring without a copy), bytes."""
        expected = self._expected()
        accounted = self._accepted + self._dropped + self._frames_rejected
        return {
            "scan_id": self._scan_id,
            "accepted": self._accepted,
            "dropped": self._dropped,
            "rejected": self._frames_rejected,
            "rejected_by_reason": dict(self._rejected),
            "expected": expected,
            "missing": None if expected is None else max(0, expected - accounted),
            "pending": len(self._cache) if self._cache is not None else 0,
            "messages": self._messages,
            "messages_lent": self._lent,
            "bytes": self._bytes,
            "senders": self._n_senders,
            "senders_begun": len(self._senders),
            "senders_ended": len(self._ended),
            "stalled": self._stalled,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "FrameReceiver",
            "endpoint": self.endpoints if len(self.endpoints) > 1 else self.endpoints[0],
            "bind": self.bind,
            "scan_id": self._scan_id,
            "metadata": self.metadata,
            "stats": self.stats,
        }

    def feed(self, ring, stop: threading.Event) -> None:
        """Receive straight into ``ring`` slots until every sender sent END, ``stop`` is set, or
        the ring is closed; SourceError if the stream stalls (module docstring)."""
        for _ in self._run(_RingTarget(ring, stop), stop):
            pass
        self._check_complete()

    def chunks(self, max_frames: int) -> Iterator[Chunk]:
        """The scan as chunks of at most ``max_frames`` frames in arrival order (offline use):
        views of buffers reused once the next chunk is asked for."""
        if not isinstance(max_frames, int) or max_frames < 1:
            raise ValueError(f"max_frames must be a positive int, got {max_frames!r}")
        target = _BufferTarget(max_frames, self.geometry)
        run = self._run(target, threading.Event())
        error = None
        try:
            for _ in run:
                yield from target.take()
        except SourceError as exc:  # a stall: hand out what was committed first
            error = exc
        finally:
            run.close()
        yield from target.take()
        if error is not None:
            raise error
        self._check_complete()

    def close(self) -> None:
        """Close the socket (queued messages are discarded); a ``feed`` running in another
        thread returns within ~0.1 s, keeping what it received. Idempotent."""
        if not self._closed:
            self._closed = True  # seen by a running feed at its next tick
            with self._lock:
                self._sock.close()
                self._ctx.term()

    # -- the receive loop -------------------------------------------------------------------------
    def _run(self, target, stop: threading.Event) -> Iterator[None]:
        """Receive into ``target`` until done; yields after every message or idle poll.

        Holds the socket lock while receiving, not while suspended at a yield, so ``close()``
        from another thread (or with a half-consumed ``chunks()``) stops the run cleanly."""
        self._lock.acquire()
        try:
            if self._closed:
                raise RuntimeError("this FrameReceiver is closed")
            if self._used:
                raise RuntimeError("a FrameReceiver receives one scan: make a new one")
            self._used = True
            if not self._receive_until_begin(stop):
                return
            target.check(self._geometry)
            writer = _SlotWriter(target, self._geometry.frame_nbytes)
            try:
                for _ in self._loop(writer, stop):
                    self._lock.release()
                    try:
                        yield
                    finally:
                        self._lock.acquire()
            except _Stopped:
                pass
            finally:
                self._finish(writer)
        finally:
            self._lock.release()

    def _loop(self, writer: _SlotWriter, stop: threading.Event) -> Iterator[None]:
        last = time.monotonic()  # last valid message (stall detection)
        while len(self._ended) < self._n_senders and not (stop.is_set() or self._closed):
            try:  # poll only when nothing is queued: one syscall less per message under load
                if self._receive_message(writer, zmq.NOBLOCK):
                    last = time.monotonic()
            except zmq.Again:
                self._poll(self._wait_s(writer, last))
            now = time.monotonic()
            self._expire(now)
            due = writer.due(self.flush_s)
            if due is not None and now >= due:
                writer.commit()
            if now - last > self.stall_timeout_s:
                self._stalled = True
                raise SourceError(
                    f"stalled: no valid message for {self.stall_timeout_s} s on "
                    f"{self.endpoints[0]} after {self._accepted} frames "
                    f"({len(self._ended)} of {self._n_senders} senders ended); frames received "
                    "so far were delivered"
                )
            yield

    def _wait_s(self, writer: _SlotWriter, last: float) -> float:
        """How long the next poll may sleep: until a flush, an expiry or the stall timeout."""
        now = time.monotonic()
        deadlines = [last + self.stall_timeout_s, now + _TICK_S]
        for d in (writer.due(self.flush_s), self._cache.next_deadline()):
            if d is not None:
                deadlines.append(d)
        return max(0.0, min(deadlines) - now)

    def _poll(self, wait_s: float) -> bool:
        return bool(self._sock.poll(math.ceil(wait_s * 1000), zmq.POLLIN))

    def _finish(self, writer: _SlotWriter) -> None:
        """Commit what arrived; split frames still incomplete are lost now."""
        try:
            writer.commit()
        except RingClosed:  # the ring was aborted: the frames are discarded (and counted) there
            pass
        self._lose(self._cache.expire(None), "incomplete_at_end")

    def _check_complete(self) -> None:
        missing = self.stats["missing"]
        if self.require_complete and len(self._ended) == self._n_senders and missing:
            raise SourceError(
                f"{missing} of {self._expected()} frames never arrived (require_complete=True); "
                f"the {self._accepted} that did were delivered; see receiver.stats"
            )

    def _expected(self) -> int | None:
        if not self._n_senders or len(self._ended) < self._n_senders:
            return None
        return round(sum(pieces / parts for pieces, parts in self._ended.values()))

    # -- BEGIN ------------------------------------------------------------------------------------
    def _wait_begin(self) -> None:
        deadline = time.monotonic() + self.begin_timeout_s
        if self._lock.acquire(timeout=self.begin_timeout_s):
            try:
                if self._closed:
                    raise RuntimeError("this FrameReceiver is closed")
                if not self._receive_until_begin(None, deadline):
                    raise RuntimeError("this FrameReceiver was closed while waiting for BEGIN")
            finally:
                self._lock.release()
        elif not self._begun.wait(max(0.0, deadline - time.monotonic())):
            raise SourceError(self._no_begin_message())  # another thread is receiving

    def _receive_until_begin(
        self, stop: threading.Event | None, deadline: float | None = None
    ) -> bool:
        """Handle messages until the first valid BEGIN (True) or ``stop`` (False)."""
        if deadline is None:
            deadline = time.monotonic() + self.begin_timeout_s
        while self._scan_id is None:
            if (stop is not None and stop.is_set()) or self._closed:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                raise SourceError(self._no_begin_message())
            if self._poll(min(left, _TICK_S)):
                self._receive_message(None)
        return True

    def _no_begin_message(self) -> str:
        seen = f"; rejected so far: {dict(self._rejected)}" if self._rejected else ""
        hint = (
            f" (last BEGIN refused: {self._last_begin_problem})" if self._last_begin_problem else ""
        )
        return (
            f"no BEGIN within {self.begin_timeout_s} s on {self.endpoints[0]}{hint}{seen}: is the "
            "sender running, pointed at this endpoint, and did it call begin()?"
        )

    def _on_begin(self, h: Header) -> bool:
        if h.payload_nbytes > MAX_BEGIN_BYTES:
            return self._reject_message("oversized")
        msg = self._sock.recv(copy=False)  # no copy before the size is checked
        if not self._payload_ok(h, len(msg), msg.buffer):
            return False
        try:
            geometry, metadata = decode_begin(msg.bytes)
        except ProtocolError as exc:
            return self._reject_message(exc.reason, drain=False)
        if not 0 <= h.sender < h.n_senders:
            return self._reject_message("bad_header", drain=False)
        if self._scan_id is None:
            return self._adopt(h, geometry, metadata)
        if h.scan_id != self._scan_id:
            return self._reject_message("scan_id", drain=False)
        if h.n_senders != self._n_senders or not _same_stream(geometry, self._geometry):
            return self._reject_message("begin_mismatch", drain=False)
        self._senders.add(h.sender)
        return True

    def _adopt(self, h: Header, geometry: ScanGeometry, metadata: dict[str, Any]) -> bool:
        user = self._user_geometry
        if user is not None and not _same_stream(user, geometry):
            self._last_begin_problem = (
                f"it announced {geometry.scan_shape} scan of {geometry.dtype} frames "
                f"{geometry.frame_shape}, the geometry given has {user.scan_shape}, "
                f"{user.dtype}, {user.frame_shape}"
            )
            return self._reject_message("begin_mismatch", drain=False)
        self._geometry = user or geometry
        self._metadata, self._scan_id, self._n_senders = metadata, h.scan_id, h.n_senders
        self._senders.add(h.sender)
        self._state = np.zeros(self._geometry.n_positions, np.uint8)
        g = self._geometry
        self._frame_key = (dtype_code(g.dtype), *g.frame_shape, g.frame_nbytes)
        self._cache = _Reassembly(
            self._geometry.frame_nbytes, self.max_pending_frames, self.reassembly_timeout_s
        )
        self._begun.set()
        return True

    # -- END --------------------------------------------------------------------------------------
    def _on_end(self, h: Header) -> bool:
        got = self._sock.recv_into(_NOTHING)  # END has no payload: never copy one
        if not self._payload_ok(h, got, None):
            return False
        if self._scan_id is None:
            return self._reject_message("no_begin", drain=False)
        if h.scan_id != self._scan_id:
            return self._reject_message("scan_id", drain=False)
        if not 0 <= h.sender < self._n_senders or h.n_parts < 1:
            return self._reject_message("bad_header", drain=False)
        self._ended[h.sender] = (h.n_frames, h.n_parts)
        return True

    # -- FRAMES -----------------------------------------------------------------------------------
    def _on_frames(self, h: Header, writer: _SlotWriter | None) -> bool:
        lost = _whole_frames(h)
        problem = self._frames_problem(h)
        if problem is not None:
            return self._reject_message(problem, frames=lost)
        if writer is None:  # cannot happen: FRAMES before BEGIN fail the check above
            return self._reject_message("no_begin", frames=lost)
        if h.n_parts == 1:
            return self._receive_whole(h, writer)
        return self._receive_ranges(h, writer)

    def _frames_problem(self, h: Header) -> str | None:
        """Why a FRAMES header cannot be accepted (checked before any payload byte is read)."""
        g = self._geometry
        if self._scan_id is None or g is None:
            return "no_begin"
        if h.scan_id != self._scan_id:
            return "scan_id"
        if (h.dtype, h.det_y, h.det_x, h.frame_nbytes) != self._frame_key:
            return "geometry"
        if h.payload_nbytes > self.max_message_bytes:
            return "oversized"
        if h.n_frames < 1 or not 0 <= h.part < h.n_parts:
            return "bad_header"
        if h.first_index < 0 or h.first_index + h.n_frames > g.n_positions:
            return "index_range"
        per_frame, rest = divmod(h.payload_nbytes, h.n_frames)
        if rest or per_frame < 1 or h.offset + per_frame > h.frame_nbytes:
            return "bad_header"
        if h.n_parts == 1 and (h.offset, per_frame) != (0, h.frame_nbytes):
            return "bad_header"
        return None

    def _receive_whole(self, h: Header, writer: _SlotWriter) -> bool:
        n, nb, first = h.n_frames, h.payload_nbytes, h.first_index
        if n > writer.cap:  # bigger than a slot: via a scratch buffer (sender misconfigured)
            return self._receive_via_scratch(h, writer)
        target = writer.target
        if (
            self.lend_bytes is not None
            and nb >= self.lend_bytes
            and isinstance(target, _RingTarget)
            and not target.ring.pinned
        ):
            return self._receive_lent(h, writer)
        slot = writer.reserve(n)
        if slot is None:  # ring full, drop policy: discard the payload without copying it
            return self._drop_payload(h, writer)
        start = writer.pos * writer.fb
        view = slot.raw[start : start + nb]
        # at most nb bytes land here, in the slot's unpublished part: a lying sender cannot
        # overrun the slot nor touch committed frames
        if not self._payload_ok(h, self._sock.recv_into(view), view):
            return False
        idx = np.arange(first, first + n, dtype=np.int64)
        keep = self._fresh(idx, mask=True)
        if not keep.all():
            frames = slot.frames[writer.pos : writer.pos + n]
            frames[: keep.sum()] = frames[keep]  # compact (fancy indexing copies first)
            idx = idx[keep]
        if len(idx):
            self._state[idx] = _DELIVERED
            writer.filled(idx)
            self._accepted += len(idx)
            self._bytes += len(idx) * writer.fb
        return True

    def _drop_payload(self, h: Header, writer: _SlotWriter) -> bool:
        """Ring full under the drop policy: discard the payload without copying it."""
        if not self._payload_ok(h, self._sock.recv_into(_NOTHING), None):
            return False
        first = h.first_index
        fresh = self._fresh(np.arange(first, first + h.n_frames, dtype=np.int64))
        self._state[fresh] = _DELIVERED
        writer.target.count_dropped(len(fresh))
        self._dropped += len(fresh)
        return True

    def _receive_lent(self, h: Header, writer: _SlotWriter) -> bool:
        """A large message: its frames go to a slot of their own as a view of libzmq's message
        (no copy); the slot being filled is committed first, so stacks keep arrival order."""
        writer.commit()
        slot = writer.target.acquire()
        if slot is None:
            return self._drop_payload(h, writer)
        try:
            msg = self._sock.recv(copy=False)
            if not self._payload_ok(h, len(msg), msg.buffer):
                slot.cancel()
                return False
            g, n, first = self._geometry, h.n_frames, h.first_index
            frames = np.frombuffer(msg.buffer, g.dtype).reshape(n, *g.frame_shape)
            idx = np.arange(first, first + n, dtype=np.int64)
            keep = self._fresh(idx, mask=True)
            if not keep.all():
                frames, idx = frames[keep], idx[keep]  # (a copy; duplicates are rare)
            if not len(idx):
                slot.cancel()
                return True
            slot.indices[: len(idx)] = idx
            self._state[idx] = _DELIVERED
            slot.lend(frames)
        except BaseException:
            slot.cancel()
            raise
        self._lent += 1
        self._accepted += len(idx)
        self._bytes += len(idx) * writer.fb
        return True

    def _receive_via_scratch(self, h: Header, writer: _SlotWriter) -> bool:
        nb = h.payload_nbytes
        if self._scratch.nbytes < nb:
            self._scratch = np.empty(nb, np.uint8)
        view = self._scratch[:nb]
        if not self._payload_ok(h, self._sock.recv_into(view), view):
            return False
        idx = np.arange(h.first_index, h.first_index + h.n_frames, dtype=np.int64)
        keep = self._fresh(idx, mask=True)
        self._state[idx[keep]] = _DELIVERED
        self._deliver(writer, view.reshape(h.n_frames, writer.fb)[keep], idx[keep])
        return True

    def _receive_ranges(self, h: Header, writer: _SlotWriter) -> bool:
        msg = self._sock.recv(copy=False)  # a view of libzmq's message: copied once, below
        if not self._payload_ok(h, len(msg), msg.buffer):
            return False
        data = np.frombuffer(msg.buffer, np.uint8).reshape(h.n_frames, -1)
        now = time.monotonic()
        for j in range(h.n_frames):
            index = h.first_index + j
            state = self._state[index]
            if state:
                self._rejected["duplicate" if state == _DELIVERED else "late_part"] += 1
                continue
            try:
                frame, evicted = self._cache.add(index, h.part, h.n_parts, h.offset, data[j], now)
            except ProtocolError as exc:
                self._rejected[exc.reason] += 1
                continue
            self._lose(evicted, "incomplete_evicted")
            if frame is not None:
                self._state[index] = _DELIVERED
                self._deliver(writer, frame[np.newaxis], np.array([index], np.int64))
                self._cache.release(frame)
        return True

    def _deliver(self, writer: _SlotWriter, rows: np.ndarray, idx: np.ndarray) -> None:
        placed, dropped = writer.place(rows, idx)
        self._accepted += placed
        self._dropped += dropped
        self._bytes += placed * writer.fb

    def _fresh(self, idx: np.ndarray, mask: bool = False) -> np.ndarray:
        """Indices not delivered before (duplicates counted as rejected), or their mask."""
        keep = self._state[idx] == 0
        if not keep.all():
            self._reject_frames("duplicate", int(len(idx) - keep.sum()))
        return keep if mask else idx[keep]

    def _expire(self, now: float) -> None:
        self._lose(self._cache.expire(now), "incomplete_expired")

    def _lose(self, indices: list[int], reason: str) -> None:
        for index in indices:
            if self._state[index] == _DELIVERED:  # it came whole meanwhile: only a leftover
                self._rejected["duplicate"] += 1
                continue
            self._state[index] = _LOST  # later ranges of it are "late_part", not a new frame
            self._reject_frames(reason, 1)

    # -- one message ------------------------------------------------------------------------------
    def _receive_message(self, writer: _SlotWriter | None, flags: int = 0) -> bool:
        """Read one message (header part + payload part). True if it was valid protocol traffic;
        anything else is counted and discarded."""
        head = self._sock.recv(flags)  # zmq.Again (NOBLOCK) when nothing is queued
        self._messages += 1
        try:
            h = Header.unpack(head)
        except ProtocolError as exc:
            return self._reject_message(exc.reason)
        if not self._more():
            return self._reject_message("missing_part", frames=_whole_frames(h))
        if h.type == MsgType.FRAMES:
            return self._on_frames(h, writer)
        if h.type == MsgType.BEGIN:
            return self._on_begin(h)
        return self._on_end(h)

    def _more(self) -> bool:
        return bool(self._sock.getsockopt(zmq.RCVMORE))

    def _payload_ok(self, h: Header, got: int, data: Any) -> bool:
        """Check a payload just read: size as announced, no further part, CRC if flagged."""
        lost = _whole_frames(h)
        if got != h.payload_nbytes:
            return self._reject_message("payload_size", frames=lost)
        if self._more():
            return self._reject_message("extra_part", frames=lost)
        if h.flags & FLAG_CRC32 and data is not None and zlib.crc32(data) != h.crc32:
            return self._reject_message("crc", frames=lost, drain=False)
        return True

    def _reject_message(self, reason: str, *, frames: int = 0, drain: bool = True) -> bool:
        """Count a rejected message and discard its remaining parts (without copying them)."""
        if drain:
            while self._more():
                self._sock.recv_into(_NOTHING)
        self._rejected[reason] += 1
        self._frames_rejected += frames
        return False

    def _reject_frames(self, reason: str, n: int) -> None:
        self._rejected[reason] += n
        self._frames_rejected += n


def _whole_frames(h: Header) -> int:
    """Frames a rejected message loses outright: its count for whole frames; 0 for a byte range
    (its frame is counted once, when it expires incomplete) and for BEGIN/END."""
    return h.n_frames if h.type == MsgType.FRAMES and h.n_parts == 1 else 0


def _same_stream(a: ScanGeometry, b: ScanGeometry) -> bool:
    """Same frames at the same positions (calibration may differ)."""
    return (a.scan_shape, a.frame_shape, a.dtype) == (b.scan_shape, b.frame_shape, b.dtype)
