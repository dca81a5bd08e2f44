"""The stemedge codec as an HDF5 filter: h5py datasets compressed chunk by chunk.

The filter lives in a small shared library shipped with the package, ``libh5stemedge.so`` in
:func:`plugin_dir`. It is used two ways:

- **in this process**: :func:`register` loads it and hands its filter class to h5py's HDF5
  (``h5py.h5z.register_filter``, as the hdf5plugin package does). ``import stemedge`` calls it,
  so any h5py code in a process that imported stemedge reads and writes stemedge chunks.
- **anywhere else**: point ``HDF5_PLUGIN_PATH`` at :func:`plugin_dir` and any HDF5 program (h5py
  without stemedge, h5dump, C/Fortran code) finds the filter itself. The plugin calls no HDF5
  function, so it works with any HDF5 from 1.10 on.

Writing::

    opts = stemedge.codec.hdf5.filter_options(np.uint16, (1, 16, 256, 256), max_abs_error=0)
    f.create_dataset("frames", shape=(64, 64, 256, 256), dtype=np.uint16, **opts)

A dataset's chunk shape is part of the filter's options (``compression_opts``), so use the
``chunks`` :func:`filter_options` returns. Every stored chunk is a self-describing stemedge chunk:
decoding needs no options, and chunks made by :func:`stemedge._native.codec_compress` with the
chunk's shape can be written directly (``write_direct_chunk``, filter mask 0), as
:class:`~stemedge.io.emd.EMDWriter` does.

Filter id :data:`FILTER_ID` = 421 is in HDF5's range for unregistered filters (256–511, for
testing and private use): it is not registered with The HDF Group, so another private filter may
use the same number. h5py marks filters it is given by id as optional: a chunk the filter cannot
encode is stored uncompressed (and read back as such), never lost.
"""

from __future__ import annotations

import ctypes
import math
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

__all__ = [
    "FILTER_ID",
    "MODES",
    "cd_values",
    "filter_options",
    "is_registered",
    "plugin_dir",
    "register",
]

FILTER_ID = 421
"""HDF5 filter id of the stemedge codec (unregistered range 256–511)."""

PLUGIN_NAME = "libh5stemedge.so"
CD_FORMAT = 1  # layout of compression_opts, first value of the tuple
MAX_DIMS = 8  # SE_MAX_DIMS in cpp/include/stemedge/codec.h

# enum se_mode and enum se_dtype of cpp/include/stemedge/codec.h
MODES = {"auto": 0, "dense": 1, "events": 2, "bytes": 3}
_DTYPES = {
    np.dtype(np.uint8): 1,
    np.dtype(np.uint16): 2,
    np.dtype(np.uint32): 3,
    np.dtype(np.uint64): 4,
    np.dtype(np.int8): 5,
    np.dtype(np.int16): 6,
    np.dtype(np.int32): 7,
    np.dtype(np.int64): 8,
    np.dtype(np.float32): 9,
    np.dtype(np.float64): 10,
    np.dtype(np.bool_): 11,
}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None  # the loaded plugin; kept alive while HDF5 holds its class


def plugin_dir() -> Path:
    """The folder holding the filter plugin (``stemedge/plugins`` in the installed package):
    usable as ``HDF5_PLUGIN_PATH``. Development builds from the source tree copy
    ``build/<dir>/plugins/libh5stemedge.so`` there (docs/architecture.md)."""
    return Path(__file__).resolve().parents[1] / "plugins"


def _plugin_path() -> Path:
    path = plugin_dir() / PLUGIN_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"the stemedge HDF5 filter plugin is missing: no {path}. Installed packages ship it; "
            "in a source tree, build it (target h5stemedge) and copy plugins/"
            f"{PLUGIN_NAME} from the build folder to {plugin_dir()}"
        )
    return path


def is_registered() -> bool:
    """Whether HDF5 in this process can use filter :data:`FILTER_ID` (registered by
    :func:`register`, or found on ``HDF5_PLUGIN_PATH``)."""
    return bool(h5py.h5z.filter_avail(FILTER_ID))


def register() -> bool:
    """Register the stemedge filter with h5py's HDF5; returns whether it is available.

    Idempotent and thread-safe: the plugin is loaded once and registered again only if
    something unregistered it. Called by ``import stemedge``.

    Raises
    ------
    FileNotFoundError
        The plugin file is not in :func:`plugin_dir`.
    OSError
        The plugin exists but cannot be loaded (wrong platform, damaged file).
    """
    global _lib
    with _lock:
        if _lib is not None and is_registered():
            return True
        lib = _lib
        if lib is None:
            path = _plugin_path()
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as exc:
                raise OSError(f"cannot load the stemedge HDF5 filter plugin {path}: {exc}") from exc
            lib.H5PLget_plugin_info.restype = ctypes.c_void_p
            lib.H5PLget_plugin_info.argtypes = []
        # HDF5 copies the class, whose function pointers point into the library: keep it loaded.
        h5py.h5z.register_filter(lib.H5PLget_plugin_info())
        _lib = lib
        return is_registered()


def check_options(mode: str, max_abs_error, threshold) -> tuple[float, int]:
    """Check the codec options (filter and numcodecs codec alike); returns the error bound as a
    float and the threshold as an int."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    if isinstance(max_abs_error, bool) or not isinstance(max_abs_error, (int, float, np.number)):
        raise TypeError(f"max_abs_error must be a number, got {type(max_abs_error).__name__}")
    err = float(max_abs_error)
    if not math.isfinite(err) or err < 0:
        raise ValueError(f"max_abs_error must be finite and ≥ 0, got {max_abs_error!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)):
        raise TypeError(f"threshold must be an int, got {type(threshold).__name__}")
    if not 0 <= int(threshold) < 2**64:
        raise ValueError(f"threshold must be between 0 and 2**64-1, got {threshold}")
    return err, int(threshold)


def _u32_pair(raw: bytes) -> tuple[int, int]:
    lo, hi = struct.unpack("<II", raw)
    return lo, hi


def cd_values(
    dtype: Any,
    chunk_shape: Sequence[int],
    *,
    mode: str = "auto",
    max_abs_error: float = 0.0,
    threshold: int = 0,
) -> tuple[int, ...]:
    """The filter's client data (``compression_opts``) for chunks of ``chunk_shape`` and
    ``dtype``: ``(1, dtype, mode, ndim, *chunk_shape, max_abs_error low 32 bits, high 32 bits,
    threshold low, high)``, all uint32 (the layout documented in
    ``cpp/hdf5/h5filter_stemedge.c``). Arguments are checked as in :func:`filter_options`."""
    dt = np.dtype(dtype)
    code = _DTYPES.get(dt)
    if code is None:
        if dt.newbyteorder("=") in _DTYPES and dt.byteorder not in ("=", "|"):
            raise TypeError(
                f"dtype must be in native byte order for the stemedge codec, got {dt.str} "
                f"(convert with astype({dt.newbyteorder('=').str!r}))"
            )
        names = ", ".join(str(d) for d in _DTYPES)
        raise TypeError(f"dtype must be one of {names} for the stemedge codec, got {dt}")
    try:
        shape = tuple(int(n) for n in chunk_shape)
    except TypeError:
        raise TypeError(
            f"chunk_shape must be a sequence of ints, got {type(chunk_shape).__name__}"
        ) from None
    if not 1 <= len(shape) <= MAX_DIMS or any(not 1 <= n < 2**32 for n in shape):
        raise ValueError(
            f"chunk_shape must have 1 to {MAX_DIMS} axes of 1 to 2**32-1 elements, got {shape}"
        )
    err, thr = check_options(mode, max_abs_error, threshold)
    err_lo, err_hi = _u32_pair(struct.pack("<d", err))
    return (
        CD_FORMAT,
        code,
        MODES[mode],
        len(shape),
        *shape,
        err_lo,
        err_hi,
        thr & 0xFFFFFFFF,
        thr >> 32,
    )


def _check_codec_accepts(dtype: np.dtype, ndim: int, options: dict[str, Any]) -> None:
    """Compress a tiny array with ``options``: a combination the codec refuses (lossy options on
    a dtype or mode that cannot honour them) fails here, not silently per chunk (h5py's filters
    are optional: HDF5 would store such chunks uncompressed)."""
    from stemedge import _native

    compress = getattr(_native, "codec_compress", None)
    if compress is None:  # a native module without the codec: the plugin still works
        return
    try:
        compress(np.zeros((1,) * ndim, dtype=dtype), **options)
    except (TypeError, ValueError) as exc:
        from stemedge.codec.core import CodecError

        raise CodecError(f"the stemedge codec refuses {dtype} data with {options}: {exc}") from exc


def filter_options(
    dtype: Any,
    chunk_shape: Sequence[int],
    *,
    mode: str = "auto",
    max_abs_error: float = 0.0,
    threshold: int = 0,
) -> dict[str, Any]:
    """h5py ``create_dataset`` keywords for a dataset compressed by the stemedge filter.

    Parameters
    ----------
    dtype : numpy dtype
        The dataset's dtype: (u)int8–64, float32/64 or bool, native byte order.
    chunk_shape : sequence of int
        The dataset's chunk shape (returned as ``chunks``): the codec sees each chunk as frames
        × pixels, pixels being the last two axes, so ``(1, k, det_y, det_x)`` for a 4D scan.
    mode : {"auto", "dense", "events", "bytes"}
        Codec mode (see ``stemedge.codec.compress``).
    max_abs_error : float
        0 for lossless; > 0 bounds ``|x − decoded|`` everywhere.
    threshold : int
        Counted data: values below it decode as 0 (0: off).

    Returns
    -------
    dict
        ``{"compression": FILTER_ID, "compression_opts": (...), "chunks": chunk_shape}``.

    Raises
    ------
    TypeError, ValueError
        An argument of the wrong type or value.
    stemedge.codec.CodecError
        A combination the codec refuses (e.g. lossy floats in "bytes" mode); a ValueError.
    FileNotFoundError, OSError
        The filter plugin cannot be registered (see :func:`register`).
    """
    opts = cd_values(
        dtype, chunk_shape, mode=mode, max_abs_error=max_abs_error, threshold=threshold
    )
    _check_codec_accepts(
        np.dtype(dtype),
        len(chunk_shape),
        {"mode": mode, "max_abs_error": float(max_abs_error), "threshold": int(threshold)},
    )
    register()
    return {"compression": FILTER_ID, "compression_opts": opts, "chunks": tuple(opts[4:-4])}
