"""Probe aberrations (PHYSICS.md C6): the coefficients stemedge knows and the phase χ(k) they give.

Shared by the simulator (the probe it builds) and SSB (the phase it compensates), so both use one
sign convention: ``A(k) = aperture · exp(−iχ(k))``, defocus Δf = −C10.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = ["ABERRATION_KEYS", "aberration_phase", "check_aberrations"]

ABERRATION_KEYS = ("C10", "C12", "phi12", "C21", "phi21", "C23", "phi23", "C30")


def check_aberrations(aberrations: Mapping[str, float] | None) -> dict[str, float]:
    """Validated coefficients as floats (unknown keys and non-finite values refused)."""
    if aberrations is None:
        return {}
    if not isinstance(aberrations, Mapping):
        raise TypeError(
            f"aberrations must be a dict like {{'C10': -50.0}} (Å, rad) or None, "
            f"got {type(aberrations).__name__}"
        )
    unknown = sorted(set(aberrations) - set(ABERRATION_KEYS))
    if unknown:
        raise ValueError(f"unknown aberration keys {unknown}; use some of {list(ABERRATION_KEYS)}")
    out = {}
    for key, value in aberrations.items():
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"aberration {key} must be finite, got {value!r}")
        out[key] = v
    return out


def aberration_phase(
    ky: np.ndarray, kx: np.ndarray, wavelength: float, aberrations: Mapping[str, float] | None
) -> np.ndarray:
    """Aberration function χ(k) [rad] (PHYSICS.md C6).

    Parameters
    ----------
    ky, kx : numpy.ndarray
        Spatial frequencies [Å⁻¹] (broadcastable).
    wavelength : float
        Electron wavelength λ [Å].
    aberrations : dict or None
        Coefficients among ``ABERRATION_KEYS``: C10, C12, C21, C23, C30 in Å, phi12, phi21,
        phi23 in rad. Defocus Δf = −C10.

    Returns
    -------
    numpy.ndarray
        ``χ = (2π/λ)[½a²(C10 + C12 cos 2(φ−φ12)) + ⅓a³(C21 cos(φ−φ21) + C23 cos 3(φ−φ23))
        + ¼a⁴ C30]`` with a = λ|k|, φ = atan2(k_y, k_x).
    """
    ab = check_aberrations(aberrations)
    g = ab.get
    a = wavelength * np.hypot(ky, kx)
    phi = np.arctan2(ky, kx)
    chi = 0.5 * a**2 * (g("C10", 0.0) + g("C12", 0.0) * np.cos(2 * (phi - g("phi12", 0.0))))
    chi = chi + a**3 / 3.0 * (
        g("C21", 0.0) * np.cos(phi - g("phi21", 0.0))
        + g("C23", 0.0) * np.cos(3 * (phi - g("phi23", 0.0)))
    )
    chi = chi + 0.25 * a**4 * g("C30", 0.0)
    return (2.0 * np.pi / wavelength) * chi
