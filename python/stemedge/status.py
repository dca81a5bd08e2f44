"""The status channel (DESIGN.md, "management plane"): job status, kept apart from the frames.

A running job owns one :class:`StatusPublisher`; it binds a ZeroMQ publish socket and sends one
JSON object per event. Any number of :class:`StatusWatcher` (a notebook, ``stemedge status``, a
remote monitor) connect to it. Nothing here touches frame data, and nothing here may slow the
data path down: a send that cannot go out at once is dropped and counted, never waited for.

Messages
--------
Every message is one UTF-8 JSON object with the envelope ``event`` (str), ``job`` (str), ``seq``
(int, +1 per message of this publisher, heartbeats included, so a watcher can count what it
missed) and ``time`` (unix seconds), plus the event's own fields. The pipeline sends:

``started``
    ``geometry`` (``ScanGeometry.to_dict()``), ``source`` (``Source.describe()``), ``analyses``
    (list of names).
``progress``
    ``frames_in``, ``processed``, ``dropped``, ``total``, ``fraction`` (0 … 1).
``rates``
    ``frames_per_s``, ``bytes_per_s``, ``latency_s`` (dict of statistics in seconds, e.g.
    ``{"p50": …, "p99": …, "max": …}``).
``drops``
    ``dropped`` (total so far), ``new`` (since the last report), ``reason``.
``finished``
    ``counters`` (dict of final counters), ``elapsed_s``.
``error``
    ``message``, ``type`` (the exception's class name).
``heartbeat``
    Sent by the publisher itself every ``heartbeat_s`` and at once whenever a watcher
    subscribes: ``state`` (the snapshot below) and ``status_dropped`` (messages this publisher
    could not send). PUB/SUB loses what was sent before a subscription reached the publisher
    (the "slow joiner"); the heartbeat is how a late watcher still learns where the job is.

The snapshot (:attr:`StatusPublisher.state`, and ``state`` in heartbeats) is the fields of every
event sent so far merged into one flat dict, newest last, plus ``job``, ``phase`` (``"starting"``
before ``started``, then ``"running"``, ``"finished"`` or ``"error"``), ``last_event``,
``last_seq`` and ``last_time``.

Other event names are allowed (a field a watcher does not know is shown as ``key=value``).
Values are JSON-encoded with numpy scalars and arrays turned into numbers and lists, objects with
a ``to_dict()`` method into that dict, and non-finite floats into ``null`` (strict JSON).
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import zmq

__all__ = [
    "ENVELOPE_KEYS",
    "EVENTS",
    "StatusPublisher",
    "StatusWatcher",
    "open_publisher",
]

# The event kinds the pipeline sends (see the module docstring for their fields).
EVENTS = ("started", "progress", "rates", "drops", "finished", "error", "heartbeat")
ENVELOPE_KEYS = ("event", "job", "seq", "time")
# Snapshot keys the publisher computes itself; an event field of the same name would hide them.
_STATE_KEYS = ("phase", "last_event", "last_seq", "last_time")
_PHASES = {"started": "running", "finished": "finished", "error": "error"}

# How often the heartbeat thread looks for new subscriptions: bounds how long a late watcher
# waits for its first snapshot, at the cost of one lock acquisition per tick.
_SUBSCRIBE_POLL_S = 0.02


# --- encoding -------------------------------------------------------------------------------


def _to_json(obj: Any) -> Any:
    """``json.dumps(default=…)`` hook: numpy values and objects with ``to_dict()``."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    raise TypeError(
        f"status field value of type {type(obj).__name__} is not JSON-able; pass numbers, "
        "strings, lists, dicts, numpy values or objects with a to_dict() method"
    )


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN or infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _encode(message: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(message, default=_to_json, allow_nan=False, separators=(",", ":"))
    except ValueError:
        # A NaN or infinity somewhere (an empty latency window, say): rare, so pay for the
        # second pass only then. Round-trip first so numpy values are plain floats.
        plain = json.loads(json.dumps(message, default=_to_json))
        text = json.dumps(_finite(plain), allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8")


# --- publisher ------------------------------------------------------------------------------


class StatusPublisher:
    """Publish a job's status events on a ZeroMQ socket, and keep them for the Python API.

    Parameters
    ----------
    endpoint : str
        ZeroMQ address to bind, e.g. ``"tcp://127.0.0.1:0"`` (port 0: the system picks a free
        one; read the real address from :attr:`endpoint`) or ``"tcp://*:5600"`` to be reachable
        from other machines.
    job : str, optional
        Name carried by every message; default a random ``"job-xxxxxxxx"``.
    heartbeat_s : float or None
        Seconds between heartbeats (default 1.0); None sends none (a late watcher then learns
        the state only when it subscribes, and cannot tell a quiet job from a dead one).
    history : int
        How many events (heartbeats excluded) :attr:`history` keeps; 0 keeps none.
    sndhwm : int
        Messages queued per watcher before further ones are dropped and counted (default 1000;
        0 = no limit, which lets memory grow without bound behind a stuck watcher).
    linger_s : float
        How long :meth:`close` waits for queued messages (the final ``finished``) to reach
        connected watchers.

    Notes
    -----
    Thread safety: one lock serialises every use of the socket (``publish`` from any thread,
    and the heartbeat thread). ZeroMQ sockets must not be used by two threads at once, but may
    pass between threads behind a full memory barrier, which a lock gives. A lock rather than a
    sender thread with a queue because the send never waits (``NOBLOCK``), so the lock is held
    for microseconds; and because it keeps ``seq`` order equal to wire order, makes an
    un-encodable field raise at the caller rather than in a background thread, and leaves no
    queue to bound, drain or lose on close.

    Never blocking: the socket drops rather than queues past ``sndhwm`` (``XPUB_NODROP`` makes
    the drop visible as ``EAGAIN`` so it is counted in :attr:`dropped` and in every heartbeat;
    the cost is that one watcher that stops reading makes every watcher miss messages until it
    catches up: the next heartbeat carries the full state again, and watchers count the gaps in
    ``seq``). Status messages are tiny, so this takes thousands of unread messages.
    """

    def __init__(
        self,
        endpoint: str = "tcp://127.0.0.1:0",
        *,
        job: str | None = None,
        heartbeat_s: float | None = 1.0,
        history: int = 1000,
        sndhwm: int = 1000,
        linger_s: float = 1.0,
    ) -> None:
        if heartbeat_s is not None and not (heartbeat_s > 0 and math.isfinite(heartbeat_s)):
            raise ValueError(f"heartbeat_s must be a positive number or None, got {heartbeat_s!r}")
        if history < 0 or sndhwm < 0 or not linger_s >= 0:
            raise ValueError(
                f"history, sndhwm and linger_s must be ≥ 0, got {history}, {sndhwm}, {linger_s}"
            )
        self.job = str(job) if job is not None else f"job-{uuid.uuid4().hex[:8]}"
        self.heartbeat_s = heartbeat_s
        self._linger_ms = int(linger_s * 1000)
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._sent = 0
        self._dropped = 0
        self._closed = False
        self._state: dict[str, Any] = {
            "job": self.job,
            "phase": "starting",
            "last_event": None,
            "last_seq": None,
            "last_time": None,
        }
        self._history: collections.deque[dict[str, Any]] = collections.deque(maxlen=history)
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.XPUB)
        try:
            self._sock.setsockopt(zmq.SNDHWM, sndhwm)
            self._sock.setsockopt(zmq.XPUB_NODROP, 1)  # full queue → EAGAIN, so drops are counted
            self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscription, not just new ones
            self._sock.bind(endpoint)
            self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as exc:
            self._sock.close(linger=0)
            self._ctx.term()
            raise OSError(
                f"cannot bind the status endpoint {endpoint!r}: {exc} (use tcp://HOST:PORT, "
                "port 0 for any free port)"
            ) from None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._heartbeat_loop, name=f"stemedge-status-{self.job}", daemon=True
        )
        self._thread.start()

    # -- the public record ----------------------------------------------------------------------

    @property
    def state(self) -> dict[str, Any]:
        """A copy of the latest merged snapshot (see the module docstring)."""
        with self._lock:
            return json.loads(json.dumps(self._state))

    @property
    def history(self) -> list[dict[str, Any]]:
        """A copy of the last ``history`` events sent or dropped, oldest first, as watchers
        see them (heartbeats excluded)."""
        with self._lock:
            return list(self._history)

    @property
    def sent(self) -> int:
        """Messages handed to ZeroMQ (heartbeats included)."""
        return self._sent

    @property
    def dropped(self) -> int:
        """Messages not sent because the send queue was full (heartbeats included)."""
        return self._dropped

    @property
    def closed(self) -> bool:
        return self._closed

    # -- publishing -----------------------------------------------------------------------------

    def publish(self, event: str, **fields: Any) -> bool:
        """Send one event; safe from any thread, never waits for a watcher.

        Parameters
        ----------
        event : str
            The event kind (``"started"``, ``"progress"``, … see the module docstring).
        **fields
            The event's fields; JSON-able values, numpy values or objects with ``to_dict()``.

        Returns
        -------
        bool
            True when the message was queued for sending, False when it was dropped (counted in
            :attr:`dropped`). The snapshot and history are updated either way.

        Raises
        ------
        ValueError
            ``event`` is empty or ``"heartbeat"``, or a field name is reserved.
        TypeError
            A field value cannot be encoded as JSON.
        RuntimeError
            The publisher is closed.
        """
        if not isinstance(event, str) or not event or event == "heartbeat":
            raise ValueError(
                f"event must be a non-empty str other than 'heartbeat' (the publisher sends "
                f"those itself), got {event!r}"
            )
        reserved = sorted(set(fields) & {*ENVELOPE_KEYS, *_STATE_KEYS})
        if reserved:
            raise ValueError(f"field names {reserved} are reserved for the message envelope")
        with self._lock:
            self._check_open()
            payload = self._envelope(event, fields)
            sent = self._send(payload)
            # Record what watchers receive (numpy values as plain numbers, NaN as null).
            record = json.loads(payload)
            self._history.append(record)
            self._merge(record)
            return sent

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(
                f"StatusPublisher {self.job!r} is closed; publish before close() or create a "
                "new publisher"
            )

    def _envelope(self, event: str, fields: dict[str, Any]) -> bytes:
        """The encoded message; takes the next ``seq`` (call with the lock held)."""
        message = {"event": event, "job": self.job, "seq": next(self._seq), "time": time.time()}
        message.update(fields)
        return _encode(message)

    def _send(self, payload: bytes) -> bool:
        """Send without waiting (call with the lock held); count a drop."""
        try:
            self._sock.send(payload, zmq.NOBLOCK)
        except zmq.Again:
            self._dropped += 1
            return False
        self._sent += 1
        return True

    def _merge(self, record: dict[str, Any]) -> None:
        event = record["event"]
        for key, value in record.items():
            if key not in ENVELOPE_KEYS:
                self._state[key] = value
        self._state["phase"] = _PHASES.get(event, self._state["phase"])
        if self._state["phase"] == "starting":
            self._state["phase"] = "running"  # progress without started: the job is running
        self._state["last_event"] = event
        self._state["last_seq"] = record["seq"]
        self._state["last_time"] = record["time"]

    # -- heartbeats -----------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        """Send the snapshot now (call with the lock held)."""
        self._send(
            self._envelope("heartbeat", {"state": self._state, "status_dropped": self._dropped})
        )

    def _new_subscriptions(self) -> bool:
        """Drain subscription messages (call with the lock held); True if a watcher joined."""
        joined = False
        while True:
            try:
                frame = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return joined
            joined = joined or frame[:1] == b"\x01"  # b"\x00…" is an unsubscription

    def _heartbeat_loop(self) -> None:
        """Welcome each new watcher with the snapshot; beat every ``heartbeat_s``."""
        next_beat = time.monotonic()
        while not self._stop.wait(_SUBSCRIBE_POLL_S):
            now = time.monotonic()
            with self._lock:
                if self._closed:
                    return
                due = self.heartbeat_s is not None and now >= next_beat
                if self._new_subscriptions() or due:
                    self._heartbeat()
                    if self.heartbeat_s is not None:
                        next_beat = now + self.heartbeat_s

    # -- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop heartbeats and close the socket; nothing is sent after this. Idempotent.

        Waits up to ``linger_s`` for queued messages to reach connected watchers."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._sock.close(linger=self._linger_ms)
        self._ctx.term()

    def __enter__(self) -> StatusPublisher:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Close; when the block raised and no ``finished``/``error`` was sent, send ``error``
        first so watchers do not wait for a job that is gone."""
        try:
            if exc is not None and not self._closed:
                if self._state["phase"] not in ("finished", "error"):
                    self.publish("error", message=str(exc), type=exc_type.__name__)
        finally:
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._state["phase"]
        return f"StatusPublisher({self.endpoint!r}, job={self.job!r}, {state})"


# --- watcher --------------------------------------------------------------------------------


def _validate(frames: list[bytes]) -> tuple[dict[str, Any] | None, str]:
    """Decode one message; (message, "") or (None, why it is malformed)."""
    if len(frames) != 1:
        return None, f"{len(frames)}-part message (status messages have one part)"
    try:
        message = json.loads(frames[0].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"not UTF-8 JSON ({exc})"
    if not isinstance(message, dict):
        return None, f"JSON {type(message).__name__}, not an object"
    missing = [k for k in ENVELOPE_KEYS if k not in message]
    if missing:
        return None, f"missing keys {missing}"
    if not isinstance(message["event"], str) or not message["event"]:
        return None, f"event is {message['event']!r}, not a non-empty string"
    seq, stamp = message["seq"], message["time"]
    if isinstance(seq, bool) or not isinstance(seq, int):
        return None, f"seq is {seq!r}, not an int"
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)):
        return None, f"time is {stamp!r}, not a number"
    if message["event"] == "heartbeat" and not isinstance(message.get("state"), dict):
        return None, "heartbeat without a state object"
    return message, ""


class StatusWatcher:
    """Receive a job's status events (connects a ZeroMQ SUB socket to a publisher).

    Parameters
    ----------
    endpoint : str
        The publisher's address, e.g. ``"tcp://10.0.0.5:5600"`` (its ``StatusPublisher.endpoint``).
        Connecting never fails for a publisher that is not up yet: ZeroMQ keeps trying.
    timeout_s : float, optional
        Default wait of :meth:`next_event` and :meth:`events`; None waits forever.
    rcvhwm : int
        Messages queued on this side before ZeroMQ pushes back (0 = no limit).

    Attributes
    ----------
    received : int
        Valid messages received (heartbeats included).
    malformed : int
        Messages skipped because they were not status messages; ``last_malformed`` says why.
    missed : int
        Messages this watcher did not get, from gaps in ``seq`` (dropped by the publisher, or
        sent before this watcher's subscription reached it: not counted before the first one).
    """

    def __init__(self, endpoint: str, *, timeout_s: float | None = None, rcvhwm: int = 1000):
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.received = 0
        self.malformed = 0
        self.missed = 0
        self.last_malformed = ""
        self._last_seq: dict[str, int] = {}
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        try:
            self._sock.setsockopt(zmq.RCVHWM, rcvhwm)
            self._sock.setsockopt(zmq.SUBSCRIBE, b"")
            self._sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise ValueError(
                f"cannot connect to the status endpoint {endpoint!r}: {exc} "
                "(expected a ZeroMQ address such as tcp://HOST:PORT)"
            ) from None

    def _timeout(self, timeout_s: float | None) -> float | None:
        return self.timeout_s if timeout_s is None else timeout_s

    def next_event(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        """The next valid status message, or None when none arrived within ``timeout_s``
        (default: the constructor's; None there waits forever). Malformed messages are counted
        in :attr:`malformed` and skipped."""
        if self._sock.closed:
            raise RuntimeError("StatusWatcher is closed")
        timeout = self._timeout(timeout_s)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait_ms = None
            if deadline is not None:
                wait_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
            if not self._sock.poll(wait_ms):
                return None
            message, why = _validate(self._sock.recv_multipart())
            if message is None:
                self.malformed += 1
                self.last_malformed = why
                continue
            self._count(message)
            return message

    def _count(self, message: dict[str, Any]) -> None:
        self.received += 1
        job, seq = str(message["job"]), message["seq"]
        last = self._last_seq.get(job)
        if last is not None and seq > last + 1:
            self.missed += seq - last - 1
        self._last_seq[job] = seq  # a smaller seq: the job restarted, start counting afresh

    def events(
        self,
        until: tuple[str, ...] | str = ("finished", "error"),
        timeout_s: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield status messages (heartbeats included) until one whose event is in ``until``.

        A heartbeat whose snapshot's ``last_event`` is in ``until`` also ends the iteration (a
        watcher that joined after the job finished). ``until=()`` never ends by itself.

        Raises
        ------
        TimeoutError
            No valid message, not even a heartbeat, arrived for ``timeout_s`` (default: the
            constructor's; None waits forever).
        """
        stops = (until,) if isinstance(until, str) else tuple(until)
        timeout = self._timeout(timeout_s)
        while True:
            message = self.next_event(timeout)
            if message is None:
                raise TimeoutError(
                    f"no status message from {self.endpoint} for {timeout:g} s, not even a "
                    "heartbeat: is the job running, is the address right, is a firewall in the "
                    "way?"
                )
            yield message
            event = message["event"]
            if event == "heartbeat":
                event = message["state"].get("last_event")
            if event in stops:
                return

    def close(self) -> None:
        """Close the socket. Idempotent."""
        if not self._sock.closed:
            self._sock.close(linger=0)
        if not self._ctx.closed:
            self._ctx.term()

    def __enter__(self) -> StatusWatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_publisher(status: Any, *, job: str | None = None) -> tuple[Any, bool]:
    """``(publisher, owned)`` for a ``status=`` argument: None (no status), an object with
    ``publish`` (used as is, not owned), or an endpoint string (a new StatusPublisher, owned:
    the caller closes it)."""
    if status is None or hasattr(status, "publish"):
        return status, False
    return StatusPublisher(str(status), job=job), True
