"""Scalarizers: one number per measurement, the property steering maximises or maps.

A scalarizer says what it needs (``measurement``: ``"spectra"`` or ``"frames"``) and turns a
batch of measurements into values (n,). Built in: EELS peak energy and peak ratio, the
centre-of-mass shift (native kernel); :class:`FunctionScalarizer` wraps a user function.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "ComDivergence",
    "ComShift",
    "FunctionScalarizer",
    "PeakEnergy",
    "PeakRatio",
    "Scalarizer",
]


class Scalarizer(abc.ABC):
    """``measurement`` ("spectra" or "frames"), ``name`` and ``units`` of the value."""

    measurement: str = "spectra"
    name: str = "value"
    units: str = ""
    #: Where to measure around each chosen position, (k, 2) Å; None: at the position only.
    #: With offsets the scalarizer gets data shaped (n, k, ...).
    offsets_A: np.ndarray | None = None

    @abc.abstractmethod
    def __call__(self, data: np.ndarray, axis: Any) -> np.ndarray:
        """Values (n,) of ``data``: spectra (n, channels) with ``axis`` the energy (eV), or
        frames (n, det_y, det_x) with ``axis`` the camera's mrad per pixel."""

    def describe(self) -> dict[str, Any]:
        return {"scalarizer": type(self).__name__, "name": self.name, "units": self.units}


def _window(energy: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    sel = (energy >= window[0]) & (energy <= window[1])
    if sel.sum() < 3:
        raise ValueError(f"the energy window {window} eV holds fewer than 3 channels")
    return sel


class PeakEnergy(Scalarizer):
    """Energy of a peak: the centroid of the spectrum in ``window_eV`` above its minimum there
    (a bulk plasmon, whose energy follows composition and strain)."""

    name, units = "peak energy", "eV"

    def __init__(self, window_eV: tuple[float, float] = (8.0, 35.0)) -> None:
        self.window_eV = (float(window_eV[0]), float(window_eV[1]))

    def __call__(self, data: np.ndarray, axis: Any) -> np.ndarray:
        energy = np.asarray(axis, np.float64)
        sel = _window(energy, self.window_eV)
        s = np.asarray(data, np.float64)[:, sel]
        s = s - s.min(axis=1, keepdims=True)
        total = s.sum(axis=1)
        centroid = (s * energy[sel]).sum(axis=1) / np.where(total > 0, total, 1.0)
        return np.where(total > 0, centroid, np.nan)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "window_eV": list(self.window_eV)}


class PeakRatio(Scalarizer):
    """Ratio of the counts in two energy windows (e.g. two edges: a composition ratio)."""

    name, units = "peak ratio", ""

    def __init__(self, window_a_eV: tuple[float, float], window_b_eV: tuple[float, float]):
        self.window_a_eV = (float(window_a_eV[0]), float(window_a_eV[1]))
        self.window_b_eV = (float(window_b_eV[0]), float(window_b_eV[1]))

    def __call__(self, data: np.ndarray, axis: Any) -> np.ndarray:
        energy = np.asarray(axis, np.float64)
        s = np.asarray(data, np.float64)
        a = s[:, _window(energy, self.window_a_eV)].sum(axis=1)
        b = s[:, _window(energy, self.window_b_eV)].sum(axis=1)
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "window_a_eV": list(self.window_a_eV),
            "window_b_eV": list(self.window_b_eV),
        }


def _com_shifts(frames: np.ndarray) -> np.ndarray:
    """(n, 2) CoM shifts [px] of frames (n, det_y, det_x) by the native kernel; dtypes it does
    not read are converted to float32."""
    from stemedge.geometry import FRAME_DTYPES
    from stemedge.kernels import center_of_mass

    frames = np.ascontiguousarray(frames)
    if frames.dtype not in FRAME_DTYPES:
        frames = frames.astype(np.float32)
    return center_of_mass(frames, dtype=np.float64, nthreads=1).shifts


class ComShift(Scalarizer):
    """Magnitude of the centre-of-mass shift of each frame, in mrad (native CoM kernel; the
    origin is the frame centre, PHYSICS.md C2)."""

    measurement, name, units = "frames", "CoM shift", "mrad"

    def __call__(self, data: np.ndarray, axis: Any) -> np.ndarray:
        shifts = _com_shifts(data)
        return np.hypot(shifts[:, 0], shifts[:, 1]) * float(axis)


class ComDivergence(Scalarizer):
    """Divergence of the CoM deflection field at a position, from four frames ``step_A`` away
    along ±y and ±x (central differences), in mrad/Å. ∇·E is proportional to the projected
    charge density (PHYSICS.md), so it picks out atomic columns and charged defects.

    ``rotation_deg`` / ``flip_y`` turn detector-frame shifts into the scan frame (PHYSICS.md
    C4), as in :func:`stemedge.dpc.deflection`.
    """

    measurement, name, units = "frames", "CoM divergence", "mrad/Å"

    def __init__(self, step_A: float = 0.5, *, rotation_deg: float = 0.0, flip_y: bool = False):
        if not step_A > 0:
            raise ValueError(f"step_A must be > 0, got {step_A!r}")
        self.step_A, self.rotation_deg, self.flip_y = float(step_A), rotation_deg, flip_y
        h = self.step_A
        self.offsets_A = np.array([[-h, 0.0], [h, 0.0], [0.0, -h], [0.0, h]])

    def __call__(self, data: np.ndarray, axis: Any) -> np.ndarray:
        from stemedge.dpc import to_scan_frame

        n, k = data.shape[:2]
        shifts = _com_shifts(data.reshape(n * k, *data.shape[2:]))
        e = to_scan_frame(shifts, self.rotation_deg, self.flip_y).reshape(n, k, 2) * float(axis)
        d_ey = (e[:, 1, 0] - e[:, 0, 0]) / (2 * self.step_A)
        d_ex = (e[:, 3, 1] - e[:, 2, 1]) / (2 * self.step_A)
        return d_ey + d_ex

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "step_A": self.step_A,
            "rotation_deg": self.rotation_deg,
            "flip_y": self.flip_y,
        }


class FunctionScalarizer(Scalarizer):
    """A user function ``fn(data, axis) -> (n,)`` as a scalarizer."""

    def __init__(
        self,
        fn: Callable[[np.ndarray, Any], Any],
        *,
        measurement: str = "spectra",
        name: str = "value",
        units: str = "",
    ) -> None:
        if measurement not in ("spectra", "frames"):
            raise ValueError(f"measurement must be 'spectra' or 'frames', got {measurement!r}")
        self.fn, self.measurement, self.name, self.units = fn, measurement, name, units

    def __call__(self, data: np.ndarray, axis: Any) -> np.ndarray:
        out = np.asarray(self.fn(data, axis), np.float64).reshape(-1)
        if len(out) != len(data):
            raise ValueError(f"{self.name}: the function gave {len(out)} values for {len(data)}")
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "function": getattr(self.fn, "__name__", repr(self.fn))}
