"""FrameRing: hand-off semantics, accounting, timeouts, shutdown, and a threaded stress test."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from stemedge.ring import Encoding, FrameRing, RingClosed


def _frames(n, shape=(5, 7), dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(size=(n, *shape)).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, (n, *shape), endpoint=True).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.float32])
def test_write_then_read_returns_the_same_frames_in_commit_order(dtype):
    data = _frames(23, (3, 9), dtype)
    ring = FrameRing((3, 9), dtype, slots=8, slot_frames=4)
    assert ring.write(data, 100) == 23
    ring.close()
    got, idx, seq = [], [], []
    for stack in ring:
        got.append(stack.frames.copy())
        idx.append(stack.indices.copy())
        seq.append(stack.sequence)
        assert stack.encoding is Encoding.RAW
        assert np.all(stack.nbytes == 3 * 9 * np.dtype(dtype).itemsize)
    np.testing.assert_array_equal(np.concatenate(got), data)
    np.testing.assert_array_equal(np.concatenate(idx), np.arange(100, 123))
    assert seq == sorted(seq) and [len(g) for g in got] == [4, 4, 4, 4, 4, 3]
    c = ring.counters()
    assert (c.frames_in, c.frames_processed, c.pending, c.stacks_in) == (23, 23, 0, 6)


def test_slot_views_are_zero_copy_and_fill_in_place():
    ring = FrameRing((4, 4), np.uint16, slots=2, slot_frames=3)
    slot = ring.acquire()
    slot.frames[:2] = 7
    slot.indices[:2] = [5, 9]
    slot.commit(2)
    stack = ring.read(timeout=1)
    assert np.shares_memory(stack.frames, slot.frames)
    assert stack.frames.shape == (2, 4, 4) and np.all(stack.frames == 7)
    assert stack.indices.tolist() == [5, 9]
    stack.release()


def test_lent_frames_reach_consumers_uncopied_in_commit_order():
    ring = FrameRing((4, 6), np.uint16, slots=3, slot_frames=4, pinned=False)
    outside = np.arange(3 * 24, dtype=np.uint16).reshape(3, 4, 6)
    with ring.acquire() as slot:  # copied, then lent, then copied: order is commit order
        slot.frames[:1] = 7
        slot.indices[:1] = [0]
        slot.commit(1)
    with ring.acquire() as slot:
        slot.indices[:3] = [1, 2, 3]
        slot.lend(outside)
    ring.write(np.full((2, 4, 6), 9, np.uint16), 4)
    ring.close()
    stacks = list(ring)
    assert [s.indices.tolist() for s in stacks] == [[0], [1, 2, 3], [4, 5]]
    assert stacks[1].frames is outside and not np.shares_memory(stacks[0].frames, outside)
    assert (stacks[0].frames == 7).all() and (stacks[2].frames == 9).all()
    for st in stacks:
        st.release()
    c = ring.counters()
    assert c.frames_in == c.frames_processed == 6 and not ring._lent
    ring2 = FrameRing((4, 6), np.uint16, slots=1, slot_frames=2, pinned=False)
    for bad, exc in (
        (outside.astype(np.int32), TypeError),  # wrong dtype
        (outside, ValueError),  # more frames than a slot holds
        (np.zeros((1, 6, 4), np.uint16), ValueError),  # wrong frame shape
        (np.zeros((2, 4, 12), np.uint16)[:, :, ::2], ValueError),  # not contiguous
        (np.zeros((0, 4, 6), np.uint16), ValueError),  # nothing
    ):
        with ring2.acquire() as slot, pytest.raises(exc):
            slot.lend(bad)
    assert not ring2._lent and ring2.counters().frames_in == 0


def test_non_contiguous_source_rows_are_copied_frame_by_frame():
    big = _frames(6, (8, 10))
    view = big[:, 1:6, 2:9]  # frames strided, rows not contiguous
    ring = FrameRing((5, 7), np.uint16, slots=4, slot_frames=4)
    with pytest.raises(TypeError, match="contiguous"):
        ring.write(view, 0)
    every_other = _frames(8)[::2]  # frames strided but each contiguous
    ring.write(every_other, 0)
    ring.close()
    np.testing.assert_array_equal(np.concatenate([s.frames.copy() for s in ring]), every_other)


def test_one_row_frames_take_any_stride_on_their_row_axis():
    # spectra as (1, channels) frames: numpy gives a length-1 axis whatever stride it likes
    spectra = np.arange(5 * 11, dtype=np.float32).reshape(5, 11)
    frames = spectra[:, None, :]
    assert frames.strides[1] == 0 and frames.flags.c_contiguous
    ring = FrameRing((1, 11), np.float32, slots=2, slot_frames=8)
    ring.write(frames, 0)
    ring.close()
    np.testing.assert_array_equal(np.concatenate([s.frames.copy() for s in ring]), frames)


def test_wrong_dtype_shape_and_indices_are_refused_with_clear_errors():
    ring = FrameRing((5, 7), np.uint16, slots=2, slot_frames=2)
    with pytest.raises(TypeError, match="uint16"):
        ring.write(_frames(2, dtype=np.uint8), 0)
    with pytest.raises(ValueError, match="detector shape"):
        ring.write(_frames(2, shape=(7, 5)), 0)
    with pytest.raises(TypeError, match="int64"):
        ring.write(_frames(2), np.arange(3))
    with pytest.raises(TypeError, match="dtype"):
        FrameRing((5, 7), np.int16)
    with pytest.raises(ValueError, match="policy"):
        FrameRing((5, 7), np.uint16, policy="overwrite")
    with pytest.raises(ValueError, match="slots"):
        FrameRing((5, 7), np.uint16, slots=0)


def test_commit_misuse_raises_instead_of_corrupting():
    ring = FrameRing((2, 2), np.uint8, slots=2, slot_frames=2)
    slot = ring.acquire()
    with pytest.raises(ValueError, match="do not fit"):
        ring._native.commit(slot.slot, 3, 0)
    slot.commit(1)
    with pytest.raises(RuntimeError, match="already"):
        slot.commit(1)
    with pytest.raises(RuntimeError, match="state"):
        ring._native.release(slot.slot)  # committed but never read
    with pytest.raises(IndexError):
        ring._native.frames_view(5)


def test_cancelled_and_abandoned_slots_return_to_the_pool():
    ring = FrameRing((2, 2), np.uint8, slots=1, slot_frames=2)
    with ring.acquire() as slot:
        slot.frames[:] = 1  # no commit: cancelled on exit
    with ring.acquire() as slot:
        slot.commit(0)  # zero frames: a cancel
    with ring.acquire(timeout=0.1) as slot:
        slot.commit(2)
    assert ring.counters().frames_in == 2


def test_block_policy_times_out_and_drop_policy_counts():
    ring = FrameRing((2, 2), np.uint8, slots=2, slot_frames=2)
    ring.write(_frames(4, (2, 2), np.uint8), 0)  # fills both slots
    t0 = time.perf_counter()
    with pytest.raises(TimeoutError, match="no free ring slot"):
        ring.acquire(timeout=0.05)
    with pytest.raises(TimeoutError, match="wrote 0 of 2"):
        ring.write(_frames(2, (2, 2), np.uint8), 4, timeout=0.05)
    assert 0.09 < time.perf_counter() - t0 < 2

    drop = FrameRing((2, 2), np.uint8, slots=2, slot_frames=2, policy="drop")
    assert drop.write(_frames(7, (2, 2), np.uint8), 0) == 7
    assert drop.acquire() is None
    drop.count_dropped(5)
    c = drop.counters()
    assert (c.frames_in, c.frames_dropped, c.full_events) == (4, 3 + 5, 2)


def test_read_times_out_then_close_drains_then_ends():
    ring = FrameRing((2, 2), np.uint8, slots=4, slot_frames=1)
    with pytest.raises(TimeoutError):
        ring.read(timeout=0.02)
    ring.write(_frames(2, (2, 2), np.uint8), 0)
    ring.close()
    with pytest.raises(RingClosed):
        ring.acquire()
    with pytest.raises(RingClosed, match="closed"):
        ring.write(_frames(1, (2, 2), np.uint8), 2)
    assert len([s.indices[0] for s in ring]) == 2
    assert ring.read(timeout=0.01) is None  # closed and drained: no wait


def test_close_and_abort_wake_blocked_threads():
    ring = FrameRing((2, 2), np.uint8, slots=1, slot_frames=1)
    results = {}

    def reader():
        results["read"] = ring.read()  # waits: nothing filled

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.05)
    ring.close()
    t.join(2)
    assert not t.is_alive() and results["read"] is None

    ring2 = FrameRing((2, 2), np.uint8, slots=1, slot_frames=1)
    ring2.write(_frames(1, (2, 2), np.uint8), 0)

    def writer():
        try:
            ring2.write(_frames(1, (2, 2), np.uint8), 1)  # blocks: ring full
        except RingClosed as exc:
            results["write"] = exc

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.05)
    ring2.abort()
    t.join(2)
    assert not t.is_alive() and isinstance(results["write"], RingClosed)
    c = ring2.counters()
    assert (c.frames_in, c.frames_discarded, c.pending) == (1, 1, 0)


def test_views_keep_the_slab_alive_after_the_ring_is_gone():
    ring = FrameRing((3, 3), np.uint16, slots=1, slot_frames=2)
    ring.write(_frames(2, (3, 3)), 0)
    view = ring.read().frames
    del ring
    assert view.sum() >= 0  # would segfault if the slab had been unmapped


@pytest.mark.parametrize("policy", ["block", "drop"])
def test_threaded_stress_every_frame_once_and_intact(policy):
    """One producer filling slots in place, four consumers with jitter: each accepted frame is
    seen exactly once with its content intact, and the counters balance."""
    shape, n = (16, 24), 20000
    ring = FrameRing(shape, np.uint32, slots=6, slot_frames=7, policy=policy)
    seen: list[np.ndarray] = []
    lock = threading.Lock()
    errors: list[str] = []

    def consumer(k):
        rng = np.random.default_rng(k)
        local = []
        for stack in ring:
            # each frame holds its own index everywhere: a torn or reused slot shows up here
            if not np.all(stack.frames == stack.indices[:, None, None].astype(np.uint32)):
                errors.append(f"corrupt stack {stack.sequence}")
            local.append(stack.indices.copy())
            if rng.random() < 0.05:
                time.sleep(0.0005)
        with lock:
            seen.extend(local)

    threads = [threading.Thread(target=consumer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    rng = np.random.default_rng(99)
    next_index = 0
    while next_index < n:
        slot = ring.acquire(timeout=5)
        k = int(min(rng.integers(1, 8), n - next_index))
        if slot is None:  # drop policy, full
            ring.count_dropped(k)
        else:
            idx = np.arange(next_index, next_index + k)
            slot.frames[:k] = idx[:, None, None].astype(np.uint32)
            slot.indices[:k] = idx
            slot.commit(k)
        next_index += k
    ring.close()
    for t in threads:
        t.join(10)
    assert not errors
    got = np.sort(np.concatenate(seen))
    assert len(np.unique(got)) == len(got)  # no frame twice
    c = ring.counters()
    assert c.frames_in == len(got) == c.frames_processed
    assert c.frames_in + c.frames_dropped == n
    if policy == "block":
        np.testing.assert_array_equal(got, np.arange(n))
    assert 1 <= c.high_water <= 6
    assert c.latency_count == c.stacks_processed and c.latency_p50_s <= c.latency_p99_s
