"""What an SSB reconstruction needs before it sees data: bright-field pixels, frequencies, weights.

An :class:`SSBPlan` is made once per (calibration, scan shape, detector shape, options) and is
shared by the offline route (:func:`stemedge.ssb`) and the live one
(:class:`stemedge.analysis.SSBAnalysis`), so a finished live scan equals the offline result.

- **Bright-field pixels**: detector pixels within r_α of the origin (PHYSICS.md C7: ``d ≤ r``),
  optionally summed in b×b bins aligned on the origin. Each gets its scan-frame spatial frequency
  ``k = T·(q − c)·Δk`` (C4: T maps the detector frame to the scan frame).
- **Frequencies**: the half plane of the scan FFT (``rfft2`` layout: all Q_y, Q_x ≥ 0) with
  ``|Q| < 2k_α``; the other half follows from ``F(−Q) = −F*(Q)``.
- **Weights** (native, :class:`stemedge._native.SsbTrotters`): PHYSICS.md §4.2 with aberration
  compensation Γ* (§4.1), flat or matched normalisation, a minimum trotter size ``cutoff``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping
from typing import Any

import ducc0
import numpy as np

from stemedge import _native
from stemedge.aberrations import ABERRATION_KEYS, check_aberrations
from stemedge.calibration import Calibration

__all__ = ["NORMALIZATIONS", "SSBPlan"]

NORMALIZATIONS = ("flat", "matched")


def available_cpus() -> int:
    """CPUs this process may run on (what ``nthreads=None`` uses)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _bright_field(
    det_shape: tuple[int, int], calibration: Calibration, binning: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ptr, pix, offsets): CSR lists of flat detector pixels per (binned) bright-field pixel and
    each one's offset from the origin in detector px (detector frame)."""
    dy, dx = det_shape
    cy, cx = calibration.origin_for(det_shape)
    r = calibration.bf_radius_px
    b = binning
    # Bin u covers rows [y0 + u·b, y0 + (u+1)·b) with its centre y0 + u·b + (b−1)/2; y0 puts a
    # centre on the origin (to the nearest pixel), so the binned disk stays centred.
    y0 = round(cy - (b - 1) / 2)
    x0 = round(cx - (b - 1) / 2)
    uy = np.arange(-((y0 + b - 1) // b), (dy - y0 + b - 1) // b)
    ux = np.arange(-((x0 + b - 1) // b), (dx - x0 + b - 1) // b)
    oy = y0 + uy * b + (b - 1) / 2 - cy
    ox = x0 + ux * b + (b - 1) / 2 - cx
    gy, gx = np.meshgrid(oy, ox, indexing="ij")
    inside = gy**2 + gx**2 <= r * r
    if not inside.any():
        raise ValueError(
            f"no detector pixel lies within the bright-field radius {r:.3g} px of the origin "
            f"({cy:.3g}, {cx:.3g}); check convergence_mrad, det_mrad_per_px and det_origin_px"
        )
    iu, iv = np.nonzero(inside)
    # Member pixels of each kept bin, clipped to the detector.
    ry = y0 + uy[iu][:, None] * b + np.arange(b)[None, :]  # (n, b)
    rx = x0 + ux[iv][:, None] * b + np.arange(b)[None, :]
    py = np.broadcast_to(ry[:, :, None], (len(iu), b, b))
    px = np.broadcast_to(rx[:, None, :], (len(iu), b, b))
    valid = (py >= 0) & (py < dy) & (px >= 0) & (px < dx)
    counts = valid.reshape(len(iu), -1).sum(axis=1)
    ptr = np.zeros(len(iu) + 1, np.uint32)
    np.cumsum(counts, out=ptr[1:])
    pix = (py * dx + px)[valid].astype(np.uint32)  # row-major over (bin, by, bx): grouped by bin
    offsets = np.stack([gy[inside], gx[inside]], axis=1)
    return ptr, pix, offsets


@dataclasses.dataclass(frozen=True)
class _Columns:
    col_qy: np.ndarray
    col_qx: np.ndarray
    cells: np.ndarray
    dc_column: int
    mirror: np.ndarray
    transfer: np.ndarray
    band_coverage: float


def _columns(col_qy, col_qx, col_transfer, scan_shape, calibration) -> _Columns:
    """Cells, Q = 0, mirror flags, the transfer plane and band coverage of kept columns."""
    ny, nx = scan_shape
    nxh = nx // 2 + 1
    cells = col_qy.astype(np.int64) * nxh + col_qx
    dc = np.nonzero((col_qy == 0) & (col_qx == 0))[0]
    if dc.size != 1:  # pragma: no cover - Q = 0 is always a candidate and always kept
        raise RuntimeError("SSB plan lost the Q = 0 term")
    mirror = mirror_columns(col_qx, nx)
    transfer = transfer_plane(col_qy, col_qx, mirror, col_transfer, scan_shape)
    # Fraction of the band 0 < |Q| < 2k_α that the weights cover (pixelation and `cutoff`
    # drop the smallest and largest |Q|).
    sy, sx = calibration.scan_step_A
    band = np.fft.fftfreq(ny, sy)[:, None] ** 2 + np.fft.fftfreq(nx, sx)[None, :] ** 2
    in_band = (band > 0) & (band < 4.0 * calibration.k_alpha**2)
    coverage = float((transfer[in_band] > 0).mean()) if in_band.any() else 0.0
    return _Columns(col_qy, col_qx, cells, int(dc[0]), mirror, transfer, coverage)


def mirror_columns(col_qx, nx: int):
    """Columns whose mirror −Q lies outside the half plane (0 < qx < Nx/2): they are filled by
    F(−Q) = −F*(Q); qx = 0 and the Nyquist column hold both signs already."""
    return (col_qx > 0) & (2 * col_qx.astype(np.int64) != nx)


def transfer_plane(col_qy, col_qx, mirror, values, scan_shape, xp=np):
    """The (ny, nx) float32 plane of per-column ``values`` on the half plane, each mirrored
    column's value also at −Q. ``xp`` is numpy or cupy."""
    ny, nx = scan_shape
    plane = xp.zeros(scan_shape, xp.float32)
    plane[col_qy, col_qx] = values
    plane[(-col_qy[mirror]) % ny, (-col_qx[mirror]) % nx] = values[mirror]
    return plane


def object_wave(F, col_qy, col_qx, mirror, dc_column: int, n_frames: int, scan_shape, xp=np):
    """ψ = ifft2 of the plane filled from half-plane sums ``F`` (and F(−Q) = −F*(Q)), divided
    by the mean bright-field intensity ``F(0)/n_frames``; complex64. NaN without intensity.
    ``xp`` is numpy or cupy (then nothing is synchronised: the level is checked on the device)."""
    ny, nx = scan_shape
    full = xp.zeros(scan_shape, xp.complex128)
    full[col_qy, col_qx] = F
    full[(-col_qy[mirror]) % ny, (-col_qx[mirror]) % nx] = -xp.conj(F[mirror])
    if xp is np:
        level = F[dc_column].real / n_frames if n_frames > 0 else 0.0
        if not (math.isfinite(level) and level != 0.0):
            return np.full(scan_shape, np.nan + 0j, np.complex64)
        psi = np.fft.ifft2(full)
        psi /= level
        return psi.astype(np.complex64)
    level = F[dc_column].real / max(n_frames, 1)
    ok = xp.isfinite(level) & (level != 0) & (n_frames > 0)
    psi = xp.fft.ifft2(full)
    psi = xp.where(ok, psi / xp.where(ok, level, 1.0), xp.complex128(complex(np.nan, 0.0)))
    return psi.astype(xp.complex64)


class SSBPlan:
    """Bright-field pixels, frequencies and weights for one geometry (see the module docstring).

    Parameters
    ----------
    calibration : Calibration
        Scan step, detector sampling, voltage, convergence angle, origin and rotation/flip.
    scan_shape, det_shape : (int, int)
        The scan grid (Ny, Nx) and the detector (Dy, Dx).
    aberrations : dict or None
        Coefficients to compensate (keys of :data:`stemedge.aberrations.ABERRATION_KEYS`; Å, rad).
    normalization : {"flat", "matched"}
        ``"flat"``: each half trotter has unit weight, the weak-phase transfer is 1 and the phase
        is in rad. ``"matched"``: weights Γ*/|D0|, transfer ``(|M+| + |M−|)/|D0|`` (≤ 1): less
        noise at low dose, the phase is not in rad (PHYSICS.md §4.5).
    cutoff : int
        Minimum pixels in each half trotter; frequencies with smaller ones are left out.
    binning : int
        Sum the detector in b×b bins before SSB (fewer pixels, r_α/b per bin).
    nthreads : int or None
        Native threads (None: all cores).
    """

    def __init__(
        self,
        calibration: Calibration,
        scan_shape: tuple[int, int],
        det_shape: tuple[int, int],
        *,
        aberrations: Mapping[str, float] | None = None,
        normalization: str = "flat",
        cutoff: int = 1,
        binning: int = 1,
        nthreads: int | None = None,
    ) -> None:
        if not isinstance(calibration, Calibration):
            raise TypeError(
                f"calibration must be a stemedge.Calibration, got {type(calibration).__name__}"
            )
        self.calibration = calibration
        self.scan_shape = tuple(_positive_int(n, "scan_shape") for n in scan_shape)
        self.det_shape = tuple(_positive_int(n, "det_shape") for n in det_shape)
        if len(self.scan_shape) != 2 or len(self.det_shape) != 2:
            raise ValueError("scan_shape and det_shape must be (y, x) pairs")
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
            )
        self.normalization = normalization
        self.cutoff = _positive_int(cutoff, "cutoff")
        self.binning = _positive_int(binning, "binning")
        self.aberrations = check_aberrations(aberrations)
        self.nthreads = 0 if nthreads is None else _positive_int(nthreads, "nthreads")

        ptr, pix, offsets = _bright_field(self.det_shape, calibration, self.binning)
        self.pixels = _native.SsbPixels(self.det_shape, ptr, pix)
        self.pixel_lists = (ptr, pix)  # CSR (uint32): what the GPU route uploads
        dk = calibration.k_per_px
        k = offsets @ calibration.transform.T * dk  # scan frame: k = T·(q − c)·Δk
        self.k = np.ascontiguousarray(k)  # (P, 2) [Å⁻¹]

        ny, nx = self.scan_shape
        sy, sx = calibration.scan_step_A
        fy = np.fft.fftfreq(ny, sy)
        fx = np.fft.rfftfreq(nx, sx)
        k_alpha = calibration.k_alpha
        iy, ix = np.nonzero(fy[:, None] ** 2 + fx[None, :] ** 2 < 4.0 * k_alpha**2)
        # Candidate frequencies (half plane, |Q| < 2k_α): indices and values [Å⁻¹]; the
        # weights keep a subset of them (the GPU route evaluates all of them on the device).
        self.cand_iy, self.cand_ix = iy.astype(np.int32), ix.astype(np.int32)
        self.cand_qy = fy[iy].astype(np.float64)
        self.cand_qx = fx[ix].astype(np.float64)
        self.aberration_values = [float(self.aberrations.get(key, 0.0)) for key in ABERRATION_KEYS]

    @functools.cached_property
    def trotters(self) -> _native.SsbTrotters:
        """The host weights (built on first use: the GPU route generates them on the device)."""
        cal = self.calibration
        return _native.SsbTrotters(
            self.k[:, 0].copy(),
            self.k[:, 1].copy(),
            self.cand_qy,
            self.cand_qx,
            cal.k_alpha,
            cal.wavelength_A,
            self.aberration_values,
            self.cutoff,
            self.normalization,
            self.nthreads,
        )

    @functools.cached_property
    def _columns(self) -> _Columns:
        kept = self.trotters.kept
        col_qy = self.cand_iy[kept]
        col_qx = self.cand_ix[kept]
        return _columns(col_qy, col_qx, self.trotters.transfer, self.scan_shape, self.calibration)

    # The kept half-plane frequencies (indices into the rfft2 plane), their flat cell numbers,
    # the column of Q = 0, the weak-phase transfer plane and the band coverage.
    col_qy = property(lambda self: self._columns.col_qy)
    col_qx = property(lambda self: self._columns.col_qx)
    cells = property(lambda self: self._columns.cells)
    dc_column = property(lambda self: self._columns.dc_column)
    _mirror = property(lambda self: self._columns.mirror)
    transfer = property(lambda self: self._columns.transfer)
    band_coverage = property(lambda self: self._columns.band_coverage)

    @property
    def n_pixels(self) -> int:
        """Bright-field pixels (after binning) that SSB reads."""
        return len(self.pixels)

    @property
    def n_frequencies(self) -> int:
        """Kept half-plane frequencies (columns of the weight matrix), Q = 0 included."""
        return self.trotters.n_columns

    def new_accumulator(self) -> np.ndarray:
        """An empty live accumulator: F for each kept half-plane frequency (complex128)."""
        return np.zeros(self.n_frequencies, np.complex128)

    def _threads(self, nthreads: int | None) -> int:
        return self.nthreads if nthreads is None else int(nthreads)

    def accumulate(
        self, F: np.ndarray, frames: np.ndarray, positions: np.ndarray, nthreads: int | None = None
    ) -> None:
        """Live route: fold a stack of frames at flat scan ``positions`` (int64) into ``F``."""
        _native.ssb_accumulate(
            self.trotters,
            self.pixels,
            frames,
            positions,
            self.scan_shape,
            self.col_qy,
            self.col_qx,
            F,
            self._threads(nthreads),
        )

    def gather(
        self, frames: np.ndarray, *, center: bool = True, nthreads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Bright-field cube of ``frames`` (a stack or a 4D scan): ``(cube (n, P) float32,
        mean (P,) float64)``, the cube centred on its mean unless ``center=False``."""
        n = int(np.prod(frames.shape[:-2], dtype=np.int64))
        cube = np.empty((n, self.n_pixels), np.float32)
        mean = np.empty(self.n_pixels, np.float64)
        _native.ssb_gather(frames, self.pixels, cube, mean, center, self._threads(nthreads))
        return cube, mean

    def weighted_sums(
        self, cube: np.ndarray, mean: np.ndarray, nthreads: int | None = None
    ) -> np.ndarray:
        """Offline route from a centred bright-field cube of the whole scan (N_R, P): the FFT over
        the scan axes (ducc0), the DC term restored from ``mean``, then the native weighted sums
        over the kept half-plane frequencies. Returns ``F`` as :meth:`accumulate` builds it."""
        ny, nx = self.scan_shape
        p = self.n_pixels
        if cube.shape != (ny * nx, p) or cube.dtype != np.float32:
            raise ValueError(
                f"cube must be float32 of shape {(ny * nx, p)}, got {cube.dtype}{cube.shape}"
            )
        nt = self._threads(nthreads)
        g = ducc0.fft.r2c(cube.reshape(ny, nx, p), axes=(0, 1), nthreads=nt or available_cpus())
        g[0, 0, :] = (ny * nx) * mean  # the DC term, taken out before the FFT, restored exactly
        return _native.ssb_apply(self.trotters, g.reshape(-1, p), self.cells, nt)

    def wave(self, F: np.ndarray, n_frames: int) -> np.ndarray:
        """The object wave from half-plane sums ``F`` of ``n_frames`` frames: ``ψ = ifft2(F)``
        divided by the mean bright-field intensity ``F(0)/n_frames``, so a weak phase object
        gives ``1 + iφ`` (complex64, scan shape). NaN when there is no intensity."""
        c = self._columns
        return object_wave(F, c.col_qy, c.col_qx, c.mirror, c.dc_column, n_frames, self.scan_shape)

    def parameters(self) -> dict[str, Any]:
        """JSON-able description, for provenance."""
        return {
            "normalization": self.normalization,
            "cutoff": self.cutoff,
            "binning": self.binning,
            "aberrations": dict(self.aberrations),
            "bright_field_pixels": self.n_pixels,
            "frequencies": self.n_frequencies,
            "weights_nnz": int(self.trotters.nnz),
            "band_coverage": self.band_coverage,
        }
