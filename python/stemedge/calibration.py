"""Calibration: the few numbers that turn pixels into physics, travelling with the data.

Conventions (docs/conventions.md, PHYSICS.md §0): axes (y, x); scan step in Å; detector angular
sampling in mrad/px; the detector→scan transform is ``T = R(θ)·F`` with
``R(θ) = [[cos θ, sin θ], [−sin θ, cos θ]]`` acting on (y, x) vectors and ``F = diag(−1, 1)`` when
``flip_y``. Positive θ turns vectors clockwise on screen.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

# CODATA 2018 constants, SI.
_H = 6.62607015e-34  # J s
_E = 1.602176634e-19  # C
_M0C2_EV = 510998.95000  # electron rest energy, eV
_HC_EV_A = 12398.419843320026  # h·c in eV·Å


def wavelength_A(voltage_kV: float) -> float:
    """Relativistic electron wavelength [Å] for an acceleration voltage [kV]."""
    if not voltage_kV > 0:
        raise ValueError(f"voltage_kV must be positive, got {voltage_kV!r}")
    e_ev = voltage_kV * 1e3
    return _HC_EV_A / math.sqrt(e_ev * (e_ev + 2.0 * _M0C2_EV))


def interaction_constant(voltage_kV: float) -> float:
    """σ [rad/(V·Å)]: phase per projected potential, φ = σ·V_proj (PHYSICS.md §1)."""
    lam = wavelength_A(voltage_kV)
    e_ev = voltage_kV * 1e3
    return (2.0 * math.pi / (lam * e_ev)) * (_M0C2_EV + e_ev) / (2.0 * _M0C2_EV + e_ev)


def rotation_matrix(rotation_deg: float, flip_y: bool) -> np.ndarray:
    """The detector→scan transform ``T = R(θ)·F`` on (y, x) vectors (PHYSICS.md C4)."""
    t = math.radians(rotation_deg)
    r = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    f = np.diag([-1.0, 1.0]) if flip_y else np.eye(2)
    return r @ f


def _pair(value: Any, name: str) -> tuple[float, float]:
    arr = np.broadcast_to(np.asarray(value, dtype=float), (2,))
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(
            f"{name} must be positive and finite (a number or a (y, x) pair), got {value!r}"
        )
    return (float(arr[0]), float(arr[1]))


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Calibration of one 4D-STEM acquisition.

    Parameters
    ----------
    scan_step_A : float or (y, x)
        Distance between neighbouring scan positions [Å].
    det_mrad_per_px : float
        Detector angular sampling [mrad/px].
    voltage_kV : float
        Acceleration voltage [kV].
    convergence_mrad : float
        Probe convergence semi-angle α [mrad].
    rotation_deg, flip_y
        Detector→scan transform ``T = R(θ)·F`` (see module docstring).
    det_origin_px : (y, x) or None
        Unscattered beam position on the detector [px]; ``None`` means the documented default
        ``(det_y // 2, det_x // 2)`` (where ``fftshift`` puts k = 0).
    """

    scan_step_A: tuple[float, float] = (1.0, 1.0)
    det_mrad_per_px: float = 1.0
    voltage_kV: float = 300.0
    convergence_mrad: float = 20.0
    rotation_deg: float = 0.0
    flip_y: bool = False
    det_origin_px: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scan_step_A", _pair(self.scan_step_A, "scan_step_A"))
        for name in ("det_mrad_per_px", "voltage_kV", "convergence_mrad"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive and finite, got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        rot = float(self.rotation_deg)
        if not math.isfinite(rot):
            raise ValueError(f"rotation_deg must be finite, got {self.rotation_deg!r}")
        object.__setattr__(self, "rotation_deg", rot)
        object.__setattr__(self, "flip_y", bool(self.flip_y))
        if self.det_origin_px is not None:
            origin = np.broadcast_to(np.asarray(self.det_origin_px, dtype=float), (2,))
            if not np.all(np.isfinite(origin)):
                raise ValueError(f"det_origin_px must be finite, got {self.det_origin_px!r}")
            object.__setattr__(self, "det_origin_px", (float(origin[0]), float(origin[1])))

    # --- derived quantities -------------------------------------------------------------------
    @property
    def wavelength_A(self) -> float:
        """Relativistic electron wavelength λ [Å]."""
        return wavelength_A(self.voltage_kV)

    @property
    def sigma(self) -> float:
        """Interaction constant σ [rad/(V·Å)]."""
        return interaction_constant(self.voltage_kV)

    @property
    def k_per_px(self) -> float:
        """Reciprocal-space sampling of the detector Δk = Δθ/λ [Å⁻¹/px] (small-angle)."""
        return self.det_mrad_per_px * 1e-3 / self.wavelength_A

    @property
    def k_alpha(self) -> float:
        """Aperture radius in reciprocal space k_α = α/λ [Å⁻¹]."""
        return self.convergence_mrad * 1e-3 / self.wavelength_A

    @property
    def bf_radius_px(self) -> float:
        """Bright-field disk radius on the detector r_α = α/Δθ [px]."""
        return self.convergence_mrad / self.det_mrad_per_px

    @property
    def transform(self) -> np.ndarray:
        """The 2×2 detector→scan transform T (PHYSICS.md C4)."""
        return rotation_matrix(self.rotation_deg, self.flip_y)

    def origin_for(self, det_shape: tuple[int, int]) -> tuple[float, float]:
        """The detector origin for frames of ``det_shape``: given, or the default (D//2)."""
        if self.det_origin_px is not None:
            return self.det_origin_px
        return (float(det_shape[0] // 2), float(det_shape[1] // 2))

    # --- plumbing -----------------------------------------------------------------------------
    def replace(self, **changes: Any) -> Calibration:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (with units in the keys), for file attributes."""
        d = dataclasses.asdict(self)
        d["scan_step_A"] = list(self.scan_step_A)
        if self.det_origin_px is not None:
            d["det_origin_px"] = list(self.det_origin_px)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"unknown calibration fields {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        return cls.from_dict(json.loads(text))
