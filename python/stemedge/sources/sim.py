"""SimSource: a simulated acquisition streamed like a detector, at a chosen frame rate."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from stemedge.calibration import Calibration
from stemedge.geometry import ScanGeometry
from stemedge.sim.wpo import SimulatedScan
from stemedge.sources.base import Chunk, Source

__all__ = ["SimSource"]


class SimSource(Source):
    """Stream the frames of a 4D array (e.g. :func:`stemedge.sim.simulate_4dstem`'s) in raster
    order, paced like a detector.

    Parameters
    ----------
    scan : SimulatedScan or ndarray (scan_y, scan_x, det_y, det_x)
        The frames; a SimulatedScan also brings its calibration.
    calibration : Calibration, optional
        Overrides the scan's own (e.g. one with the rotation reset for a blind search).
    frame_rate : float, optional
        Frames per second to deliver at; None: as fast as the consumer takes them.
    """

    def __init__(
        self,
        scan: SimulatedScan | np.ndarray,
        *,
        calibration: Calibration | None = None,
        frame_rate: float | None = None,
    ) -> None:
        data = scan.data if isinstance(scan, SimulatedScan) else scan
        if not isinstance(data, np.ndarray) or data.ndim != 4:
            raise ValueError(
                "scan: pass a SimulatedScan or a 4D array (scan_y, scan_x, det_y, det_x)"
            )
        if not data.flags.c_contiguous:
            raise ValueError("scan: the frames must be C-contiguous (np.ascontiguousarray(data))")
        if calibration is None and isinstance(scan, SimulatedScan):
            calibration = scan.calibration
        if frame_rate is not None and not frame_rate > 0:
            raise ValueError(f"frame_rate must be positive or None, got {frame_rate!r}")
        self.geometry = ScanGeometry(data.shape[:2], data.shape[2:], data.dtype, calibration)
        self.frame_rate = frame_rate
        self._frames = data.reshape(-1, *data.shape[2:])

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "simulator",
            "frame_rate": self.frame_rate,
            "frames": self.geometry.n_positions,
        }

    def chunks(self, max_frames: int) -> Iterator[Chunk]:
        n = len(self._frames)
        t0 = time.perf_counter()
        for start in range(0, n, max_frames):
            stop = min(start + max_frames, n)
            if self.frame_rate is not None:
                # A detector delivers frame i at t0 + i/rate: hold the chunk until its last frame
                # would have been read out.
                delay = t0 + stop / self.frame_rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            yield Chunk(self._frames[start:stop], np.arange(start, stop, dtype=np.int64))
