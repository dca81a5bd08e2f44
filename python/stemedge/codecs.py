"""Frame codecs: turn the payloads of a ring stack into frames.

A committed :class:`~stemedge.ring.FrameRing` slot holds either frames (``Encoding.RAW``) or one
compressed payload per frame (payload ``i`` at ``raw[i * frame_bytes:]``, ``nbytes[i]`` bytes),
for instance the bitshuffle-LZ4 images a DECTRIS detector streams. Pipeline workers call
:func:`decode_stack` with a scratch array they own; decoders are registered per
:class:`~stemedge.ring.Encoding` with :func:`register_codec`, so new encodings plug in without
touching the workers::

    scratch = codecs.scratch_for(ring)            # once per worker
    for stack in ring:
        frames = codecs.decode_stack(stack, scratch)   # RAW: stack.frames itself

Bitshuffle-LZ4 decoding is native (``_native.bslz4_decode_stack``): it releases the GIL, so
several workers decode in parallel, and it checks every length, so a corrupt payload raises
:class:`CorruptFrames` (the others in the stack are still decoded) instead of crashing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

from stemedge import _native
from stemedge.ring import Encoding, FilledStack, FrameRing

__all__ = [
    "BSLZ4_HEADER_BYTES",
    "CorruptFrames",
    "bslz4_decode",
    "bslz4_encode",
    "bslz4_header",
    "decode_stack",
    "register_codec",
    "registered_codecs",
    "scratch_for",
]

BSLZ4_HEADER_BYTES = 12  # uint64 BE uncompressed bytes, uint32 BE block bytes

# decoder(stack, out, nthreads) -> out[:len(stack)] decoded
Decoder = Callable[[FilledStack, np.ndarray, int], np.ndarray]

_CODECS: dict[Encoding, Decoder] = {}


class CorruptFrames(ValueError):
    """Some payloads of a stack could not be decoded.

    The rest of the stack was decoded; callers that want to keep going use ``frames[ok]`` and
    ``stack.indices[ok]``.

    Attributes
    ----------
    frames : numpy.ndarray
        The decoded stack (a view of the scratch array); corrupt frames are zero-filled.
    ok : numpy.ndarray
        Boolean mask, False for the corrupt frames.
    indices : numpy.ndarray
        Scan indices of the corrupt frames.
    errors : list of (int, str)
        Position in the stack and reason, per corrupt frame.
    """

    def __init__(
        self,
        message: str,
        frames: np.ndarray,
        ok: np.ndarray,
        indices: np.ndarray,
        errors: list[tuple[int, str]],
    ) -> None:
        super().__init__(message)
        self.frames = frames
        self.ok = ok
        self.indices = indices
        self.errors = errors


def register_codec(encoding: Encoding, decoder: Decoder, *, replace: bool = False) -> None:
    """Register ``decoder(stack, out, nthreads) -> frames`` for ``encoding``.

    The decoder writes the ``len(stack)`` frames into ``out[:len(stack)]`` (``out`` is checked
    to have the ring's frame shape and dtype and room for the stack) and returns that view. It
    raises :class:`CorruptFrames` for undecodable payloads.
    """
    enc = Encoding(encoding)
    if enc is Encoding.RAW:
        raise ValueError("Encoding.RAW needs no codec: decode_stack returns the frames themselves")
    if enc in _CODECS and not replace:
        raise ValueError(f"a codec for {enc.name} is already registered; pass replace=True")
    if not callable(decoder):
        raise TypeError(f"decoder must be callable, got {type(decoder).__name__}")
    _CODECS[enc] = decoder


def registered_codecs() -> list[Encoding]:
    """Encodings :func:`decode_stack` can decode besides RAW."""
    return sorted(_CODECS)


def scratch_for(ring: FrameRing) -> np.ndarray:
    """A decode target for the stacks of ``ring``: ``(slot_frames, det_y, det_x)`` of its dtype.
    Allocate one per worker thread, once."""
    return np.empty((ring.slot_frames, *ring.frame_shape), ring.dtype)


def decode_stack(stack: FilledStack, out: np.ndarray, *, nthreads: int = 1) -> np.ndarray:
    """The frames of ``stack``, decoded into ``out`` if they arrived compressed.

    Parameters
    ----------
    stack : FilledStack
        A stack read from a ring (``encoding``, ``raw``, ``nbytes``, ``frames``).
    out : numpy.ndarray
        Worker-owned scratch ``(n >= len(stack), det_y, det_x)`` of the ring's dtype, C-contiguous
        (see :func:`scratch_for`). Not touched for RAW stacks.
    nthreads : int
        Native threads for this call. Keep 1 when several workers decode concurrently (they run in
        parallel with the GIL released); more uses the shared native pool (0: all of it).

    Returns
    -------
    numpy.ndarray
        ``stack.frames`` for RAW stacks, else ``out[:len(stack)]``.

    Raises
    ------
    CorruptFrames
        Some payloads were corrupt (the others are decoded; see the exception's attributes).
    ValueError, TypeError
        ``out`` does not fit the stack, or no codec is registered for the stack's encoding.
    """
    enc = stack.encoding
    if enc is Encoding.RAW:
        return stack.frames
    try:
        decoder = _CODECS[enc]
    except KeyError:
        names = ", ".join(e.name for e in registered_codecs()) or "none"
        raise ValueError(
            f"no codec registered for {Encoding(enc).name} (registered: {names})"
        ) from None
    like = stack.frames
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    if out.dtype != like.dtype or out.shape[1:] != like.shape[1:] or len(out) < len(stack):
        raise ValueError(
            f"out {out.shape} {out.dtype} cannot hold this stack of {len(stack)} frames "
            f"{like.shape[1:]} {like.dtype}; allocate it with codecs.scratch_for(ring)"
        )
    return decoder(stack, out, nthreads)


def _decode_bslz4(stack: FilledStack, out: np.ndarray, nthreads: int) -> np.ndarray:
    n = len(stack)
    frames = out[:n]
    frame_bytes = stack.frames.strides[0]
    errors = _native.bslz4_decode_stack(stack.raw, stack.nbytes, n, frame_bytes, out, nthreads)
    if errors:
        ok = np.ones(n, dtype=bool)
        bad = [i for i, _ in errors]
        ok[bad] = False
        idx = stack.indices[bad].copy()
        first = errors[0][1]
        raise CorruptFrames(
            f"{len(errors)} of {n} bitshuffle-LZ4 frames are corrupt (scan indices "
            f"{idx[:8].tolist()}{' …' if len(idx) > 8 else ''}); first: {first}",
            frames,
            ok,
            idx,
            errors,
        )
    return frames


register_codec(Encoding.BSLZ4, _decode_bslz4)


# -- single payloads ------------------------------------------------------------------------------
def bslz4_header(payload) -> tuple[int, int]:
    """``(uncompressed_bytes, block_bytes)`` from the 12-byte header of a bitshuffle-LZ4 payload."""
    head = bytes(memoryview(payload)[:BSLZ4_HEADER_BYTES])
    if len(head) < BSLZ4_HEADER_BYTES:
        raise ValueError(f"a bitshuffle-LZ4 payload starts with a 12-byte header; got {len(head)}")
    return struct.unpack(">QI", head)


def bslz4_decode(payload, out: np.ndarray) -> np.ndarray:
    """Decode one bitshuffle-LZ4 payload (DECTRIS/HDF5-filter framing) into ``out`` (natively,
    GIL released); ValueError if it is corrupt. Returns ``out``."""
    return _native.bslz4_decode(payload, out)


def bslz4_encode(frame: np.ndarray, block_size: int = 0) -> bytes:
    """Compress ``frame`` as a DECTRIS detector does: the bitshuffle HDF5-filter framing
    (12-byte header) around ``bitshuffle.compress_lz4`` (which writes the blocks only).

    Needs the optional ``bitshuffle`` package (``pip install stemedge[dectris]``). ``block_size``
    is in elements; 0 picks bitshuffle's default (8192 bytes' worth).
    """
    try:
        import bitshuffle
    except ImportError as exc:
        raise ImportError(
            "bslz4_encode needs the bitshuffle package: pip install 'stemedge[dectris]'"
        ) from exc
    a = np.ascontiguousarray(frame)
    if a.dtype.byteorder == ">":
        raise TypeError("frame: big-endian data; DECTRIS streams are little-endian ('<')")
    itemsize = a.dtype.itemsize
    if block_size == 0:
        block_size = max((8192 // itemsize) // 8 * 8, 128)  # bshuf_default_block_size
    if block_size <= 0 or block_size % 8:
        raise ValueError(f"block_size must be a positive multiple of 8 elements, got {block_size}")
    body = bitshuffle.compress_lz4(a.reshape(-1), block_size)
    return struct.pack(">QI", a.nbytes, block_size * itemsize) + body.tobytes()
