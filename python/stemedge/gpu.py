"""GPU twins of the frame kernels (:mod:`stemedge.kernels`) for frames already on an NVIDIA GPU.

:func:`stemedge.center_of_mass`, :func:`~stemedge.virtual_images` and
:func:`~stemedge.com_and_virtual_images` dispatch here when given a cupy array (or any array with
``__cuda_array_interface__``): the same reduction (``stemedge._cuda.reduce``, held to the CPU's
in ``tests/test_gpu_kernels.py``), the same arguments, results as cupy arrays on the frames'
device. The kernel runs on ``stream`` if given, else on the stream the frames' producer names
in its ``__cuda_array_interface__`` (v3), else on cupy's current stream; nothing is synchronised
on return. Needs cupy (``pip install 'stemedge[gpu]'``) and a build with the CUDA extension.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from stemedge.calibration import Calibration
from stemedge.masks import MaskSet

__all__ = ["center_of_mass", "com_and_virtual_images", "is_device_array", "virtual_images"]

_FRAME_DTYPES = ("uint8", "uint16", "uint32", "float32")


def is_device_array(a: Any) -> bool:
    """Whether ``a`` lives on a GPU (exposes ``__cuda_array_interface__``)."""
    return not isinstance(a, np.ndarray) and hasattr(a, "__cuda_array_interface__")


def _cupy():
    try:
        import cupy
    except ImportError as e:
        raise ImportError(
            "frames on the GPU need cupy: pip install 'stemedge[gpu]' (or pass numpy arrays)"
        ) from e
    return cupy


def _cuda():
    try:
        from stemedge import _cuda
    except ImportError as e:
        raise ImportError(
            "this stemedge build has no CUDA extension (built without nvcc); pass numpy arrays"
        ) from e
    return _cuda


def _frames(frames):
    """(n, det_y, det_x) cupy view, the scan shape and the detector shape."""
    cp = _cupy()
    a = cp.asarray(frames)  # zero-copy for __cuda_array_interface__ producers
    if str(a.dtype) not in _FRAME_DTYPES:
        raise TypeError(f"frames must be {', '.join(_FRAME_DTYPES)} on the GPU, got {a.dtype}")
    if a.ndim not in (3, 4):
        raise ValueError(
            f"frames must be (n, det_y, det_x) or (scan_y, scan_x, det_y, det_x), got {a.shape}"
        )
    if not a.flags.c_contiguous:
        raise TypeError("frames on the GPU must be C-contiguous: pass cupy.ascontiguousarray(...)")
    det = (int(a.shape[-2]), int(a.shape[-1]))
    return a.reshape(-1, *det), tuple(int(s) for s in a.shape[:-2]), det


def _stream(frames, stream) -> int:
    """The stream handle to run on (see the module docstring)."""
    if stream is not None:
        return int(getattr(stream, "ptr", stream))
    producer = frames.__cuda_array_interface__.get("stream")
    if producer is not None:  # 1 and 2 (legacy, per-thread default) are valid handles as they are
        return int(producer)
    return int(_cupy().cuda.get_current_stream().ptr)


def _per_device(owner: Any, key: str, build):
    """``build()`` made once per ``owner`` and current device (kept in ``owner.__dict__[key]``):
    what the kernels read of a plan or mask set is uploaded once."""
    cache = owner.__dict__.setdefault(key, {})
    dev = _cupy().cuda.Device().id
    if dev not in cache:
        cache[dev] = build()
    return cache[dev]


def _device_masks(ms: MaskSet):
    """The set's dense float32 masks on the current device, uploaded once per set and device."""
    return _per_device(
        ms, "_device_masks", lambda: _cupy().asarray(np.ascontiguousarray(ms.masks, np.float32))
    )


def _reduce(flat, ms: MaskSet, moments: Sequence[bool], thresholds: Sequence[float], sptr: int):
    """(n, channels) float64 on the GPU: columns as _native.reduce (S, then Sy, Sx if moments)."""
    cp, cuda = _cupy(), _cuda()
    n, dy, dx = flat.shape
    masks = _device_masks(ms)
    k = len(ms)
    widths = [3 if m else 1 for m in moments]
    out = cp.empty((n, sum(widths)), cp.float64)
    col = 0
    with cp.cuda.ExternalStream(sptr):
        for g in range(0, k, cuda.MAX_MASKS):  # the kernel takes up to MAX_MASKS masks a call
            sel = slice(g, min(k, g + cuda.MAX_MASKS))
            w = sum(widths[sel])
            part = out if (g == 0 and w == out.shape[1]) else cp.empty((n, w), cp.float64)
            cuda.reduce(
                flat.data.ptr,
                str(flat.dtype),
                n,
                dy,
                dx,
                masks[sel].data.ptr,
                sel.stop - sel.start,
                list(moments[sel]),
                [float(t) for t in thresholds[sel]],
                part.data.ptr,
                sptr,
            )
            if part is not out:
                out[:, col : col + w] = part
            col += w
    return out


def _finish_com(raw, scan_shape, origin, empty, dtype, sptr):
    """kernels' own finishing, in cupy on the kernel's stream: (shifts, intensity)."""
    from stemedge import kernels as K

    cp = _cupy()
    with cp.cuda.ExternalStream(sptr):
        res = K._finish_com(raw, 0, scan_shape, origin, empty, dtype, None, xp=cp)
    return res.shifts, res.intensity


def _finish_images(raw, cols, ms, single, scan_shape, normalize, dtype, sptr):
    from stemedge import kernels as K

    cp = _cupy()
    with cp.cuda.ExternalStream(sptr):
        return K._finish_images(raw, cols, ms, single, scan_shape, normalize, dtype, None, xp=cp)


def _host(masks):
    """Masks given as cupy arrays, brought to the host (the plans are compiled there)."""
    if isinstance(masks, MaskSet) or not hasattr(masks, "get"):
        return masks
    return masks.get()


def _no_out(out) -> None:
    if out is not None:
        raise ValueError("out= is not supported for frames on the GPU (results are new arrays)")


def center_of_mass(
    frames,
    *,
    radius: float | None = None,
    inner_radius: float | None = None,
    mask=None,
    origin: Sequence[float] | Calibration | None = None,
    threshold: float | None = None,
    empty: float = 0.0,
    dtype=np.float32,
    out=None,
    stream=None,
):
    """:func:`stemedge.center_of_mass` for frames on the GPU (cupy results, same device)."""
    from stemedge import kernels as K

    _no_out(out)
    flat, scan_shape, det_shape = _frames(frames)
    o = K._origin(origin, det_shape)
    dtype = K._result_dtype(dtype)
    if mask is None:
        plan = K._com_plan(det_shape, *K._com_geometry(radius, inner_radius, o))
    else:
        m = _host(mask)  # a cupy mask is fine too
        plan = MaskSet(K._com_mask(det_shape, radius, inner_radius, m, o), names=["com"])
    sptr = _stream(frames, stream)
    raw = _reduce(flat, plan, [True], [K._threshold(threshold)], sptr)
    shifts, intensity = _finish_com(raw, scan_shape, o, float(empty), dtype, sptr)
    return K.CenterOfMass(shifts, intensity)


def virtual_images(
    frames, masks, *, normalize: str = "sum", mode: str = "auto", dtype=np.float32, out=None,
    stream=None,
):  # fmt: skip
    """:func:`stemedge.virtual_images` for frames on the GPU (cupy results, same device)."""
    from stemedge import kernels as K

    _no_out(out)
    flat, scan_shape, det_shape = _frames(frames)
    K._check_normalize(normalize)
    ms, single = K._as_maskset(_host(masks), det_shape, mode)
    dtype = K._result_dtype(dtype)
    k = len(ms)
    sptr = _stream(frames, stream)
    raw = _reduce(flat, ms, [False] * k, [float("nan")] * k, sptr)
    return _finish_images(raw, list(range(k)), ms, single, scan_shape, normalize, dtype, sptr)


def com_and_virtual_images(
    frames,
    masks,
    *,
    radius: float | None = None,
    inner_radius: float | None = None,
    com_mask=None,
    origin: Sequence[float] | Calibration | None = None,
    threshold: float | None = None,
    empty: float = 0.0,
    normalize: str = "sum",
    dtype=np.float32,
    stream=None,
):
    """:func:`stemedge.com_and_virtual_images` for frames on the GPU: one read of the data."""
    from stemedge import kernels as K

    flat, scan_shape, det_shape = _frames(frames)
    o = K._origin(origin, det_shape)
    dtype = K._result_dtype(dtype)
    K._check_normalize(normalize)
    vis, single = K._as_maskset(_host(masks), det_shape, "auto")
    both = K._fused_plan(vis, det_shape, radius, inner_radius, _host(com_mask), o)
    k = len(vis)
    sptr = _stream(frames, stream)
    raw = _reduce(
        flat, both, [True] + [False] * k, [K._threshold(threshold)] + [float("nan")] * k, sptr
    )
    shifts, intensity = _finish_com(raw, scan_shape, o, float(empty), dtype, sptr)
    images = _finish_images(
        raw, [3 + m for m in range(k)], vis, single, scan_shape, normalize, dtype, sptr
    )
    return K.ComAndVirtualImages(shifts, intensity, images)
