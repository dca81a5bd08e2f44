"""Detector masks: disks, annuli, rectangles, custom weights, and compiled mask sets.

Edges follow PHYSICS.md C7: a binary disk is ``d <= r``, a ring ``r_in < d <= r_out``, with d the
distance from the pixel index to the centre (pixel (i, j) sits at (i, j)). Antialiased masks weight
each pixel by how far its centre lies inside the edge, ``clip(r + 0.5 - d, 0, 1)`` (a 1-px ramp).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stemedge import _native

__all__ = ["MaskSet", "annulus", "disk", "rectangle"]


def _shape(det_shape: Sequence[int]) -> tuple[int, int]:
    shape = tuple(int(s) for s in det_shape)
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f"det_shape must be (det_y, det_x) with positive sizes, got {det_shape!r}")
    return shape  # type: ignore[return-value]


def _distance(det_shape: Sequence[int], center: Sequence[float] | None) -> np.ndarray:
    dy, dx = _shape(det_shape)
    cy, cx = (dy // 2, dx // 2) if center is None else (float(center[0]), float(center[1]))
    yy, xx = np.ogrid[:dy, :dx]
    return np.hypot(yy - cy, xx - cx)


def disk(
    det_shape: Sequence[int],
    radius: float,
    center: Sequence[float] | None = None,
    *,
    antialias: bool = False,
) -> np.ndarray:
    """A disk mask (float32, det_shape): ``d <= radius`` or antialiased.

    ``center`` is (y, x) in px; ``None`` means (det_y // 2, det_x // 2).
    """
    if not radius >= 0:
        raise ValueError(f"radius must be >= 0, got {radius!r}")
    d = _distance(det_shape, center)
    if antialias:
        return np.clip(radius + 0.5 - d, 0.0, 1.0).astype(np.float32)
    return (d <= radius).astype(np.float32)


def annulus(
    det_shape: Sequence[int],
    inner: float,
    outer: float,
    center: Sequence[float] | None = None,
    *,
    antialias: bool = False,
) -> np.ndarray:
    """A ring mask (float32): ``inner < d <= outer``, or the antialiased difference of two disks."""
    if not 0 <= inner < outer:
        raise ValueError(f"need 0 <= inner < outer, got inner={inner!r}, outer={outer!r}")
    d = _distance(det_shape, center)
    if antialias:
        ring = np.clip(outer + 0.5 - d, 0.0, 1.0) - np.clip(inner + 0.5 - d, 0.0, 1.0)
        return ring.astype(np.float32)
    return ((d > inner) & (d <= outer)).astype(np.float32)


def rectangle(det_shape: Sequence[int], y: tuple[int, int], x: tuple[int, int]) -> np.ndarray:
    """A rectangular mask covering rows ``y[0]:y[1]`` and columns ``x[0]:x[1]`` (half-open)."""
    m = np.zeros(_shape(det_shape), np.float32)
    m[slice(*y), slice(*x)] = 1.0
    return m


class MaskSet:
    """Masks compiled once for the native kernels (reuse it across calls in live loops).

    Parameters
    ----------
    masks : array (det_y, det_x) or (k, det_y, det_x), or a sequence of 2-D arrays
        Weights per detector pixel; zero pixels are skipped by the kernels.
    names : sequence of str, optional
        One per mask, for results and figures.
    mode : {'auto', 'sparse', 'dense'}
        How masks are stored: 'sparse' reads only the nonzero runs of each row, 'dense' whole row
        segments; 'auto' chooses sparse unless a mask covers >10 % of the frame in short runs.
    """

    def __init__(self, masks, names: Sequence[str] | None = None, mode: str = "auto"):
        if isinstance(masks, MaskSet):
            masks = masks.masks
        if isinstance(masks, (list, tuple)):
            masks = np.stack([np.asarray(m) for m in masks])
        arr = np.asarray(masks)
        if arr.ndim == 2:
            arr = arr[np.newaxis]
        if arr.ndim != 3 or arr.shape[0] == 0:
            raise ValueError(
                f"masks must be (det_y, det_x) or (k, det_y, det_x), got shape {arr.shape}"
            )
        if arr.dtype.kind not in "biuf":
            raise TypeError(
                f"masks must be real numbers (bool, int or float), got dtype {arr.dtype}"
            )
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.all(np.isfinite(arr)):
            raise ValueError("masks contain NaN or infinite weights")
        if names is None:
            names = [f"mask{i}" for i in range(arr.shape[0])]
        names = [str(n) for n in names]
        if len(names) != arr.shape[0]:
            raise ValueError(f"got {len(names)} names for {arr.shape[0]} masks")
        self.masks = arr
        self.names = names
        self.mode = mode
        self.plan = _native.MaskPlan(arr, mode)
        self._fused_cache: dict = {}  # CoM mask + these masks, per CoM geometry (kernels.py)

    def __reduce__(self):
        # The native plan does not pickle; it is rebuilt from the weights (Dask workers,
        # multiprocessing). Bit-identical: the plan is a pure function of (masks, mode).
        return (MaskSet, (self.masks, list(self.names), self.mode))

    @property
    def det_shape(self) -> tuple[int, int]:
        return self.masks.shape[1], self.masks.shape[2]

    def __len__(self) -> int:
        return self.masks.shape[0]

    def weight_sums(self) -> np.ndarray:
        """Σ weights of each mask (the denominator of ``normalize='mean'``)."""
        return np.array([self.plan.weight_sum(m) for m in range(len(self))])

    def describe(self) -> list[dict]:
        """How each mask is stored: binary or weighted, sparse or dense, pixels read per frame."""
        return [
            {
                "name": self.names[m],
                "binary": self.plan.binary(m),
                "storage": "dense" if self.plan.dense(m) else "sparse",
                "pixels_read": self.plan.covered_pixels(m),
                "coverage": self.plan.covered_pixels(m) / (self.det_shape[0] * self.det_shape[1]),
            }
            for m in range(len(self))
        ]

    def __repr__(self) -> str:
        return f"MaskSet({len(self)} masks {self.names}, det_shape={self.det_shape})"
