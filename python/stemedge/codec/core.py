"""Compress and decompress whole arrays: frame stacks as independent codec chunks in a container.

A *chunk* (``SEAC``, made by the native codec) is self-describing and decodes on its own: it is
what an HDF5 or zarr chunk holds. :func:`compress` splits an array into stacks of
``chunk_frames`` frames (frames = all axes but the last two), codes the stacks in parallel and
puts them in a *container* (``SEAX``)::

    b"SEAX" | version u8 | dtype (u8 length + numpy dtype.str) | ndim u8 | shape u64 × ndim
            | n_chunks u32 | offsets u64 × (n_chunks + 1) | CRC-32C u32 of everything before
            | chunk 0 | chunk 1 | ...

:func:`decompress` reads a container or a bare chunk. Every error (truncated, corrupt, wrong
magic, checksum) is a :class:`CodecError` with the reason; nothing is written outside the output.
"""

from __future__ import annotations

import concurrent.futures
import math
import struct
from typing import Any

import numpy as np

from stemedge import _native

__all__ = ["MODES", "CodecError", "compress", "decompress", "info"]

MODES = ("auto", "dense", "events", "bytes")
_CHUNK = b"SEAC"
_CONTAINER = b"SEAX"
_VERSION = 1
_TARGET_CHUNK_BYTES = 8 * 2**20  # default stack: ≥ 64 frames and about this many raw bytes


class CodecError(ValueError):
    """A blob that cannot be decoded (or arguments the codec cannot honour)."""


def _threads(nthreads: int | None) -> int:
    if nthreads is None:
        try:
            import os

            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return 1
    if isinstance(nthreads, bool) or not isinstance(nthreads, (int, np.integer)) or nthreads < 1:
        raise ValueError(f"nthreads must be an int >= 1 or None (all cores), got {nthreads!r}")
    return int(nthreads)


def _frames_view(a: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """(n_frames, *pixel_shape) view: pixels are the last two axes (the last one for 1-D)."""
    if a.ndim >= 2:
        pix = a.shape[-2:]
        return a.reshape(math.prod(a.shape[:-2]), *pix), pix
    return a.reshape(1, a.size), (a.size,)


def compress(
    array: Any,
    *,
    mode: str = "auto",
    max_abs_error: float = 0.0,
    threshold: int = 0,
    chunk_frames: int | None = None,
    nthreads: int | None = None,
) -> bytes:
    """Compress an array (any shape; bool, (u)int 8–64, float32/64) into one blob.

    A cupy array (lossless 8–32-bit integers) is compressed on its GPU
    (:func:`stemedge.gpu_encode.compress`): the same bytes as ``mode="dense"`` here.

    Parameters
    ----------
    mode : {"auto", "dense", "events", "bytes"}
        Coding model (docs/codec.md); "auto" picks per chunk.
    max_abs_error : float
        0: lossless. > 0: every decoded value is within this of the original (integers: bounds
        ≥ 1 quantise with step 2⌊e⌋ + 1; floats: step 2e, values that would break the bound kept
        exactly).
    threshold : int
        Counted (integer) data: values below it decode as 0 (error < threshold there).
    chunk_frames : int, optional
        Frames per independent chunk; default ≥ 64 frames and ~8 MiB.
    nthreads : int, optional
        Chunks coded in parallel (None: all cores).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if hasattr(array, "__cuda_array_interface__"):
        if mode not in ("auto", "dense") or max_abs_error >= 1 or threshold:
            raise TypeError(
                "compress: GPU arrays are coded lossless in dense mode; for other modes pass "
                "cupy.asnumpy(array)"
            )
        from stemedge.gpu_encode import compress as gpu_compress

        return gpu_compress(array, chunk_frames=chunk_frames)
    a = np.asarray(array, order="C")  # (ascontiguousarray would turn 0-d into 1-d)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("="))
    frames, _ = _frames_view(a)
    n = frames.shape[0]
    chunk_frames = _chunk_frames(chunk_frames, frames[:1].nbytes)
    starts = list(range(0, n, int(chunk_frames))) or [0]

    def one(start: int) -> bytes:
        part = frames[start : start + int(chunk_frames)]
        try:
            return _native.codec_compress(part, mode, float(max_abs_error), int(threshold))
        except ValueError as exc:
            raise CodecError(str(exc)) from None

    workers = min(_threads(nthreads), len(starts))
    if workers == 1:
        chunks = [one(start) for start in starts]
    else:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            chunks = list(pool.map(one, starts))
    return _container(a.dtype, a.shape, chunks)


def _chunk_frames(chunk_frames: int | None, frame_nbytes: int) -> int:
    """Frames per chunk: checked, or the default (>= 64 frames and ~8 MiB)."""
    if chunk_frames is None:
        return max(64, math.ceil(_TARGET_CHUNK_BYTES / max(1, frame_nbytes)))
    if (
        isinstance(chunk_frames, bool)
        or not isinstance(chunk_frames, (int, np.integer))
        or chunk_frames < 1
    ):
        raise ValueError(f"chunk_frames must be an int >= 1, got {chunk_frames!r}")
    return int(chunk_frames)


def _container(dtype: np.dtype, shape: tuple[int, ...], chunks: list[bytes]) -> bytes:
    """The container of an array's chunks (the layout in the module docstring)."""
    dt = np.dtype(dtype).str.encode()
    head = bytearray(_CONTAINER)
    head += struct.pack("<BB", _VERSION, len(dt)) + dt
    head += struct.pack("<B", len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)
    head += struct.pack("<I", len(chunks))
    offsets = np.zeros(len(chunks) + 1, np.uint64)
    np.cumsum([len(c) for c in chunks], out=offsets[1:])
    head += offsets.astype("<u8").tobytes()
    head += struct.pack("<I", _native.codec_crc32c(bytes(head)))
    return b"".join([head, *chunks])  # one copy of the chunks, not two


def _parse_container(blob: memoryview) -> tuple[np.dtype, tuple[int, ...], list[memoryview]]:
    def need(pos: int, k: int) -> None:
        if pos + k > len(blob):
            raise CodecError("stemedge codec: truncated container header")

    need(0, 6)
    version, dlen = struct.unpack_from("<BB", blob, 4)
    if version != _VERSION:
        raise CodecError(f"stemedge codec: unsupported container version {version}")
    need(6, dlen + 1)
    try:
        dtype = np.dtype(bytes(blob[6 : 6 + dlen]).decode("ascii"))
    except (TypeError, ValueError, UnicodeDecodeError):
        raise CodecError("stemedge codec: corrupt container header (dtype)") from None
    pos = 6 + dlen
    ndim = blob[pos]
    pos += 1
    need(pos, 8 * ndim + 4)
    shape = struct.unpack_from(f"<{ndim}Q", blob, pos)
    pos += 8 * ndim
    (n_chunks,) = struct.unpack_from("<I", blob, pos)
    pos += 4
    need(pos, 8 * (n_chunks + 1) + 4)
    offsets = np.frombuffer(blob, "<u8", n_chunks + 1, pos).astype(np.int64)
    pos += 8 * (n_chunks + 1)
    (crc,) = struct.unpack_from("<I", blob, pos)
    if _native.codec_crc32c(blob[:pos]) != crc:
        raise CodecError("stemedge codec: checksum mismatch in the container header")
    pos += 4
    body = blob[pos:]
    if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != len(body):
        raise CodecError("stemedge codec: corrupt container (chunk offsets)")
    chunks = [body[offsets[i] : offsets[i + 1]] for i in range(n_chunks)]
    return dtype, tuple(int(s) for s in shape), chunks


def _buffer(blob: Any) -> memoryview:
    try:
        view = memoryview(blob)
    except TypeError:
        raise TypeError(f"pass the compressed data as bytes, got {type(blob).__name__}") from None
    if not view.contiguous:
        raise TypeError("pass the compressed data as a contiguous bytes-like object")
    return view.cast("B")


def decompress(blob: Any, *, nthreads: int | None = None) -> np.ndarray:
    """Decode a blob from :func:`compress` (or one bare chunk) into a new array."""
    view = _buffer(blob)
    magic = bytes(view[:4])
    try:
        if magic == _CHUNK:
            return _native.codec_decompress(view)
        if magic != _CONTAINER:
            raise CodecError("stemedge codec: not stemedge-compressed data (bad magic)")
        dtype, shape, chunks = _parse_container(view)
        out = np.empty(shape, dtype)
        frames, _ = _frames_view(out)
        starts = []
        pos = 0
        for c in chunks:
            meta = _native.codec_info(c, verify=False)  # codec_decompress verifies it
            k = meta["shape"][0] if meta["shape"] else 0
            if (
                np.dtype(meta["dtype"]) != dtype.newbyteorder("=")
                or tuple(meta["shape"][1:]) != frames.shape[1:]
            ):
                raise CodecError(
                    "stemedge codec: a chunk does not match the container's dtype/shape"
                )
            starts.append((c, pos, k))
            pos += k
        if pos != frames.shape[0]:
            raise CodecError("stemedge codec: the chunks do not cover the array")

        def one(item: tuple[memoryview, int, int]) -> None:
            c, start, k = item
            _native.codec_decompress(c, out=frames[start : start + k])

        workers = max(1, min(_threads(nthreads), len(starts)))
        if workers == 1:  # no pool for one chunk or one thread
            for item in starts:
                one(item)
        else:
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                list(pool.map(one, starts))
        return out
    except CodecError:
        raise
    except ValueError as exc:
        raise CodecError(str(exc)) from None


def info(blob: Any) -> dict[str, Any]:
    """What a blob holds: dtype, shape, sizes and the mode of each chunk."""
    view = _buffer(blob)
    try:
        if bytes(view[:4]) == _CHUNK:
            return dict(_native.codec_info(view))
        if bytes(view[:4]) != _CONTAINER:
            raise CodecError("stemedge codec: not stemedge-compressed data (bad magic)")
        dtype, shape, chunks = _parse_container(view)
        metas = [_native.codec_info(c) for c in chunks]
    except CodecError:
        raise
    except ValueError as exc:
        raise CodecError(str(exc)) from None
    raw = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return {
        "dtype": dtype.name,
        "shape": shape,
        "chunks": len(chunks),
        "modes": [m["mode"] for m in metas],
        "raw_nbytes": raw,
        "nbytes": len(view),
        "ratio": raw / len(view) if len(view) else float("inf"),
        "max_abs_error": max((m["max_abs_error"] for m in metas), default=0.0),
        "threshold": max((m["threshold"] for m in metas), default=0),
    }
