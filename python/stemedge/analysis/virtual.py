"""Virtual detector images as a mergeable analysis: k masks, one native pass over the frames.

Per scan position the partial holds the weighted sums ``Σ_k M_m(k)·I(k)`` of every mask m
(float64, exact for integer frames), accumulated from ``_native.reduce`` on each stack. A
position measured n times reports the mean of its n sums (the image of its mean frame);
positions not seen yet are NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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
from stemedge.geometry import ScanGeometry
from stemedge.masks import MaskSet

__all__ = ["MaskSums", "VirtualDetectorAnalysis", "as_maskset"]

_NORMALIZE = ("sum", "mean")


def as_maskset(masks: Any, argname: str = "masks") -> MaskSet:
    """A named MaskSet from a MaskSet, a dict name → 2-D mask, or a list/stack of 2-D masks.

    Names must be unique (they become result names); a list gets ``mask0``, ``mask1``, ….
    """
    if isinstance(masks, MaskSet):
        ms = masks
    elif isinstance(masks, Mapping):
        if not masks:
            raise ValueError(f"{argname}: pass at least one mask")
        ms = MaskSet([np.asarray(m) for m in masks.values()], names=list(masks))
    elif isinstance(masks, (np.ndarray, Sequence)) and not isinstance(masks, str):
        if len(masks) == 0:
            raise ValueError(f"{argname}: pass at least one mask")
        ms = MaskSet(masks)
    else:
        raise TypeError(
            f"{argname} must be a MaskSet, a dict name -> 2-D mask, or a list of 2-D masks, "
            f"got {type(masks).__name__}"
        )
    if len(set(ms.names)) != len(ms.names):
        raise ValueError(f"{argname}: mask names must be unique, got {ms.names}")
    return ms


def check_normalize(normalize: str) -> str:
    if normalize not in _NORMALIZE:
        raise ValueError(
            f"normalize must be 'sum' (weighted sums) or 'mean' (divided by the mask's total "
            f"weight), got {normalize!r}"
        )
    return normalize


def check_det_shape(masks: MaskSet, geometry: ScanGeometry, argname: str) -> None:
    if masks.det_shape != geometry.frame_shape:
        raise ValueError(
            f"{argname} have detector shape {masks.det_shape} but the frames are "
            f"{geometry.frame_shape}; make the masks for that detector"
        )


def mean_per_position(sums: np.ndarray, cov: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """``sums / cov`` (float64) where a position was seen, NaN elsewhere."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(seen, sums / cov, np.nan)


def finish_images(
    sums: np.ndarray,
    masks: MaskSet,
    weight_sums: np.ndarray,
    normalize: str,
    cov: np.ndarray,
    scan_shape: tuple[int, int],
) -> Results:
    """Images by mask name (float32, ``scan_shape``) from per-position sums (n, k)."""
    seen = cov > 0
    images = {}
    for m, name in enumerate(masks.names):
        v = mean_per_position(sums[:, m], cov, seen)
        if normalize == "mean":
            # As kernels.virtual_images: a mask of zero total weight has no mean.
            v = v / weight_sums[m] if weight_sums[m] != 0 else np.full_like(v, np.nan)
        images[name] = v.astype(np.float32).reshape(scan_shape)
    return images


class MaskSums(Analysis):
    """Shared by the centre of mass and the virtual detectors: one native reduction per stack
    (``_native.reduce`` with ``self._plan``, ``self._moments``, ``self._thresholds``, set by the
    subclass) scattered into per-position sums. Columns follow the native output: S, Sy, Sx
    for a mask with moments, S alone for the others."""

    _plan: MaskSet
    _moments: list[bool]
    _thresholds: list[float]

    def new_partial(self) -> Partial:
        columns = sum(3 if m else 1 for m in self._moments)
        return {"sums": np.zeros((self.geometry.n_positions, columns))}

    def process(self, partial: Partial, frames: np.ndarray, indices: np.ndarray) -> None:
        where = self.checked_indices(frames, indices)
        if len(where):
            raw = _native.reduce(
                frames, self._plan.plan, self._moments, self._thresholds, self._nthreads
            )
            where.add_to(partial["sums"], raw)

    def merge(self, into: Partial, other: Partial) -> None:
        check_partials(into, other)
        into["sums"] += other["sums"]


class VirtualDetectorAnalysis(MaskSums):
    """Virtual detector images for any number of masks, from one native pass per stack.

    Parameters
    ----------
    masks : dict name -> ndarray (det_y, det_x), list of 2-D arrays, or MaskSet
        Detector weights (see :mod:`stemedge.masks`); the names become the result names (a list
        gets ``mask0``, ``mask1``, …). Compiled once, here.
    normalize : {'sum', 'mean'}
        Weighted sums (counts), or divided by each mask's total weight.
    nthreads : int, optional
        Threads for the native pass; default all cores.
    name : str
        Analysis name (default ``"virtual"``).

    Results
    -------
    One float32 image of ``scan_shape`` per mask, NaN where no frame was seen; a position
    measured n times shows the mean of its n values.
    """

    name = "virtual"

    def __init__(
        self,
        masks: Any,
        *,
        normalize: str = "sum",
        nthreads: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name, nthreads=nthreads)
        self.masks = as_maskset(masks)
        self._plan = self.masks
        self.normalize = check_normalize(normalize)
        k = len(self.masks)
        self._moments = [False] * k
        self._thresholds = [float("nan")] * k
        self._weight_sums = self.masks.weight_sums()

    def bind(self, geometry: ScanGeometry) -> None:
        check_det_shape(self.masks, geometry, "masks")
        super().bind(geometry)

    def results(self) -> list[ResultSpec]:
        units = "counts" if self.normalize == "sum" else "counts/weight"
        return [
            ResultSpec(n, ResultKind.SCAN, units=units, description=f"virtual detector {n!r}")
            for n in self.masks.names
        ]

    def finalize(self, partial: Partial, coverage: np.ndarray) -> Results:
        cov = check_coverage(self.geometry, coverage)
        return finish_images(
            partial["sums"],
            self.masks,
            self._weight_sums,
            self.normalize,
            cov,
            self.geometry.scan_shape,
        )

    def parameters(self) -> dict[str, Any]:
        return {
            "masks": self.masks.names,
            "mask_weight_sums": [float(w) for w in self._weight_sums],
            "normalize": self.normalize,
        }
