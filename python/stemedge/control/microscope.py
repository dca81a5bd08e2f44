"""The Microscope interface: what analysis and steering ask of an instrument (issue 7).

One small contract for the simulated instrument (:class:`stemedge.control.SimulatedMicroscope`),
a microscope inside Nion Swift and a remote proxy, so the same notebook or steering loop runs
against any of them.

Coordinates: probe positions are (y, x) in Å within the current field of view, measured from its
top-left corner (scan axis 0 down, axis 1 right: PHYSICS.md C1). Images come back with their
calibration, and every call that acquires validates its arguments before anything moves.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any

import numpy as np

from stemedge.sources.base import Source

__all__ = ["DETECTORS", "Microscope", "MicroscopeError", "MicroscopeState", "SurveyImage"]

#: Scan detectors a survey may use.
DETECTORS = ("HAADF", "MAADF")


class MicroscopeError(RuntimeError):
    """The instrument refused or could not do what was asked (aborted, not connected, ...)."""


@dataclasses.dataclass(frozen=True)
class SurveyImage:
    """A scanned image: ``image`` (ny, nx) float32 with ``pixel_A`` (y, x) and its detector."""

    image: np.ndarray
    pixel_A: tuple[float, float]
    detector: str
    dwell_us: float

    @property
    def fov_A(self) -> tuple[float, float]:
        return (self.image.shape[0] * self.pixel_A[0], self.image.shape[1] * self.pixel_A[1])


@dataclasses.dataclass(frozen=True)
class MicroscopeState:
    """A snapshot for provenance: optics, probe, field of view, detector and stage settings."""

    instrument: str
    voltage_kV: float
    convergence_mrad: float
    defocus_A: float
    probe_A: tuple[float, float]
    fov_A: tuple[float, float]
    camera_shape: tuple[int, int]
    camera_mrad_per_px: float
    stage_nm: tuple[float, float, float]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_positive(value: Any, name: str, maximum: float = math.inf) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(v) and 0 < v <= maximum):
        raise ValueError(f"{name} must be in (0, {maximum:g}], got {value!r}")
    return v


def check_shape(value: Any, name: str, maximum: int) -> tuple[int, int]:
    try:
        ny, nx = (int(v) for v in value)
        ok = (ny, nx) == tuple(value)
    except (TypeError, ValueError):
        ok = False
    if not ok or not (1 <= ny <= maximum and 1 <= nx <= maximum):
        raise ValueError(f"{name} must be (ny, nx) integers in [1, {maximum}], got {value!r}")
    return ny, nx


def check_display(title: Any, data: Any, max_bytes: int = 256 * 2**20) -> tuple[str, np.ndarray]:
    """A title and a 1D/2D real array fit to show, or a clear error."""
    if not isinstance(title, str) or not 0 < len(title) <= 200:
        raise ValueError("title must be a string of 1 to 200 characters")
    a = np.asarray(data)
    if a.dtype.kind not in "biuf" or a.ndim not in (1, 2) or a.size == 0:
        raise ValueError(f"can show a non-empty 1D or 2D real array, got {a.dtype} {a.shape}")
    if a.nbytes > max_bytes:
        raise ValueError(f"{a.nbytes} bytes is more than the {max_bytes} a display takes")
    return title, a


def check_positions(positions: Any, fov_A: tuple[float, float], maximum: int) -> np.ndarray:
    """(n, 2) float64 positions inside the field of view [0, fov) or a clear error."""
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim == 1 and pos.shape == (2,):
        pos = pos[None, :]
    if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) == 0:
        raise ValueError(f"positions must be (y, x) pairs, shape (n, 2), got shape {pos.shape}")
    if len(pos) > maximum:
        raise ValueError(f"at most {maximum} positions per call, got {len(pos)}")
    if not np.all(np.isfinite(pos)):
        raise ValueError("positions must be finite")
    fy, fx = fov_A
    bad = (pos[:, 0] < 0) | (pos[:, 0] >= fy) | (pos[:, 1] < 0) | (pos[:, 1] >= fx)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"position {tuple(pos[i])} Å lies outside the field of view [0, {fy:g}) × [0, {fx:g}) Å"
        )
    return pos


class Microscope(abc.ABC):
    """What stemedge needs from a STEM: survey, probe, frames, 4D scans, spectrum images, state,
    abort."""

    @abc.abstractmethod
    def state(self) -> MicroscopeState:
        """The instrument's current settings (for provenance)."""

    @abc.abstractmethod
    def survey(
        self,
        size: tuple[int, int] = (256, 256),
        *,
        fov_A: float | None = None,
        dwell_us: float = 2.0,
        detector: str = "HAADF",
    ) -> SurveyImage:
        """Scan an ADF image of ``size`` pixels over a square field of view ``fov_A`` (None: the
        current one); sets the field of view that positions refer to."""

    @abc.abstractmethod
    def move_probe(self, position_A: Any) -> None:
        """Park the probe at (y, x) Å in the current field of view."""

    @abc.abstractmethod
    def frames_at(self, positions_A: Any, *, exposure_ms: float = 1.0) -> np.ndarray:
        """Camera frames (n, D, D) with the probe at each (y, x) Å; the probe ends at the last."""

    @abc.abstractmethod
    def scan_4d(self, size: tuple[int, int], *, exposure_ms: float = 1.0) -> Source:
        """A 4D scan of ``size`` positions over the current field of view, as a data-plane
        :class:`~stemedge.sources.base.Source` (stream it with a Pipeline)."""

    @abc.abstractmethod
    def scan_spectra(self, size: tuple[int, int], *, exposure_ms: float = 1.0) -> Source:
        """An EELS spectrum-image scan streamed into the data plane: a Source whose frames are
        spectra, shape (1, channels), with the energy axis in ``source.energy_eV``. (A
        virtual detector over an energy window then maps that window.)"""

    @abc.abstractmethod
    def spectrum_image(
        self, size: tuple[int, int], *, exposure_ms: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """An EELS spectrum image over the current field of view: ``(cube (ny, nx, channels)
        float32, energy_eV (channels,))``."""

    @abc.abstractmethod
    def spectra_at(
        self, positions_A: Any, *, exposure_ms: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """EELS spectra with the probe parked at each (y, x) Å position: ``(spectra (n,
        channels) float32, energy_eV (channels,))``."""

    def show(self, title: str, data: Any, *, pixel_A: tuple[float, float] | None = None) -> None:
        """Show a result (a 1D or 2D array, e.g. a phase map) to the operator at the
        instrument: Swift puts it in its document as a data item."""
        raise MicroscopeError(f"{type(self).__name__} has no display to show results on")

    @abc.abstractmethod
    def abort(self) -> None:
        """Stop any acquisition under way; it raises MicroscopeError in its caller."""
