"""Differential phase contrast (DPC) toolkit: from centre-of-mass shifts to fields and phases.

Everything here works on *fields*: arrays of shape ``(scan_y, scan_x, 2)`` whose last axis holds
the (y, x) components, with axis 0 = y pointing down (PHYSICS.md C1). Centre-of-mass (CoM) shifts
come in detector pixels in the detector frame; the scan-frame field is ``E = T·shift`` with the
detector→scan transform ``T = R(θ)·F`` (PHYSICS.md C4,
:func:`stemedge.calibration.rotation_matrix`).

Units (PHYSICS.md §2.2, C5):

* deflection angle ``⟨θ⟩ = shift·det_mrad_per_px`` [mrad];
* mean transverse wave vector ``⟨k⟩ = shift·k_per_px`` [Å⁻¹];
* phase gradient ``∇φ = 2π⟨k⟩`` [rad/Å], phases in radians;
* ``div E = ∂E_y/∂y + ∂E_x/∂x`` and ``curl E = ∂E_y/∂x − ∂E_x/∂y`` by central differences divided
  by the scan step in Å, so a field in Å⁻¹ gives Å⁻².

The CoM points towards atoms (positive phase), so the divergence is negative on atom columns and
the field of a purely electrostatic object is curl-free; :func:`find_rotation` uses both facts.

Functions
---------
to_scan_frame, deflection
    Rotate/flip detector-frame shifts into the scan frame, optionally with physical units.
descan_fit, descan_correct
    Remove the descan (a mean or a plane in the scan coordinates) or a vacuum reference scan.
divergence, curl
    Physical-unit finite-difference derivatives of a field.
find_rotation
    Scan rotation and handedness from the curl-free condition, with the 180° ambiguity resolved
    by the divergence sign.
idpc
    Fourier integration of ``⟨k⟩`` into the phase (iDPC / iCoM).
dpc
    All of the above in one call, returning a :class:`DPCResult`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from stemedge.calibration import Calibration, rotation_matrix

__all__ = [
    "DPCResult",
    "RotationResult",
    "curl",
    "deflection",
    "descan_correct",
    "descan_fit",
    "divergence",
    "dpc",
    "find_rotation",
    "idpc",
    "to_scan_frame",
]

_UNITS = ("px", "mrad", "rad", "1/A")
_DESCAN_METHODS = ("mean", "plane")
_PAD_MODES = ("zero", "mirror")
_ASSUME = ("atoms", "none")


# --- argument checking -----------------------------------------------------------------------


def _real_array(value: Any, name: str) -> np.ndarray:
    """``np.asarray(value)``, refusing anything that is not a real-valued numeric array."""
    arr = np.asarray(value)
    # Booleans, complex numbers and objects would silently produce nonsense in the maths below.
    if arr.dtype.kind not in "iuf":
        raise TypeError(
            f"{name} must be a real-valued numeric array (int or float), got dtype {arr.dtype}"
        )
    return arr


def _vectors(value: Any, name: str) -> np.ndarray:
    """An array of (y, x) vectors: any shape ``(..., 2)``."""
    arr = _real_array(value, name)
    if arr.ndim < 1 or arr.shape[-1] != 2:
        raise ValueError(
            f"{name} must have shape (..., 2) with the last axis holding (y, x) components, "
            f"got shape {arr.shape}"
        )
    return arr


def _field(value: Any, name: str, min_size: int = 1) -> np.ndarray:
    """A field over the scan: shape ``(scan_y, scan_x, 2)``, at least ``min_size`` along y, x."""
    arr = _real_array(value, name)
    if arr.ndim != 3 or arr.shape[-1] != 2:
        raise ValueError(
            f"{name} must have shape (scan_y, scan_x, 2) with the last axis holding (y, x) "
            f"components, got shape {arr.shape}"
        )
    if arr.shape[0] < min_size or arr.shape[1] < min_size:
        raise ValueError(
            f"{name} must have at least {min_size} scan positions along y and x, "
            f"got shape {arr.shape}"
        )
    return arr


def _step_pair(value: Any, name: str) -> tuple[float, float]:
    """A positive, finite scan step: a number or a (y, x) pair [Å]."""
    try:
        arr = np.broadcast_to(np.asarray(value, dtype=float), (2,))
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a positive number or a (y, x) pair of positive numbers [Å], "
            f"got {value!r}"
        ) from None
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(
            f"{name} must be a positive number or a (y, x) pair of positive numbers [Å], "
            f"got {value!r}"
        )
    return float(arr[0]), float(arr[1])


def _choice(value: Any, name: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {allowed!r}, got {value!r}")
    return value


def _float_dtype(arr: np.ndarray) -> np.dtype:
    """Keep float16/float32 inputs in float32 (large maps), compute everything else in float64."""
    if arr.dtype.kind == "f" and arr.dtype.itemsize <= 4:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _check_calibration(calibration: Any) -> Calibration:
    if not isinstance(calibration, Calibration):
        raise TypeError(
            "calibration must be a stemedge.Calibration (it provides transform, k_per_px, "
            f"det_mrad_per_px and scan_step_A), got {type(calibration).__name__}"
        )
    return calibration


# --- frames and units -------------------------------------------------------------------------


def to_scan_frame(shifts_px: Any, rotation_deg: float = 0.0, flip_y: bool = False) -> np.ndarray:
    """Map detector-frame vectors into the scan frame, ``E = T·shift`` at every position.

    Parameters
    ----------
    shifts_px : array_like, shape (..., 2)
        Vectors in the detector frame, last axis (y, x); typically CoM shifts [px].
    rotation_deg : float
        Scan rotation θ [deg]; positive θ turns vectors clockwise on screen (y down).
    flip_y : bool
        Whether the detector y axis is mirrored (``F = diag(−1, 1)`` applied first).

    Returns
    -------
    numpy.ndarray
        Same shape as ``shifts_px``; float32 for float32 input, float64 otherwise. Units are
        unchanged (a rotation does not rescale).

    Notes
    -----
    ``T = R(θ)·F`` with ``R(θ) = [[cos θ, sin θ], [−sin θ, cos θ]]`` acting on (y, x) column
    vectors (PHYSICS.md C4, identical to LiberTEM's ``apply_correction``).
    """
    s = _vectors(shifts_px, "shifts_px")
    if not math.isfinite(float(rotation_deg)):
        raise ValueError(f"rotation_deg must be a finite angle in degrees, got {rotation_deg!r}")
    t = rotation_matrix(float(rotation_deg), bool(flip_y))
    dtype = _float_dtype(s)
    # Row vectors: E_i = Σ_j T_ij s_j  <=>  E = s @ Tᵀ, which broadcasts over any leading axes.
    return s.astype(dtype, copy=False) @ t.T.astype(dtype)


def deflection(shifts_px: Any, calibration: Calibration, unit: str = "mrad") -> np.ndarray:
    """Scan-frame deflection field from detector-frame CoM shifts, in physical units.

    Parameters
    ----------
    shifts_px : array_like, shape (..., 2)
        CoM shifts in detector pixels, detector frame, last axis (y, x).
    calibration : Calibration
        Supplies the transform ``T`` (``rotation_deg``, ``flip_y``), ``det_mrad_per_px`` and
        ``k_per_px``.
    unit : {"px", "mrad", "rad", "1/A"}
        ``"px"``: rotated only (detector pixels); ``"mrad"``/``"rad"``: deflection angle via
        ``det_mrad_per_px``; ``"1/A"``: mean transverse wave vector ⟨k⟩ [Å⁻¹] via ``k_per_px``
        (the input of :func:`idpc`; ``∇φ = 2π⟨k⟩``).

    Returns
    -------
    numpy.ndarray
        The scan-frame field, same shape as ``shifts_px``.
    """
    cal = _check_calibration(calibration)
    unit = _choice(unit, "unit", _UNITS)
    field = to_scan_frame(shifts_px, cal.rotation_deg, cal.flip_y)
    scale = {
        "px": 1.0,
        "mrad": cal.det_mrad_per_px,
        "rad": cal.det_mrad_per_px * 1e-3,
        "1/A": cal.k_per_px,
    }[unit]
    return field * field.dtype.type(scale)


# --- descan -----------------------------------------------------------------------------------


def descan_fit(shifts_px: Any, method: str = "plane", mask: Any = None) -> np.ndarray:
    """Fit the descan background of a CoM shift map.

    Parameters
    ----------
    shifts_px : array_like, shape (scan_y, scan_x, 2)
        CoM shifts (any frame; for ``"mean"`` and ``"plane"`` fitting before or after rotation
        gives the same corrected field because both models are linear and rotation-covariant).
    method : {"mean", "plane"}
        ``"mean"``: one constant vector. ``"plane"``: per component, least squares
        ``a + b·iy + c·ix`` in scan-pixel indices.
    mask : array_like of bool, shape (scan_y, scan_x), optional
        Fit only over positions where ``mask`` is True, e.g. a vacuum region. Non-finite shifts
        are always left out of the fit.

    Returns
    -------
    numpy.ndarray
        The fitted background evaluated at every scan position, same shape as ``shifts_px``.

    Raises
    ------
    ValueError
        If the mask has the wrong shape or selects too few positions (1 for ``"mean"``, 3 not on
        one line for ``"plane"``).

    Notes
    -----
    Fitting on the data itself also removes any genuine long-range field (a uniform or linearly
    varying specimen field is indistinguishable from descan). Prefer a vacuum reference scan
    (``descan_correct(..., reference=vacuum_shifts)``) or a ``mask`` covering vacuum.
    """
    s = _field(shifts_px, "shifts_px")
    method = _choice(method, "method", _DESCAN_METHODS)
    ny, nx = s.shape[:2]
    use = np.all(np.isfinite(s), axis=-1)
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype != bool:
            raise TypeError(
                f"mask must be a boolean array of shape {(ny, nx)}, got dtype {m.dtype}"
            )
        if m.shape != (ny, nx):
            raise ValueError(f"mask must have the scan shape {(ny, nx)}, got shape {m.shape}")
        use &= m
    n_used = int(use.sum())
    values = s[use].astype(np.float64)  # (n, 2): both components share one design matrix
    if method == "mean":
        if n_used < 1:
            raise ValueError("descan_fit: the mask selects no position with finite shifts")
        mean = values.mean(axis=0)
        return np.broadcast_to(mean, s.shape).astype(_float_dtype(s))
    iy, ix = np.nonzero(use)
    # Centre the coordinates on the fitted positions: keeps the normal equations well conditioned
    # for large scans, so the plane is recovered to round-off.
    cy, cx = (iy.mean(), ix.mean()) if n_used else (0.0, 0.0)
    design = np.column_stack([np.ones(n_used), iy - cy, ix - cx])
    if n_used < 3 or np.linalg.matrix_rank(design) < 3:
        raise ValueError(
            "descan_fit(method='plane') needs at least 3 fitted positions not all on one line; "
            f"the mask/finite data leave {n_used}. Pass a larger mask or method='mean'."
        )
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)  # (3, 2)
    gy, gx = np.meshgrid(np.arange(ny) - cy, np.arange(nx) - cx, indexing="ij")
    plane = coef[0] + gy[..., None] * coef[1] + gx[..., None] * coef[2]
    return plane.astype(_float_dtype(s))


def descan_correct(
    shifts_px: Any, method: str = "plane", reference: Any = None, mask: Any = None
) -> np.ndarray:
    """Subtract the descan: a fitted mean/plane, or a vacuum reference scan.

    Parameters
    ----------
    shifts_px : array_like, shape (scan_y, scan_x, 2)
        CoM shifts [px].
    method : {"mean", "plane"}
        Background model fitted by :func:`descan_fit`; ignored when ``reference`` is given.
    reference : array_like, shape (scan_y, scan_x, 2), optional
        CoM shifts of a vacuum reference scan with the *same scan shape* (and scan settings);
        it is subtracted point by point. Scans of other shapes are refused: fit a plane to the
        reference yourself and subtract that instead.
    mask : array_like of bool, shape (scan_y, scan_x), optional
        Restrict the fit to these positions (e.g. vacuum). Cannot be combined with
        ``reference``.

    Returns
    -------
    numpy.ndarray
        Corrected shifts, same shape as ``shifts_px``.

    Notes
    -----
    Fitting on the data itself also removes genuine long-range fields; prefer a vacuum
    reference (or a vacuum ``mask``).
    """
    s = _field(shifts_px, "shifts_px")
    if reference is None:
        return s.astype(_float_dtype(s), copy=False) - descan_fit(s, method=method, mask=mask)
    if mask is not None:
        raise ValueError("pass either reference or mask to descan_correct, not both")
    ref = _field(reference, "reference")
    if ref.shape != s.shape:
        raise ValueError(
            f"reference must have the same shape as shifts_px {s.shape} (a vacuum scan with the "
            f"same scan settings), got {ref.shape}"
        )
    dtype = np.result_type(_float_dtype(s), _float_dtype(ref))
    return s.astype(dtype, copy=False) - ref.astype(dtype, copy=False)


# --- derivatives ------------------------------------------------------------------------------


def _gradients(field: np.ndarray, step: tuple[float, float]) -> tuple[np.ndarray, ...]:
    """(∂E_y/∂y, ∂E_y/∂x, ∂E_x/∂y, ∂E_x/∂x) by np.gradient (central, one-sided at the edges)."""
    f = field.astype(_float_dtype(field), copy=False)
    dy, dx = step
    return (
        np.gradient(f[..., 0], dy, axis=0),
        np.gradient(f[..., 0], dx, axis=1),
        np.gradient(f[..., 1], dy, axis=0),
        np.gradient(f[..., 1], dx, axis=1),
    )


def divergence(field: Any, step_A: Any = (1.0, 1.0)) -> np.ndarray:
    """Divergence ``∂E_y/∂y + ∂E_x/∂x`` of a scan-frame field.

    Parameters
    ----------
    field : array_like, shape (scan_y, scan_x, 2)
        Scan-frame field, last axis (y, x). At least 2 positions along each axis.
    step_A : float or (float, float)
        Scan step (y, x) [Å]; derivatives are per Å (a field in Å⁻¹ gives Å⁻²).

    Returns
    -------
    numpy.ndarray, shape (scan_y, scan_x)
        Central differences inside, one-sided differences on the outer rows/columns (as
        ``np.gradient``; those edge values are less accurate).
    """
    f = _field(field, "field", min_size=2)
    gyy, _, _, gxx = _gradients(f, _step_pair(step_A, "step_A"))
    return gyy + gxx


def curl(field: Any, step_A: Any = (1.0, 1.0)) -> np.ndarray:
    """Curl ``∂E_y/∂x − ∂E_x/∂y`` (the z component) of a scan-frame field.

    Parameters
    ----------
    field : array_like, shape (scan_y, scan_x, 2)
        Scan-frame field, last axis (y, x). At least 2 positions along each axis.
    step_A : float or (float, float)
        Scan step (y, x) [Å].

    Returns
    -------
    numpy.ndarray, shape (scan_y, scan_x)
        Zero (to round-off, away from the edges) for the field of an electrostatic object in
        the correct scan frame.
    """
    f = _field(field, "field", min_size=2)
    _, gyx, gxy, _ = _gradients(f, _step_pair(step_A, "step_A"))
    return gyx - gxy


# --- scan rotation ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RotationResult:
    """Outcome of :func:`find_rotation`.

    Attributes
    ----------
    rotation_deg : float
        Scan rotation θ in [0, 360) ([0, 180) with ``assume="none"``) [deg].
    flip_y : bool
        Detector handedness (``F = diag(−1, 1)`` applied before the rotation).
    rms_curl : float
        RMS curl of ``T·shift`` over the interior at the returned transform [shift units per
        ``step_A`` unit: px per scan pixel with the default step].
    rms_div : float
        RMS divergence there (same units); ``rms_curl / rms_div`` ≪ 1 indicates a good fit.
    angles_deg : numpy.ndarray, shape (n,)
        Search grid.
    curve : numpy.ndarray, shape (2, n)
        RMS curl against angle, row 0 for ``flip_y=False`` and row 1 for ``flip_y=True`` (for
        display; it has period 180° because the curl only changes sign under θ → θ + 180°).
    divergence_sign : float
        Magnitude-weighted sign of the divergence at the strongest features (largest |div|) at
        the returned transform, in [−1, 1]; −1 means all of them are sinks, as expected for atoms.
    resolved_by : str
        How θ vs θ + 180° was chosen: ``"divergence"``, ``"ambiguous"`` (``assume="none"``) or
        ``"undetermined"`` (``assume="atoms"`` but the divergence gave no sign).
    """

    rotation_deg: float
    flip_y: bool
    rms_curl: float
    rms_div: float
    angles_deg: np.ndarray
    curve: np.ndarray
    divergence_sign: float
    resolved_by: str

    @property
    def transform(self) -> np.ndarray:
        """The 2×2 detector→scan transform ``T = R(θ)·F``."""
        return rotation_matrix(self.rotation_deg, self.flip_y)

    def apply_to(self, calibration: Calibration) -> Calibration:
        """A copy of ``calibration`` with this rotation and flip."""
        return _check_calibration(calibration).replace(
            rotation_deg=self.rotation_deg, flip_y=self.flip_y
        )


def _wrap(angle_deg: float, period: float) -> float:
    """``angle mod period`` in [0, period) (``%`` can return ``period`` itself for −tiny)."""
    a = float(angle_deg) % period
    return 0.0 if a >= period else a


def find_rotation(
    shifts_px: Any,
    *,
    step_deg: float = 1.0,
    refine: bool = True,
    flip: bool | None = None,
    assume: str = "atoms",
    step_A: Any = (1.0, 1.0),
    border: int = 1,
    top_fraction: float = 0.02,
) -> RotationResult:
    """Find the detector→scan transform that makes the CoM field curl-free (PHYSICS.md §2.4).

    Parameters
    ----------
    shifts_px : array_like, shape (scan_y, scan_x, 2)
        Detector-frame CoM shifts. A constant offset does not matter, but remove a descan
        *gradient* first (:func:`descan_correct`): a plane adds constant derivatives, i.e. a
        uniform curl/divergence that biases the angle. At least ``2·border + 1`` positions along
        each axis; non-finite positions (and their neighbours) are ignored.
    step_deg : float
        Grid step of the displayed RMS-curl curve over 0…360° [deg].
    refine : bool
        True: return the exact minimiser of the RMS curl (closed form, see Notes). False: return
        the best grid angle.
    flip : bool or None
        None searches both handednesses (the lower minimum wins); True/False fixes ``flip_y``.
    assume : {"atoms", "none"}
        How to resolve θ vs θ + 180° (the curl cannot tell them apart: the field just changes
        sign). ``"atoms"``: the specimen's strongest features have positive phase (atom columns),
        so the CoM converges on them and the divergence there is negative; pick the branch where
        the divergence at the positions of largest |div| (``top_fraction`` of them) is
        predominantly negative. This gives the wrong branch for specimens dominated by
        negative-phase features (holes, voids in a thick film) and is meaningless for fields
        without localised sources. ``"none"``: return the branch in [0, 180); the result is then
        ambiguous by 180° (the phase sign is undetermined).
    step_A : float or (float, float)
        Scan step (y, x) [Å]; only matters for non-square scan pixels.
    border : int
        Rows/columns excluded at each edge (≥ 1) so that one-sided edge differences do not bias
        the curl.
    top_fraction : float
        Fraction (0, 1] of interior positions with the largest |div| used for the 180° decision.

    Returns
    -------
    RotationResult

    Notes
    -----
    The curl is linear in the field, and with ``u = F·s``, ``E = R(θ)·u``:
    ``curl E = cos θ·A + sin θ·B`` and ``div E = cos θ·B − sin θ·A`` with ``A = curl u`` and
    ``B = div u``. The four derivative maps ``∂s_i/∂x_j`` are computed once (central differences,
    interior only); then the mean-square curl is the quadratic form
    ``⟨A²⟩cos²θ + 2⟨AB⟩cos θ sin θ + ⟨B²⟩sin²θ``, evaluated on the whole angle grid from three
    numbers, and minimised exactly by the smaller eigenvector of ``[[⟨A²⟩, ⟨AB⟩], [⟨AB⟩, ⟨B²⟩]]``
    (no parabolic interpolation needed). A 256×256 scan takes a few milliseconds.

    Central differences of an exact gradient still have an O(Δ²) curl where features are only a
    few scan pixels wide; it can bias the angle by a few hundredths of a degree (0.08° for
    σ = 1.4 px Gaussian atoms in the tests), negligible for probe-blurred fields.
    Equivalent to LiberTEM's ``guess_corrections`` (same convention for θ and ``flip_y``) with a
    continuous instead of a 1° answer.
    """
    if not isinstance(border, (int, np.integer)) or isinstance(border, bool) or border < 1:
        raise ValueError(f"border must be an integer ≥ 1, got {border!r}")
    border = int(border)
    s = _field(shifts_px, "shifts_px", min_size=2 * border + 1)
    step_deg_f = float(step_deg)
    if not (math.isfinite(step_deg_f) and 0 < step_deg_f <= 180):
        raise ValueError(f"step_deg must be in (0, 180] degrees, got {step_deg!r}")
    if flip is not None and not isinstance(flip, (bool, np.bool_)):
        raise TypeError(f"flip must be None (search both), True or False, got {flip!r}")
    assume = _choice(assume, "assume", _ASSUME)
    tf = float(top_fraction)
    if not (math.isfinite(tf) and 0 < tf <= 1):
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction!r}")
    dy, dx = _step_pair(step_A, "step_A")

    s = s.astype(np.float64, copy=False)  # moments of large maps want float64 accumulation
    b = border
    # Central differences on the interior, written out with slices: cheaper than np.gradient on
    # the whole map and only uses real neighbours (no one-sided edge values).
    d_y = (s[b + 1 : s.shape[0] - b + 1, b:-b] - s[b - 1 : -b - 1, b:-b]) / (2 * dy)  # ∂s/∂y
    d_x = (s[b:-b, b + 1 : s.shape[1] - b + 1] - s[b:-b, b - 1 : -b - 1]) / (2 * dx)  # ∂s/∂x
    syy, sxy = d_y[..., 0], d_y[..., 1]  # ∂s_y/∂y, ∂s_x/∂y
    syx, sxx = d_x[..., 0], d_x[..., 1]  # ∂s_y/∂x, ∂s_x/∂x
    valid = np.isfinite(syy) & np.isfinite(sxy) & np.isfinite(syx) & np.isfinite(sxx)
    if not valid.any():
        raise ValueError("shifts_px has no interior position with finite neighbours")

    angles = np.arange(0.0, 360.0, step_deg_f)
    t = np.deg2rad(angles)
    cos_t, sin_t = np.cos(t), np.sin(t)

    curve = np.empty((2, angles.size))
    per_flip = []  # (A, B, best angle, best mean-square curl) for flip False, True
    for row, f in enumerate((1.0, -1.0)):
        # u = F·s with F = diag(f, 1): A = curl u = f·∂s_y/∂x − ∂s_x/∂y, B = div u.
        a_map = (f * syx - sxy)[valid]
        b_map = (f * syy + sxx)[valid]
        aa, ab, bb = np.mean(a_map * a_map), np.mean(a_map * b_map), np.mean(b_map * b_map)
        ms = aa * cos_t**2 + 2 * ab * cos_t * sin_t + bb * sin_t**2
        curve[row] = np.sqrt(np.clip(ms, 0.0, None))
        if refine:
            # ms(θ) = m + r·cos(2θ − ψ): minimum m − r at 2θ = ψ + π (exact, mod 180°).
            psi = math.atan2(ab, 0.5 * (aa - bb))
            best = math.degrees(0.5 * (psi + math.pi))
            best_ms = 0.5 * (aa + bb) - math.hypot(0.5 * (aa - bb), ab)
        else:
            i = int(np.argmin(ms))
            best, best_ms = float(angles[i]), float(ms[i])
        per_flip.append((a_map, b_map, best, best_ms))

    if flip is None:
        use_flip = per_flip[1][3] < per_flip[0][3]
    else:
        use_flip = bool(flip)
    a_map, b_map, theta, _ = per_flip[int(use_flip)]

    def div_sign(theta_deg: float) -> tuple[float, np.ndarray]:
        th = math.radians(theta_deg)
        div = math.cos(th) * b_map - math.sin(th) * a_map
        k = max(1, round(tf * div.size))
        top = div[np.argpartition(np.abs(div), div.size - k)[div.size - k :]]
        norm = np.sum(np.abs(top))
        return (float(np.sum(top) / norm) if norm > 0 else 0.0), div

    score, _ = div_sign(theta)
    if assume == "none":
        theta = _wrap(theta, 180.0)
        resolved_by = "ambiguous"
    elif score > 0:
        # Sources where atoms should be sinks: the other branch (field sign flipped).
        theta += 180.0
        resolved_by = "divergence"
    elif score < 0:
        resolved_by = "divergence"
    else:
        theta = _wrap(theta, 180.0)
        resolved_by = "undetermined"
    theta = _wrap(theta, 360.0)
    score, div = div_sign(theta)
    th = math.radians(theta)
    # Report the curl at the answer from the maps themselves, not from the quadratic form (which
    # loses relative precision to cancellation when the minimum is ~0).
    curl_map = math.cos(th) * a_map + math.sin(th) * b_map
    return RotationResult(
        rotation_deg=theta,
        flip_y=bool(use_flip),
        rms_curl=float(np.sqrt(np.mean(curl_map**2))),
        rms_div=float(np.sqrt(np.mean(div**2))),
        angles_deg=angles,
        curve=curve,
        divergence_sign=score,
        resolved_by=resolved_by,
    )


# --- integration ------------------------------------------------------------------------------


def _mirror(comp: np.ndarray, odd_y: bool, odd_x: bool) -> np.ndarray:
    """Even extension ×2 of a map (half-sample symmetric), negating mirrored copies on odd axes.

    Mirroring φ across an edge keeps it even, so its derivative across that axis is odd there:
    ∂φ/∂y changes sign in the copy mirrored along y, ∂φ/∂x in the copy mirrored along x. With
    these signs the extended field is again the gradient of the (even-extended) phase.
    """
    sy = -1.0 if odd_y else 1.0
    sx = -1.0 if odd_x else 1.0
    top = np.concatenate([comp, sx * comp[:, ::-1]], axis=1)
    return np.concatenate([top, sy * top[::-1, :]], axis=0)


def idpc(
    field_kinv: Any,
    step_A: Any = (1.0, 1.0),
    *,
    eps: float = 0.0,
    pad: int = 2,
    pad_mode: str = "zero",
) -> np.ndarray:
    """Integrate a ⟨k⟩ field into the phase by Fourier inversion (iDPC / iCoM).

    Parameters
    ----------
    field_kinv : array_like, shape (scan_y, scan_x, 2)
        Scan-frame mean transverse wave vector ⟨k⟩ [Å⁻¹], last axis (y, x) (e.g.
        ``deflection(shifts, cal, unit="1/A")``, descan-corrected).
    step_A : float or (float, float)
        Scan step (y, x) [Å].
    eps : float
        Tikhonov regularisation ε [Å⁻²] added to ``|Q|²``: damps spatial frequencies below
        ``~sqrt(ε)`` cycles/Å, where descan residue and noise dominate. 0 = none.
    pad : int
        1: no padding (the field is taken as periodic). ≥ 2: the field is extended to
        ``pad×`` its size before the FFT and the result cropped back, which suppresses the
        wrap-around artefacts of non-periodic data.
    pad_mode : {"zero", "mirror"}
        ``"zero"``: zero-fill (subtract the descan first: a residual mean field becomes a ramp
        artefact). ``"mirror"``: even extension of φ (each component mirrored, with the sign
        flip that keeps the extension a gradient); always ×2, so needs ``pad=2``.

    Returns
    -------
    numpy.ndarray, shape (scan_y, scan_x)
        Phase φ [rad] with its mean subtracted (a constant phase is not measurable). With an
        ideal probe it is the object phase filtered by the probe-intensity transfer function.

    Notes
    -----
    With numpy's ``fft2`` (``exp(−2πi Q·r)``) and Q in cycles/Å (``fftfreq(N, step)``),
    ``φ(r) = Σ Φ(Q) exp(2πi Q·r)`` gives ``F[∂φ/∂y] = 2πi·Q_y·Φ``. Since ``∇φ = 2π⟨k⟩``,
    ``F[⟨k⟩_y] = i·Q_y·Φ``: the 2π cancels, and multiplying by ``Q`` and summing,
    ``Φ(Q) = −i (Q_y·K̂_y + Q_x·K̂_x) / (|Q|² + ε)`` with ``Φ(0) = 0``, ``φ = Re ifft2(Φ)``.
    The curl part of a measured field (noise, rotation errors) is discarded by the projection
    onto Q.
    """
    f = _field(field_kinv, "field_kinv")
    dy, dx = _step_pair(step_A, "step_A")
    eps_f = float(eps)
    if not (math.isfinite(eps_f) and eps_f >= 0):
        raise ValueError(f"eps must be a finite number ≥ 0 [Å⁻²], got {eps!r}")
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 1:
        raise ValueError(f"pad must be an integer ≥ 1 (1 = no padding, 2 = double), got {pad!r}")
    pad = int(pad)
    pad_mode = _choice(pad_mode, "pad_mode", _PAD_MODES)
    if pad_mode == "mirror" and pad > 2:
        raise ValueError(
            f"pad_mode='mirror' always doubles the field; pass pad=2 (or pad=1 for none), got {pad}"
        )
    if not np.all(np.isfinite(f)):
        raise ValueError("field_kinv contains NaN or inf; fill or mask them before integrating")

    ny, nx = f.shape[:2]
    ky = f[..., 0].astype(np.float64)
    kx = f[..., 1].astype(np.float64)
    if pad > 1 and pad_mode == "mirror":
        ky, kx = _mirror(ky, odd_y=True, odd_x=False), _mirror(kx, odd_y=False, odd_x=True)
    elif pad > 1:
        zy = np.zeros((pad * ny, pad * nx))
        zx = np.zeros((pad * ny, pad * nx))
        zy[:ny, :nx], zx[:ny, :nx] = ky, kx
        ky, kx = zy, zx
    py, px = ky.shape
    # Real input: the half spectrum (rfft2) carries everything and halves the work.
    qy = np.fft.fftfreq(py, dy)[:, None]
    qx = np.fft.rfftfreq(px, dx)[None, :]
    q2 = qy**2 + qx**2 + eps_f
    q2[0, 0] = 1.0  # Φ(0) is set to 0 below; avoid 0/0 (and its warning) when eps = 0
    # A Nyquist frequency is its own negative, so its sign (and that of the derivative there) is
    # undefined. φ = Re ifft2(Φ) with the full spectrum averages Φ(Q) and Φ*(−Q), which cancels
    # the Nyquist component's term in the numerator; zeroing it here reproduces that exactly
    # with the half spectrum (the denominator keeps the full |Q|²).
    qy_num, qx_num = qy.copy(), qx.copy()
    if py % 2 == 0:
        qy_num[py // 2] = 0.0
    if px % 2 == 0:
        qx_num[0, -1] = 0.0
    phi_q = -1j * (qy_num * np.fft.rfft2(ky) + qx_num * np.fft.rfft2(kx)) / q2
    phi_q[0, 0] = 0.0
    phase = np.fft.irfft2(phi_q, s=(py, px))[:ny, :nx]
    return phase - phase.mean()


# --- one-call pipeline ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DPCResult:
    """Outcome of :func:`dpc`; all maps in the scan frame, shape (scan_y, scan_x[, 2]).

    Attributes
    ----------
    shifts_px : numpy.ndarray
        Detector-frame CoM shifts after descan correction [px].
    field_mrad : numpy.ndarray
        Deflection angle field [mrad].
    field_kinv : numpy.ndarray
        Mean transverse wave vector ⟨k⟩ [Å⁻¹].
    divergence : numpy.ndarray
        ``div ⟨k⟩`` [Å⁻²] (negative on atoms).
    curl : numpy.ndarray
        ``curl ⟨k⟩`` [Å⁻²] (≈ 0 when the rotation is right).
    phase : numpy.ndarray
        iDPC phase [rad], mean subtracted.
    calibration : Calibration
        The calibration used.
    """

    shifts_px: np.ndarray
    field_mrad: np.ndarray
    field_kinv: np.ndarray
    divergence: np.ndarray
    curl: np.ndarray
    phase: np.ndarray
    calibration: Calibration


def dpc(
    shifts_px: Any,
    calibration: Calibration,
    *,
    descan: Any = None,
    idpc_eps: float = 0.0,
    pad: int = 2,
    pad_mode: str = "zero",
) -> DPCResult:
    """Fields, divergence, curl and iDPC phase from CoM shifts in one call.

    Parameters
    ----------
    shifts_px : array_like, shape (scan_y, scan_x, 2)
        Detector-frame CoM shifts [px].
    calibration : Calibration
        Scan step, detector sampling, voltage, rotation and flip.
    descan : None, {"mean", "plane"} or array_like
        None: no correction. A method name: :func:`descan_correct` with that fit on the data
        itself (this also removes genuine long-range fields). An array: CoM shifts of a vacuum
        reference scan of the same shape, subtracted point by point (preferred).
    idpc_eps : float
        Tikhonov ε [Å⁻²] for :func:`idpc`.
    pad : int
        Padding factor for :func:`idpc`.
    pad_mode : {"zero", "mirror"}
        Padding mode for :func:`idpc`.

    Returns
    -------
    DPCResult
    """
    cal = _check_calibration(calibration)
    s = _field(shifts_px, "shifts_px", min_size=2)
    if descan is None:
        corrected = s.astype(_float_dtype(s), copy=False)
    elif isinstance(descan, str):
        corrected = descan_correct(s, method=_choice(descan, "descan", _DESCAN_METHODS))
    else:
        corrected = descan_correct(s, reference=descan)
    field_kinv = deflection(corrected, cal, unit="1/A")
    return DPCResult(
        shifts_px=corrected,
        field_mrad=deflection(corrected, cal, unit="mrad"),
        field_kinv=field_kinv,
        divergence=divergence(field_kinv, cal.scan_step_A),
        curl=curl(field_kinv, cal.scan_step_A),
        phase=idpc(field_kinv, cal.scan_step_A, eps=idpc_eps, pad=pad, pad_mode=pad_mode),
        calibration=cal,
    )
