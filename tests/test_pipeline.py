"""Pipeline: source → ring → workers → analyses gives the offline result, accounts for every
frame, exposes partial results while running and fails cleanly."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from stemedge.analysis import (
    CenterOfMassAnalysis,
    MaxPattern,
    SumPattern,
    VirtualDetectorAnalysis,
    run_offline,
)
from stemedge.analysis.base import Analysis, ResultKind, ResultSpec
from stemedge.geometry import ScanGeometry
from stemedge.masks import annulus, disk
from stemedge.pipeline import Pipeline, PipelineError
from stemedge.sources.base import Chunk, Source, SourceError
from stemedge.sources.sim import SimSource


def _data(scan=(12, 10), det=(20, 18), dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.poisson(3.0, (*scan, *det)).astype(dtype)


def _analyses(det):
    masks = {"bf": disk(det, 5), "adf": annulus(det, 6, 9)}
    return [
        CenterOfMassAnalysis(radius=8, virtual=masks, nthreads=1),
        VirtualDetectorAnalysis(masks, nthreads=1),
        SumPattern(),
        MaxPattern(),
    ]


class _Collect:
    """A sink that keeps a copy of everything it is given."""

    def __init__(self):
        self.lock = threading.Lock()
        self.indices: list[int] = []
        self.sums: dict[int, int] = {}

    def write_frames(self, frames, indices):
        with self.lock:
            for f, i in zip(frames, indices, strict=True):
                self.indices.append(int(i))
                self.sums[int(i)] = int(f.sum())


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.float32])
@pytest.mark.parametrize("workers", [1, 3])
def test_live_run_equals_offline_run_and_every_frame_is_accounted(dtype, workers):
    data = _data(dtype=dtype)
    sink = _Collect()
    pipe = Pipeline(
        SimSource(data),
        _analyses(data.shape[2:]),
        sinks=[sink],
        workers=workers,
        slots=4,
        slot_frames=7,
    )
    res = pipe.run()
    ref = run_offline(data, _analyses(data.shape[2:]), chunk_frames=13)
    assert res.results.keys() == ref.keys()
    for name in ref:
        for key in ref[name]:
            np.testing.assert_allclose(
                res.results[name][key], ref[name][key], rtol=1e-12, err_msg=f"{name}.{key}"
            )
    c = res.counters
    n = data.shape[0] * data.shape[1]
    assert (c.frames_in, c.frames_processed, c.frames_dropped, c.frames_discarded) == (n, n, 0, 0)
    assert res.complete and res.frames_rejected == 0 and res.error is None
    assert sorted(sink.indices) == list(range(n))
    flat = data.reshape(n, -1)
    assert all(sink.sums[i] == int(flat[i].sum()) for i in range(n))


def test_partial_results_are_readable_while_the_scan_runs():
    data = _data(scan=(20, 20))
    pipe = Pipeline(
        SimSource(data, frame_rate=1000),
        [CenterOfMassAnalysis(nthreads=1)],
        workers=2,
        slot_frames=8,
    )
    pipe.start()
    time.sleep(0.15)
    mid = pipe.partial_results()["com"]["shifts_px"]
    res = pipe.wait()
    seen = np.isfinite(mid[..., 0])
    assert 0 < seen.sum() < 400  # some, not all, positions measured
    np.testing.assert_array_equal(mid[seen], res.results["com"]["shifts_px"][seen])
    assert 0.3 < res.elapsed_s < 3  # paced at 1000 frames/s
    assert res.frames_per_s < 1400


class _Fails(Source):
    """Delivers two chunks, then fails like a corrupt file would."""

    def __init__(self, data):
        self.geometry = ScanGeometry(data.shape[:2], data.shape[2:], data.dtype)
        self._flat = data.reshape(-1, *data.shape[2:])

    def chunks(self, max_frames):
        for start in (0, max_frames):
            yield Chunk(
                self._flat[start : start + max_frames],
                np.arange(start, start + max_frames, dtype=np.int64),
            )
        raise SourceError("frame 16: truncated file")


def test_a_failing_source_keeps_what_was_accepted():
    data = _data()
    with pytest.raises(PipelineError, match="truncated") as info:
        Pipeline(_Fails(data), [CenterOfMassAnalysis(nthreads=1)], slot_frames=8).run()
    res = info.value.result
    assert res.counters.frames_processed == 16 == res.counters.frames_in
    assert int(res.coverage.sum()) == 16
    shifts = res.results["com"]["shifts_px"].reshape(-1, 2)
    assert np.all(np.isfinite(shifts[:16])) and np.all(np.isnan(shifts[16:]))


class _OffGrid(Source):
    def __init__(self, data):
        self.geometry = ScanGeometry(data.shape[:2], data.shape[2:], data.dtype)
        self._flat = data.reshape(-1, *data.shape[2:])

    def chunks(self, max_frames):
        yield Chunk(self._flat[:4], np.array([0, 1, 10_000, -1], dtype=np.int64))


def test_off_grid_indices_are_counted_as_rejected():
    res = Pipeline(_OffGrid(_data()), [SumPattern()]).run()
    assert res.frames_rejected == 2 and res.counters.frames_processed == 4
    assert int(res.coverage.sum()) == 2


class _Slow(Analysis):
    """A real (if trivial) analysis that takes its time: a consumer slower than the source."""

    name = "slow"

    def results(self):
        return [ResultSpec("n", ResultKind.SINGLE, np.dtype(np.int64))]

    def new_partial(self):
        return {"n": np.zeros((), np.int64)}

    def process(self, partial, frames, indices):
        time.sleep(0.002)
        partial["n"] += len(indices)

    def merge(self, into, other):
        into["n"] += other["n"]

    def finalize(self, partial, coverage):
        return {"n": partial["n"].copy()}


def test_drop_policy_counts_what_a_slow_consumer_could_not_take():
    data = _data(scan=(30, 30))
    res = Pipeline(
        SimSource(data), [_Slow()], workers=1, slots=2, slot_frames=4, policy="drop"
    ).run()
    c = res.counters
    assert c.frames_dropped > 0
    assert c.frames_in + c.frames_dropped == 900
    assert int(res.results["slow"]["n"]) == c.frames_processed == c.frames_in


class _Broken(_Slow):
    name = "broken"

    def process(self, partial, frames, indices):
        raise ValueError("analysis bug")


def test_a_failing_analysis_stops_the_run_with_a_clear_error_and_no_hang():
    data = _data(scan=(30, 30))
    t0 = time.perf_counter()
    with pytest.raises(PipelineError, match="analysis bug") as info:
        Pipeline(SimSource(data), [_Broken()], workers=2, slots=2, slot_frames=4).run()
    assert time.perf_counter() - t0 < 5
    c = info.value.result.counters
    assert c.frames_in == c.frames_processed + c.frames_discarded


def test_duplicate_analysis_names_and_bad_arguments_are_refused():
    data = _data()
    with pytest.raises(ValueError, match="unique"):
        Pipeline(SimSource(data), [SumPattern(), SumPattern()])
    with pytest.raises(TypeError, match="Source"):
        Pipeline(data, [SumPattern()])
    with pytest.raises(ValueError, match="workers"):
        Pipeline(SimSource(data), [SumPattern()], workers=0)


def test_status_channel_reports_the_run_from_start_to_finish():
    from stemedge.status import StatusPublisher, StatusWatcher

    data = _data(scan=(20, 20))
    with StatusPublisher(job="test") as pub, StatusWatcher(pub.endpoint, timeout_s=5) as watch:
        # the watcher's subscription reaches the publisher within ~20 ms (the slow joiner)
        deadline = time.monotonic() + 5
        while watch.next_event(timeout_s=0.05) is None and time.monotonic() < deadline:
            pass
        pipe = Pipeline(
            SimSource(data, frame_rate=1500), [SumPattern()], status=pub, report_every_s=0.05
        )
        res = pipe.run()
        events = list(watch.events(until=("finished", "error"), timeout_s=5))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert "progress" in kinds and "rates" in kinds
    progress = [e for e in events if e["event"] == "progress"]
    assert all(0 <= e["fraction"] <= 1 and e["total"] == 400 for e in progress)
    done = events[-1]
    assert done["counters"]["frames_processed"] == 400 == res.counters.frames_processed
    assert events[0]["geometry"]["scan_shape"] == [20, 20]


class _Compressed(Source):
    """Puts bitshuffle-LZ4 payloads into the ring, as the DECTRIS receiver does; frame 5's
    payload is cut short."""

    def __init__(self, data):
        self.geometry = ScanGeometry(data.shape[:2], data.shape[2:], data.dtype)
        self.flat = data.reshape(-1, *data.shape[2:])

    def chunks(self, max_frames):
        raise NotImplementedError

    def feed(self, ring, stop):
        from stemedge import codecs
        from stemedge.ring import Encoding

        fb = ring.frame_bytes
        for start in range(0, len(self.flat), ring.slot_frames):
            k = min(ring.slot_frames, len(self.flat) - start)
            with ring.acquire() as slot:
                for j in range(k):
                    payload = np.frombuffer(codecs.bslz4_encode(self.flat[start + j]), np.uint8)
                    if start + j == 5:
                        payload = payload[: len(payload) // 2]
                    slot.raw[j * fb : j * fb + len(payload)] = payload
                    slot.nbytes[j] = len(payload)
                    slot.indices[j] = start + j
                slot.commit(k, Encoding.BSLZ4)


def test_compressed_stacks_are_decoded_by_workers_and_corrupt_frames_rejected():
    data = _data(scan=(6, 7))
    res = Pipeline(
        _Compressed(data), [SumPattern(), CenterOfMassAnalysis(nthreads=1)], slot_frames=4
    ).run()
    assert res.frames_rejected == 1 and res.counters.frames_processed == 42
    keep = np.ones(42, bool)
    keep[5] = False
    flat = data.reshape(42, *data.shape[2:])
    np.testing.assert_array_equal(
        res.results["sum_pattern"]["sum"], flat[keep].sum(axis=0, dtype=np.float64)
    )
    assert res.coverage.reshape(-1)[5] == 0 and np.all(res.coverage.reshape(-1)[keep] == 1)
    assert np.all(np.isnan(res.results["com"]["shifts_px"].reshape(-1, 2)[5]))
