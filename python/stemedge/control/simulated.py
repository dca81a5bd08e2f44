"""SimulatedMicroscope: the Microscope interface on stemedge's simulator (tests, demo, steering).

The specimen is a periodic thin object, by default a lattice with dopants and vacancies
(:func:`stemedge.sim.lattice`).

- **Camera frames** are the exact thin-object patterns of :func:`stemedge.sim.frames_at`, with
  Poisson counts at ``dose_per_ms`` electrons per ms of exposure.
- **ADF survey images** use an incoherent model. Each atom contributes a Gaussian the width of
  the probe, weighted by detector (HAADF: dopants 2.5× the host, a Z^1.7-like contrast; MAADF:
  1.6×), counted with Poisson noise at ``adf_counts_per_us`` per dwell µs at the brightest atom.
- **Positions** are rounded to the specimen's pixel (``pixel_A``). Scans step by whole pixels, and
  the calibration reports the step actually used.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from stemedge.calibration import Calibration, wavelength_A
from stemedge.control.microscope import (
    DETECTORS,
    Microscope,
    MicroscopeError,
    MicroscopeState,
    SurveyImage,
    check_display,
    check_positions,
    check_positive,
    check_shape,
)
from stemedge.geometry import ScanGeometry
from stemedge.sim import Sample, frames_at, lattice
from stemedge.sources.base import Chunk, Source, SourceError

__all__ = ["SimulatedMicroscope"]

_MAX_PIXELS = 4096  # per survey axis / scan axis: a simulated instrument, not a memory test
_MAX_POSITIONS = 65536  # per frames_at call
_ADF_WEIGHT = {"HAADF": {"host": 1.0, "dopant": 2.5}, "MAADF": {"host": 1.0, "dopant": 1.6}}


#: The simulated spectrometer's energy axis: 1 eV channels from −20 eV (like Nion's usim).
EELS_ENERGY_EV = (-20.0 + np.arange(768)).astype(np.float32)
_PLASMON_SIGMA_A = 5.0


class SimulatedMicroscope(Microscope):
    """A STEM on :mod:`stemedge.sim` (see the module docstring).

    Parameters
    ----------
    sample : stemedge.sim.Sample, optional
        The specimen; default a 256² lattice (3.9 Å cell, 10 % dopants, 5 % vacancies) at
        ``pixel_A``.
    pixel_A : float
        Specimen pixel [Å] (used when ``sample`` is None).
    voltage_kV, convergence_mrad : float
        Probe optics.
    camera_shape : (int, int)
        Square camera (D, D); it samples ``1000·λ/(D·pixel_A)`` mrad/px.
    dose_per_ms : float or None
        Electrons per camera frame per ms of exposure; None: noise-free float32 frames.
    adf_counts_per_us : float
        ADF counts per µs of dwell at the brightest atom.
    frame_rate : float, optional
        Frames per second a 4D scan streams at (None: as fast as it is taken).
    seed : int
        Seed of the specimen and of the noise.
    """

    def __init__(
        self,
        sample: Sample | None = None,
        *,
        pixel_A: float = 0.26,
        voltage_kV: float = 80.0,
        convergence_mrad: float = 25.0,
        camera_shape: tuple[int, int] = (64, 64),
        dose_per_ms: float | None = 2e4,
        adf_counts_per_us: float = 50.0,
        frame_rate: float | None = None,
        seed: int = 0,
    ) -> None:
        if sample is None:
            sample = lattice(
                (256, 256),
                check_positive(pixel_A, "pixel_A", 10.0),
                a_A=3.9,
                dopant_fraction=0.1,
                vacancy_fraction=0.05,
                seed=seed,
            )
        if not isinstance(sample, Sample):
            raise TypeError(f"sample must be a stemedge.sim.Sample, got {type(sample).__name__}")
        self.sample = sample
        self.voltage_kV = check_positive(voltage_kV, "voltage_kV", 1000.0)
        self.convergence_mrad = check_positive(convergence_mrad, "convergence_mrad", 200.0)
        d = check_shape(camera_shape, "camera_shape", 1024)
        if d[0] != d[1] or d[0] < 8:
            raise ValueError(f"camera_shape must be square and at least 8, got {camera_shape!r}")
        self.camera_shape = d
        self.dose_per_ms = (
            None if dose_per_ms is None else check_positive(dose_per_ms, "dose_per_ms")
        )
        self.adf_counts_per_us = check_positive(adf_counts_per_us, "adf_counts_per_us")
        if frame_rate is not None:
            check_positive(frame_rate, "frame_rate")
        self.frame_rate = frame_rate
        self._rng = np.random.default_rng(seed)
        ny, nx = sample.phase.shape
        self.extent_A = (ny * sample.pixel_A, nx * sample.pixel_A)
        self._fov_A = self.extent_A
        self._probe_A = (0.0, 0.0)
        self._abort = threading.Event()
        self._lock = threading.Lock()  # one acquisition at a time
        #: What :meth:`show` was given, by title (the simulated operator's screen; last 16).
        self.shown: dict[str, np.ndarray] = {}

    # --- helpers ---------------------------------------------------------------------------------

    @property
    def camera_mrad_per_px(self) -> float:
        return 1000.0 * wavelength_A(self.voltage_kV) / (self.camera_shape[0] * self.sample.pixel_A)

    def _start(self) -> None:
        self._abort.clear()

    def _check_abort(self) -> None:
        if self._abort.is_set():
            raise MicroscopeError("acquisition aborted")

    def _to_pixels(self, positions_A: np.ndarray) -> np.ndarray:
        return np.rint(positions_A / self.sample.pixel_A).astype(np.int64)

    def _frame_dtype(self, exposure_ms: float) -> type:
        """float32 noise-free, else counts: uint16 below 2e4 electrons per frame, uint32 above."""
        if self.dose_per_ms is None:
            return np.float32
        return np.uint16 if self.dose_per_ms * exposure_ms < 2e4 else np.uint32

    def _frames(self, pixels: np.ndarray, exposure_ms: float) -> np.ndarray:
        dose = None if self.dose_per_ms is None else self.dose_per_ms * exposure_ms
        dtype = self._frame_dtype(exposure_ms)
        return frames_at(
            self.sample.phase,
            pixels,
            pixel_A=self.sample.pixel_A,
            det_shape=self.camera_shape,
            voltage_kV=self.voltage_kV,
            convergence_mrad=self.convergence_mrad,
            dose=dose,
            dtype=dtype,
            rng=self._rng,
        )

    def calibration(self, step_A: float) -> Calibration:
        """The calibration of camera frames taken on a scan of ``step_A``."""
        c = self.camera_shape[0] // 2
        return Calibration(
            scan_step_A=(step_A, step_A),
            det_mrad_per_px=self.camera_mrad_per_px,
            voltage_kV=self.voltage_kV,
            convergence_mrad=self.convergence_mrad,
            det_origin_px=(float(c), float(c)),
        )

    # --- the interface ---------------------------------------------------------------------------

    def state(self) -> MicroscopeState:
        return MicroscopeState(
            instrument="stemedge SimulatedMicroscope",
            voltage_kV=self.voltage_kV,
            convergence_mrad=self.convergence_mrad,
            defocus_A=0.0,
            probe_A=self._probe_A,
            fov_A=self._fov_A,
            camera_shape=self.camera_shape,
            camera_mrad_per_px=self.camera_mrad_per_px,
            stage_nm=(0.0, 0.0, 0.0),
            extra={
                "specimen_pixel_A": self.sample.pixel_A,
                "specimen_extent_A": list(self.extent_A),
                "dose_per_ms": self.dose_per_ms,
                "atoms": len(self.sample.positions_A),
            },
        )

    def survey(
        self,
        size: tuple[int, int] = (256, 256),
        *,
        fov_A: float | None = None,
        dwell_us: float = 2.0,
        detector: str = "HAADF",
    ) -> SurveyImage:
        ny, nx = check_shape(size, "size", _MAX_PIXELS)
        if detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
        dwell = check_positive(dwell_us, "dwell_us", 1e6)
        if fov_A is None:
            fov = min(self._fov_A)
        else:
            fov = check_positive(fov_A, "fov_A", min(self.extent_A))
        with self._lock:
            self._start()
            # Incoherent ADF: Gaussian atoms the width of the probe (σ ≈ 0.43 λ/α), evaluated
            # at the survey pixels (a periodic specimen: any field of view up to its size).
            lam = wavelength_A(self.voltage_kV)
            sigma = 0.43 * lam / (self.convergence_mrad * 1e-3)
            weights = np.where(
                self.sample.kinds == "dopant",
                _ADF_WEIGHT[detector]["dopant"],
                _ADF_WEIGHT[detector]["host"],
            )
            pixel = (fov / ny, fov / nx)
            image = _render_adf(
                (ny, nx), pixel, self.sample.positions_A, weights, sigma, self.extent_A
            )
            self._check_abort()
            peak = max(float(image.max()), 1e-12)
            counts = self._rng.poisson(
                np.clip(image, 0, None) / peak * self.adf_counts_per_us * dwell
            )
            self._fov_A = (fov, fov)
            return SurveyImage(counts.astype(np.float32), pixel, detector, dwell)

    def move_probe(self, position_A: Any) -> None:
        pos = check_positions(position_A, self._fov_A, 1)
        self._probe_A = (float(pos[0, 0]), float(pos[0, 1]))

    def frames_at(self, positions_A: Any, *, exposure_ms: float = 1.0) -> np.ndarray:
        pos = check_positions(positions_A, self._fov_A, _MAX_POSITIONS)
        exposure = check_positive(exposure_ms, "exposure_ms", 1e4)
        with self._lock:
            self._start()
            out = self._frames(self._to_pixels(pos), exposure)
            self._check_abort()
            self._probe_A = (float(pos[-1, 0]), float(pos[-1, 1]))
            return out

    def scan_4d(self, size: tuple[int, int], *, exposure_ms: float = 1.0) -> Source:
        ny, nx = check_shape(size, "size", _MAX_PIXELS)
        exposure = check_positive(exposure_ms, "exposure_ms", 1e4)
        # Whole specimen pixels per step, as close to fov / size as they come.
        step_px = max(1, round(min(self._fov_A) / max(ny, nx) / self.sample.pixel_A))
        return _ScanSource(self, (ny, nx), step_px, exposure)

    def spectrum_image(
        self, size: tuple[int, int], *, exposure_ms: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """An EELS spectrum image over the field of view (the model: :meth:`spectra_at`)."""
        ny, nx = check_shape(size, "size", 1024)
        exposure = check_positive(exposure_ms, "exposure_ms", 1e4)
        fov = self._fov_A
        yy, xx = np.meshgrid(
            np.arange(ny) * fov[0] / ny, np.arange(nx) * fov[1] / nx, indexing="ij"
        )
        with self._lock:
            self._start()
            cube = self._spectra(np.stack([yy.ravel(), xx.ravel()], axis=1), exposure)
            self._check_abort()
        return cube.reshape(ny, nx, -1), EELS_ENERGY_EV.copy()

    def scan_spectra(self, size: tuple[int, int], *, exposure_ms: float = 1.0) -> Source:
        ny, nx = check_shape(size, "size", _MAX_PIXELS)
        exposure = check_positive(exposure_ms, "exposure_ms", 1e4)
        return _SpectraSource(self, (ny, nx), exposure)

    def spectra_at(
        self, positions_A: Any, *, exposure_ms: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """EELS spectra (n, channels) float32 with the probe parked at each position, and the
        energy axis (eV): a zero-loss peak; a bulk plasmon whose energy follows the local dopant
        concentration (:meth:`plasmon_eV`, delocalised over ~5 Å); an E⁻³ background; the host's
        edge at 284 eV and a dopant edge at 532 eV whose jumps follow the atoms under the probe.
        Poisson counts at ``dose_per_ms · exposure_ms`` electrons (None: noise-free, sum 1)."""
        pos = check_positions(positions_A, self._fov_A, _MAX_POSITIONS)
        exposure = check_positive(exposure_ms, "exposure_ms", 1e4)
        with self._lock:
            self._start()
            out = self._spectra(pos, exposure)
            self._check_abort()
            self._probe_A = (float(pos[-1, 0]), float(pos[-1, 1]))
        return out, EELS_ENERGY_EV.copy()

    def plasmon_eV(self, positions_A: Any) -> np.ndarray:
        """The hidden property (ground truth for steering benchmarks): the plasmon energy at
        each position, 16 eV + 8 eV × the local dopant fraction (Gaussian weight, σ 5 Å)."""
        pos = np.asarray(positions_A, np.float64).reshape(-1, 2)
        return 16.0 + 8.0 * self._local(pos, _PLASMON_SIGMA_A, fraction=True)

    def _local(self, pos: np.ndarray, sigma: float, *, fraction: bool) -> np.ndarray | tuple:
        """Gaussian-weighted sums of dopant and host atoms around each position (periodic);
        the dopant fraction if ``fraction``, else (dopant, host) sums."""
        extent = np.asarray(self.extent_A)
        atoms = self.sample.positions_A
        is_dopant = self.sample.kinds == "dopant"
        dop = np.zeros(len(pos))
        host = np.zeros(len(pos))
        step = max(1, 2_000_000 // max(len(atoms), 1))
        for i in range(0, len(pos), step):
            d = pos[i : i + step, None, :] - atoms[None, :, :]
            d -= np.round(d / extent) * extent  # nearest periodic image
            w = np.exp(-(d**2).sum(-1) / (2 * sigma**2))
            dop[i : i + step] = w[:, is_dopant].sum(1)
            host[i : i + step] = w[:, ~is_dopant].sum(1)
        if fraction:
            return dop / np.maximum(dop + host, 1e-12)
        return dop, host

    def _spectra(self, pos: np.ndarray, exposure_ms: float) -> np.ndarray:
        e = EELS_ENERGY_EV.astype(np.float64)
        sigma_probe = 0.43 * wavelength_A(self.voltage_kV) / (self.convergence_mrad * 1e-3)
        dop, host = self._local(pos, sigma_probe, fraction=False)
        ep = self.plasmon_eV(pos)
        zlp = np.exp(-(e**2) / (2 * 0.6**2))
        plasmon = 0.4 * np.exp(-((e[None, :] - ep[:, None]) ** 2) / (2 * 2.0**2))
        tail = np.where(e > 30.0, 2e-3 * (np.maximum(e, 30.0) / 30.0) ** -3.0, 0.0)

        def edge(e0: float) -> np.ndarray:
            return np.where(e >= e0, 2e-5 * (np.maximum(e, e0) / e0) ** -2.5, 0.0)

        spectra = (
            zlp[None, :]
            + plasmon
            + tail[None, :]
            + host[:, None] * edge(284.0)[None, :]
            + dop[:, None] * edge(532.0)[None, :]
        )
        spectra /= spectra.sum(axis=1, keepdims=True)
        if self.dose_per_ms is not None:
            spectra = self._rng.poisson(spectra * self.dose_per_ms * exposure_ms)
        return spectra.astype(np.float32)

    def show(self, title: str, data: Any, *, pixel_A: tuple[float, float] | None = None) -> None:
        title, a = check_display(title, data)
        self.shown.pop(title, None)
        self.shown[title] = a.copy()
        while len(self.shown) > 16:
            self.shown.pop(next(iter(self.shown)))

    def abort(self) -> None:
        self._abort.set()


def _render_adf(shape, pixel, positions, weights, sigma, extent) -> np.ndarray:
    """Σ w·exp(−|r − r_atom|²/2σ²) at the pixels (i·py, j·px) of a field of view from the origin,
    with the specimen's periodic images (a field of view up to its size)."""
    ny, nx = shape
    image = np.zeros(shape, np.float64)
    reach = 4.0 * sigma
    fov = (ny * pixel[0], nx * pixel[1])
    for ky in (-1, 0, 1):
        for kx in (-1, 0, 1):
            pos = positions % np.asarray(extent) + np.array([ky * extent[0], kx * extent[1]])
            inside = (pos[:, 0] > -reach) & (pos[:, 0] < fov[0] + reach)
            inside &= (pos[:, 1] > -reach) & (pos[:, 1] < fov[1] + reach)
            for (py, px), w in zip(pos[inside], weights[inside], strict=True):
                y0, y1 = (
                    max(0, int((py - reach) / pixel[0])),
                    min(ny, int((py + reach) / pixel[0]) + 2),
                )
                x0, x1 = (
                    max(0, int((px - reach) / pixel[1])),
                    min(nx, int((px + reach) / pixel[1]) + 2),
                )
                if y0 >= y1 or x0 >= x1:
                    continue
                gy = np.exp(-((np.arange(y0, y1) * pixel[0] - py) ** 2) / (2 * sigma**2))
                gx = np.exp(-((np.arange(x0, x1) * pixel[1] - px) ** 2) / (2 * sigma**2))
                image[y0:y1, x0:x1] += w * gy[:, None] * gx[None, :]
    return image


class _ScanSource(Source):
    """A 4D scan taken row by row while it streams (so abort stops it mid-scan)."""

    def __init__(
        self, scope: SimulatedMicroscope, size: tuple[int, int], step_px: int, exposure_ms: float
    ):
        self._scope = scope
        self._size = size
        self._step_px = step_px
        self._exposure = exposure_ms
        step_A = step_px * scope.sample.pixel_A
        dtype = np.dtype(scope._frame_dtype(exposure_ms))
        self.geometry = ScanGeometry(size, scope.camera_shape, dtype, scope.calibration(step_A))

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "SimulatedMicroscope.scan_4d",
            "scan": list(self._size),
            "step_px": self._step_px,
            "exposure_ms": self._exposure,
            "frame_rate": self._scope.frame_rate,
        }

    def chunks(self, max_frames: int) -> Iterator[Chunk]:
        scope = self._scope
        ny, nx = self._size
        scope._start()
        t0 = time.perf_counter()
        done = 0
        for y in range(ny):
            for x0 in range(0, nx, max(1, max_frames)):
                if scope._abort.is_set():
                    raise SourceError(f"scan aborted after {done} of {ny * nx} frames")
                xs = np.arange(x0, min(nx, x0 + max_frames))
                pixels = np.stack([np.full_like(xs, y), xs], axis=1) * self._step_px
                frames = scope._frames(pixels, self._exposure)
                if scope.frame_rate:  # pace like a detector
                    wait = t0 + (done + len(xs)) / scope.frame_rate - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                yield Chunk(frames, (y * nx + xs).astype(np.int64))
                done += len(xs)
        last = ((ny - 1) * self._step_px, (nx - 1) * self._step_px)
        scope._probe_A = (last[0] * scope.sample.pixel_A, last[1] * scope.sample.pixel_A)


class _SpectraSource(Source):
    """A spectrum-image scan taken row by row while it streams: frames (1, channels)."""

    def __init__(self, scope: SimulatedMicroscope, size: tuple[int, int], exposure_ms: float):
        self._scope, self._size, self._exposure = scope, size, exposure_ms
        self._fov = scope._fov_A
        self.energy_eV = EELS_ENERGY_EV.copy()
        self.geometry = ScanGeometry(size, (1, len(EELS_ENERGY_EV)), np.dtype(np.float32), None)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "SimulatedMicroscope.scan_spectra",
            "scan": list(self._size),
            "fov_A": list(self._fov),
            "exposure_ms": self._exposure,
            "energy_eV": [float(self.energy_eV[0]), float(self.energy_eV[-1])],
        }

    def chunks(self, max_frames: int) -> Iterator[Chunk]:
        scope = self._scope
        ny, nx = self._size
        scope._start()
        for y in range(ny):
            for x0 in range(0, nx, max(1, max_frames)):
                if scope._abort.is_set():
                    raise SourceError(f"spectrum image aborted at row {y} of {ny}")
                xs = np.arange(x0, min(nx, x0 + max_frames))
                pos = np.stack(
                    [np.full(len(xs), y * self._fov[0] / ny), xs * self._fov[1] / nx], axis=1
                )
                spectra = scope._spectra(pos, self._exposure)
                frames = np.ascontiguousarray(spectra[:, None, :])
                yield Chunk(frames, (y * nx + xs).astype(np.int64))
