"""Centre of mass, virtual detectors and their fused pass on frame stacks (CPU, native; frames
on an NVIDIA GPU go to their CUDA twins in :mod:`stemedge.gpu`).

All three are one native reduction (``_native.reduce``): per frame and mask, Σ M·I and, for the
centre-of-mass mask, Σ y·M·I and Σ x·M·I. Frames are read in place: a stack (n, det_y, det_x) or a
4D scan (scan_y, scan_x, det_y, det_x) of uint8/uint16/uint32/float32 whose rows are contiguous
(any slicing of the scan axes is fine). Anything else is refused with a TypeError that says what to
pass: the kernels never copy frames behind your back.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from stemedge import _native
from stemedge.calibration import Calibration
from stemedge.gpu import is_device_array as _on_gpu
from stemedge.masks import MaskSet, annulus, disk

__all__ = [
    "CenterOfMass",
    "ComAndVirtualImages",
    "center_of_mass",
    "com_and_virtual_images",
    "read_pass",
    "virtual_images",
]

_RESULT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class CenterOfMass(NamedTuple):
    """Centre of mass: ``shifts`` (..., 2) in px (y, x) from the origin, ``intensity`` (...)."""

    shifts: np.ndarray
    intensity: np.ndarray


class ComAndVirtualImages(NamedTuple):
    """Fused-pass result: CoM ``shifts`` and ``intensity`` plus ``images`` (k, ...)."""

    shifts: np.ndarray
    intensity: np.ndarray
    images: np.ndarray


def _check_frames(frames) -> tuple[np.ndarray, tuple[int, ...], tuple[int, int]]:
    if not isinstance(frames, np.ndarray):
        if hasattr(frames, "__cuda_array_interface__"):
            raise TypeError(
                "frames: GPU arrays are not supported by this build's CPU kernels; "
                "pass a numpy array (cupy.asnumpy(frames))"
            )
        raise TypeError(f"frames: pass a numpy array, got {type(frames).__name__}")
    if frames.ndim not in (3, 4):
        raise ValueError(
            "frames: expected a stack (n, det_y, det_x) or a 4D scan "
            f"(scan_y, scan_x, det_y, det_x), got shape {frames.shape}"
        )
    if frames.shape[-2] == 0 or frames.shape[-1] == 0:
        raise ValueError(f"frames: the detector axes are empty (shape {frames.shape})")
    return frames, frames.shape[:-2], (frames.shape[-2], frames.shape[-1])


def _origin(origin, det_shape: tuple[int, int]) -> tuple[float, float]:
    if origin is None:
        return float(det_shape[0] // 2), float(det_shape[1] // 2)
    if isinstance(origin, Calibration):
        return origin.origin_for(det_shape)
    o = np.asarray(origin, dtype=float)
    if o.shape != (2,) or not np.all(np.isfinite(o)):
        raise ValueError(f"origin must be (y, x) in px, a Calibration or None, got {origin!r}")
    return float(o[0]), float(o[1])


def _nthreads(nthreads: int | None) -> int:
    if nthreads is None:
        return 0
    if int(nthreads) < 1:
        raise ValueError(f"nthreads must be >= 1 or None (all cores), got {nthreads!r}")
    return int(nthreads)


def _threshold(threshold) -> float:
    if threshold is None:
        return float("nan")
    t = float(threshold)
    if np.isnan(t):
        raise ValueError("threshold must be a number or None, got NaN")
    return t


def _com_geometry(radius, inner_radius, origin) -> tuple:
    """Hashable description of the CoM mask: the origin only matters for a disk or annulus."""
    return (radius, inner_radius, origin if radius is not None else None)


@functools.lru_cache(maxsize=64)
def _com_plan(det_shape, radius, inner_radius, origin) -> MaskSet:
    if radius is None:
        if inner_radius is not None:
            raise ValueError("inner_radius needs radius (the outer edge of the annulus)")
        return MaskSet(np.ones(det_shape, np.float32), names=["com"])
    if inner_radius is None:
        return MaskSet(disk(det_shape, radius, origin), names=["com"])
    return MaskSet(annulus(det_shape, inner_radius, radius, origin), names=["com"])


def _com_mask(det_shape, radius, inner_radius, mask, origin) -> np.ndarray:
    """The CoM weights as a (det_y, det_x) float32 array."""
    if mask is not None:
        if radius is not None or inner_radius is not None:
            raise ValueError("give either mask= or radius=/inner_radius=, not both")
        m = np.asarray(mask)
        if m.shape != det_shape:
            raise ValueError(f"mask has shape {m.shape} but frames have detector shape {det_shape}")
        return m.astype(np.float32)
    return _com_plan(det_shape, *_com_geometry(radius, inner_radius, origin)).masks[0]


def _out_array(out, shape, dtype, name, xp=np) -> np.ndarray:
    if out is None:
        return xp.empty(shape, dtype)
    if (
        not isinstance(out, np.ndarray)
        or out.shape != tuple(shape)
        or out.dtype not in _RESULT_DTYPES
    ):
        raise ValueError(
            f"{name}: must be a float32 or float64 numpy array of shape {tuple(shape)}"
        )
    if not out.flags.writeable:
        raise ValueError(f"{name}: array is read-only")
    return out


def _result_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in _RESULT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _finish_com(raw, col, scan_shape, origin, empty, dtype, out, xp=np) -> CenterOfMass:
    """Shifts and intensity from the reduction's columns; ``xp``: numpy, or cupy for results
    computed on the GPU (stemedge.gpu)."""
    s, sy, sx = raw[:, col], raw[:, col + 1], raw[:, col + 2]
    out_shifts, out_int = (None, None) if out is None else out
    shifts = _out_array(out_shifts, (*scan_shape, 2), dtype, "out[0] (shifts)", xp)
    intensity = _out_array(out_int, scan_shape, dtype, "out[1] (intensity)", xp)
    with np.errstate(divide="ignore", invalid="ignore"):
        cy = xp.where(s != 0, sy / s - origin[0], empty)
        cx = xp.where(s != 0, sx / s - origin[1], empty)
    shifts[..., 0] = cy.reshape(scan_shape)
    shifts[..., 1] = cx.reshape(scan_shape)
    intensity[...] = s.reshape(scan_shape)
    return CenterOfMass(shifts, intensity)


def center_of_mass(
    frames: np.ndarray,
    *,
    radius: float | None = None,
    inner_radius: float | None = None,
    mask: np.ndarray | None = None,
    origin: Sequence[float] | Calibration | None = None,
    threshold: float | None = None,
    empty: float = 0.0,
    dtype=np.float32,
    out: tuple[np.ndarray, np.ndarray] | None = None,
    nthreads: int | None = None,
    stream=None,
) -> CenterOfMass:
    """Centre of mass of every frame, as a shift from the origin in detector px (y, x).

    Parameters
    ----------
    frames : ndarray (n, det_y, det_x) or (scan_y, scan_x, det_y, det_x)
        uint8, uint16, uint32 or float32; rows contiguous. Read in place.
    radius, inner_radius : float, optional
        Only pixels with ``d <= radius`` (a disk) or ``inner_radius < d <= radius`` (an annulus)
        around the origin count; default: the whole frame.
    mask : ndarray (det_y, det_x), optional
        Custom weights instead of radius (e.g. an antialiased disk).
    origin : (y, x), Calibration or None
        The unscattered-beam position; default ``(det_y // 2, det_x // 2)`` (PHYSICS.md C2).
    threshold : float, optional
        Pixels below it count as zero (dark noise); NaN pixels then count as zero too.
    empty : float
        Shift reported for frames with zero total intensity (default 0, i.e. at the origin).
    dtype : float32 or float64
        Result dtype; sums are accumulated exactly (integers) or in float64.
    out : (shifts, intensity), optional
        Preallocated results of shapes (..., 2) and (...).
    nthreads : int, optional
        Threads to use; default all available.
    stream : cupy Stream or int, optional
        Frames on the GPU (a cupy array): the CUDA stream to run on (:mod:`stemedge.gpu`).

    Returns
    -------
    CenterOfMass(shifts, intensity) — cupy arrays for frames on the GPU.
    """
    if _on_gpu(frames):
        from stemedge import gpu

        return gpu.center_of_mass(
            frames, radius=radius, inner_radius=inner_radius, mask=mask, origin=origin,
            threshold=threshold, empty=empty, dtype=dtype, out=out, stream=stream,
        )  # fmt: skip
    frames, scan_shape, det_shape = _check_frames(frames)
    o = _origin(origin, det_shape)
    dtype = _result_dtype(dtype)
    if mask is None:
        plan = _com_plan(det_shape, *_com_geometry(radius, inner_radius, o))
    else:
        plan = MaskSet(_com_mask(det_shape, radius, inner_radius, mask, o), names=["com"])
    raw = _native.reduce(frames, plan.plan, [True], [_threshold(threshold)], _nthreads(nthreads))
    return _finish_com(raw, 0, scan_shape, o, float(empty), dtype, out)


def _as_maskset(masks, det_shape, mode) -> tuple[MaskSet, bool]:
    single = isinstance(masks, np.ndarray) and masks.ndim == 2
    ms = masks if isinstance(masks, MaskSet) and mode == "auto" else MaskSet(masks, mode=mode)
    if ms.det_shape != det_shape:
        raise ValueError(f"masks have detector shape {ms.det_shape} but frames have {det_shape}")
    return ms, single


def _check_normalize(normalize: str) -> None:
    if normalize not in ("sum", "mean"):
        raise ValueError(f"normalize must be 'sum' or 'mean', got {normalize!r}")


def _finish_images(raw, cols, ms, single, scan_shape, normalize, dtype, out, xp=np):
    k = len(ms)
    shape = scan_shape if single else (k, *scan_shape)
    images = _out_array(out, shape, dtype, "out", xp)
    view = images.reshape((1, *scan_shape)) if single else images
    sums = ms.weight_sums()
    for m in range(k):
        v = raw[:, cols[m]]
        if normalize == "mean":
            v = v / sums[m] if sums[m] != 0 else xp.full_like(v, np.nan)
        view[m] = v.reshape(scan_shape)
    return images


def virtual_images(
    frames: np.ndarray,
    masks,
    *,
    normalize: str = "sum",
    mode: str = "auto",
    dtype=np.float32,
    out: np.ndarray | None = None,
    nthreads: int | None = None,
    stream=None,
) -> np.ndarray:
    """Virtual detector images: ``V_m = Σ_k M_m(k)·I(k)`` for k masks in one pass over the data.

    Parameters
    ----------
    frames : ndarray (n, det_y, det_x) or (scan_y, scan_x, det_y, det_x)
    masks : ndarray (det_y, det_x) or (k, det_y, det_x), a list of 2-D masks, or a MaskSet
        Dense weights; zero pixels are skipped, so masks covering little of the frame cost little.
    normalize : {'sum', 'mean'}
        Raw weighted sums (counts, as every peer returns), or divided by Σ weights.
    mode : {'auto', 'sparse', 'dense'}
        Mask storage (see MaskSet); a MaskSet passed in keeps its own.

    stream : cupy Stream or int, optional
        Frames on the GPU (a cupy array): the CUDA stream to run on (:mod:`stemedge.gpu`).

    Returns
    -------
    ndarray (k, ...) — or (...) when ``masks`` is a single 2-D array; cupy for GPU frames.
    """
    if _on_gpu(frames):
        from stemedge import gpu

        return gpu.virtual_images(
            frames, masks, normalize=normalize, mode=mode, dtype=dtype, out=out, stream=stream
        )
    frames, scan_shape, det_shape = _check_frames(frames)
    _check_normalize(normalize)
    ms, single = _as_maskset(masks, det_shape, mode)
    dtype = _result_dtype(dtype)
    k = len(ms)
    raw = _native.reduce(frames, ms.plan, [False] * k, [float("nan")] * k, _nthreads(nthreads))
    return _finish_images(raw, list(range(k)), ms, single, scan_shape, normalize, dtype, out)


def com_and_virtual_images(
    frames: np.ndarray,
    masks,
    *,
    radius: float | None = None,
    inner_radius: float | None = None,
    com_mask: np.ndarray | None = None,
    origin: Sequence[float] | Calibration | None = None,
    threshold: float | None = None,
    empty: float = 0.0,
    normalize: str = "sum",
    dtype=np.float32,
    nthreads: int | None = None,
    stream=None,
) -> ComAndVirtualImages:
    """Centre of mass and k virtual images from one read of the data (the fused pass).

    Takes the arguments of :func:`center_of_mass` (``com_mask`` is its ``mask``) and of
    :func:`virtual_images`; the threshold applies to the centre of mass only. Frames on the GPU
    (cupy) run there (``stream``) and give cupy results.
    """
    if _on_gpu(frames):
        from stemedge import gpu

        return gpu.com_and_virtual_images(
            frames, masks, radius=radius, inner_radius=inner_radius, com_mask=com_mask,
            origin=origin, threshold=threshold, empty=empty, normalize=normalize, dtype=dtype,
            stream=stream,
        )  # fmt: skip
    frames, scan_shape, det_shape = _check_frames(frames)
    o = _origin(origin, det_shape)
    dtype = _result_dtype(dtype)
    _check_normalize(normalize)
    vis, single = _as_maskset(masks, det_shape, "auto")
    both = _fused_plan(vis, det_shape, radius, inner_radius, com_mask, o)
    k = len(vis)
    raw = _native.reduce(
        frames,
        both.plan,
        [True] + [False] * k,
        [_threshold(threshold)] + [float("nan")] * k,
        _nthreads(nthreads),
    )
    com_res = _finish_com(raw, 0, scan_shape, o, float(empty), dtype, None)
    images = _finish_images(
        raw, [3 + m for m in range(k)], vis, single, scan_shape, normalize, dtype, None
    )
    return ComAndVirtualImages(com_res.shifts, com_res.intensity, images)


def _fused_plan(vis: MaskSet, det_shape, radius, inner_radius, com_mask, origin) -> MaskSet:
    """The CoM mask followed by the virtual-detector masks, compiled once per MaskSet and CoM
    geometry (live loops call the fused pass on small stacks: rebuilding costs ~0.2 ms a call)."""
    key = None
    if com_mask is None:
        key = _com_geometry(radius, inner_radius, origin)
        cached = vis._fused_cache.get(key)
        if cached is not None:
            return cached
    com = _com_mask(det_shape, radius, inner_radius, com_mask, origin)
    both = MaskSet(np.concatenate([com[np.newaxis], vis.masks]), names=["com", *vis.names])
    if key is not None:
        vis._fused_cache[key] = both
    return both


def read_pass(frames: np.ndarray, nthreads: int | None = None) -> int:
    """Read every byte of ``frames`` once (native, all threads): the memory-bandwidth yardstick."""
    frames, _, _ = _check_frames(frames)
    return _native.read_pass(frames, _nthreads(nthreads))
