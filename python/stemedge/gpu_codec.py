"""Decoding stemedge-compressed frames on the GPU (:func:`decompress`, cupy results).

Each DENSE chunk (lossless integer frames: the counting and HDR detector case) is decoded by one
warp of ``stemedge._cuda.codec_decode_dense``, every chunk of a blob in one launch: the 32 lanes
are the format's 32 interleaved rANS states, and the prefix sums of the lanes' renormalisation
needs and raw bit counts give each lane its read offsets, so the output is bit-identical to the
CPU decoder's (docs/codec.md). The host parses each chunk's small model (maps and tables,
``_native.codec_dense_layout``, chunk CRC verified) and uploads it with the compressed bytes;
other chunks (EVENTS, BYTES, STORED, lossy) are decoded on the host and uploaded.

Integrity: the chunk CRC is checked on the host before anything runs; the device checks every
word and bit read, every value's range and every lane's final state, and a chunk that fails any
of them raises :class:`stemedge.codec.CodecError`. The CRC of the decoded bytes is not computed
on the device.

:func:`decode_dense_host` runs the device's decoding code on the host (the same functions, lane
by lane): the tests hold it to the CPU decoder on machines without a GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stemedge import _native, gpu
from stemedge.codec.core import _CHUNK, _CONTAINER, CodecError, _buffer, _parse_container

__all__ = ["decode_dense_host", "decompress"]

# Mirrors cuda/codec_decode.cuh DenseChunk (8-byte fields, then the 32 states).
CHUNK_RECORD = np.dtype(
    [(name, "<u8") for name in (
        "klass", "base", "sym", "fc", "qmin", "esc", "shift", "words", "n_words", "bits", "nbits",
        "frames", "pixels")]
    + [("lo", "<i8"), ("hi", "<i8"), ("elem_bytes", "<u8"), ("out", "<u8"), ("x", "<u4", (32,))]
)  # fmt: skip

_STATUS = {
    1: "the rANS stream ends early",
    2: "the bit stream ends early",
    3: "a value outside the dtype",
    4: "the streams do not end where they should",
}

_MODEL = (("klass", np.uint8), ("base", np.int64), ("sym", np.uint16), ("fc", np.uint32),
          ("qmin", np.int64), ("esc", np.uint32), ("shift", np.uint32))  # fmt: skip


def _record(layout: dict, model_ptrs: dict, chunk_ptr: int, out_ptr: int) -> np.ndarray:
    r = np.zeros((), CHUNK_RECORD)
    for name, _ in _MODEL:
        r[name] = model_ptrs[name]
    r["words"] = chunk_ptr + layout["words_offset"]
    r["n_words"] = layout["n_words"]
    r["bits"] = chunk_ptr + layout["bits_offset"]
    for name in ("nbits", "frames", "pixels", "lo", "hi"):
        r[name] = layout[name]
    r["elem_bytes"] = np.dtype(layout["dtype"]).itemsize
    r["out"] = out_ptr
    r["x"] = layout["x"]
    return r


def _check(status: int, where: str) -> None:
    if status:
        raise CodecError(f"stemedge codec: corrupt chunk ({where}): {_STATUS.get(status, status)}")


def decode_dense_host(chunk: Any) -> np.ndarray:
    """Decode one DENSE chunk with the GPU decoder's code, run on the host (for tests).
    ValueError for a chunk that is not lossless-integer DENSE."""
    from stemedge import _cuda

    view = _buffer(chunk)
    layout = _native.codec_dense_layout(view)
    if layout is None:
        raise ValueError("not a lossless-integer DENSE chunk: the GPU decoder does not take it")
    meta = _native.codec_info(view, verify=False)
    blob = np.frombuffer(view, np.uint8)
    model = {name: np.ascontiguousarray(layout[name], dt) for name, dt in _MODEL}
    out = np.empty(meta["shape"], np.dtype(layout["dtype"]))
    rec = _record(layout, {k: v.ctypes.data for k, v in model.items()}, blob.ctypes.data,
                  out.ctypes.data)  # fmt: skip
    _check(_cuda.codec_decode_host(rec.tobytes()), "host twin")
    return out


def decompress(blob: Any, *, stream=None):
    """:func:`stemedge.decompress` onto the GPU: a cupy array on the current device.

    Runs on ``stream`` (default: cupy's current stream); returns after one synchronisation
    (the decoder's status is read back so that a corrupt chunk raises here)."""
    cp, cuda = gpu._cupy(), gpu._cuda()
    view = _buffer(blob)
    magic = bytes(view[:4])
    if magic == _CHUNK:
        meta = _native.codec_info(view, verify=False)  # the layout or the host decoder verifies
        dtype, shape, chunks = np.dtype(meta["dtype"]), tuple(meta["shape"]), [view]
    elif magic == _CONTAINER:
        dtype, shape, chunks = _parse_container(view)
        dtype = dtype.newbyteorder("=")
    else:
        raise CodecError("stemedge codec: not stemedge-compressed data (bad magic)")
    sptr = int(stream.ptr) if stream is not None else int(cp.cuda.get_current_stream().ptr)
    with cp.cuda.ExternalStream(sptr):
        out = cp.empty(shape, dtype)
        flat = out.reshape(-1)
        host_blob = np.frombuffer(view, np.uint8)
        device_blob = cp.asarray(host_blob)
        records, keep, pos = [], [], 0
        for c in chunks:
            meta = _native.codec_info(c, verify=False)
            n = int(np.prod(meta["shape"], dtype=np.int64))
            if np.dtype(meta["dtype"]) != dtype or pos + n > flat.size:
                raise CodecError("stemedge codec: a chunk does not match the container")
            try:
                layout = _native.codec_dense_layout(c)
            except ValueError as exc:
                raise CodecError(str(exc)) from None
            target = flat[pos : pos + n]
            if layout is None:  # not a GPU chunk: the host decodes it
                target.set(_native.codec_decompress(c).reshape(-1))
            else:
                model = {name: cp.asarray(np.asarray(layout[name], dt)) for name, dt in _MODEL}
                keep.append(model)
                offset = np.frombuffer(c, np.uint8).ctypes.data - host_blob.ctypes.data
                records.append(
                    _record(layout, {k: v.data.ptr for k, v in model.items()},
                            device_blob.data.ptr + offset, target.data.ptr)
                )  # fmt: skip
            pos += n
        if pos != flat.size:
            raise CodecError("stemedge codec: the chunks do not cover the array")
        if records:
            device_records = cp.asarray(np.stack(records).view(np.uint8))
            status = cp.zeros(len(records), cp.int32)
            cuda.codec_decode_dense(device_records.data.ptr, len(records), status.data.ptr, sptr)
            for i, s in enumerate(status.get().tolist()):  # synchronises the stream
                _check(s, f"chunk {i}")
    return out
