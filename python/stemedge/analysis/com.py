"""Centre of mass (and DPC) as a mergeable analysis, fused with virtual detectors.

Per scan position the partial holds ``S = Σ M·I``, ``Sy = Σ y·M·I``, ``Sx = Σ x·M·I`` (float64;
exact for integer frames) and, when virtual detectors are given, their sums: all from ONE native
pass over each stack (the CoM mask and the k virtual masks compiled into one plan at ``bind``,
as :func:`stemedge.kernels.com_and_virtual_images` does).

``finalize`` turns the sums into

- ``shifts_px`` (scan_y, scan_x, 2) float32: ``(Sy/S, Sx/S) − origin`` in detector px, detector
  frame (y, x); ``empty`` (default 0) where S = 0; NaN where no frame was seen;
- ``intensity`` (scan_y, scan_x) float32: ``S`` (mean of the measurements of a position);
- with a calibration on the geometry: ``deflection_mrad`` (scan_y, scan_x, 2) float32 in the
  *scan* frame (:func:`stemedge.dpc.deflection`: rotation/flip applied) and, unless
  ``idpc=False``, ``idpc_rad`` (scan_y, scan_x) float32: the iDPC phase
  (:func:`stemedge.dpc.idpc` of ⟨k⟩, as :func:`stemedge.dpc.dpc` computes it, no descan);
- one float32 image per virtual mask, by its name.

Decisions (the same for every built-in analysis):

- a position measured n times reports the result of the mean of its n frames: the shift is the
  CoM of their summed frame (``ΣSy/ΣS``), intensity and virtual images are means;
- ``idpc_rad`` is all NaN until every position has been seen (with finite shifts): a Fourier
  integration over a partly measured field would spread the gaps' artefacts over the whole
  map, so a partial phase would look valid and be wrong;
- NaN pixels of float32 frames inside the CoM mask make that position's shift NaN (the native
  pass propagates them); pass ``threshold=`` to count them as zero instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stemedge.analysis.base import (
    Partial,
    ResultKind,
    Results,
    ResultSpec,
    check_coverage,
)
from stemedge.analysis.virtual import (
    MaskSums,
    as_maskset,
    check_det_shape,
    check_normalize,
    finish_images,
    mean_per_position,
)
from stemedge.dpc import deflection, idpc
from stemedge.geometry import ScanGeometry
from stemedge.kernels import _com_mask, _origin, _threshold
from stemedge.masks import MaskSet

__all__ = ["CenterOfMassAnalysis"]

_RESERVED = ("shifts_px", "intensity", "deflection_mrad", "idpc_rad")
_IDPC_KEYS = ("eps", "pad", "pad_mode")
_IDPC_DEFAULTS = {"eps": 0.0, "pad": 2, "pad_mode": "zero"}  # those of stemedge.dpc.dpc


def _check_origin(origin: Any) -> tuple[float, float] | None:
    if origin is None:
        return None
    o = np.asarray(origin, dtype=float)
    if o.shape != (2,) or not np.all(np.isfinite(o)):
        raise ValueError(f"origin must be (y, x) in detector px or None, got {origin!r}")
    return float(o[0]), float(o[1])


def _idpc_options(value: Any) -> dict[str, Any] | None:
    """None (no phase) or the keyword arguments of :func:`stemedge.dpc.idpc`."""
    if value is False or value is None:
        return None
    if value is True:
        return dict(_IDPC_DEFAULTS)
    if not isinstance(value, Mapping) or set(value) - set(_IDPC_KEYS):
        raise ValueError(
            f"idpc must be True, False or a dict with keys among {_IDPC_KEYS} (options of "
            f"stemedge.dpc.idpc), got {value!r}"
        )
    options = {**_IDPC_DEFAULTS, **value}
    # Integrate a tiny zero field now, so a bad option fails here and not at the end of a scan.
    idpc(np.zeros((2, 2, 2)), 1.0, **options)
    return options


def _check_com_geometry(radius, inner_radius, mask) -> np.ndarray | None:
    if mask is not None:
        if radius is not None or inner_radius is not None:
            raise ValueError("give either mask= or radius=/inner_radius=, not both")
        m = np.asarray(mask)
        if m.ndim != 2 or m.dtype.kind not in "biuf":
            raise ValueError(
                f"mask must be a real 2-D (det_y, det_x) weight array, got {m.dtype} {m.shape}"
            )
        return m.astype(np.float32)
    if inner_radius is not None and radius is None:
        raise ValueError("inner_radius needs radius (the outer edge of the annulus)")
    for arg, value in (("radius", radius), ("inner_radius", inner_radius)):
        if value is not None and not float(value) >= 0:
            raise ValueError(f"{arg} must be >= 0 px or None, got {value!r}")
    return None


class CenterOfMassAnalysis(MaskSums):
    """Centre of mass / DPC per scan position, optionally fused with virtual detectors.

    Parameters
    ----------
    radius, inner_radius : float, optional
        Only pixels with ``d <= radius`` (disk) or ``inner_radius < d <= radius`` (annulus)
        around the origin count; default the whole frame.
    mask : ndarray (det_y, det_x), optional
        Custom CoM weights instead of ``radius``.
    origin : (y, x), optional
        Unscattered-beam position [px]; default ``calibration.origin_for(frame_shape)`` when
        the geometry has a calibration, else ``(det_y // 2, det_x // 2)`` (PHYSICS.md C2).
    threshold : float, optional
        Pixels below it (and NaN pixels) count as zero in the CoM (not in virtual images).
    virtual : MaskSet, dict name -> 2-D mask, or list, optional
        Virtual detectors summed in the same native pass; results by mask name.
    idpc : bool or dict
        With a calibration: also integrate the iDPC phase ``idpc_rad``; a dict passes ``eps``,
        ``pad``, ``pad_mode`` to :func:`stemedge.dpc.idpc` (default those of
        :func:`stemedge.dpc.dpc`: eps 0, pad 2, zero padding).
    empty : float
        Shift reported where a seen frame has zero intensity (as ``center_of_mass``).
    normalize : {'sum', 'mean'}
        For the virtual images (see :class:`VirtualDetectorAnalysis`).
    nthreads : int, optional
        Threads for the native pass; default all cores.
    name : str
        Analysis name (default ``"com"``).

    Notes
    -----
    See the module docstring for results, units and the decisions on repeats, partial scans
    and NaN.
    """

    name = "com"

    def __init__(
        self,
        *,
        radius: float | None = None,
        inner_radius: float | None = None,
        mask: np.ndarray | None = None,
        origin: Sequence[float] | None = None,
        threshold: float | None = None,
        virtual: MaskSet | dict[str, np.ndarray] | None = None,
        idpc: bool | dict[str, Any] = True,
        empty: float = 0.0,
        normalize: str = "sum",
        nthreads: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name, nthreads=nthreads)
        self.radius = None if radius is None else float(radius)
        self.inner_radius = None if inner_radius is None else float(inner_radius)
        self._mask = _check_com_geometry(radius, inner_radius, mask)
        self._origin_arg = _check_origin(origin)
        self.threshold = threshold
        self._threshold = _threshold(threshold)
        self.virtual = None if virtual is None else as_maskset(virtual, "virtual")
        if self.virtual is not None:
            clash = sorted(set(self.virtual.names) & set(_RESERVED))
            if clash:
                raise ValueError(
                    f"virtual: mask names {clash} clash with the CoM results {_RESERVED}; "
                    "rename those masks"
                )
        self._idpc = _idpc_options(idpc)
        self.empty = float(empty)
        self.normalize = check_normalize(normalize)
        k = 0 if self.virtual is None else len(self.virtual)
        self._moments = [True] + [False] * k
        self._thresholds = [self._threshold] + [float("nan")] * k
        self._plan: MaskSet | None = None
        self.origin: tuple[float, float] | None = None

    # --- binding: resolve the origin, compile CoM mask + virtual masks into one plan ------------

    def bind(self, geometry: ScanGeometry) -> None:
        if self.bound and geometry == self.geometry:
            return
        if self.virtual is not None:
            check_det_shape(self.virtual, geometry, "virtual masks")
        if self._mask is not None and self._mask.shape != geometry.frame_shape:
            raise ValueError(
                f"mask has shape {self._mask.shape} but the frames are {geometry.frame_shape}"
            )
        super().bind(geometry)
        det = geometry.frame_shape
        cal = geometry.calibration
        self.origin = self._origin_arg or _origin(cal, det)
        com = _com_mask(det, self.radius, self.inner_radius, self._mask, self.origin)
        if self.virtual is None:
            self._plan = MaskSet(com, names=["com"])
        else:
            masks = np.concatenate([com[np.newaxis], self.virtual.masks])
            self._plan = MaskSet(masks, names=["com", *self.virtual.names])
            self._weight_sums = self.virtual.weight_sums()

    def _calibrated(self) -> bool:
        return self.geometry.calibration is not None

    def results(self) -> list[ResultSpec]:
        specs = [
            ResultSpec("shifts_px", ResultKind.SCAN, extra_shape=(2,), units="px",
                       description="CoM shift (y, x) from the origin, detector frame"),
            ResultSpec("intensity", ResultKind.SCAN, units="counts",
                       description="total intensity inside the CoM mask"),
        ]  # fmt: skip
        if self._calibrated():
            specs.append(
                ResultSpec("deflection_mrad", ResultKind.SCAN, extra_shape=(2,), units="mrad",
                           description="deflection angle (y, x), scan frame")
            )  # fmt: skip
            if self._idpc is not None:
                specs.append(
                    ResultSpec("idpc_rad", ResultKind.SCAN, units="rad",
                               description="iDPC phase, mean 0; NaN until the scan is complete")
                )  # fmt: skip
        if self.virtual is not None:
            units = "counts" if self.normalize == "sum" else "counts/weight"
            specs += [
                ResultSpec(n, ResultKind.SCAN, units=units, description=f"virtual detector {n!r}")
                for n in self.virtual.names
            ]
        return specs

    # --- results ------------------------------------------------------------------------------

    def finalize(self, partial: Partial, coverage: np.ndarray) -> Results:
        g = self.geometry
        cov = check_coverage(g, coverage)
        sums = partial["sums"]
        shifts = self._shifts(sums, cov > 0)
        out = {
            "shifts_px": shifts,
            "intensity": mean_per_position(sums[:, 0], cov, cov > 0)
            .astype(np.float32)
            .reshape(g.scan_shape),
        }
        if self._calibrated():
            out["deflection_mrad"] = deflection(shifts, g.calibration, unit="mrad")
            if self._idpc is not None:
                out["idpc_rad"] = self._phase(shifts, cov)
        if self.virtual is not None:
            out.update(
                finish_images(
                    sums[:, 3:], self.virtual, self._weight_sums, self.normalize, cov, g.scan_shape
                )
            )
        return out

    def _shifts(self, sums: np.ndarray, seen: np.ndarray) -> np.ndarray:
        """CoM shifts (float32, scan_shape + (2,)), computed as kernels._finish_com does (so a
        one-shot run matches ``center_of_mass`` bit for bit)."""
        s, sy, sx = sums[:, 0], sums[:, 1], sums[:, 2]
        shifts = np.empty((s.shape[0], 2), np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            shifts[:, 0] = np.where(s != 0, sy / s - self.origin[0], self.empty)
            shifts[:, 1] = np.where(s != 0, sx / s - self.origin[1], self.empty)
        shifts[~seen] = np.nan
        return shifts.reshape((*self.geometry.scan_shape, 2))

    def _phase(self, shifts: np.ndarray, cov: np.ndarray) -> np.ndarray:
        """iDPC phase, or all NaN while any position is unseen or has a non-finite shift."""
        if not (cov.all() and np.isfinite(shifts).all()):
            return np.full(self.geometry.scan_shape, np.nan, np.float32)
        cal = self.geometry.calibration
        field_kinv = deflection(shifts, cal, unit="1/A")
        return idpc(field_kinv, cal.scan_step_A, **self._idpc).astype(np.float32)

    def parameters(self) -> dict[str, Any]:
        return {
            "radius": self.radius,
            "inner_radius": self.inner_radius,
            "mask": None if self._mask is None else "custom",
            "origin": None if self.origin is None else list(self.origin),
            "threshold": None if self.threshold is None else float(self.threshold),
            "virtual": None if self.virtual is None else self.virtual.names,
            "normalize": self.normalize,
            "idpc": self._idpc,
            "empty": self.empty,
        }
