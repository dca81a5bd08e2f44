"""Offline runner: feed a 4D array or a Source through analyses, chunk by chunk.

The runner owns the one :class:`Coverage` (frames seen per scan position) that every analysis's
``finalize`` receives, and one partial per analysis. The same ``Coverage`` and
:func:`merge_partials` serve live and partitioned (Dask) runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from stemedge.analysis.base import Analysis, Partial, Results, scan_indices
from stemedge.calibration import Calibration
from stemedge.geometry import FRAME_DTYPES, ScanGeometry
from stemedge.sources.base import Chunk, Source

__all__ = ["Coverage", "merge_partials", "run_offline"]


class Coverage:
    """How many frames were seen at each scan position (int64 ``counts`` of ``scan_shape``).

    Parameters
    ----------
    geometry : ScanGeometry
        The scan; indices outside it raise IndexError in :meth:`add`.
    """

    def __init__(self, geometry: ScanGeometry) -> None:
        if not isinstance(geometry, ScanGeometry):
            raise TypeError(f"geometry must be a ScanGeometry, got {type(geometry).__name__}")
        self.geometry = geometry
        self.counts = np.zeros(geometry.scan_shape, np.int64)

    def add(self, indices: Any) -> None:
        """Count one frame at each flat scan index (repeats count again).

        A slice add for consecutive indices, ``np.add.at`` otherwise: both cost O(len(indices)),
        where ``np.bincount`` would cost O(n_positions) per stack.
        """
        scan_indices(self.geometry, indices).add_to(self.counts.reshape(-1), 1)

    def merge(self, other: Coverage) -> None:
        """Add the counts of another Coverage of the same scan."""
        if other.counts.shape != self.counts.shape:
            raise ValueError(
                f"cannot merge a coverage of scan {other.counts.shape} into {self.counts.shape}"
            )
        self.counts += other.counts

    @property
    def n_frames(self) -> int:
        """Frames counted so far (repeats included)."""
        return int(self.counts.sum())

    @property
    def seen(self) -> np.ndarray:
        """Boolean map of the positions seen at least once."""
        return self.counts > 0

    @property
    def complete(self) -> bool:
        """Whether every position has been seen."""
        return bool(self.counts.all())

    def __repr__(self) -> str:
        seen = int(self.seen.sum())
        return f"Coverage({seen}/{self.counts.size} positions seen, {self.n_frames} frames)"


def merge_partials(analysis: Analysis, partials: Iterable[Partial]) -> Partial:
    """A new partial holding all of ``partials`` merged (the inputs are left unchanged).

    ``analysis`` must be bound; with no partials the result is ``analysis.new_partial()``.
    """
    merged = analysis.new_partial()
    for p in partials:
        analysis.merge(merged, p)
    return merged


def _check_analyses(analyses: Any) -> list[Analysis]:
    if isinstance(analyses, Analysis):
        analyses = [analyses]
    analyses = list(analyses)
    bad = [a for a in analyses if not isinstance(a, Analysis)]
    if bad:
        raise TypeError(f"analyses must be Analysis objects, got {type(bad[0]).__name__}")
    if not analyses:
        raise ValueError("analyses: pass at least one analysis")
    repeated = sorted(n for n, c in Counter(a.name for a in analyses).items() if c > 1)
    if repeated:
        raise ValueError(
            f"analysis names must be unique in one run, {repeated} repeat; give each one its "
            "own name= (e.g. CenterOfMassAnalysis(radius=8, name='com_bf'))"
        )
    return analyses


def _array_geometry(data: np.ndarray, calibration: Calibration | None) -> ScanGeometry:
    if data.ndim != 4:
        raise ValueError(
            f"data: expected a 4D array (scan_y, scan_x, det_y, det_x), got shape {data.shape}; "
            "reshape a stack to its scan first"
        )
    if data.dtype not in FRAME_DTYPES:
        names = ", ".join(str(d) for d in FRAME_DTYPES)
        raise TypeError(
            f"data: dtype {data.dtype} is not one of {names}; convert it once, e.g. "
            "data.astype(np.float32)"
        )
    return ScanGeometry(data.shape[:2], data.shape[2:], data.dtype, calibration)


def _array_chunks(data: np.ndarray, chunk_frames: int) -> Iterator[Chunk]:
    """Consecutive stacks of a 4D array as views (never a copy of the data)."""
    ny, nx = data.shape[:2]
    if ny == 1 or data.strides[0] == data.strides[1] * nx:
        # The scan axes merge into one: a reshape is a view, and chunks may span scan rows.
        flat = data.reshape(ny * nx, *data.shape[2:])
        for start in range(0, ny * nx, chunk_frames):
            stop = min(start + chunk_frames, ny * nx)
            yield Chunk(flat[start:stop], np.arange(start, stop, dtype=np.int64))
        return
    # A sliced scan (e.g. data[:, ::2]): reshaping would copy it all, so chunk within rows.
    for y in range(ny):
        for x0 in range(0, nx, chunk_frames):
            x1 = min(x0 + chunk_frames, nx)
            yield Chunk(data[y, x0:x1], np.arange(y * nx + x0, y * nx + x1, dtype=np.int64))


def _prepare(data_or_source: Any, chunk_frames: int, calibration: Calibration | None):
    if calibration is not None and not isinstance(calibration, Calibration):
        raise TypeError(
            f"calibration must be a stemedge.Calibration or None, got {type(calibration).__name__}"
        )
    if isinstance(data_or_source, Source):
        geometry = data_or_source.geometry
        if calibration is not None:
            geometry = ScanGeometry(
                geometry.scan_shape, geometry.frame_shape, geometry.dtype, calibration
            )
        return geometry, data_or_source.chunks(chunk_frames)
    if isinstance(data_or_source, np.ndarray):
        geometry = _array_geometry(data_or_source, calibration)
        return geometry, _array_chunks(data_or_source, chunk_frames)
    raise TypeError(
        "data_or_source must be a numpy array (scan_y, scan_x, det_y, det_x) or a "
        f"stemedge.sources.base.Source, got {type(data_or_source).__name__}"
    )


def run_offline(
    data_or_source: np.ndarray | Source,
    analyses: Analysis | Sequence[Analysis],
    *,
    chunk_frames: int = 64,
    progress: bool = False,
    calibration: Calibration | None = None,
) -> dict[str, Results]:
    """Run analyses over every frame of an array or a source, one chunk at a time.

    Parameters
    ----------
    data_or_source : ndarray (scan_y, scan_x, det_y, det_x) or Source
        A 4D array of uint8/uint16/uint32/float32 (read in place, chunks are views), or a
        :class:`stemedge.sources.base.Source` read with ``chunks(chunk_frames)`` (the caller
        keeps ownership: it is not closed here).
    analyses : Analysis or sequence of Analysis
        Each with a unique ``name``; bound here to the data's geometry.
    chunk_frames : int
        Frames per stack handed to ``process``.
    progress : bool
        Show a tqdm progress bar (frames; total = scan positions).
    calibration : Calibration, optional
        Attached to the geometry (replacing a source's own): calibrated results (deflection,
        iDPC) need one.

    Returns
    -------
    dict
        ``{analysis.name: {result name: array}}``; positions never seen are NaN in per-position
        results.
    """
    analyses = _check_analyses(analyses)
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, (int, np.integer)):
        raise TypeError(f"chunk_frames must be a positive int, got {chunk_frames!r}")
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    geometry, chunks = _prepare(data_or_source, int(chunk_frames), calibration)
    for a in analyses:
        a.bind(geometry)
    coverage = Coverage(geometry)
    partials = [a.new_partial() for a in analyses]
    bar = _progress(geometry.n_positions) if progress else None
    try:
        for frames, indices in chunks:
            coverage.add(indices)  # validates the indices before any analysis sees them
            for a, p in zip(analyses, partials, strict=True):
                a.process(p, frames, indices)
            if bar is not None:
                bar.update(len(indices))
    finally:
        if bar is not None:
            bar.close()
    return {a.name: a.finalize(p, coverage.counts) for a, p in zip(analyses, partials, strict=True)}


def _progress(total: int):
    from tqdm import tqdm  # imported on demand: only progress bars need it

    return tqdm(total=total, unit="frame", desc="stemedge", leave=False)
