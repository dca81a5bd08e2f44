"""Compressing frames that are on the GPU (:func:`compress`): the same bytes as the CPU encoder.

For lossless 8–32-bit integer frames, :func:`compress` gives exactly what
``stemedge.compress(cupy.asnumpy(frames), mode="dense")`` gives, with the frames read on the
device only. Each chunk goes through four stages, every chunk of a batch in one launch each
(``stemedge._cuda.codec_encode_dense``, cuda/codec_encode.cuh):

1. the per-pixel moments of the sampled frames (the model's first pass), downloaded
   (16 bytes per pixel and chunk);
2. the host picks each pixel's base and class with the CPU encoder's code
   (``_native.codec_dense_class_map``); the device counts the residual histograms per class;
3. the host builds the class tables from the class map and the histograms
   (``_native.codec_dense_encode_model``); the device codes the payload, a warp per chunk
   (32 lanes = the format's 32 rANS states), and computes the CRC-32C of the raw data;
4. only the compressed words and bits come back; the host wraps them into the chunk
   (``_native.codec_dense_chunk``, which also computes the chunk's CRC).

Device memory: the batch's frames plus about 2× their size of output buffers (a value emits at
most one word and its raw bits); batches hold ≤ ``batch_bytes`` of raw data.

The chunks are DENSE whatever the data: sparse counted data, where the CPU's ``mode="auto"``
picks the EVENTS model, is coded DENSE on the GPU (correct, larger). Lossy modes, floats and
64-bit integers are not encoded on the GPU: pass ``cupy.asnumpy(frames)`` to
:func:`stemedge.compress`.

``stages="host"`` runs the device's code on the host (the same functions, lane by lane): the
tests hold its chunks to the CPU encoder's bytes on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np

from stemedge import _native, gpu
from stemedge.codec.core import CodecError, _chunk_frames, _container, _frames_view

__all__ = ["compress"]

_DTYPES = ("uint8", "uint16", "uint32", "int8", "int16", "int32")
_MOMENTS, _HIST, _PAYLOAD, _CRC = 0, 1, 2, 3
_BATCH_BYTES = 512 * 2**20

# Mirrors cuda/codec_encode.cuh EncodeChunk (8-byte fields, then the 32 states).
ENCODE_RECORD = np.dtype(
    [(name, "<u8") for name in (
        "src", "frames", "pixels", "elem_bytes", "is_signed", "step", "s1", "s2", "base", "slot",
        "shift", "hist", "fc", "qmin", "nsym", "words", "bits", "bits_cap", "crc_parts",
        "first_word", "nbits", "status", "raw_crc")]
    + [("x", "<u4", (32,))]
)  # fmt: skip

_STATUS = {1: "a value the class tables cannot code", 2: "the raw bit stream overflows"}


class _HostStages:
    """The encoder's stages on the host: numpy arrays, the device code run lane by lane."""

    xp = np

    @staticmethod
    def ptr(a: np.ndarray) -> int:
        return a.ctypes.data

    @staticmethod
    def get(a: np.ndarray) -> np.ndarray:
        return a

    def run(self, stage: int, records: np.ndarray) -> np.ndarray:
        from stemedge import _cuda

        out = records.copy()
        for i in range(len(out)):
            done = _cuda.codec_encode_host(stage, out[i : i + 1].tobytes())
            out[i] = np.frombuffer(done, ENCODE_RECORD)[0]
        return out


class _DeviceStages:
    """The stages on the GPU, on one stream; each returns after reading the records back."""

    def __init__(self, stream: int):
        self.xp, self.cuda, self.stream = gpu._cupy(), gpu._cuda(), stream

    @staticmethod
    def ptr(a) -> int:
        return int(a.data.ptr)

    @staticmethod
    def get(a) -> np.ndarray:
        return a.get()

    def run(self, stage: int, records: np.ndarray) -> np.ndarray:
        dev = self.xp.asarray(records.view(np.uint8))  # compress() runs everything on self.stream
        pixels = int(records["pixels"].max())
        raw = int((records["frames"] * records["pixels"] * records["elem_bytes"]).max())
        self.cuda.codec_encode_dense(stage, dev.data.ptr, len(records), pixels, raw, self.stream)
        return dev.get().view(ENCODE_RECORD)  # synchronises the stream


def _offsets(sizes) -> np.ndarray:
    """Where each of consecutive blocks of ``sizes`` starts, and the end (int64, len + 1)."""
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _encode_batch(parts: list, pix: tuple[int, ...], dtype: np.dtype, st) -> list[bytes]:
    """The chunks of a batch of (k, pixels) frame stacks (arrays of ``st.xp``)."""
    from stemedge import _cuda  # the raw CRC's segment size

    xp, n = st.xp, len(parts)
    pixels, elem = int(math.prod(pix)), dtype.itemsize
    rec = np.zeros(n, ENCODE_RECORD)
    sampling = [_native.codec_dense_sampling(int(p.shape[0]), pixels) for p in parts]
    for i, p in enumerate(parts):
        rec[i]["src"], rec[i]["frames"] = st.ptr(p), p.shape[0]
    rec["pixels"], rec["elem_bytes"], rec["is_signed"] = pixels, elem, dtype.kind == "i"

    # 1. moments -> the host's classes
    s1, s2 = xp.zeros((n, pixels)), xp.zeros((n, pixels))
    for i in range(n):
        rec[i]["s1"], rec[i]["s2"] = st.ptr(s1[i]), st.ptr(s2[i])
        rec[i]["step"] = sampling[i][0]
    st.run(_MOMENTS, rec)
    s1, s2 = st.get(s1), st.get(s2)
    counts = [-(-int(p.shape[0]) // s[0]) for p, s in zip(parts, sampling, strict=True)]
    maps = [_native.codec_dense_class_map(s1[i], s2[i], counts[i]) for i in range(n)]

    # 2. residual histograms -> the host's tables
    base = xp.asarray(np.stack([m["base"] for m in maps]))
    slot = xp.asarray(np.stack([m["slot"] for m in maps]))
    n_slots = [len(m["shift"]) for m in maps]
    first = _offsets(n_slots)
    shift = xp.asarray(np.concatenate([m["shift"] for m in maps]).astype(np.uint32))
    hist = xp.zeros((int(first[-1]), 256), np.uint32)
    for i in range(n):
        rec[i]["base"], rec[i]["slot"] = st.ptr(base[i]), st.ptr(slot[i])
        rec[i]["shift"], rec[i]["hist"] = st.ptr(shift[first[i] :]), st.ptr(hist[first[i] :])
        rec[i]["step"] = sampling[i][1]
    st.run(_HIST, rec)
    hist = st.get(hist)
    models = [
        _native.codec_dense_encode_model(
            m["base"], m["slot"], m["classes"], hist[first[i] : first[i + 1]], sampling[i][1],
            8 * elem,
        )
        for i, m in enumerate(maps)
    ]  # fmt: skip

    # 3. payload and raw CRC
    fc = xp.asarray(np.concatenate([m["fc"] for m in models]).astype(np.uint32))
    qmin = xp.asarray(np.concatenate([m["qmin"] for m in models]).astype(np.int64))
    nsym = xp.asarray(np.concatenate([m["nsym"] for m in models]).astype(np.uint32))
    sizes = [int(p.shape[0]) * pixels for p in parts]
    word_at = _offsets(sizes)
    bits_cap = [s * elem // 4 + 2 for s in sizes]  # 32-bit words: 8·elem bits per value at most
    bit_at = _offsets(bits_cap)
    crc_n = [max(1, -(-s * elem // _cuda.CODEC_CRC_SEGMENT)) for s in sizes]
    crc_at = _offsets(crc_n)
    words = xp.empty(int(word_at[-1]), np.uint16)
    bits = xp.zeros(int(bit_at[-1]), np.uint32)
    crc_parts = xp.empty(int(crc_at[-1]), np.uint32)
    for i in range(n):
        k = int(first[i])
        rec[i]["fc"], rec[i]["qmin"] = st.ptr(fc[256 * k :]), st.ptr(qmin[k:])
        rec[i]["nsym"] = st.ptr(nsym[k:])
        rec[i]["words"], rec[i]["bits"] = st.ptr(words[word_at[i] :]), st.ptr(bits[bit_at[i] :])
        rec[i]["bits_cap"], rec[i]["crc_parts"] = bits_cap[i], st.ptr(crc_parts[crc_at[i] :])
    rec = st.run(_PAYLOAD, rec)
    rec = st.run(_CRC, rec)

    # 4. the chunks: only the compressed words and bits come back
    chunks = []
    for i, p in enumerate(parts):
        r = rec[i]
        if int(r["status"]):
            raise CodecError(f"stemedge codec: GPU encoder: {_STATUS.get(int(r['status']))}")
        w = st.get(words[int(word_at[i] + r["first_word"]) : int(word_at[i + 1])])
        nbytes = (int(r["nbits"]) + 7) // 8
        b = st.get(bits[bit_at[i] : bit_at[i] + (nbytes + 3) // 4]).view(np.uint8)[:nbytes]
        shape = (int(p.shape[0]), *pix)
        chunk = _native.codec_dense_chunk(
            dtype, shape, models[i]["prefix"], r["x"], w, b, int(r["nbits"]), int(r["raw_crc"])
        )
        if chunk is None:  # incompressible: stored raw, as the CPU encoder does
            chunk = _native.codec_compress(np.ascontiguousarray(st.get(p)).reshape(shape), "dense")
        chunks.append(chunk)
    return chunks


def compress(
    frames: Any,
    *,
    chunk_frames: int | None = None,
    stream=None,
    stages: str = "device",
    batch_bytes: int = _BATCH_BYTES,
) -> bytes:
    """:func:`stemedge.compress` of lossless 8–32-bit integer frames on the GPU (a cupy array
    or any ``__cuda_array_interface__`` producer); the blob is byte for byte the CPU's
    ``mode="dense"`` one. Runs on ``stream`` (default: the producer's, else cupy's current)."""
    if stages not in ("device", "host"):
        raise ValueError(f"stages must be 'device' or 'host', got {stages!r}")
    if stages == "host":
        st, a = _HostStages(), np.asarray(frames)
    else:
        a = gpu._cupy().asarray(frames)
        st = _DeviceStages(gpu._stream(frames, stream))
    if str(a.dtype) not in _DTYPES:
        raise TypeError(
            f"the GPU encoder takes lossless {', '.join(_DTYPES)} frames, got {a.dtype}; "
            "for other data use stemedge.compress(cupy.asnumpy(frames))"
        )
    if not a.flags.c_contiguous:
        raise TypeError("frames must be C-contiguous: pass cupy.ascontiguousarray(frames)")
    view, pix = _frames_view(a)
    n, frame_bytes = int(view.shape[0]), int(math.prod(pix)) * a.dtype.itemsize
    chunk_frames = _chunk_frames(chunk_frames, frame_bytes)
    dtype = np.dtype(a.dtype)
    if a.size == 0:  # nothing for a GPU to do: the CPU's (stored) chunk
        from stemedge.codec.core import compress as cpu_compress

        return cpu_compress(np.empty(a.shape, dtype), chunk_frames=chunk_frames)
    flat = view.reshape(n, -1)
    starts = list(range(0, n, chunk_frames))
    per_batch = max(1, min(65535, batch_bytes // max(1, chunk_frames * frame_bytes)))
    chunks: list[bytes] = []
    # Every allocation and upload on the encoder's stream, in order with its kernels.
    on_stream = (
        contextlib.nullcontext() if stages == "host" else st.xp.cuda.ExternalStream(st.stream)
    )
    with on_stream:
        for b in range(0, len(starts), per_batch):
            parts = [flat[s : s + chunk_frames] for s in starts[b : b + per_batch]]
            chunks += _encode_batch(parts, pix, dtype, st)
    return _container(dtype, a.shape, chunks)
