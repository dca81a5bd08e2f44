"""Whole-scan detector patterns: sum, mean and maximum of all frames (DETECTOR-kind results).

Every frame counts once, so a position measured twice contributes twice (the pattern describes
the frames recorded, not the scan grid).

NaN pixels of float32 frames:

- ``SumPattern`` / ``MeanPattern`` propagate them: a pixel that is NaN in any frame is NaN in
  the sum and the mean (as the native kernels do), so a bad pixel shows up instead of biasing
  the pattern silently;
- ``MaxPattern`` ignores them (``np.fmax``): the maximum of the finite values, NaN only where a
  pixel was NaN in every frame. The maximum pattern is what one thresholds to find the bright
  field disk or hot pixels, and one flagged pixel should not blank it.
"""

from __future__ import annotations

import numpy as np

from stemedge import _native
from stemedge.analysis.base import (
    Analysis,
    Partial,
    ResultKind,
    Results,
    ResultSpec,
    check_coverage,
    check_partials,
)

__all__ = ["MaxPattern", "MeanPattern", "SumPattern", "sum_frames"]


def sum_frames(frames: np.ndarray, acc: np.ndarray, nthreads: int = 0) -> None:
    """``acc += Σ_i frames[i]`` with ``acc`` float64 (det_y, det_x), natively (integer frames
    summed exactly in integer tiles, float32 in float64), without copying the stack."""
    _native.sum_frames(frames, acc, nthreads)


class SumPattern(Analysis):
    """The sum of all frames, float64 (det_y, det_x): result ``"sum"``.

    Parameters
    ----------
    nthreads : int, optional
        Native threads per call; default all cores (the pipeline uses one per worker).
    name : str
        Analysis name (default ``"sum_pattern"``).
    """

    name = "sum_pattern"

    def __init__(self, *, nthreads: int | None = None, name: str | None = None) -> None:
        super().__init__(name=name, nthreads=nthreads)

    def results(self) -> list[ResultSpec]:
        return [
            ResultSpec("sum", ResultKind.DETECTOR, np.dtype(np.float64), units="counts",
                       description="sum of all frames (NaN where a float frame had NaN)")
        ]  # fmt: skip

    def new_partial(self) -> Partial:
        return {"sum": np.zeros(self.geometry.frame_shape)}

    def process(self, partial: Partial, frames: np.ndarray, indices: np.ndarray) -> None:
        if len(self.checked_indices(frames, indices)):
            sum_frames(frames, partial["sum"], self._nthreads)

    def merge(self, into: Partial, other: Partial) -> None:
        check_partials(into, other)
        into["sum"] += other["sum"]

    def finalize(self, partial: Partial, coverage: np.ndarray) -> Results:
        check_coverage(self.geometry, coverage)
        return {"sum": partial["sum"].copy()}


class MeanPattern(SumPattern):
    """The mean frame, float64 (det_y, det_x): result ``"mean"`` = sum / number of frames
    (``coverage.sum()``, repeats included); all NaN before the first frame.

    Parameters
    ----------
    name : str
        Analysis name (default ``"mean_pattern"``).
    """

    name = "mean_pattern"

    def results(self) -> list[ResultSpec]:
        return [
            ResultSpec("mean", ResultKind.DETECTOR, np.dtype(np.float64), units="counts",
                       description="mean of all frames (NaN where a float frame had NaN)")
        ]  # fmt: skip

    def finalize(self, partial: Partial, coverage: np.ndarray) -> Results:
        n = int(check_coverage(self.geometry, coverage).sum())
        if n == 0:
            return {"mean": np.full(self.geometry.frame_shape, np.nan)}
        return {"mean": partial["sum"] / n}


class MaxPattern(Analysis):
    """The pixel-wise maximum of all frames, in the frame dtype: result ``"max"``.

    Float32 frames: NaN pixels are ignored (NaN only where a pixel was NaN in every frame).
    Before the first frame the pattern is 0 for integer frames and NaN for float32 ones.

    Parameters
    ----------
    name : str
        Analysis name (default ``"max_pattern"``).
    """

    name = "max_pattern"

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)

    def _float(self) -> bool:
        return self.geometry.dtype.kind == "f"

    def results(self) -> list[ResultSpec]:
        return [
            ResultSpec("max", ResultKind.DETECTOR, self.geometry.dtype, units="counts",
                       description="pixel-wise maximum of all frames (NaN pixels ignored)")
        ]  # fmt: skip

    def new_partial(self) -> Partial:
        # The identity of the reduction: 0 for unsigned frames, NaN for fmax (it skips NaN).
        fill = np.nan if self._float() else 0
        return {"max": np.full(self.geometry.frame_shape, fill, self.geometry.dtype)}

    def _ufunc(self) -> np.ufunc:
        return np.fmax if self._float() else np.maximum

    def process(self, partial: Partial, frames: np.ndarray, indices: np.ndarray) -> None:
        if len(self.checked_indices(frames, indices)):
            op = self._ufunc()
            op(partial["max"], op.reduce(frames, axis=0), out=partial["max"])

    def merge(self, into: Partial, other: Partial) -> None:
        check_partials(into, other)
        self._ufunc()(into["max"], other["max"], out=into["max"])

    def finalize(self, partial: Partial, coverage: np.ndarray) -> Results:
        check_coverage(self.geometry, coverage)
        return {"max": partial["max"].copy()}
