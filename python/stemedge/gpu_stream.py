"""Streaming frames from a (pinned) :class:`~stemedge.ring.FrameRing` into the GPU's reductions.

:class:`GpuStreamer` is a ring consumer that does on the device what the CPU pipeline's workers
do on the host for centre of mass and virtual detectors (:class:`~stemedge.analysis.MaskSums`
analyses): each stack is copied host→device asynchronously into one of ``buffers`` device
buffers, each with its own CUDA stream, so the copy of stack i+1 overlaps the kernels of stack i
(double buffering with 2, triple with 3); the reduction (``stemedge._cuda.reduce``, the kernel
of :mod:`stemedge.gpu`) runs on the same stream and its rows are added into per-position sums
that stay on the device. A ring slot is released as soon as its copy has completed (a CUDA event
per copy), so the producer gets slots back without waiting for the kernels.

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
from stemedge.analysis.virtual import MaskSums
from stemedge.geometry import ScanGeometry
from stemedge.pipeline import StackFrames
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
    """

    def __init__(
        self,
        ring: FrameRing,
        geometry: ScanGeometry,
        analyses: Sequence[Analysis],
        *,
        buffers: int = 3,
    ) -> None:
        cp = gpu._cupy()
        gpu._cuda()  # a clear error now if this build has no CUDA extension
        if isinstance(buffers, bool) or not isinstance(buffers, int) or buffers < 1:
            raise ValueError(f"buffers must be an integer >= 1, got {buffers!r}")
        analyses = list(analyses)
        if not analyses:
            raise ValueError("give at least one analysis")
        for a in analyses:
            if not isinstance(a, MaskSums):
                raise TypeError(
                    f"{type(a).__name__} does not run on the GPU stream yet; the GPU streamer "
                    "runs CenterOfMassAnalysis and VirtualDetectorAnalysis"
                )
        if tuple(ring.frame_shape) != tuple(geometry.frame_shape):
            raise ValueError(
                f"ring frames are {ring.frame_shape}, the geometry's {geometry.frame_shape}"
            )
        if str(ring.dtype) not in gpu._FRAME_DTYPES:
            kinds = ", ".join(gpu._FRAME_DTYPES)
            raise TypeError(f"the GPU kernels read {kinds}, not {ring.dtype}")
        for a in analyses:
            a.bind(geometry)
        self.ring, self.geometry, self.analyses = ring, geometry, analyses
        self.coverage = Coverage(geometry)
        self._read = StackFrames(ring, geometry)
        self.pinned = bool(ring.pinned)
        shape = (ring.slot_frames, *ring.frame_shape)
        self._buffers = [cp.empty(shape, ring.dtype) for _ in range(buffers)]
        self._streams = [cp.cuda.Stream(non_blocking=True) for _ in range(buffers)]
        self._sums = [
            cp.zeros((geometry.n_positions, sum(3 if m else 1 for m in a._moments)), cp.float64)
            for a in analyses
        ]
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
                for a, sums in zip(self.analyses, self._sums, strict=True):
                    raw = gpu._reduce(dev, a._plan, a._moments, a._thresholds, stream.ptr)
                    if flat is None:
                        sums[where.start : where.start + k] += raw
                    else:
                        import cupyx

                        cupyx.scatter_add(sums, flat, raw)  # repeats add every time
                self.coverage.add(where)
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
        """Per-position sums of each analysis on the device (cupy, (n_positions, columns):
        S, Sy, Sx for a mask with moments, S for the others), after the work issued so far."""
        self.synchronize()
        return {a.name: s for a, s in zip(self.analyses, self._sums, strict=True)}

    def results(self) -> dict[str, dict[str, np.ndarray]]:
        """Each analysis' results (host arrays, as the CPU pipeline gives them)."""
        self.synchronize()
        return {
            a.name: a.finalize({"sums": s.get()}, self.coverage.counts)
            for a, s in zip(self.analyses, self._sums, strict=True)
        }
