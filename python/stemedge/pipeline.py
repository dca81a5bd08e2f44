"""Pipeline: source → FrameRing → worker threads → analyses (+ sinks), live.

One producer thread runs ``source.feed(ring, stop)``; ``workers`` threads take filled stacks from
the ring, decode them if they arrived compressed, fold them into their own partial result of
every analysis, hand them to the sinks (e.g. an EMD writer or a forwarder to HPC), and release
the slot. Native kernels release the GIL, so the workers run in parallel. Partial results can
be read while the scan runs; a monitor thread reports progress and rates to a status channel
and a progress bar. At the end the partials are merged and finalised.

With ``gpu=True`` (or ``'auto'`` on a machine with a GPU) one consumer thread instead feeds the
centre-of-mass, virtual-detector and refresh-mode SSB analyses to the GPU
(:class:`stemedge.gpu_stream.GpuStreamer`) and runs the other analyses and the sinks on the
host.

Every frame is accounted for: ``frames_in = processed + discarded`` once the run is over, and
``dropped`` (refused by a full ring under the drop policy) and ``rejected`` (frames whose scan
index lies off the grid) are reported, never silent.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from stemedge.analysis.base import Analysis, scan_indices
from stemedge.analysis.runner import Coverage
from stemedge.geometry import ScanGeometry
from stemedge.ring import Encoding, FrameRing, RingCounters
from stemedge.sources.base import Source

__all__ = ["Pipeline", "PipelineError", "PipelineResult", "Sink"]


class Sink(Protocol):
    """Receives every processed stack (from worker threads: must be thread-safe). The frames are
    views into a ring slot, valid only during the call."""

    def write_frames(self, frames: np.ndarray, indices: np.ndarray) -> None: ...


class PipelineError(RuntimeError):
    """The source or a worker failed. ``result`` holds everything processed before the failure."""

    def __init__(self, message: str, result: PipelineResult | None) -> None:
        super().__init__(message)
        self.result = result


@dataclasses.dataclass
class PipelineResult:
    """What a run produced: results by analysis then result name, and how the run went."""

    geometry: ScanGeometry
    results: dict[str, dict[str, np.ndarray]]
    coverage: np.ndarray  # frames seen per scan position
    counters: RingCounters
    frames_rejected: int
    elapsed_s: float
    worker_busy_s: list[float]
    worker_sink_s: list[float]
    ring: dict[str, Any]
    source: dict[str, Any]
    error: str | None = None
    gpu: dict[str, Any] | None = None  # the GPU consumer's stats when the run used one

    @property
    def frames_per_s(self) -> float:
        return self.counters.frames_processed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def bytes_per_s(self) -> float:
        return self.frames_per_s * self.geometry.frame_nbytes

    @property
    def capacity_frames_per_s(self) -> float:
        """Frames/s the workers could take with a core each and frames always waiting: processed
        frames over the workers' mean CPU time (sinks that wait on I/O use little CPU, so with
        file writes the wall-clock rate of an unpaced run can be lower)."""
        busy = sum(self.worker_busy_s) / max(len(self.worker_busy_s), 1)
        return self.counters.frames_processed / busy if busy > 0 else 0.0

    @property
    def analysis_capacity_frames_per_s(self) -> float:
        """As ``capacity_frames_per_s`` but without the time spent in sinks: what decoding and
        the analyses alone could take."""
        busy = sum(b - k for b, k in zip(self.worker_busy_s, self.worker_sink_s, strict=True))
        busy /= max(len(self.worker_busy_s), 1)
        return self.counters.frames_processed / busy if busy > 0 else 0.0

    @property
    def complete(self) -> bool:
        """Every scan position seen at least once."""
        return bool(np.all(self.coverage > 0))

    def summary(self) -> dict[str, Any]:
        c = self.counters
        return {
            "frames_in": c.frames_in,
            "frames_processed": c.frames_processed,
            "frames_dropped": c.frames_dropped,
            "frames_discarded": c.frames_discarded,
            "frames_rejected": self.frames_rejected,
            "positions_covered": int(np.count_nonzero(self.coverage)),
            "positions": self.geometry.n_positions,
            "elapsed_s": self.elapsed_s,
            "frames_per_s": self.frames_per_s,
            "bytes_per_s": self.bytes_per_s,
            "capacity_frames_per_s": self.capacity_frames_per_s,
            "analysis_capacity_frames_per_s": self.analysis_capacity_frames_per_s,
            "ring_high_water_slots": c.high_water,
            "latency_p50_s": c.latency_p50_s,
            "latency_p99_s": c.latency_p99_s,
            "latency_max_s": c.latency_max_s,
            "gpu": self.gpu is not None,
            "error": self.error,
        }


class StackFrames:
    """What a ring consumer analyses of each stack (call it with the stack): its frames and
    checked scan indices (:func:`scan_indices`). Compressed payloads are decoded into a scratch
    buffer; those that fail to decode, and frames whose index is off the scan, are left out
    (the rest of the stack still counts) and counted in ``rejected``. Shared by the CPU
    pipeline's workers and the GPU streamer."""

    def __init__(self, ring: FrameRing, geometry: ScanGeometry) -> None:
        self.rejected = 0
        self._ring, self._geometry = ring, geometry
        self._scratch: np.ndarray | None = None  # decode target for compressed stacks

    def __call__(self, stack) -> tuple[np.ndarray, Any]:
        frames, indices = self._decoded(stack)
        try:
            return frames, scan_indices(self._geometry, indices)
        except IndexError:
            ok = (indices >= 0) & (indices < self._geometry.n_positions)
            self.rejected += int(len(indices) - ok.sum())
            return frames[ok], scan_indices(self._geometry, indices[ok])

    def _decoded(self, stack) -> tuple[np.ndarray, np.ndarray]:
        if stack.encoding is Encoding.RAW:
            return stack.frames, stack.indices
        from stemedge import codecs

        if self._scratch is None:
            self._scratch = codecs.scratch_for(self._ring)
        try:
            return codecs.decode_stack(stack, self._scratch), stack.indices
        except codecs.CorruptFrames as exc:
            self.rejected += int(np.count_nonzero(~exc.ok))
            return exc.frames[exc.ok], stack.indices[exc.ok]


class _Worker:
    """One consumer thread's private state: a partial per analysis and a coverage count."""

    def __init__(self, analyses: Sequence[Analysis], geometry: ScanGeometry, ring: FrameRing):
        self.partials = [a.new_partial() for a in analyses]
        self.coverage = Coverage(geometry)
        self.read = StackFrames(ring, geometry)
        # CPU time (not wall: on a busy machine a runnable thread also waits for a core) spent
        # decoding, analysing and in sinks
        self.busy_s = 0.0
        self.sink_s = 0.0  # of which in sinks (file writes, forwarding)
        self.lock = threading.Lock()  # held while folding a stack in: snapshots are consistent

    @property
    def rejected(self) -> int:
        return self.read.rejected


class Pipeline:
    """Run analyses live on frames from a source (module docstring).

    Parameters
    ----------
    source : Source
        Where frames come from; its ``geometry`` fixes the ring and binds the analyses.
    analyses : sequence of Analysis
        Unique ``name`` each; bound to the source geometry here.
    sinks : sequence of Sink
        Objects with a thread-safe ``write_frames(frames, indices)`` (EMD writer, forwarder).
    workers : int
        Consumer threads. With more than one, analyses left at all native threads
        (``threads == 0``) are set to one per call: the workers are the parallelism.
    slots, slot_frames, policy, pinned :
        The ring (see :class:`stemedge.ring.FrameRing`). Defaults: slots of ~1 MiB but 16 to
        256 frames (per-stack costs are fixed, so small frames travel in bigger stacks), and
        enough slots for ~256 MiB or 64 slots, whichever is fewer (at least 4).
    status : object with ``publish(event, **fields)``, optional
        A status channel (:class:`stemedge.status.StatusPublisher`).
    progress : bool
        Show a tqdm progress bar.
    report_every_s : float
        Interval of progress/rate events.
    gpu : bool or 'auto'
        Run the centre-of-mass, virtual-detector and ``SSBAnalysis(mode="refresh")`` analyses
        on the GPU
        (:class:`stemedge.gpu_stream.GpuStreamer`: the pinned ring's stacks copied
        asynchronously into triple-buffered device memory, the sums kept on the device); the
        other analyses and the sinks then run on the host in the same single consumer thread,
        and ``workers`` is not used. ``'auto'``: when cupy sees a GPU and an analysis can use
        it. True without a GPU raises ValueError.
    """

    def __init__(
        self,
        source: Source,
        analyses: Sequence[Analysis],
        *,
        sinks: Sequence[Sink] = (),
        workers: int = 2,
        slots: int | None = None,
        slot_frames: int | None = None,
        policy: str = "block",
        pinned: bool | str = "auto",
        status=None,
        progress: bool = False,
        report_every_s: float = 0.5,
        gpu: bool | str = False,
    ) -> None:
        if not isinstance(source, Source):
            raise TypeError(f"source must be a stemedge Source, got {type(source).__name__}")
        names = [a.name for a in analyses]
        if len(set(names)) != len(names):
            raise ValueError(f"analysis names must be unique, got {names}; pass name=... to each")
        if int(workers) < 1:
            raise ValueError(f"workers must be >= 1, got {workers!r}")
        self.source = source
        self.geometry = source.geometry
        self.analyses = list(analyses)
        for a in self.analyses:
            a.bind(self.geometry)
            if int(workers) > 1 and a.threads == 0:
                a.use_threads(1)  # the workers are the parallelism (see Analysis.use_threads)
        self.sinks = list(sinks)
        self.status = status
        self.progress = progress
        self.report_every_s = float(report_every_s)
        if slot_frames is None:
            slot_frames = int(min(256, max(16, (1 << 20) // self.geometry.frame_nbytes)))
        if slots is None:
            per_slot = slot_frames * self.geometry.frame_nbytes
            slots = int(min(64, max(4, (256 << 20) // max(per_slot, 1))))
        self.ring = FrameRing(
            self.geometry.frame_shape,
            self.geometry.dtype,
            slots=slots,
            slot_frames=slot_frames,
            policy=policy,
            pinned=pinned,
        )
        self._streamer = self._gpu_streamer(gpu)
        n_workers = 0 if self._streamer is not None else int(workers)
        self._workers = [_Worker(self.analyses, self.geometry, self.ring) for _ in range(n_workers)]
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._done = threading.Event()
        self._t0 = 0.0
        self._t_end: float | None = None
        self.result: PipelineResult | None = None

    def _gpu_streamer(self, gpu):
        """The GPU consumer for ``gpu=`` (None: the CPU workers consume the ring)."""
        if gpu not in (True, False, "auto"):
            raise ValueError(f"gpu must be True, False or 'auto', got {gpu!r}")
        if not gpu:
            return None
        from stemedge._build import cuda_report
        from stemedge.gpu_stream import GpuStreamer, runs_on_gpu

        on_gpu = [a for a in self.analyses if runs_on_gpu(a)]
        report = cuda_report()
        if gpu == "auto":
            if not on_gpu or not report.get("devices"):
                return None
        elif not on_gpu:
            raise ValueError(
                "gpu=True needs a CenterOfMassAnalysis, VirtualDetectorAnalysis or "
                "SSBAnalysis(mode='refresh') to run there"
            )
        elif not report.get("devices"):
            raise ValueError(f"gpu=True but no CUDA GPU here: {report.get('error')}")
        on_host = [a for a in self.analyses if not runs_on_gpu(a)]
        return GpuStreamer(
            self.ring, self.geometry, on_gpu, host_analyses=on_host, sinks=self.sinks
        )

    # -- running ----------------------------------------------------------------------------------
    def start(self) -> Pipeline:
        """Start the producer, workers and monitor threads; returns at once."""
        if self._threads:
            raise RuntimeError("this pipeline was already started; make a new one")
        self._t0 = time.perf_counter()
        self._publish(
            "started",
            geometry=self.geometry.to_dict(),
            source=self.source.describe(),
            analyses=[a.name for a in self.analyses],
            parameters={a.name: a.parameters() for a in self.analyses},
            ring=self.ring.describe(),
            workers=len(self._workers),
            gpu=self._streamer is not None,
        )
        self._threads = [
            threading.Thread(target=self._produce, name="stemedge-source", daemon=True)
        ]
        self._threads += [
            threading.Thread(
                target=self._consume, args=(w,), name=f"stemedge-worker-{i}", daemon=True
            )
            for i, w in enumerate(self._workers)
        ]
        if self._streamer is not None:
            self._threads.append(
                threading.Thread(target=self._consume_gpu, name="stemedge-gpu", daemon=True)
            )
        self._monitor = threading.Thread(target=self._watch, name="stemedge-monitor", daemon=True)
        for t in self._threads:
            t.start()
        self._monitor.start()
        return self

    def wait(self, timeout: float | None = None) -> PipelineResult:
        """Wait for the end of the stream and return the merged, finalised result. Raises
        PipelineError (with ``.result``) if the source or a worker failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                raise TimeoutError(f"pipeline still running after {timeout} s")
        self._t_end = time.perf_counter()
        self._done.set()
        self._monitor.join()
        self.result = self._finish()
        if self.result.error is not None:
            self._publish(
                "error",
                message=self.result.error,
                type=type(self._errors[0]).__name__,
                **self._progress_fields(self.result.counters),
            )
            raise PipelineError(self.result.error, self.result)
        self._publish(
            "finished",
            counters=self.result.counters.to_dict(),
            elapsed_s=self.result.elapsed_s,
            summary=self.result.summary(),
        )
        return self.result

    def run(self) -> PipelineResult:
        """``start()`` then ``wait()``; Ctrl-C aborts cleanly and raises KeyboardInterrupt."""
        self.start()
        try:
            return self.wait()
        except KeyboardInterrupt:
            self.abort()
            raise

    def abort(self) -> None:
        """Stop now: the source stops, filled slots are discarded (and counted)."""
        self._stop.set()
        self.ring.abort()
        for t in self._threads:
            t.join(5)

    # -- threads ----------------------------------------------------------------------------------
    def _produce(self) -> None:
        try:
            self.source.feed(self.ring, self._stop)
        except BaseException as exc:  # reported by wait(); the workers still drain the ring
            self._errors.append(exc)
        finally:
            self.ring.close()

    def _consume(self, w: _Worker) -> None:
        try:
            for stack in self.ring:
                t0 = time.thread_time()
                frames, where = w.read(stack)
                with w.lock:
                    if len(where):
                        for analysis, partial in zip(self.analyses, w.partials, strict=True):
                            analysis.process(partial, frames, where.flat)
                        w.coverage.add(where)
                t1 = time.thread_time()
                if len(where):
                    for sink in self.sinks:
                        sink.write_frames(frames, where.flat)
                t2 = time.thread_time()
                w.sink_s += t2 - t1
                w.busy_s += t2 - t0
        except BaseException as exc:
            self._errors.append(exc)
            self._stop.set()
            self.ring.abort()  # the other workers stop too: a failed analysis is not partial data

    def _consume_gpu(self) -> None:
        try:
            self._streamer.run(stop=self._stop)
        except BaseException as exc:
            self._errors.append(exc)
            self._stop.set()
            self.ring.abort()

    def _watch(self) -> None:
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=self.geometry.n_positions,
                unit="frame",
                unit_scale=self.geometry.n_positions >= 10_000,
                desc="stemedge",
                smoothing=0.1,
            )
        last_t, last_n, last_dropped = self._t0, 0, 0
        while not self._done.wait(self.report_every_s):
            now = time.perf_counter()
            c = self.ring.counters()
            n = c.frames_processed
            rate = (n - last_n) / (now - last_t) if now > last_t else 0.0
            last_t, last_n = now, n
            self._publish("progress", **self._progress_fields(c))
            self._publish(
                "rates",
                frames_per_s=rate,
                bytes_per_s=rate * self.geometry.frame_nbytes,
                latency_s={"p50": c.latency_p50_s, "p99": c.latency_p99_s, "max": c.latency_max_s},
            )
            if c.frames_dropped > last_dropped:
                self._publish(
                    "drops",
                    dropped=c.frames_dropped,
                    new=c.frames_dropped - last_dropped,
                    reason="ring full",
                )
                last_dropped = c.frames_dropped
            if bar is not None:
                bar.n = n
                bar.set_postfix(dropped=c.frames_dropped, refresh=False)
                bar.refresh()
        if bar is not None:
            bar.n = self.ring.counters().frames_processed
            bar.close()

    # -- results ----------------------------------------------------------------------------------
    def _progress_fields(self, c: RingCounters) -> dict[str, Any]:
        return {
            "frames_in": c.frames_in,
            "processed": c.frames_processed,
            "dropped": c.frames_dropped,
            "total": self.geometry.n_positions,
            "fraction": c.frames_processed / self.geometry.n_positions,
            "ring_filled": c.filled,
        }

    def _merged(self) -> tuple[list[dict[str, np.ndarray]], np.ndarray, int]:
        if self._streamer is not None:
            on_gpu, on_host, counts, rejected = self._streamer.snapshot()
            by_name = {
                a.name: p
                for a, p in zip(
                    [*self._streamer.analyses, *self._streamer.host_analyses],
                    [*on_gpu, *on_host],
                    strict=True,
                )
            }
            return [by_name[a.name] for a in self.analyses], counts, rejected
        partials = [a.new_partial() for a in self.analyses]
        coverage = Coverage(self.geometry)
        rejected = 0
        for w in self._workers:
            with w.lock:
                for a, into, p in zip(self.analyses, partials, w.partials, strict=True):
                    a.merge(into, p)
                coverage.merge(w.coverage)
                rejected += w.rejected
        return partials, coverage.counts, rejected

    def partials(self) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
        """The analyses' merged partials (in ``analyses`` order) and the coverage counts, not
        finalised: what another process merges with its own (edge → HPC fan-out)."""
        partials, cov, _ = self._merged()
        return partials, cov

    def partial_results(self) -> dict[str, dict[str, np.ndarray]]:
        """Results of what has been processed so far (positions not yet seen are NaN)."""
        if self._streamer is not None:  # finalised on the device where it can be
            results = self._streamer.results()
            return {a.name: results[a.name] for a in self.analyses}
        partials, cov, _ = self._merged()
        return {a.name: a.finalize(p, cov) for a, p in zip(self.analyses, partials, strict=True)}

    def counters(self) -> RingCounters:
        return self.ring.counters()

    def _finish(self) -> PipelineResult:
        error = None
        if self._errors:
            exc = self._errors[0]
            error = f"{type(exc).__name__}: {exc}"
        if self._streamer is not None:
            results = self.partial_results()
            cov, rejected = self._streamer.coverage_and_rejected()
        else:
            partials, cov, rejected = self._merged()
            results = {
                a.name: a.finalize(p, cov) for a, p in zip(self.analyses, partials, strict=True)
            }
        return PipelineResult(
            geometry=self.geometry,
            results=results,
            coverage=cov,
            counters=self.ring.counters(),
            frames_rejected=rejected,
            elapsed_s=(self._t_end or time.perf_counter()) - self._t0,
            worker_busy_s=[w.busy_s for w in self._consumers()],
            worker_sink_s=[w.sink_s for w in self._consumers()],
            ring=self.ring.describe(),
            source=self.source.describe(),
            error=error,
            gpu=None if self._streamer is None else dict(self._streamer.stats),
        )

    def _consumers(self) -> list:
        return self._workers if self._streamer is None else [self._streamer]

    def _publish(self, event: str, **fields) -> None:
        if self.status is not None:
            self.status.publish(event, **fields)
