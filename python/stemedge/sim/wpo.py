"""Thin-object 4D-STEM simulator (PHYSICS.md §5.2), exact for any phase strength.

For each scan position R the exit wave is ``ψ_R(r) = P(r − R)·exp(iφ(r))`` on a D×D patch of the
periodic object grid, and the recorded frame is ``|FFT(ψ_R)|²`` with k = 0 at pixel (D//2, D//2).
Because the object is periodic and the FFT is unitary, every noise-free frame sums to 1 and the
first-moment relation ``⟨k⟩ = (1/2π)|P|²⋆∇φ`` holds to float32 round-off (PHYSICS.md §2.2).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from stemedge.aberrations import ABERRATION_KEYS, aberration_phase, check_aberrations
from stemedge.calibration import Calibration, rotation_matrix, wavelength_A
from stemedge.sim._checks import check_dtype

__all__ = ["ABERRATION_KEYS", "SimulatedScan", "aberration_phase", "frames_at", "simulate_4dstem"]


@dataclasses.dataclass
class SimulatedScan:
    """Result of :func:`simulate_4dstem`.

    Attributes
    ----------
    data : numpy.ndarray
        Frames ``(scan_y, scan_x, det_y, det_x)`` in the detector frame, of the requested dtype.
    phase : numpy.ndarray
        Ground-truth object phase [rad] at the scan positions, shape ``scan_shape``.
    object_phase : numpy.ndarray
        The full object-grid phase [rad] (pixel ``scan_step_A / oversample``).
    calibration : stemedge.calibration.Calibration
        The calibration that describes ``data`` (origin at (D//2, D//2)).
    probe : numpy.ndarray
        Complex real-space probe on the D×D patch grid, centred at (D//2, D//2), Σ|p|² = 1.
    dose : float or None
        Electrons per frame, or None for noise-free intensities (each frame sums to 1).
    """

    data: np.ndarray
    phase: np.ndarray
    object_phase: np.ndarray
    calibration: Calibration
    probe: np.ndarray
    dose: float | None


def _probe(d: int, dx: float, lam: float, alpha_rad: float, ab: dict[str, float]) -> np.ndarray:
    k = np.fft.fftfreq(d, dx)
    ky, kx = k[:, None], k[None, :]
    aperture = lam * np.hypot(ky, kx) <= alpha_rad
    if not aperture.any():  # pragma: no cover - k = 0 is always inside
        raise ValueError("convergence_mrad too small: the aperture holds no detector pixel")
    a = aperture * np.exp(-1j * aberration_phase(ky, kx, lam, ab))
    p = np.fft.fftshift(np.fft.ifft2(a))  # centre at (d//2, d//2)
    return p / np.sqrt(np.sum(np.abs(p) ** 2))


def _record(exit_wave: np.ndarray, plan, dose: float | None, rng, dt: np.dtype) -> np.ndarray:
    """Frames (..., d·d) of a batch of exit waves (..., d, d): |FFT|², the detector orientation,
    then Poisson counts at ``dose`` (None: intensities)."""
    d = exit_wave.shape[-1]
    f = np.fft.fft2(exit_wave, norm="ortho")
    inten = np.square(f.real)
    inten += np.square(f.imag)
    inten = inten.reshape(*exit_wave.shape[:-2], d * d)
    if plan is not None:
        if plan[0] == "exact":
            inten = np.take(inten, plan[1], axis=-1)
        else:
            _, idx, w = plan
            rot = np.take(inten, idx[0], axis=-1) * w[0]
            for m in range(1, 4):
                rot += np.take(inten, idx[m], axis=-1) * w[m]
            rot /= rot.sum(axis=-1, keepdims=True)
            inten = rot
    if dose is None:
        return inten
    counts = rng.poisson(inten.astype(np.float64) * dose)
    if np.issubdtype(dt, np.integer):
        imax = np.iinfo(dt).max
        if counts.size and counts.max() > imax:
            bigger = "uint16" if dt == np.uint8 else "uint32" if dt == np.uint16 else "float32"
            raise ValueError(
                f"Poisson counts reach {int(counts.max())}, which overflows dtype {dt.name} "
                f"(max {imax}); use dtype=numpy.{bigger} or a lower dose"
            )
    return counts


def _detector_map(d: int, rotation_deg: float, flip_y: bool):
    """Gather plan taking a scan-frame pattern to the detector frame.

    ``frame_det(q) = frame_scan(T·(q − c) + c)`` with T the calibration's detector→scan matrix
    and c = (d//2, d//2). Returns None (identity), ``("exact", flat_idx)`` or
    ``("bilinear", idx (4, d²), w (4, d²))``.
    """
    t = rotation_matrix(rotation_deg, flip_y)
    if np.allclose(t, np.eye(2), atol=1e-12):
        return None
    c = d // 2
    qy, qx = np.meshgrid(np.arange(d) - c, np.arange(d) - c, indexing="ij")
    sy = t[0, 0] * qy + t[0, 1] * qx + c
    sx = t[1, 0] * qy + t[1, 1] * qx + c
    if np.allclose(t, np.round(t), atol=1e-12):
        # 90° multiples: an exact permutation. The DFT pattern is periodic in k, so indices wrap
        # (only the Nyquist row/column, index 0, has no partner inside the frame otherwise).
        sy = np.mod(np.round(sy).astype(np.intp), d)
        sx = np.mod(np.round(sx).astype(np.intp), d)
        return ("exact", (sy * d + sx).ravel())
    # Other angles: bilinear resampling, zero outside the recorded window (approximate).
    y0, x0 = np.floor(sy), np.floor(sx)
    fy, fx = sy - y0, sx - x0
    idx, wts = [], []
    for dy, dx, w in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        yy, xx = (y0 + dy).astype(np.intp), (x0 + dx).astype(np.intp)
        inside = (yy >= 0) & (yy < d) & (xx >= 0) & (xx < d)
        idx.append(np.where(inside, yy * d + xx, 0).ravel())
        wts.append(np.where(inside, w, 0.0).ravel().astype(np.float32))
    return ("bilinear", np.stack(idx), np.stack(wts))


def simulate_4dstem(
    phase: Any,
    *,
    scan_step_A: float = 0.26,
    oversample: int = 1,
    det_shape: tuple[int, int] = (64, 64),
    voltage_kV: float = 80.0,
    convergence_mrad: float = 25.0,
    aberrations: Mapping[str, float] | None = None,
    dose: float | None = None,
    dtype: Any = np.float32,
    rotation_deg: float = 0.0,
    flip_y: bool = False,
    seed: int = 0,
    max_chunk_bytes: int = 64 * 2**20,
) -> SimulatedScan:
    """Simulate a 4D-STEM scan of a thin phase object on a periodic grid.

    Parameters
    ----------
    phase : array_like, shape (ny, nx)
        Object phase [rad] on the object grid (pixel ``scan_step_A / oversample``), periodic.
        The transmission is ``exp(iφ)``, not linearised.
    scan_step_A : float
        Scan step [Å].
    oversample : int
        Object pixels per scan step; ``phase.shape`` must be divisible by it. Scan positions
        sit on every ``oversample``-th object pixel, so ``scan_shape = phase.shape // oversample``.
    det_shape : (int, int)
        Square detector (D, D). The detector samples ``Δk = 1 / (D·dx)``, i.e.
        ``det_mrad_per_px = 1000·λ / (D·dx)``, and k = 0 falls on pixel (D//2, D//2).
    voltage_kV, convergence_mrad : float
        Acceleration voltage [kV] and probe semi-angle α [mrad].
    aberrations : dict or None
        Keys among ``C10, C12, phi12, C21, phi21, C23, phi23, C30`` (Å, rad); see
        :func:`aberration_phase`. The probe is ``A(k) = (λ|k| ≤ α)·exp(−iχ)``.
    dose : float or None
        None: noise-free float intensities, each frame summing to 1 (integer dtypes are then
        refused). A number: mean electrons per frame; frames are Poisson-sampled counts.
    dtype : numpy dtype
        ``float32`` (default), ``float64``, ``uint8``, ``uint16`` or ``uint32``.
    rotation_deg, flip_y
        Detector orientation. The physics is computed in the scan frame and recorded in the
        detector frame: ``frame_det(q) = frame_scan(T·(q − c) + c)`` with ``T = R(θ)·F`` (the
        calibration's detector→scan matrix) and c = (D//2, D//2), so a scan-frame CoM shift s
        appears on the detector as ``Tᵀ·s``. Multiples of 90° are exact permutations (e.g.
        θ = 90°, no flip is ``np.roll(np.rot90(frame, 1), 1, axis=0)``, i.e. rot90 about c; the
        periodic DFT pattern wraps, so for even D the Nyquist row/column keeps its −D/2
        coordinate, a CoM error of D·I_Nyquist, ~1e-6 px); other angles use bilinear
        resampling (approximate; intensity mapped from outside the frame is lost and each frame
        is renormalised to unit sum).
    seed : int
        Seed for ``numpy.random.default_rng`` (Poisson noise).
    max_chunk_bytes : int
        Upper bound on the complex64 exit-wave batch handed to the FFT at once.

    Returns
    -------
    SimulatedScan
        Frames, ground truth, calibration and probe.

    Raises
    ------
    ValueError
        For malformed shapes/values, an integer dtype without ``dose``, or counts that would
        overflow the integer dtype.
    TypeError
        For an unsupported dtype or a non-dict ``aberrations``.
    """
    obj = np.asarray(phase)
    if obj.ndim != 2 or not np.issubdtype(obj.dtype, np.number) or np.iscomplexobj(obj):
        raise ValueError(f"phase must be a real 2-D array (object grid), got shape {obj.shape}")
    obj = obj.astype(np.float64)
    if not np.all(np.isfinite(obj)):
        raise ValueError("phase must be finite everywhere")
    if isinstance(oversample, bool) or not float(oversample).is_integer() or oversample < 1:
        raise ValueError(f"oversample must be a positive integer, got {oversample!r}")
    os_ = int(oversample)
    if obj.shape[0] % os_ or obj.shape[1] % os_:
        raise ValueError(
            f"phase.shape {obj.shape} must be divisible by oversample={os_}; "
            "crop or pad the object grid to a multiple of it"
        )
    try:
        dy_, dx_ = (int(v) for v in det_shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"det_shape must be a pair of integers (D, D), got {det_shape!r}"
        ) from None
    if dy_ != dx_ or dy_ < 2:
        raise ValueError(f"det_shape must be square (D, D) with D >= 2, got {det_shape!r}")
    d = dy_
    step = float(scan_step_A)
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"scan_step_A must be a positive number of Å, got {scan_step_A!r}")
    alpha = float(convergence_mrad)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"convergence_mrad must be positive, got {convergence_mrad!r}")
    dt = check_dtype(dtype)
    integer = np.issubdtype(dt, np.integer)
    if dose is None:
        if integer:
            raise ValueError(
                f"dtype {dt.name} needs counts: pass dose=<electrons per frame>, "
                "or use dtype=numpy.float32 for noise-free intensities"
            )
    else:
        dose = float(dose)
        if not (math.isfinite(dose) and dose > 0):
            raise ValueError(f"dose must be a positive number of electrons per frame, got {dose!r}")
    if int(max_chunk_bytes) < 1:
        raise ValueError(f"max_chunk_bytes must be positive, got {max_chunk_bytes!r}")
    ab = check_aberrations(aberrations)

    dx = step / os_
    lam = wavelength_A(voltage_kV)
    probe = _probe(d, dx, lam, alpha * 1e-3, ab)
    c = d // 2
    # Multiplying by exp(2πi c·n/D) before the FFT moves k = 0 to index c: fftshift for free,
    # for odd D too.
    n = np.arange(d)
    carrier = np.exp(2j * np.pi * c * n / d)
    p_mod = (probe * carrier[:, None] * carrier[None, :]).astype(np.complex64)
    plan = _detector_map(d, rotation_deg, flip_y)

    scan_shape = (obj.shape[0] // os_, obj.shape[1] // os_)
    sy, sx = scan_shape
    t = np.exp(1j * obj).astype(np.complex64)
    padded = np.pad(t, ((c, d - c), (c, d - c)), mode="wrap")
    # windows[i, j] is the patch whose pixel (c, c) is object pixel (i·os, j·os).
    windows = sliding_window_view(padded, (d, d))[: sy * os_ : os_, : sx * os_ : os_]

    data = np.empty((sy, sx, d, d), dtype=dt)
    flat_out = data.reshape(sy, sx, d * d)
    rng = np.random.default_rng(seed)
    per_chunk = max(1, int(max_chunk_bytes) // (d * d * 8))
    rows = per_chunk // sx
    if rows >= 1:
        blocks = [(y0, min(y0 + rows, sy), 0, sx) for y0 in range(0, sy, rows)]
    else:
        blocks = [
            (y, y + 1, x0, min(x0 + per_chunk, sx))
            for y in range(sy)
            for x0 in range(0, sx, per_chunk)
        ]
    for y0, y1, x0, x1 in blocks:
        frames = _record(windows[y0:y1, x0:x1] * p_mod, plan, dose, rng, dt)
        flat_out[y0:y1, x0:x1] = frames.reshape(y1 - y0, x1 - x0, d * d)

    calibration = Calibration(
        scan_step_A=(step, step),
        det_mrad_per_px=1000.0 * lam / (d * dx),
        voltage_kV=float(voltage_kV),
        convergence_mrad=alpha,
        rotation_deg=float(rotation_deg),
        flip_y=bool(flip_y),
        det_origin_px=(float(c), float(c)),
    )
    return SimulatedScan(
        data=data,
        phase=obj[::os_, ::os_].copy(),
        object_phase=obj,
        calibration=calibration,
        probe=probe,
        dose=dose,
    )


def frames_at(
    phase: Any,
    positions_px: Any,
    *,
    pixel_A: float = 0.26,
    det_shape: tuple[int, int] = (64, 64),
    voltage_kV: float = 80.0,
    convergence_mrad: float = 25.0,
    aberrations: Mapping[str, float] | None = None,
    dose: float | None = None,
    dtype: Any = np.float32,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Frames of the thin object ``phase`` with the probe at arbitrary object pixels.

    The same physics as :func:`simulate_4dstem` (periodic object, exact for any phase strength,
    detector orientation unrotated), for a list of probe positions instead of a raster: what a
    microscope's "frame at this position" gives.

    Parameters
    ----------
    phase : array_like (ny, nx)
        Object phase [rad] on a grid of ``pixel_A``, periodic.
    positions_px : array_like (n, 2)
        Probe positions (y, x) in object pixels (integers; wrapped periodically).
    pixel_A, det_shape, voltage_kV, convergence_mrad, aberrations, dose, dtype
        As for :func:`simulate_4dstem` (``pixel_A`` is its ``scan_step_A`` with oversample 1).
    rng : numpy.random.Generator, optional
        Poisson noise source (default: a fresh generator seeded 0).

    Returns
    -------
    numpy.ndarray (n, D, D)
    """
    obj = np.asarray(phase, dtype=np.float64)
    if obj.ndim != 2 or not np.all(np.isfinite(obj)):
        raise ValueError(f"phase must be a finite real 2-D array, got shape {obj.shape}")
    pos = np.asarray(positions_px)
    if pos.ndim != 2 or pos.shape[1] != 2 or not np.issubdtype(pos.dtype, np.integer):
        raise ValueError("positions_px must be integer object pixels of shape (n, 2)")
    d = int(det_shape[0])
    if tuple(int(v) for v in det_shape) != (d, d) or d < 2:
        raise ValueError(f"det_shape must be square (D, D) with D >= 2, got {det_shape!r}")
    dt = check_dtype(dtype)
    if dose is None and np.issubdtype(dt, np.integer):
        raise ValueError(f"dtype {dt.name} needs counts: pass dose=<electrons per frame>")
    lam = wavelength_A(voltage_kV)
    probe = _probe(
        d, float(pixel_A), lam, float(convergence_mrad) * 1e-3, check_aberrations(aberrations)
    )
    c = d // 2
    n = np.arange(d)
    carrier = np.exp(2j * np.pi * c * n / d)
    p_mod = (probe * carrier[:, None] * carrier[None, :]).astype(np.complex64)
    t = np.exp(1j * obj).astype(np.complex64)
    ny, nx = t.shape
    # Window rows/cols: object pixel (y − c + i) mod ny for the probe centred at y.
    yy = (pos[:, 0:1] % ny - c + n[None, :]) % ny  # (n, d)
    xx = (pos[:, 1:2] % nx - c + n[None, :]) % nx
    out = np.empty((len(pos), d, d), dt)
    gen = rng if rng is not None else np.random.default_rng(0)
    batch = max(1, (64 * 2**20) // (d * d * 8))
    for i0 in range(0, len(pos), batch):
        sl = slice(i0, i0 + batch)
        windows = t[yy[sl][:, :, None], xx[sl][:, None, :]]
        out[sl] = _record(windows * p_mod, None, dose, gen, dt).reshape(-1, d, d)
    return out
