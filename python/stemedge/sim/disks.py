"""Fast synthetic 4D-STEM data: one shifted bright-field disk per frame.

Meant for benchmarks and CoM kernel tests at realistic sizes (e.g. 256²×128² uint16 = 2 GiB)
where a physical simulation would be too slow. Each requested shift is quantised to
1/``subpixel`` px, one antialiased template is rendered per distinct quantised shift, and the
output is filled by a gather (``numpy.take``) straight into the destination array.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from stemedge.sim._checks import check_dtype

__all__ = ["DiskScan", "default_shift_field", "shifted_disks"]

_SUPERSAMPLE = 4  # 4×4 points per pixel for the area coverage of the disk edge
_TEMPLATE_BUDGET = 256 * 2**20  # build all templates at once below this many bytes
_CHUNK_BYTES = 64 * 2**20


@dataclasses.dataclass
class DiskScan:
    """Result of :func:`shifted_disks`.

    Attributes
    ----------
    data : numpy.ndarray
        Frames ``(scan_y, scan_x, det_y, det_x)``.
    shifts_px : numpy.ndarray
        ``(scan_y, scan_x, 2)`` float64: exact first moment (y, x) of each frame's noise-free
        template minus ``origin`` [px]; NaN for a frame whose template sums to zero.
    """

    data: np.ndarray
    shifts_px: np.ndarray


def _pair_int(value: Any, name: str) -> tuple[int, int]:
    try:
        a, b = value
        ok = float(a).is_integer() and float(b).is_integer() and a >= 1 and b >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a pair of positive integers (y, x), got {value!r}")
    return int(a), int(b)


def _nonneg(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return v


def default_shift_field(yy: np.ndarray, xx: np.ndarray, scan_shape: tuple[int, int]) -> np.ndarray:
    """The default shift field [px] of :func:`shifted_disks`.

    A sinusoidal deflection of amplitude 2 px (``dy = 2 sin(2πy/Ny) cos(2πx/Nx)``,
    ``dx = 2 cos(2πy/Ny) sin(2πx/Nx)``; curl-free for a square scan) plus a descan plane
    ``(dy, dx) += [[1, 0.5], [−0.5, 1]]·(y/(Ny−1) − ½, x/(Nx−1) − ½)`` (up to ±0.75 px).

    Parameters
    ----------
    yy, xx : numpy.ndarray
        Scan indices (broadcastable).
    scan_shape : (int, int)
        Scan shape (Ny, Nx).

    Returns
    -------
    numpy.ndarray
        Shifts (..., 2) as (y, x) [px].
    """
    ny, nx = scan_shape
    ay, ax = 2 * np.pi * yy / ny, 2 * np.pi * xx / nx
    ry, rx = yy / max(ny - 1, 1) - 0.5, xx / max(nx - 1, 1) - 0.5
    dy = 2.0 * np.sin(ay) * np.cos(ax) + 1.0 * ry + 0.5 * rx
    dx = 2.0 * np.cos(ay) * np.sin(ax) - 0.5 * ry + 1.0 * rx
    return np.stack(np.broadcast_arrays(dy, dx), axis=-1)


def _patch(radius: float, frac: tuple[float, float], half: int) -> np.ndarray:
    """Area coverage (0..1) of a disk centred at (half + frac) on a (2·half+2)² patch."""
    n = 2 * half + 2
    sub = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE - 0.5
    # Separable sample coordinates relative to the centre; inside test on the full product grid.
    y = (np.arange(n)[:, None] + sub[None, :] - half - frac[0]).ravel()
    x = (np.arange(n)[:, None] + sub[None, :] - half - frac[1]).ravel()
    inside = (y[:, None] ** 2 + x[None, :] ** 2) <= radius * radius
    return inside.reshape(n, _SUPERSAMPLE, n, _SUPERSAMPLE).mean(axis=(1, 3))


def shifted_disks(
    scan_shape: tuple[int, int],
    det_shape: tuple[int, int],
    radius_px: float,
    shifts_px: np.ndarray | Callable[[np.ndarray, np.ndarray], Any] | None = None,
    *,
    counts_per_px: float = 100.0,
    dtype: Any = np.uint16,
    origin: tuple[float, float] | None = None,
    subpixel: int = 8,
    background: float = 0.0,
    noise: str | None = None,
    seed: int = 0,
    out: np.ndarray | None = None,
) -> DiskScan:
    """Frames with one uniformly bright, antialiased disk each, shifted per scan position.

    Parameters
    ----------
    scan_shape, det_shape : (int, int)
        Scan (Ny, Nx) and detector (Dy, Dx) shapes.
    radius_px : float
        Disk radius [px].
    shifts_px : array_like (Ny, Nx, 2), callable or None
        Requested disk-centre shift (y, x) [px] relative to ``origin``: an array, a callable
        ``f(yy, xx)`` of scan index grids (``indexing='ij'``) returning (..., 2), or None for
        :func:`default_shift_field`.
    counts_per_px : float
        Value of a fully covered disk pixel (above ``background``); rounded for integer dtypes.
    dtype : numpy dtype
        ``uint8``, ``uint16`` (default), ``uint32``, ``float32`` or ``float64``. Must equal
        ``out.dtype`` when ``out`` is given.
    origin : (float, float) or None
        Unshifted disk centre [px]; default (Dy//2, Dx//2).
    subpixel : int
        Shifts are quantised to 1/subpixel px (at most subpixel² distinct disk renderings).
    background : float
        Value added to every pixel (rounded together with the disk for integer dtypes).
    noise : None or 'poisson'
        'poisson' replaces each pixel by a Poisson sample of its value (slow for big arrays).
    seed : int
        Seed for ``numpy.random.default_rng``.
    out : numpy.ndarray or None
        Preallocated C-contiguous, writeable destination of shape (Ny, Nx, Dy, Dx); filled in
        place (no second full-size array is made) and returned as ``data``.

    Returns
    -------
    DiskScan
        ``data`` and ``shifts_px``: the exact float64 first moment of each frame's noise-free
        template minus ``origin`` (it includes background, clipping at the frame edge, rounding
        and the antialiasing), i.e. the ground truth a CoM kernel must reproduce. It matches the
        request to about 1/(2·subpixel) px for a disk well inside the frame without background.

    Raises
    ------
    ValueError
        For malformed shapes or values, or values that overflow an integer dtype.
    TypeError
        For an unsupported dtype, an ``out`` that does not match, or a bad ``shifts_px`` type.
    """
    sy, sx = _pair_int(scan_shape, "scan_shape")
    dy, dx = _pair_int(det_shape, "det_shape")
    radius = _nonneg(radius_px, "radius_px")
    if radius <= 0:
        raise ValueError(f"radius_px must be positive, got {radius_px!r}")
    counts = _nonneg(counts_per_px, "counts_per_px")
    bg = _nonneg(background, "background")
    if isinstance(subpixel, bool) or not float(subpixel).is_integer() or subpixel < 1:
        raise ValueError(f"subpixel must be a positive integer, got {subpixel!r}")
    sub = int(subpixel)
    if noise not in (None, "poisson"):
        raise ValueError(f"noise must be None or 'poisson', got {noise!r}")
    dt = check_dtype(dtype)
    integer = np.issubdtype(dt, np.integer)
    if integer and np.rint(bg + counts) > np.iinfo(dt).max:
        raise ValueError(
            f"background + counts_per_px = {bg + counts} overflows {dt.name} "
            f"(max {np.iinfo(dt).max}); use dtype=numpy.uint32 or float32, or fewer counts"
        )
    if origin is None:
        oy, ox = float(dy // 2), float(dx // 2)
    else:
        try:
            oy, ox = (float(v) for v in origin)
        except (TypeError, ValueError):
            raise ValueError(f"origin must be a (y, x) pair of px, got {origin!r}") from None
        if not (math.isfinite(oy) and math.isfinite(ox)):
            raise ValueError(f"origin must be finite, got {origin!r}")

    full_shape = (sy, sx, dy, dx)
    if out is None:
        data = np.empty(full_shape, dtype=dt)
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
        if out.shape != full_shape:
            raise ValueError(f"out must have shape {full_shape}, got {out.shape}")
        if out.dtype != dt:
            raise TypeError(f"out.dtype is {out.dtype} but dtype is {dt}; pass dtype=out.dtype")
        if not (out.flags.c_contiguous and out.flags.writeable):
            raise ValueError("out must be C-contiguous and writeable (e.g. from numpy.empty)")
        data = out

    # --- requested shifts -> quantised integer keys ----------------------------------------
    if shifts_px is None or callable(shifts_px):
        yy, xx = np.meshgrid(np.arange(sy), np.arange(sx), indexing="ij")
        field = default_shift_field(yy, xx, (sy, sx)) if shifts_px is None else shifts_px(yy, xx)
    else:
        field = shifts_px
    try:
        req = np.asarray(field, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError("shifts_px must be an array, a callable f(yy, xx) or None") from None
    try:
        req = np.broadcast_to(req, (sy, sx, 2))
    except ValueError:
        raise ValueError(
            f"shifts_px must have shape (scan_y, scan_x, 2) = {(sy, sx, 2)}, got {req.shape}"
        ) from None
    if not np.all(np.isfinite(req)):
        raise ValueError("shifts_px must be finite")
    q = np.rint(req.reshape(-1, 2) * sub).astype(np.int64)
    qmin = q.min(axis=0)
    width = int(q[:, 1].max() - qmin[1]) + 1
    keys = (q[:, 0] - qmin[0]) * width + (q[:, 1] - qmin[1])
    ukeys, inv = np.unique(keys, return_inverse=True)
    inv = inv.ravel()
    uq = np.stack([ukeys // width + qmin[0], ukeys % width + qmin[1]], axis=1)

    half = math.ceil(radius) + 1
    patches: dict[tuple[int, int], tuple[np.ndarray, int, int]] = {}

    def patch_for(qy: int, qx: int) -> tuple[np.ndarray, int, int]:
        """Rendered patch for the fractional part of this shift, and its frame corner."""
        ry, rx = qy % sub, qx % sub
        if (ry, rx) not in patches:
            by, bx = oy + ry / sub, ox + rx / sub
            fy, fx = math.floor(by), math.floor(bx)
            vals = bg + counts * _patch(radius, (by - fy, bx - fx), half)
            patches[ry, rx] = (np.rint(vals) if integer else vals).astype(dt), fy, fx
        vals, fy, fx = patches[ry, rx]
        return vals, fy + (qy - ry) // sub - half, fx + (qx - rx) // sub - half

    fill = dt.type(np.rint(bg) if integer else bg)
    iy, ix = np.arange(dy, dtype=np.float64), np.arange(dx, dtype=np.float64)

    def build(sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Templates for unique-shift indices ``sel`` and their float64 CoM minus origin."""
        tmpl = np.full((len(sel), dy, dx), fill, dtype=dt)
        for n, (qy, qx) in enumerate(uq[sel]):
            vals, y0, x0 = patch_for(int(qy), int(qx))
            a0, a1 = max(y0, 0), min(y0 + vals.shape[0], dy)
            b0, b1 = max(x0, 0), min(x0 + vals.shape[1], dx)
            if a0 < a1 and b0 < b1:
                tmpl[n, a0:a1, b0:b1] = vals[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0]
        rows = tmpl.sum(axis=2, dtype=np.float64)
        total = rows.sum(axis=1)
        cols = tmpl.sum(axis=1, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            com = np.stack([rows @ iy / total - oy, cols @ ix / total - ox], axis=1)
        return tmpl, com

    frame_bytes = dy * dx * dt.itemsize
    flat = data.reshape(sy * sx, dy, dx)
    shifts = np.empty((sy * sx, 2))
    per_chunk = max(1, _CHUNK_BYTES // frame_bytes)
    rng = np.random.default_rng(seed)
    glob = len(uq) * frame_bytes <= _TEMPLATE_BUDGET
    if glob:
        tmpl_all, com_all = build(np.arange(len(uq)))
        shifts[:] = com_all[inv]
    for s in range(0, sy * sx, per_chunk):
        e = min(s + per_chunk, sy * sx)
        if glob:
            tmpl, idx = tmpl_all, inv[s:e]
        else:  # too many distinct shifts to keep: build only this chunk's templates
            sel, idx = np.unique(inv[s:e], return_inverse=True)
            tmpl, com = build(sel)
            shifts[s:e] = com[idx]
        # mode='clip' avoids the buffered copy that mode='raise' makes for `out`.
        np.take(tmpl, idx.ravel(), axis=0, out=flat[s:e], mode="clip")
        if noise == "poisson":
            sample = rng.poisson(flat[s:e])
            if integer and sample.size and sample.max() > np.iinfo(dt).max:
                raise ValueError(
                    f"Poisson noise overflows {dt.name}; use dtype=numpy.uint32 or float32"
                )
            flat[s:e] = sample
    return DiskScan(data=data, shifts_px=shifts.reshape(sy, sx, 2))
