"""SEFP (stemedge.net): FrameSender → FrameReceiver over real loopback sockets.

Senders run in other processes (``python -c``) where the point is a real second process, and as
a raw PUSH socket in the test where a malformed message has to be crafted byte by byte.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import zlib

import numpy as np
import pytest
import zmq

from _helpers import PACKAGE_PARENT
from stemedge.geometry import ScanGeometry
from stemedge.net import HEADER_SIZE, FrameReceiver, FrameSender, Header, MsgType, ProtocolError
from stemedge.net.frame_protocol import FLAG_CRC32, byte_ranges, dtype_code, encode_begin
from stemedge.ring import FrameRing
from stemedge.sources.base import SourceError

LOOPBACK = "tcp://127.0.0.1:*"  # the receiver binds a free port; senders use rx.endpoint
PYTHON_DIR = PACKAGE_PARENT

# Sends the frames saved in a .npy file, in blocks of 9 positions in a shuffled block order, so
# messages carry runs of consecutive indices that arrive out of order.
SENDER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from stemedge.geometry import ScanGeometry
    from stemedge.net import FrameSender

    a = json.loads(sys.argv[1])
    g = ScanGeometry.from_dict(a["geometry"])
    data = np.load(a["data"])
    blocks = np.array_split(np.arange(g.n_positions), -(-g.n_positions // 9))
    order = np.random.default_rng(7).permutation(len(blocks))
    with FrameSender(a["endpoint"], frames_per_message=a["fpm"], split_parts=a["split"],
                     parts=a["parts"]) as tx:
        tx.begin(g, scan_id=a["scan_id"], metadata={"from": "subprocess"})
        for k in range(0, len(order), 2):
            idx = np.concatenate([blocks[b] for b in order[k:k + 2]])
            tx.send(np.ascontiguousarray(data[idx]), idx)
    """
)


# -- helpers ------------------------------------------------------------------------------------
def scan_data(g: ScanGeometry, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (g.n_positions, *g.frame_shape)
    if g.dtype.kind == "f":
        return rng.standard_normal(shape).astype(g.dtype)
    return rng.integers(0, np.iinfo(g.dtype).max, shape, dtype=g.dtype, endpoint=True)


@contextlib.contextmanager
def sender_processes(tmp_path, endpoint, g, data, *, split=1, procs=None, fpm=4, scan_id=99):
    """Run one sender process per entry of ``procs`` (the parts each sends; default one process
    sending everything); on exit wait for them and fail on a non-zero exit."""
    path = tmp_path / "frames.npy"
    np.save(path, data)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PYTHON_DIR), env.get("PYTHONPATH")]))
    running = []
    for parts in procs or [None]:
        args = {
            "endpoint": endpoint,
            "geometry": g.to_dict(),
            "data": str(path),
            "fpm": fpm,
            "split": split,
            "parts": parts,
            "scan_id": scan_id,
        }
        running.append(
            subprocess.Popen(
                [sys.executable, "-c", SENDER, json.dumps(args)], env=env, stderr=subprocess.PIPE
            )
        )
    try:
        yield running
    finally:
        for p in running:
            try:
                _, err = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
                raise
            assert p.returncode == 0, err.decode()


def receive_into_ring(rx, *, slots=4, slot_frames=8, policy="block", delay_s=0.0):
    """rx → FrameRing → a consumer thread that copies frames out. Returns (frames, times each
    position was seen, ring counters)."""
    g = rx.geometry
    ring = FrameRing(
        g.frame_shape, g.dtype, slots=slots, slot_frames=slot_frames, policy=policy, pinned=False
    )
    out = np.zeros((g.n_positions, *g.frame_shape), g.dtype)
    seen = np.zeros(g.n_positions, np.int64)

    def consume():
        for stack in ring:
            out[stack.indices] = stack.frames
            np.add.at(seen, stack.indices, 1)
            time.sleep(delay_s)

    th = threading.Thread(target=consume)
    th.start()
    try:
        rx.feed(ring, threading.Event())
    finally:
        ring.close()
        th.join()
    return out, seen, ring.counters()


class RawPush:
    """A bare PUSH socket for crafting messages (well-formed or not) byte by byte."""

    def __init__(self, endpoint: str, g: ScanGeometry, scan_id: int = 42) -> None:
        self.g, self.scan_id = g, scan_id
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.connect(endpoint)

    def send(self, *parts) -> None:
        self.sock.send_multipart([bytes(p) if isinstance(p, np.ndarray) else p for p in parts])

    def header(self, kind=MsgType.FRAMES, first=0, n=1, **over) -> Header:
        g = self.g
        h = Header(
            type=kind,
            dtype=dtype_code(g.dtype),
            scan_id=self.scan_id,
            first_index=first,
            n_frames=n,
            frame_nbytes=g.frame_nbytes,
            det_y=g.frame_shape[0],
            det_x=g.frame_shape[1],
            payload_nbytes=n * g.frame_nbytes,
        )
        return h._replace(**over)

    def begin(self, n_senders=1, sender=0, scan_id=None) -> None:
        payload = encode_begin(self.g, {"who": "raw"})
        sid = self.scan_id if scan_id is None else scan_id
        self.send(
            self.header(
                MsgType.BEGIN,
                n=0,
                payload_nbytes=len(payload),
                scan_id=sid,
                n_senders=n_senders,
                sender=sender,
            ).pack(),
            payload,
        )

    def frames(self, data: np.ndarray, first: int, n: int = 1, **over) -> None:
        self.send(self.header(first=first, n=n, **over).pack(), data[first : first + n])

    def end(self, pieces: int, sender=0, n_parts=1) -> None:
        self.send(
            self.header(
                MsgType.END, n=pieces, payload_nbytes=0, sender=sender, n_parts=n_parts
            ).pack(),
            b"",
        )

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


@contextlib.contextmanager
def raw_push(endpoint, g, scan_id=42):
    p = RawPush(endpoint, g, scan_id)
    try:
        yield p
    finally:
        p.close()


class Background:
    """Run ``fn`` in a thread; ``result()`` re-raises its exception."""

    def __init__(self, fn, *args, **kw) -> None:
        self.value = self.error = None

        def run():
            try:
                self.value = fn(*args, **kw)
            except BaseException as exc:  # handed to the test thread
                self.error = exc

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def result(self, timeout=20):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "background call did not finish"
        if self.error is not None:
            raise self.error
        return self.value


# -- the wire format ----------------------------------------------------------------------------
def test_header_round_trip_and_malformed_headers():
    h = Header(
        type=MsgType.FRAMES,
        scan_id=2**64 - 1,
        first_index=5,
        n_frames=3,
        part=1,
        n_parts=2,
        offset=8,
        frame_nbytes=16,
        det_y=2,
        det_x=4,
        payload_nbytes=24,
        dtype=2,
        sender=1,
        n_senders=2,
    )
    raw = h.pack()
    assert len(raw) == HEADER_SIZE == 72
    assert Header.unpack(raw) == h
    for bad, reason in (
        (raw[:-1], "header_size"),
        (b"XXXX" + raw[4:], "magic"),
        (raw[:4] + b"\x02" + raw[5:], "version"),
        (raw[:5] + b"\x09" + raw[6:], "type"),
    ):
        with pytest.raises(ProtocolError) as info:
            Header.unpack(bad)
        assert info.value.reason == reason


def test_byte_ranges_cover_the_frame_at_whole_pixels():
    spans = byte_ranges(6 * 5 * 4, 7, 4)
    assert spans[0][0] == 0 and sum(n for _, n in spans) == 120
    assert all(o % 4 == 0 and n % 4 == 0 and n > 0 for o, n in spans)
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(spans))
    with pytest.raises(ValueError, match="split_parts"):
        byte_ranges(8, 3, 4)


# -- transfers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("lend_bytes", [None, 1])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.float32])
def test_stacks_from_another_process_reach_the_ring_intact(tmp_path, dtype, lend_bytes):
    g = ScanGeometry((7, 9), (12, 10), dtype)
    data = scan_data(g)
    with FrameReceiver(LOOPBACK, stall_timeout_s=10, lend_bytes=lend_bytes) as rx:
        with sender_processes(tmp_path, rx.endpoint, g, data, fpm=4):
            out, seen, counters = receive_into_ring(rx, slots=3, slot_frames=8)
        assert rx.geometry == g and rx.metadata == {"from": "subprocess"} and rx.scan_id == 99
        stats = rx.stats
    np.testing.assert_array_equal(out, data)
    assert (seen == 1).all()
    assert counters.frames_in == counters.frames_processed == g.n_positions
    assert stats["accepted"] == stats["expected"] == g.n_positions
    assert stats["rejected"] == stats["missing"] == stats["dropped"] == 0
    assert stats["rejected_by_reason"] == {}
    # lend_bytes=1: every message lent to the ring as libzmq's buffer; None: every one copied
    frames_messages = stats["messages"] - 2 * stats["senders"]  # less BEGIN and END
    assert frames_messages > 0
    assert stats["messages_lent"] == (0 if lend_bytes is None else frames_messages)


def test_split_frames_from_three_sender_processes_are_reassembled(tmp_path):
    g = ScanGeometry((6, 7), (9, 11), np.float32)  # 99 px: ranges of 33 px, not row-aligned
    data = scan_data(g, seed=3)
    with FrameReceiver(LOOPBACK, reassembly_timeout_s=5) as rx:
        with sender_processes(
            tmp_path, rx.endpoint, g, data, split=3, procs=[[0], [1], [2]], fpm=5
        ):
            chunks = [(c.frames.copy(), c.indices.copy()) for c in rx.chunks(6)]
        stats = rx.stats
    out = np.zeros_like(data)
    for frames, idx in chunks:
        assert len(idx) <= 6
        out[idx] = frames
    assert sorted(np.concatenate([i for _, i in chunks]).tolist()) == list(range(g.n_positions))
    np.testing.assert_array_equal(out, data)
    assert stats["senders"] == stats["senders_ended"] == 3
    assert stats["accepted"] == stats["expected"] == g.n_positions
    assert stats["rejected"] == stats["pending"] == stats["missing"] == 0


def test_split_parts_from_one_sender_with_crc():
    g = ScanGeometry((4, 5), (8, 8), np.uint16)
    data = scan_data(g, seed=4)
    with FrameReceiver(LOOPBACK) as rx:

        def send():
            with FrameSender(rx.endpoint, split_parts=4, frames_per_message=3, crc=True) as tx:
                tx.begin(g)
                tx.send(data, 0)

        bg = Background(send)
        chunks = [(c.frames.copy(), c.indices.copy()) for c in rx.chunks(7)]
        bg.result()
        assert rx.stats["accepted"] == 20 and rx.stats["rejected"] == 0
    out = np.zeros_like(data)
    for frames, idx in chunks:
        out[idx] = frames
    np.testing.assert_array_equal(out, data)


@pytest.mark.parametrize("hand_off", ["copy", "track"])
def test_sink_from_threads_survives_slot_reuse(hand_off):
    """write_frames from 4 threads with views that are overwritten as soon as it returns (as a
    ring slot would be): the receiver must see the frames as they were during the call."""
    g = ScanGeometry((8, 8), (16, 16), np.uint16)
    data = scan_data(g, seed=5)
    with FrameReceiver(LOOPBACK) as rx:
        tx = FrameSender(rx.endpoint, frames_per_message=4, hand_off=hand_off)
        tx.begin(g, metadata={"role": "forwarder"})

        def worker(w):
            slot = np.empty((4, *g.frame_shape), g.dtype)
            for first in range(w * 4, g.n_positions, 16):
                slot[:] = data[first : first + 4]
                tx.write_frames(slot, np.arange(first, first + 4))
                slot[:] = 0xDEAD  # the slot is reused right away

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
        for th in threads:
            th.start()
        closer = Background(lambda: ([th.join() for th in threads], tx.close()))
        out = np.zeros_like(data)
        for c in rx.chunks(16):
            out[c.indices] = c.frames
        closer.result()
        assert rx.stats["accepted"] == g.n_positions and rx.metadata == {"role": "forwarder"}
    np.testing.assert_array_equal(out, data)


# -- bad input ----------------------------------------------------------------------------------
def test_bad_input_is_counted_and_never_corrupts_accepted_frames():
    g = ScanGeometry((4, 5), (6, 4), np.uint16)
    fb = g.frame_nbytes
    data = scan_data(g, seed=6)
    junk = np.full((3, 6, 4), 0xFFFF, np.uint16)
    rx = FrameReceiver(
        LOOPBACK, max_message_bytes=8 * fb, reassembly_timeout_s=0.3, stall_timeout_s=5
    )
    with rx, raw_push(rx.endpoint, g) as tx:
        bg = Background(receive_into_ring, rx, slots=4, slot_frames=4)
        tx.frames(data, 0, 2)  # before any BEGIN
        tx.begin()
        tx.send(tx.header(MsgType.BEGIN, n=0, payload_nbytes=5).pack(), b"{nope")
        tx.frames(data, 0, 4)
        good = tx.header(first=4).pack()
        tx.send(good[:-1], data[4])  # header one byte short
        tx.send(b"XXXX" + good[4:], data[4])
        tx.send(good[:4] + b"\x02" + good[5:], data[4])  # version 2
        tx.send(good[:5] + b"\x09" + good[6:], data[4])  # message type 9
        tx.send(good)  # payload part missing
        tx.send(good, data[4], b"extra")
        tx.send(good, data[4][:3])  # payload shorter than announced
        tx.send(good, junk)  # payload 3× longer than announced: must not spill into the slot
        tx.frames(data, 10, 10)  # 10 frames > max_message_bytes
        tx.send(
            tx.header(
                first=4, dtype=dtype_code(np.uint8), frame_nbytes=fb // 2, payload_nbytes=fb // 2
            ).pack(),
            data[4].view(np.uint8)[: fb // 2],
        )
        tx.frames(data, 4, det_y=4, det_x=6)  # same bytes, other shape
        tx.send(tx.header(first=18, n=4).pack(), junk[:2].repeat(2, 0))  # runs off the scan
        tx.frames(data, 4, 2)
        tx.send(tx.header(first=2, n=2).pack(), junk[:2])  # duplicate of 2, 3
        tx.frames(data, 5, 3)  # 5 is a duplicate, 6 and 7 are new
        tx.frames(data, 8, scan_id=43)  # another scan
        tx.frames(data, 8, flags=FLAG_CRC32, crc32=zlib.crc32(data[8]) ^ 1)
        tx.frames(data, 8, flags=FLAG_CRC32, crc32=zlib.crc32(data[8]))
        tx.frames(data, 15, 2)  # out of order: fine
        tx.frames(data, 9, 2)
        half = fb // 2
        u8 = data.reshape(g.n_positions, -1).view(np.uint8)

        def part(index, p, offset=None, nbytes=half):
            off = p * half if offset is None else offset
            tx.send(
                tx.header(first=index, part=p, n_parts=2, offset=off, payload_nbytes=nbytes).pack(),
                u8[index, off : off + nbytes],
            )

        part(11, 0)
        time.sleep(0.6)  # frame 11 expires (reassembly_timeout_s=0.3) ...
        part(11, 1)  # ... so its second half comes too late
        part(12, 0)
        part(12, 0)  # the same range twice
        part(12, 1)  # frame 12 complete
        part(13, 0)  # never completed
        part(14, 0)
        part(14, 1, offset=half // 2)  # overlaps part 0
        tx.end(pieces=40)
        out, seen, counters = bg.result()
    stats = rx.stats
    accepted = [*range(11), 12, 15, 16]
    np.testing.assert_array_equal(out[accepted], data[accepted])
    assert seen[accepted].tolist() == [1] * len(accepted) and seen.sum() == len(accepted)
    assert stats["accepted"] == counters.frames_in == counters.frames_processed == len(accepted)
    assert stats["rejected_by_reason"] == {
        "no_begin": 1,
        "begin_payload": 1,
        "header_size": 1,
        "magic": 1,
        "version": 1,
        "type": 1,
        "missing_part": 1,
        "extra_part": 1,
        "payload_size": 2,
        "oversized": 1,
        "geometry": 2,
        "index_range": 1,
        "duplicate": 4,
        "scan_id": 1,
        "crc": 1,
        "incomplete_expired": 1,
        "late_part": 1,
        "incomplete_at_end": 2,
        "bad_split": 1,
    }
    # whole frames lost: 2 + 1 + 1 + 1 + 1 + 10 + 1 + 1 + 4 + 3 + 1 + 1, split frames: 11, 13, 14
    assert stats["rejected"] == 27 + 3
    assert stats["pending"] == 0 and stats["dropped"] == 0
    json.dumps(rx.describe())


def test_stall_raises_and_keeps_what_arrived():
    g = ScanGeometry((3, 3), (4, 4), np.uint8)
    data = scan_data(g)
    rx = FrameReceiver(LOOPBACK, stall_timeout_s=0.3)
    ring = FrameRing(g.frame_shape, g.dtype, slots=2, slot_frames=4, pinned=False)
    with rx, raw_push(rx.endpoint, g) as tx:
        tx.begin()
        tx.frames(data, 0, 3)  # a partly filled slot: committed before the error
        t0 = time.monotonic()
        with pytest.raises(SourceError, match="stalled"):
            rx.feed(ring, threading.Event())
        assert 0.25 < time.monotonic() - t0 < 3
    ring.close()
    stack = ring.read(timeout=1)
    np.testing.assert_array_equal(stack.frames, data[:3])
    stack.release()
    assert rx.stats["stalled"] and rx.stats["accepted"] == 3 and rx.stats["expected"] is None


def test_no_begin_times_out_with_a_hint():
    with FrameReceiver(LOOPBACK, begin_timeout_s=0.2) as rx:
        with pytest.raises(SourceError, match=r"no BEGIN within 0\.2 s"):
            rx.geometry  # noqa: B018 (the property waits)


def test_given_geometry_must_match_begin():
    g = ScanGeometry((3, 3), (4, 4), np.uint8)
    other = ScanGeometry((3, 3), (4, 4), np.uint16)
    with FrameReceiver(LOOPBACK, geometry=other, begin_timeout_s=0.5) as rx:
        with raw_push(rx.endpoint, g) as tx:
            tx.begin()
            with pytest.raises(SourceError, match="last BEGIN refused"):
                list(rx.chunks(4))
        assert rx.stats["rejected_by_reason"] == {"begin_mismatch": 1}


def test_missing_frames_are_reported_or_raised():
    g = ScanGeometry((3, 4), (4, 4), np.uint16)
    data = scan_data(g)
    for strict in (False, True):
        with FrameReceiver(LOOPBACK, require_complete=strict) as rx:
            with raw_push(rx.endpoint, g) as tx:
                tx.begin()
                tx.frames(data, 0, 5)
                tx.end(pieces=7)  # the sender says 7, 5 arrived
                got = []
                with (
                    pytest.raises(SourceError, match="2 of 7")
                    if strict
                    else contextlib.nullcontext()
                ):
                    for c in rx.chunks(4):
                        got.extend(c.indices.tolist())
            assert got == [0, 1, 2, 3, 4]  # delivered either way
            assert rx.stats["missing"] == 2 and rx.stats["expected"] == 7
            assert rx.describe()["stats"]["missing"] == 2


def test_full_cache_gives_up_the_oldest_split_frame():
    g = ScanGeometry((2, 2), (2, 4), np.uint8)
    data = scan_data(g)
    u8 = data.reshape(4, -1)
    with FrameReceiver(LOOPBACK, max_pending_frames=2) as rx, raw_push(rx.endpoint, g) as tx:
        tx.begin()
        for index, p in ((0, 0), (1, 0), (2, 0), (1, 1), (2, 1), (0, 1)):
            tx.send(
                tx.header(first=index, part=p, n_parts=2, offset=4 * p, payload_nbytes=4).pack(),
                u8[index, 4 * p : 4 * p + 4],
            )
        tx.end(pieces=6, n_parts=2)
        got = {
            int(i): f.copy() for c in rx.chunks(4) for i, f in zip(c.indices, c.frames, strict=True)
        }
        stats = rx.stats
    assert sorted(got) == [1, 2] and all((got[i] == data[i]).all() for i in got)
    assert stats["rejected_by_reason"] == {"incomplete_evicted": 1, "late_part": 1}
    assert stats["rejected"] == 1 and stats["missing"] == 0


@pytest.mark.parametrize("lend_bytes", [None, 1])
def test_drop_policy_accounts_for_every_frame(lend_bytes):
    g = ScanGeometry((20, 20), (8, 8), np.uint16)
    data = scan_data(g)
    with FrameReceiver(LOOPBACK, lend_bytes=lend_bytes) as rx:

        def send():
            with FrameSender(rx.endpoint, frames_per_message=4, hand_off="borrow") as tx:
                tx.begin(g)
                tx.send(data, 0)
                tx.send(data[:8], 0)  # 8 duplicates
            return 400 + 8

        bg = Background(send)
        out, seen, c = receive_into_ring(rx, slots=2, slot_frames=4, policy="drop", delay_s=0.003)
        sent = bg.result()
        stats = rx.stats
    assert c.frames_dropped > 0 and stats["dropped"] == c.frames_dropped
    assert sent == c.frames_processed + c.frames_dropped + stats["rejected"]
    assert stats["rejected_by_reason"] == {"duplicate": 8} and stats["missing"] == 0
    assert (stats["messages_lent"] > 0) == (lend_bytes is not None)
    ok = seen > 0
    np.testing.assert_array_equal(out[ok], data[ok])


def test_ring_of_the_wrong_shape_is_refused():
    g = ScanGeometry((2, 2), (4, 4), np.uint16)
    with FrameReceiver(LOOPBACK) as rx, raw_push(rx.endpoint, g) as tx:
        tx.begin()
        ring = FrameRing((4, 5), np.uint16, slots=2, slot_frames=2, pinned=False)
        with pytest.raises(ValueError, match="FrameRing"):
            rx.feed(ring, threading.Event())


def test_sender_refuses_bad_arguments():
    g = ScanGeometry((2, 3), (4, 4), np.uint16)
    with pytest.raises(ValueError, match="parts"):
        FrameSender("tcp://127.0.0.1:9", split_parts=2, parts=[2])
    with pytest.raises(ValueError, match="hand_off"):
        FrameSender("tcp://127.0.0.1:9", hand_off="maybe")
    with FrameSender("tcp://127.0.0.1:9", linger_s=0) as tx:
        with pytest.raises(RuntimeError, match="begin"):
            tx.send(np.zeros((1, 4, 4), np.uint16), 0)
        tx.begin(g)
        with pytest.raises(TypeError, match="uint16"):
            tx.send(np.zeros((1, 4, 4), np.float32), 0)
        with pytest.raises(ValueError, match="shape"):
            tx.send(np.zeros((1, 4, 5), np.uint16), 0)
        with pytest.raises(TypeError, match="ascontiguousarray"):
            tx.send(np.zeros((1, 4, 8), np.uint16)[:, :, ::2], 0)
        with pytest.raises(IndexError, match="outside"):
            tx.send(np.zeros((2, 4, 4), np.uint16), 5)
        with pytest.raises(TypeError, match="JSON"):
            FrameSender.begin(tx, g, metadata={"x": object()})


def test_close_stops_a_running_feed_and_a_half_read_chunks():
    g = ScanGeometry((4, 4), (4, 4), np.uint16)
    data = scan_data(g)
    with raw_push_receiver(g) as (rx, tx):
        tx.begin()
        tx.frames(data, 0, 3)
        ring = FrameRing(g.frame_shape, g.dtype, slots=2, slot_frames=4, pinned=False)
        bg = Background(rx.feed, ring, threading.Event())
        time.sleep(0.2)
        rx.close()  # no END came: the feed returns, keeping the 3 frames
        bg.result(timeout=2)
        ring.close()
        assert ring.counters().frames_in == 3 and rx.stats["accepted"] == 3
    with raw_push_receiver(g) as (rx, tx):
        tx.begin()
        tx.frames(data, 0, 4)
        it = rx.chunks(4)
        assert next(it).indices.tolist() == [0, 1, 2, 3]
        rx.close()  # while the generator is suspended: must not deadlock
        assert list(it) == []


@contextlib.contextmanager
def raw_push_receiver(g, **kw):
    with FrameReceiver(LOOPBACK, **kw) as rx, raw_push(rx.endpoint, g) as tx:
        yield rx, tx


def test_messages_bigger_than_a_slot_are_spread_over_slots():
    g = ScanGeometry((5, 5), (6, 6), np.uint32)
    data = scan_data(g, seed=8)
    with FrameReceiver(LOOPBACK) as rx:

        def send():
            with FrameSender(rx.endpoint, frames_per_message=10) as tx:
                tx.begin(g)
                tx.send(data, 0)

        bg = Background(send)
        out, seen, counters = receive_into_ring(rx, slots=2, slot_frames=4)
        bg.result()
    np.testing.assert_array_equal(out, data)
    assert (seen == 1).all() and counters.frames_in == 25


def test_forwarder_sink_in_the_pipeline_relays_every_frame():
    """detector → edge receiver → Pipeline (workers call write_frames) → HPC receiver."""
    from stemedge.pipeline import Pipeline

    g = ScanGeometry((8, 8), (16, 16), np.uint16)
    data = scan_data(g, seed=9)
    with FrameReceiver(LOOPBACK) as edge, FrameReceiver(LOOPBACK) as hpc:

        def detector():
            with FrameSender(edge.endpoint, frames_per_message=8) as tx:
                tx.begin(g)
                tx.send(data, 0)

        det = Background(detector)
        with FrameSender(hpc.endpoint) as forwarder:
            forwarder.begin(edge.geometry, scan_id=edge.scan_id, metadata={"hop": "edge"})
            out = np.zeros_like(data)

            def collect():
                for c in hpc.chunks(16):
                    out[c.indices] = c.frames

            hpc_side = Background(collect)
            result = Pipeline(edge, [], sinks=[forwarder], workers=2).run()
        hpc_side.result()
        det.result()
        assert result.counters.frames_processed == g.n_positions
        assert hpc.scan_id == edge.scan_id and hpc.metadata == {"hop": "edge"}
    np.testing.assert_array_equal(out, data)


@pytest.mark.parametrize(("hand_off", "sndhwm"), [("track", 100), ("copy", 1)])
def test_send_without_a_receiver_times_out(hand_off, sndhwm):
    """'track' waits for a message that never leaves; 'copy' hits the high-water mark."""
    g = ScanGeometry((4, 4), (64, 64), np.uint16)  # 8 KiB frames: 128 KiB messages
    with FrameSender(
        LOOPBACK.replace("*", str(_unused_port())),
        sndhwm=sndhwm,
        hand_off=hand_off,
        send_timeout_s=0.2,
        linger_s=0,
    ) as tx:
        tx.begin(g)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="no receiver took frames"):
            tx.send(np.zeros((16, 64, 64), np.uint16), 0)
        assert time.monotonic() - t0 < 2


def _unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_receivers_keep_freed_message_buffers_unless_told_not_to():
    import platform

    from stemedge.net.malloc_tuning import keep_freed_memory

    glibc = platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is glibc and keep_freed_memory(1 << 20, 1 << 20) is glibc
    with FrameReceiver(LOOPBACK) as rx, FrameReceiver(LOOPBACK, tune_malloc=False) as plain:
        assert rx.malloc_tuned is glibc and plain.malloc_tuned is False
    with pytest.raises(ValueError, match="lend_bytes"):
        FrameReceiver(LOOPBACK, lend_bytes=0)
