"""ScanGeometry: what a stream of frames is (scan grid, detector, dtype, calibration)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from stemedge.calibration import Calibration

__all__ = ["FRAME_DTYPES", "ScanGeometry"]

# The frame dtypes every kernel, source and file accepts (DESIGN.md "Contracts").
FRAME_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.float32))


def _positive_pair(value: Any, name: str) -> tuple[int, int]:
    try:
        y, x = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (y, x) pair of ints, got {value!r}") from None
    if y < 1 or x < 1 or (y, x) != tuple(value):
        raise ValueError(f"{name} must be a (y, x) pair of positive ints, got {value!r}")
    return y, x


@dataclasses.dataclass(frozen=True)
class ScanGeometry:
    """The shape of an acquisition: frames of ``frame_shape`` and ``dtype`` at the positions of a
    ``scan_shape`` raster. Frames are addressed by their flat, row-major scan index
    ``i = y * scan_x + x`` (PHYSICS.md C1: axis 0 is y)."""

    scan_shape: tuple[int, int]
    frame_shape: tuple[int, int]
    dtype: np.dtype
    calibration: Calibration | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scan_shape", _positive_pair(self.scan_shape, "scan_shape"))
        object.__setattr__(self, "frame_shape", _positive_pair(self.frame_shape, "frame_shape"))
        dt = np.dtype(self.dtype)
        if dt not in FRAME_DTYPES:
            names = ", ".join(str(d) for d in FRAME_DTYPES)
            raise TypeError(f"dtype must be one of {names}, got {dt}")
        object.__setattr__(self, "dtype", dt)
        if self.calibration is not None and not isinstance(self.calibration, Calibration):
            raise TypeError(
                f"calibration must be a Calibration or None, got {type(self.calibration).__name__}"
            )

    @property
    def n_positions(self) -> int:
        return self.scan_shape[0] * self.scan_shape[1]

    @property
    def frame_nbytes(self) -> int:
        return self.frame_shape[0] * self.frame_shape[1] * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.n_positions * self.frame_nbytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "scan_shape": list(self.scan_shape),
            "frame_shape": list(self.frame_shape),
            "dtype": self.dtype.str,
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScanGeometry:
        cal = d.get("calibration")
        return cls(
            tuple(d["scan_shape"]),
            tuple(d["frame_shape"]),
            np.dtype(d["dtype"]),
            None if cal is None else Calibration.from_dict(cal),
        )

    def check_stack(self, frames: Any, n: int | None = None) -> None:
        """Raise unless ``frames`` is a numpy stack (k, det_y, det_x) of this geometry's frame
        shape and dtype (with k == n when ``n`` is given). Never converts: no silent copies."""
        if not isinstance(frames, np.ndarray):
            hint = ""
            if hasattr(frames, "__cuda_array_interface__"):
                hint = "; for a GPU array pass cupy.asnumpy(frames)"
            raise TypeError(
                f"frames must be a numpy array (n, det_y, det_x), got {type(frames).__name__}{hint}"
            )
        if frames.ndim != 3 or frames.shape[1:] != self.frame_shape:
            raise ValueError(
                f"frames must have shape (n, {self.frame_shape[0]}, {self.frame_shape[1]}), "
                f"got {frames.shape}"
            )
        if n is not None and frames.shape[0] != n:
            raise ValueError(
                f"got {frames.shape[0]} frames but {n} indices; pass one index per frame"
            )
        if frames.dtype != self.dtype:
            raise TypeError(
                f"frames must have dtype {self.dtype} (the scan's), got {frames.dtype}; convert "
                f"once with frames.astype(np.{self.dtype})"
            )

    @staticmethod
    def as_indices(indices: Any) -> np.ndarray:
        """Flat scan indices as a 1-D int64 array (not yet checked against the grid: see
        :meth:`check_indices`). TypeError for non-integers, ValueError unless 1-D."""
        flat = indices
        if not (isinstance(flat, np.ndarray) and flat.dtype == np.int64):
            flat = np.asarray(indices)
            if flat.dtype.kind not in "iu" and flat.size:
                raise TypeError(
                    f"indices must be integers (flat scan indices y * scan_x + x), got dtype "
                    f"{flat.dtype}; pass np.asarray(indices, dtype=np.int64)"
                )
            flat = flat.astype(np.int64, copy=False)
        if flat.ndim != 1:
            raise ValueError(f"indices must be one-dimensional (k,), got shape {flat.shape}")
        return flat

    def check_indices(self, indices: np.ndarray) -> None:
        """Raise IndexError unless every flat scan index lies on the scan grid."""
        if indices.size and (indices.min() < 0 or indices.max() >= self.n_positions):
            bad = indices[(indices < 0) | (indices >= self.n_positions)][0]
            raise IndexError(
                f"scan index {int(bad)} is outside the {self.scan_shape[0]}×{self.scan_shape[1]} "
                f"scan (valid: 0 … {self.n_positions - 1})"
            )
