"""Streaming frames from a (pinned) :class:`~stemedge.ring.FrameRing` into the GPU's reductions.

:class:`GpuStreamer` is a ring consumer that does on the device what the CPU pipeline's workers
do on the host for centre of mass and virtual detectors (:class:`~stemedge.analysis.MaskSums`
analyses) and for live SSB in its ``"refresh"`` mode (the bright-field cube is gathered on the
device, and each read of the results reconstructs from it there, cuFFT and all): each stack is
copied host→device asynchronously into one of ``buffers`` device buffers, each with its own CUDA
stream, so the copy of stack i+1 overlaps the kernels of stack i (double buffering with 2,
triple with 3); the reduction (``stemedge._cuda.reduce``, the kernel of :mod:`stemedge.gpu`)
runs on the same stream and its rows are added into per-position sums that stay on the device.
A ring slot is released as soon as its copy has completed (a CUDA event per copy), so the
producer gets slots back without waiting for the kernels.

The copies are asynchronous only from page-locked memory: make the ring with ``pinned=True``
(``'auto'`` pins when cupy sees a GPU; :attr:`GpuStreamer.pinned` reports it). Results stay on
the device until :meth:`GpuStreamer.results` (host results, finalised by the analyses
themselves, so they equal the CPU pipeline's) or :meth:`GpuStreamer.device_sums` (cupy) is
called.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from stemedge import gpu
from stemedge.analysis.base import Analysis
from stemedge.analysis.runner import Coverage
from stemedge.analysis.ssb import SSBAnalysis
from stemedge.analysis.virtual import MaskSums
from stemedge.geometry import ScanGeometry
from stemedge.pipeline import StackFrames
from stemedge.ptycho.device import gather_device, reconstruct_cube
from stemedge.ring import Encoding, FrameRing

__all__ = ["GpuStreamer"]


class GpuStreamer:
    """Consume a ring on the GPU (module docstring).

    Parameters
    ----------
    ring : FrameRing
        The ring to read; best pinned (``FrameRing(..., pinned=True)``).
    geometry : ScanGeometry
        The scan the frames belong to (indices outside it are counted as rejected).
    analyses : sequence of MaskSums analyses
        :class:`~stemedge.analysis.CenterOfMassAnalysis` and/or
        :class:`~stemedge.analysis.VirtualDetectorAnalysis`; bound to ``geometry`` here.
    buffers : int
        Device frame buffers (and streams) in flight: 2 double-buffers, 3 (default) triple.
    host_analyses : sequence of Analysis
        Analyses with no GPU twin (e.g. the mean pattern): folded in on the host, on this
        consumer's thread, from the stack's host frames while their copy runs.
    sinks : sequence of Sink
        Get every stack's host frames (``write_frames(frames, indices)``) before it is released.
    """

    def __init__(
        self,
        ring: FrameRing,
        geometry: ScanGeometry,
        analyses: Sequence[Analysis],
        *,
        buffers: int = 3,
        host_analyses: Sequence[Analysis] = (),
        sinks: Sequence[Any] = (),
    ) -> None:
        cp = gpu._cupy()
        gpu._cuda()  # a clear error now if this build has no CUDA extension
        if isinstance(buffers, bool) or not isinstance(buffers, int) or buffers < 1:
            raise ValueError(f"buffers must be an integer >= 1, got {buffers!r}")
        analyses = list(analyses)
        if not analyses:
            raise ValueError("give at least one analysis")
        for a in analyses:
            if not runs_on_gpu(a):
                raise TypeError(
                    f"{type(a).__name__} does not run on the GPU stream yet; the GPU streamer "
                    "runs CenterOfMassAnalysis, VirtualDetectorAnalysis and "
                    "SSBAnalysis(mode='refresh')"
                )
        if tuple(ring.frame_shape) != tuple(geometry.frame_shape):
            raise ValueError(
                f"ring frames are {ring.frame_shape}, the geometry's {geometry.frame_shape}"
            )
        if str(ring.dtype) not in gpu._FRAME_DTYPES:
            kinds = ", ".join(gpu._FRAME_DTYPES)
            raise TypeError(f"the GPU kernels read {kinds}, not {ring.dtype}")
        for a in (*analyses, *host_analyses):
            a.bind(geometry)
        self.ring, self.geometry, self.analyses = ring, geometry, analyses
        self.host_analyses, self.sinks = list(host_analyses), list(sinks)
        self.host_partials = [a.new_partial() for a in self.host_analyses]
        self.busy_s = self.sink_s = 0.0  # this consumer's CPU time (of which in sinks)
        self.coverage = Coverage(geometry)
        self._read = StackFrames(ring, geometry)
        self.pinned = bool(ring.pinned)
        shape = (ring.slot_frames, *ring.frame_shape)
        self._buffers = [cp.empty(shape, ring.dtype) for _ in range(buffers)]
        self._streams = [cp.cuda.Stream(non_blocking=True) for _ in range(buffers)]
        # Per analysis on the device: MaskSums' per-position sums (S, Sy, Sx per mask with
        # moments, S for the others), SSB's bright-field cube (the CPU refresh mode's partial).
        self._state = [_device_partial(a, geometry, cp) for a in analyses]
        self._in_flight: collections.deque = collections.deque()  # (copy event, stack)
        self._lock = threading.Lock()
        self.stats: dict[str, Any] = {
            "stacks": 0, "frames": 0, "bytes": 0, "rejected": 0, "decoded_stacks": 0,
            "wall_s": 0.0, "pinned": self.pinned, "buffers": buffers,
        }  # fmt: skip

    # --- consuming ------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, timeout: float | None = None) -> dict:
        """Consume stacks until the ring is closed and drained (or ``stop`` is set); wait for the
        device and return :attr:`stats`. TimeoutError if no stack arrives for ``timeout`` s."""
        t0 = time.perf_counter()
        try:
            while stop is None or not stop.is_set():
                stack = self.ring.read(timeout=timeout)
                if stack is None:
                    break
                self.process(stack)
        finally:
            self.synchronize()
            self.stats["wall_s"] += time.perf_counter() - t0
        return dict(self.stats)

    def process(self, stack) -> None:
        """Issue one stack: copy, reduce and add on the next buffer's stream (asynchronous). The
        stack is released once its copy has completed (see :meth:`_retire`)."""
        t0 = time.thread_time()
        with self._lock:
            self._issue(stack)
        self.busy_s += time.thread_time() - t0

    def _issue(self, stack) -> None:
        cp, i = gpu._cupy(), self.stats["stacks"]
        b = i % len(self._buffers)
        stream = self._streams[b]
        frames, where = self._read(stack)  # compressed stacks decode into host memory
        self.stats["decoded_stacks"] += stack.encoding is not Encoding.RAW
        self.stats["rejected"] = self._read.rejected
        k = len(where)
        with stream:
            if k:
                dev = self._buffers[b][:k]
                dev.set(np.ascontiguousarray(frames), stream=stream)
                flat = None if where.start is not None else cp.asarray(where.flat)
            event = stream.record()  # the copies from the slot are done when this is
            self._in_flight.append((event, stack))
            if k:
                for a, state in zip(self.analyses, self._state, strict=True):
                    if isinstance(a, MaskSums):
                        rows = gpu._reduce(dev, a._plan, a._moments, a._thresholds, stream.ptr)
                    else:
                        rows = cp.empty((k, a.plan.n_pixels), cp.float32)
                        gather_device(dev, a.plan, rows, stream.ptr)
                    if flat is None:
                        state[where.start : where.start + k] += rows
                    else:
                        import cupyx

                        cupyx.scatter_add(state, flat, rows)  # repeats add every time
                self.coverage.add(where)
        if k:  # the host's share, while the copy and the kernels run
            for a, partial in zip(self.host_analyses, self.host_partials, strict=True):
                a.process(partial, frames, where.flat)
            t_sink = time.thread_time()
            for sink in self.sinks:
                sink.write_frames(frames, where.flat)
            self.sink_s += time.thread_time() - t_sink
        self.stats["stacks"] += 1
        self.stats["frames"] += k
        self.stats["bytes"] += k * self.ring.frame_bytes
        self._retire(block=len(self._in_flight) > len(self._buffers))

    def _retire(self, block: bool) -> None:
        """Release the stacks whose copies have completed, in order; with ``block``, wait for
        the oldest one first (bounds the slots held to the number of buffers)."""
        while self._in_flight:
            event, stack = self._in_flight[0]
            if block:
                event.synchronize()
                block = False
            elif not event.done:
                return
            self._in_flight.popleft()
            stack.release()

    def synchronize(self) -> None:
        """Wait for every stream and release every stack still held."""
        for s in self._streams:
            s.synchronize()
        self._retire(block=False)

    # --- results --------------------------------------------------------------------------------

    def device_sums(self) -> dict[str, Any]:
        """Each GPU analysis' device partial (cupy): per-position sums for CoM/virtual
        ((n_positions, columns): S, Sy, Sx for a mask with moments, S for the others), the
        bright-field cube for SSB; after the work issued so far."""
        with self._lock:
            self._sync_streams()
            return {a.name: s for a, s in zip(self.analyses, self._state, strict=True)}

    def _sync_streams(self) -> None:
        for s in self._streams:
            s.synchronize()

    def snapshot(self) -> tuple[list[dict], list[dict], np.ndarray, int]:
        """Consistent copies of what has been folded in so far: the GPU analyses' partials
        (``{"sums": host array}``, as :class:`MaskSums` keeps them), the host analyses'
        partials, the coverage counts and the rejected-frame count. Safe while :meth:`run`
        goes on in another thread."""
        import copy

        with self._lock:
            self._sync_streams()
            gpu_partials = [
                _host_partial(a, s) for a, s in zip(self.analyses, self._state, strict=True)
            ]
            return (gpu_partials, copy.deepcopy(self.host_partials),
                    self.coverage.counts.copy(), self._read.rejected)  # fmt: skip

    def results(self) -> dict[str, dict[str, np.ndarray]]:
        """Each analysis' results, the host analyses' too (host arrays, as the CPU pipeline
        gives them)."""
        with self._lock:  # safe while run() goes on in another thread
            self._sync_streams()
            counts = self.coverage.counts.copy()
            out = {
                a.name: _finalize(a, s, counts, self._streams[0])
                for a, s in zip(self.analyses, self._state, strict=True)
            }
            for a, p in zip(self.host_analyses, self.host_partials, strict=True):
                out[a.name] = a.finalize(p, counts)
        return out

    def coverage_and_rejected(self) -> tuple[np.ndarray, int]:
        """Frames seen per position (a copy) and frames rejected, so far."""
        with self._lock:
            return self.coverage.counts.copy(), self._read.rejected


def runs_on_gpu(analysis: Analysis) -> bool:
    """Whether the GPU streamer can run this analysis on the device."""
    return isinstance(analysis, MaskSums) or (
        isinstance(analysis, SSBAnalysis) and analysis.mode == "refresh"
    )


def _device_partial(a: Analysis, geometry: ScanGeometry, cp):
    if isinstance(a, MaskSums):
        columns = sum(3 if m else 1 for m in a._moments)
        return cp.zeros((geometry.n_positions, columns), cp.float64)
    return cp.zeros((geometry.n_positions, a.plan.n_pixels), cp.float32)


def _host_partial(a: Analysis, state) -> dict:
    """The device partial in the CPU analysis' own partial format."""
    return {"sums": state.get()} if isinstance(a, MaskSums) else {"cube": state.get()}


def _finalize(a: Analysis, state, counts: np.ndarray, stream) -> dict[str, np.ndarray]:
    if isinstance(a, MaskSums):  # small: the CPU analysis finishes it
        return a.finalize({"sums": state.get()}, counts)
    # SSB: the reconstruction on the device, as SSBAnalysis.finalize does it on the host
    with stream:
        wave, _ = reconstruct_cube(state, a.plan, int(counts.sum()), stream.ptr)
        return a.results_from_wave(wave.get(), counts)
