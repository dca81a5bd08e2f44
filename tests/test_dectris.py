"""DECTRIS SIMPLON stream v1: the receiver against the simulator, over real ZeroMQ sockets on
loopback (the simulator in another process for the end-to-end runs), with every rejection path
and the accounting ``images sent = processed + dropped + rejected``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stemedge import codecs
from stemedge.geometry import ScanGeometry
from stemedge.net.dectris import DectrisReceiver, _loads, parse_header
from stemedge.net.dectris_sim import DectrisSimulator, make_frames
from stemedge.ring import FrameRing
from stemedge.sources.base import SourceError

pytest.importorskip("bitshuffle")

SHAPE = (48, 64)  # (y, x): not square, so an x/y swap cannot pass


def drain(ring: FrameRing, out: dict[int, np.ndarray]) -> None:
    """Consume a ring, decoding every stack; frames by scan index."""
    scratch = codecs.scratch_for(ring)
    for stack in ring:
        frames = codecs.decode_stack(stack, scratch)
        for i, idx in enumerate(stack.indices):
            out[int(idx)] = frames[i].copy()


def run_feed(rec: DectrisReceiver, ring: FrameRing, stop: threading.Event | None = None):
    """feed() in this thread while a consumer drains the ring; returns (frames, error)."""
    got: dict[int, np.ndarray] = {}
    consumer = threading.Thread(target=drain, args=(ring, got))
    consumer.start()
    error = None
    try:
        rec.feed(ring, stop or threading.Event())
    except SourceError as exc:
        error = exc
    finally:
        ring.close()
        consumer.join()
    return got, error


def accounting_holds(sent: int, rec: DectrisReceiver, ring: FrameRing) -> None:
    c = rec.counters()
    processed = ring.counters().frames_processed
    assert sent == processed + c["frames_dropped"] + c["frames_rejected"], (sent, c, processed)
    assert c["images_received"] == c["frames_accepted"] + c["frames_dropped"] + c["frames_rejected"]


@pytest.fixture
def sim():
    frames = make_frames(5, SHAPE, np.uint16, counts=2.0, seed=1)
    s = DectrisSimulator(frames, endpoint="tcp://127.0.0.1:0")
    yield s
    s.close(linger_s=0)


def receiver(sim, **kw) -> DectrisReceiver:
    kw.setdefault("scan_shape", (4, 8))
    kw.setdefault("stall_timeout_s", 2.0)
    kw.setdefault("begin_timeout_s", 5.0)
    return DectrisReceiver(sim.endpoint, **kw)


def ring_for(rec: DectrisReceiver, **kw) -> FrameRing:
    g = rec.geometry
    kw.setdefault("slots", 4)
    kw.setdefault("slot_frames", 4)
    return FrameRing(g.frame_shape, g.dtype, pinned=False, **kw)


# -- end to end, simulator in another process ----------------------------------------------------
def run_sim_process(args: list[str]):
    cmd = [sys.executable, "-m", "stemedge.net.dectris_sim", "--port", "0", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize(
    ("shape", "dtype", "encoding", "detail", "n"),
    [
        ((512, 512), "uint16", "bslz4", "basic", 600),
        ((48, 64), "uint32", "bslz4", "all", 200),
        ((48, 64), "uint8", "lz4", "basic", 100),
        ((48, 64), "uint16", "raw", "basic", 100),
    ],
)
def test_end_to_end_other_process(shape, dtype, encoding, detail, n):
    args = [
        "--frames",
        str(n),
        "--shape",
        *map(str, shape),
        "--dtype",
        dtype,
        "--counts",
        "0.5",
        "--encoding",
        encoding,
        "--header-detail",
        detail,
        "--distinct",
        "7",
        "--seed",
        "3",
        "--series",
        "42",
        "--timeout",
        "30",
    ]
    with run_sim_process(args) as proc:
        ready = proc.stdout.readline().split()
        assert ready[0] == "READY", ready
        with DectrisReceiver(ready[1], scan_shape=(n // 10, 10), begin_timeout_s=30) as rec:
            geo = rec.geometry
            assert geo.frame_shape == shape and geo.dtype == np.dtype(dtype)
            assert rec.header.series == 42 and rec.n_images == n
            ring = ring_for(rec, slots=8, slot_frames=16)
            got, error = run_feed(rec, ring)
            assert error is None
            summary = json.loads(proc.stdout.read().strip().splitlines()[-1])
            proc.wait(10)
            assert proc.returncode == 0
            sent = summary["images_sent"]
            assert sent == n
            accounting_holds(sent, rec, ring)
            c = rec.counters()
            assert c["frames_accepted"] == n and c["end_received"] and c["frames_rejected"] == 0
            expected = make_frames(7, shape, np.dtype(dtype), counts=0.5, seed=3)
            assert sorted(got) == list(range(n))
            for i in range(n):
                np.testing.assert_array_equal(got[i], expected[i % 7])
            if detail == "all":
                assert rec.header.pixel_mask.shape == shape and rec.header.pixel_mask[0, 0] == 1
                assert rec.header.flatfield.dtype == np.float32
                assert rec.header.countrate_table.shape == (2, 64)
            json.dumps(rec.describe())


# -- in-process simulator: the protocol paths ----------------------------------------------------
def test_header_details_and_appendices():
    frames = make_frames(2, SHAPE, np.uint16, seed=2)
    with (
        DectrisSimulator(
            frames,
            endpoint="tcp://127.0.0.1:0",
            header_detail="all",
            header_appendix=b'{"user": "x"}',
            image_appendix="note",
            config={"description": "test"},
        ) as s,
        receiver(s) as rec,
    ):
        s.send_header(3, 32)
        for i in range(32):
            s.send_image(i, 3)
        s.send_end(3)
        ring = ring_for(rec)
        got, error = run_feed(rec, ring)
        assert error is None and len(got) == 32
        assert rec.header.appendix == b'{"user": "x"}'
        assert rec.header.config["description"] == "test"
        accounting_holds(32, rec, ring)


def one_sim(**kw) -> DectrisSimulator:
    """A fresh simulator: a PUSH socket round-robins over its peers, so each receiver gets its
    own sender."""
    return DectrisSimulator(make_frames(1, SHAPE, np.uint16), endpoint="tcp://127.0.0.1:0", **kw)


def test_geometry_from_user_and_mismatch():
    geo = ScanGeometry((2, 4), SHAPE, np.uint16)
    with one_sim() as s, receiver(s, geometry=geo, scan_shape=None) as rec:
        s.send_header(1, 8)
        assert rec.geometry is geo and rec.n_images == 8
    bad = ScanGeometry((2, 4), SHAPE, np.uint32)
    with one_sim() as s, receiver(s, geometry=bad, scan_shape=None) as rec:
        s.send_header(1, 8)
        with pytest.raises(SourceError, match="uint16 frames but geometry says"):
            rec.wait_for_header()
    with one_sim() as s, receiver(s, scan_shape=(2, 3)) as rec:
        s.send_header(1, 8)
        with pytest.raises(SourceError, match="8 images but the scan only 6"):
            _ = rec.geometry


def test_header_detail_none():
    with one_sim(header_detail="none") as s, receiver(s) as rec:
        s.send_header(1, 32)
        with pytest.raises(SourceError, match="header_detail 'none'"):
            _ = rec.geometry
    geo = ScanGeometry((4, 8), SHAPE, np.uint16)
    with one_sim(header_detail="none") as s, receiver(s, geometry=geo, scan_shape=None) as rec:
        s.send_header(5, 32)
        for i in range(32):
            s.send_image(i, 5)
        s.send_end(5)
        ring = ring_for(rec)
        got, error = run_feed(rec, ring)
        assert error is None and len(got) == 32
        accounting_holds(32, rec, ring)


def test_rejections_are_counted_and_harmless(sim):
    """One series with every kind of bad image among good ones; the good ones all arrive intact,
    each bad one is counted under its reason."""
    y, x = SHAPE
    good = sim.image_parts
    d = json.loads(good(0, 9)[1])
    bad_dimage_d = {
        "shape_mismatch": json.dumps({**d, "shape": [y, x]}).encode(),
        "unsupported_encoding": json.dumps({**d, "encoding": "bs16-lz4>"}).encode(),
        "oversize": json.dumps({**d, "size": 4 * x * y * 2}).encode(),
    }
    with receiver(sim) as rec:
        sim.send_header(9, 32)
        sent = 0
        for i in range(32):
            sim.send_image(i, 9)
            sent += 1
            if i == 3:  # another series
                sim.send_parts(good(4, 8))
                sim.send_parts(good(33, 8))
                sent += 2
            if i == 5:  # duplicate, out of range, not an int
                sim.send_parts(good(5, 9))
                for f in (32, -1):
                    sim.send_parts(good(f, 9))
                p = good(6, 9)
                p[0] = p[0].replace(b'"frame":6', b'"frame":"6"')
                sim.send_parts(p)
                sent += 4
            if i == 7:  # malformed JSON in part 1 and part 2, missing parts
                p = good(8, 9)
                sim.send_parts([b"{not json", *p[1:]])
                sim.send_parts([p[0], b"\xff\xfe", *p[2:]])
                sim.send_parts(p[:2])
                sim.send_parts(p[:3])
                sim.send_parts([p[0]])
                sent += 5
            if i == 9:  # dimage_d problems
                for part in bad_dimage_d.values():
                    p = good(10, 9)
                    sim.send_parts([p[0], part, *p[2:]])
                    sent += 1
            if i == 11:  # size announced differs from the data, corrupt header total
                p = good(12, 9)
                sim.send_parts([p[0], json.dumps({**d, "size": len(p[2]) - 1}).encode(), *p[2:]])
                blob = bytearray(p[2])
                blob[0:8] = (123).to_bytes(8, "big")
                sim.send_parts(
                    [p[0], json.dumps({**d, "size": len(blob)}).encode(), bytes(blob), p[3]]
                )
                sent += 2
        sim.send_parts(sim.end_parts(8))  # another series' end: ignored
        sim.send_parts([b'{"htype": "dunknown-1.0"}'])
        sim.send_end(9)
        ring = ring_for(rec)
        got, error = run_feed(rec, ring)
        assert error is None
        c = rec.counters()
        assert c["frames_accepted"] == 32
        assert sorted(got) == list(range(32))
        for i in range(32):
            np.testing.assert_array_equal(got[i], sim.frames[i % 5])
        assert c["rejected_by_reason"] == {
            "series_mismatch": 2,
            "duplicate": 1,
            "frame_out_of_range": 3,
            "malformed": 2,
            "missing_parts": 3,
            "shape_mismatch": 1,
            "unsupported_encoding": 1,
            "oversize": 1,
            "size_mismatch": 1,
            "bad_payload": 1,
        }
        assert c["stray_messages"] == 2
        accounting_holds(sent, rec, ring)


def test_verify_hash_and_corrupt_lz4():
    frames = make_frames(2, SHAPE, np.uint16, counts=3, seed=4)
    with (
        DectrisSimulator(frames, endpoint="tcp://127.0.0.1:0", encoding="lz4") as s,
        receiver(s, verify_hash=True) as rec,
    ):
        s.send_header(1, 32)
        for i in range(32):
            p = s.image_parts(i, 1)
            if i == 4:
                p[0] = p[0].replace(s.hashes[0].encode(), b"0" * 32)
            if i == 6:
                blob = bytearray(p[2])
                blob[len(blob) // 2 :] = b"\xff" * (len(blob) - len(blob) // 2)
                p[2] = bytes(blob)
                p[1] = json.dumps({**json.loads(p[1]), "size": len(blob)}).encode()
            s.send_parts(p)
        s.send_end(1)
        ring = ring_for(rec)
        got, error = run_feed(rec, ring)
        assert error is None
        c = rec.counters()
        assert c["rejected_by_reason"] == {"hash_mismatch": 1, "bad_payload": 1}
        assert sorted(got) == [i for i in range(32) if i not in (4, 6)]
        np.testing.assert_array_equal(got[3], frames[1])
        accounting_holds(32, rec, ring)


def test_incompressible_frames_larger_than_a_frame_arrive():
    """Full-range noise compresses to more than the frame; such payloads cannot sit in the slot,
    so they are decoded on arrival (committed as raw frames) instead of being lost."""
    rng = np.random.default_rng(12)
    frames = rng.integers(0, 2**16, (3, *SHAPE), dtype=np.uint16)
    with DectrisSimulator(frames, endpoint="tcp://127.0.0.1:0") as s, receiver(s) as rec:
        assert min(len(b) for b in s.blobs) > frames[0].nbytes
        s.send_header(1, 32)
        for i in range(32):
            s.send_image(i, 1)
        s.send_end(1)
        ring = ring_for(rec)
        got, error = run_feed(rec, ring)
        assert error is None and sorted(got) == list(range(32))
        for i in range(32):
            np.testing.assert_array_equal(got[i], frames[i % 3])
        accounting_holds(32, rec, ring)


def test_mixed_encodings_split_slots():
    frames = make_frames(3, SHAPE, np.uint16, seed=5)
    with (
        DectrisSimulator(frames, endpoint="tcp://127.0.0.1:0") as s,
        DectrisSimulator(frames, endpoint="tcp://127.0.0.1:0", encoding="raw") as s_raw,
        receiver(s) as rec,
    ):
        s.send_header(2, 32)
        for i in range(32):
            s.send_parts((s_raw if i % 3 == 0 else s).image_parts(i, 2))
        s.send_end(2)
        ring = ring_for(rec, slot_frames=8)
        got, error = run_feed(rec, ring)
        assert error is None and len(got) == 32
        for i in range(32):
            np.testing.assert_array_equal(got[i], frames[i % 3])
        assert ring.counters().stacks_in > 32 // 8  # encodings never share a slot


# -- timing: begin, stall, end -------------------------------------------------------------------
def test_begin_timeout(sim):
    with receiver(sim, begin_timeout_s=0.2) as rec:
        t0 = time.monotonic()
        with pytest.raises(SourceError, match="no DECTRIS series header"):
            _ = rec.geometry
        assert time.monotonic() - t0 < 2


def test_stray_images_before_the_header_are_skipped(sim):
    with receiver(sim) as rec:
        for i in range(3):  # a series that began before we connected
            sim.send_image(i, 1)
        sim.send_header(2, 32)
        for i in range(32):
            sim.send_image(i, 2)
        sim.send_end(2)
        ring = ring_for(rec)
        got, error = run_feed(rec, ring)
        assert error is None and len(got) == 32
        assert rec.counters()["stray_messages"] == 3


def test_stall_raises_and_keeps_what_arrived(sim):
    with receiver(sim, stall_timeout_s=0.3) as rec:
        sim.send_header(1, 32)
        for i in range(5):
            sim.send_image(i, 1)
        ring = ring_for(rec)
        t0 = time.monotonic()
        got, error = run_feed(rec, ring)
        assert isinstance(error, SourceError) and "stalled" in str(error)
        assert "5 of 32" in str(error)
        assert time.monotonic() - t0 < 3
        assert sorted(got) == list(range(5))  # committed before the error, nothing lost
        accounting_holds(5, rec, ring)


def test_every_image_but_no_end_returns(sim):
    with receiver(sim, stall_timeout_s=0.3) as rec:
        sim.send_header(1, 32)
        for i in range(32):
            sim.send_image(i, 1)
        ring = ring_for(rec)
        got, error = run_feed(rec, ring)
        assert error is None and len(got) == 32
        assert not rec.counters()["end_received"]


def test_early_end_returns_with_what_arrived(sim):
    with receiver(sim) as rec:
        sim.send_header(1, 32)
        for i in range(10):
            sim.send_image(i, 1)
        sim.send_end(1)
        ring = ring_for(rec)
        got, error = run_feed(rec, ring)
        assert error is None and len(got) == 10
        assert rec.counters()["end_received"]


def test_new_series_mid_series_raises(sim):
    with receiver(sim) as rec:
        sim.send_header(1, 32)
        for i in range(6):
            sim.send_image(i, 1)
        sim.send_header(2, 32)
        ring = ring_for(rec)
        got, error = run_feed(rec, ring)
        assert isinstance(error, SourceError) and "new series" in str(error)
        assert len(got) == 6


def test_stop_event_ends_feed(sim):
    with receiver(sim, stall_timeout_s=30) as rec:
        sim.send_header(1, 32)
        for i in range(3):
            sim.send_image(i, 1)
        ring = ring_for(rec)
        stop = threading.Event()
        threading.Timer(0.2, stop.set).start()
        t0 = time.monotonic()
        got, error = run_feed(rec, ring, stop)
        assert error is None and len(got) == 3
        assert time.monotonic() - t0 < 2
        with pytest.raises(RuntimeError, match="already took series"):
            rec.feed(ring_for(rec), threading.Event())


def test_close_from_another_thread_stops_feed(sim):
    rec = receiver(sim, stall_timeout_s=30)
    sim.send_header(1, 32)
    sim.send_image(0, 1)
    ring = ring_for(rec)
    threading.Timer(0.2, rec.close).start()
    t0 = time.monotonic()
    got, error = run_feed(rec, ring)
    assert error is None and sorted(got) == [0]
    assert time.monotonic() - t0 < 2
    rec.close()


# -- ring policies and chunks --------------------------------------------------------------------
def test_drop_policy_counts_drops():
    frames = make_frames(2, SHAPE, np.uint16, seed=6)
    n = 400
    with (
        DectrisSimulator(frames, endpoint="tcp://127.0.0.1:0") as s,
        receiver(s, scan_shape=(20, 20)) as rec,
    ):
        sender = threading.Thread(target=s.send_series, args=(n,), kwargs={"series": 4})
        sender.start()
        ring = ring_for(rec, slots=2, slot_frames=2, policy="drop")
        processed = []

        def slow():
            for stack in ring:
                time.sleep(0.01)
                processed.append(len(stack))

        consumer = threading.Thread(target=slow)
        consumer.start()
        rec.feed(ring, threading.Event())
        ring.close()
        consumer.join()
        sender.join()
        c = rec.counters()
        assert c["frames_dropped"] > 0
        assert ring.counters().frames_dropped == c["frames_dropped"]
        accounting_holds(n, rec, ring)


def test_chunks(sim):
    with receiver(sim) as rec:
        sim.send_header(1, 32)
        for i in range(32):
            sim.send_image(i, 1)
        sim.send_end(1)
        seen = []
        for chunk in rec.chunks(8):
            assert len(chunk.frames) <= 8
            for f, i in zip(chunk.frames, chunk.indices, strict=True):
                np.testing.assert_array_equal(f, sim.frames[i % 5])
                seen.append(int(i))
        assert seen == list(range(32))


# -- construction and parsing --------------------------------------------------------------------
def test_default_scan_is_one_row():
    with one_sim() as s, DectrisReceiver(s.endpoint) as rec:
        s.send_header(1, 7)
        assert rec.geometry.scan_shape == (1, 7)


def test_constructor_checks():
    with pytest.raises(ValueError, match="differs"):
        DectrisReceiver(
            "tcp://127.0.0.1:1", scan_shape=(2, 2), geometry=ScanGeometry((2, 3), SHAPE, np.uint16)
        )
    with pytest.raises(ValueError, match="stall_timeout_s"):
        DectrisReceiver("tcp://127.0.0.1:1", scan_shape=(2, 2), stall_timeout_s=0)
    with pytest.raises(ValueError, match="endpoint"):
        DectrisReceiver("nonsense://x", scan_shape=(2, 2))
    with pytest.raises(TypeError):
        DectrisReceiver("tcp://127.0.0.1:1", geometry=(2, 2))
    rec = DectrisReceiver("tcp://127.0.0.1:1", scan_shape=(2, 2))
    rec.close()
    rec.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        rec.wait_for_header(0.01)


def test_parse_header_errors():
    ok = b'{"htype": "dheader-1.0", "series": 1, "header_detail": "basic"}'
    cfg = {
        "x_pixels_in_detector": 4,
        "y_pixels_in_detector": 2,
        "bit_depth_image": 16,
        "nimages": 5,
        "ntrigger": 3,
        "trigger_mode": "ints",
    }
    h = parse_header([ok, json.dumps(cfg).encode()])
    assert h.frame_shape == (2, 4) and h.dtype == np.uint16 and h.n_images == 15
    h = parse_header([ok, json.dumps({**cfg, "trigger_mode": "exte"}).encode()])
    assert h.n_images == 3
    h = parse_header([ok, json.dumps({k: {"value": v} for k, v in cfg.items()}).encode()])
    assert h.n_images == 15
    for parts, match in (
        ([b"[]"], "JSON object"),
        ([ok.replace(b"basic", b"most")], "header_detail"),
        ([ok.replace(b'"series": 1', b'"series": "1"')], "series"),
        ([ok], "detector config is missing"),
        ([ok, b"nope"], "not JSON"),
        ([ok, json.dumps({**cfg, "bit_depth_image": 12}).encode()], "bit_depth_image"),
        ([ok, json.dumps({k: v for k, v in cfg.items() if k != "nimages"}).encode()], "nimages"),
        ([ok.replace(b"basic", b"all"), json.dumps(cfg).encode()], "lacks dflatfield"),
    ):
        with pytest.raises(SourceError, match=match):
            parse_header(parts)


def _parse(fn, b):
    try:
        return "ok", fn(b)
    except ValueError as exc:
        return "error", type(exc)
    except Exception as exc:  # whatever json.loads raises, _loads must raise too
        return "other", type(exc)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=40),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
            max_leaves=8,
        ).map(lambda v: json.dumps(v).encode()),
    ),
    st.sampled_from([b"", b" ", b"\n", b"x", b"}"]),
)
def test_fast_json_parse_is_json_loads(body, suffix):
    """The receiver's JSON fast path returns or raises exactly what json.loads does."""
    b = body + suffix
    assert _parse(_loads, b) == _parse(json.loads, b)
