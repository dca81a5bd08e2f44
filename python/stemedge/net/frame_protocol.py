"""stemedge frame protocol (SEFP): frames of one scan over ZeroMQ PUSH → PULL.

Every message has exactly two ZeroMQ parts: a fixed 72-byte header, then the payload (possibly
empty), sent zero-copy from numpy. All integers are little-endian::

    offset size field          meaning
    0      4    magic          b"SEFP"
    4      1    version        1
    5      1    type           1 BEGIN, 2 FRAMES, 3 END
    6      1    dtype          0 none, 1 uint8, 2 uint16, 3 uint32, 4 float32 (little-endian)
    7      1    flags          bit 0: ``crc32`` holds the CRC-32 of the payload
    8      8    scan_id        u64, the same in every message of one scan
    16     8    first_index    i64, flat scan index of the first frame (FRAMES)
    24     4    n_frames       FRAMES: frames in this message (consecutive indices from
                               first_index); END: frame pieces this sender sent in the scan
    28     2    part           FRAMES: which byte range of each frame the payload holds
    30     2    n_parts        byte ranges per frame (1: whole frames)
    32     8    offset         FRAMES: byte offset of this range within each frame
    40     8    frame_nbytes   bytes of one whole frame (det_y * det_x * itemsize)
    48     4    det_y
    52     4    det_x
    56     8    payload_nbytes size of part 2
    64     4    crc32
    68     2    sender         rank of the sending socket in its group
    70     2    n_senders      sockets in the group; the scan ends after an END from each

* BEGIN (one per sender, before its frames): payload = UTF-8 JSON
  ``{"geometry": ScanGeometry.to_dict(), "metadata": {...}}``.
* FRAMES: payload = ``n_frames`` consecutive frames, or for split frames (``n_parts > 1``) the
  same byte range ``[offset, offset + payload_nbytes / n_frames)`` of each of ``n_frames``
  consecutive frames, concatenated. Split frames are reassembled by the receiver per
  (scan_id, index); the ranges of one frame may come from different senders.
* END (one per sender, after its frames): ``n_frames`` = pieces sent (a whole frame is one
  piece, a split frame ``n_parts``), so the receiver expects ``sum(pieces / n_parts)`` frames.

ZeroMQ delivers the parts of a message atomically and keeps the order of one connection, so a
sender's BEGIN precedes its frames and its END follows them.
"""

from __future__ import annotations

import enum
import json
import struct
from typing import Any, NamedTuple

import numpy as np

from stemedge.geometry import ScanGeometry

__all__ = [
    "FLAG_CRC32",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_BEGIN_BYTES",
    "VERSION",
    "Header",
    "MsgType",
    "ProtocolError",
    "byte_ranges",
    "decode_begin",
    "dtype_code",
    "dtype_from_code",
    "encode_begin",
]

MAGIC = b"SEFP"
VERSION = 1
FLAG_CRC32 = 0x01
MAX_BEGIN_BYTES = 1 << 20  # geometry + metadata JSON; anything bigger is not a BEGIN we sent

_STRUCT = struct.Struct("<4sBBBBQqIHHQQIIQIHH")
HEADER_SIZE = _STRUCT.size  # 72

_DTYPES = (np.uint8, np.uint16, np.uint32, np.float32)
_CODE_OF = {np.dtype(t).newbyteorder("<"): i + 1 for i, t in enumerate(_DTYPES)}  # '>u2' misses
_DTYPE_OF = {i + 1: np.dtype(t) for i, t in enumerate(_DTYPES)}


class MsgType(enum.IntEnum):
    BEGIN = 1
    FRAMES = 2
    END = 3


class ProtocolError(ValueError):
    """A message that breaks the protocol; ``reason`` is the short key counted by receivers."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Header(NamedTuple):
    """The fixed header (module docstring). ``pack()`` gives the 72 bytes on the wire."""

    magic: bytes = MAGIC
    version: int = VERSION
    type: int = MsgType.FRAMES
    dtype: int = 0
    flags: int = 0
    scan_id: int = 0
    first_index: int = 0
    n_frames: int = 0
    part: int = 0
    n_parts: int = 1
    offset: int = 0
    frame_nbytes: int = 0
    det_y: int = 0
    det_x: int = 0
    payload_nbytes: int = 0
    crc32: int = 0
    sender: int = 0
    n_senders: int = 1

    def pack(self) -> bytes:
        return _STRUCT.pack(*self)

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        """Parse and check the fixed fields; ProtocolError (reason header_size, magic, version
        or type) for anything that is not a header of this protocol version."""
        if len(data) != HEADER_SIZE:
            raise ProtocolError(
                "header_size", f"header is {len(data)} bytes, expected {HEADER_SIZE}"
            )
        h = cls._make(_STRUCT.unpack(data))
        if h.magic != MAGIC:
            raise ProtocolError("magic", f"bad magic {h.magic!r} (expected {MAGIC!r})")
        if h.version != VERSION:
            raise ProtocolError("version", f"protocol version {h.version}, this reads {VERSION}")
        if h.type not in _MSG_TYPES:
            raise ProtocolError("type", f"unknown message type {h.type}")
        return h


_MSG_TYPES = frozenset(int(t) for t in MsgType)


def dtype_code(dtype: Any) -> int:
    """Wire code of a frame dtype (native little-endian only: the payload is sent as is)."""
    dt = np.dtype(dtype)
    code = _CODE_OF.get(dt)
    if code is None:
        raise TypeError(f"dtype must be little-endian uint8/uint16/uint32/float32, got {dt}")
    return code


def dtype_from_code(code: int) -> np.dtype | None:
    """The dtype of a wire code, or None for an unknown code."""
    return _DTYPE_OF.get(code)


def byte_ranges(frame_nbytes: int, n_parts: int, itemsize: int) -> list[tuple[int, int]]:
    """``n_parts`` contiguous (offset, nbytes) ranges covering a frame, cut at whole pixels so
    every piece holds whole values."""
    pixels = frame_nbytes // itemsize
    if not 1 <= n_parts <= pixels:
        raise ValueError(f"split_parts must be between 1 and {pixels} (pixels), got {n_parts}")
    cuts = [p * pixels // n_parts * itemsize for p in range(n_parts + 1)]
    return [(cuts[p], cuts[p + 1] - cuts[p]) for p in range(n_parts)]


def encode_begin(geometry: ScanGeometry, metadata: dict[str, Any] | None) -> bytes:
    """BEGIN payload: geometry and free metadata as JSON."""
    try:
        data = json.dumps({"geometry": geometry.to_dict(), "metadata": metadata or {}})
    except TypeError as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from None
    raw = data.encode()
    if len(raw) > MAX_BEGIN_BYTES:
        raise ValueError(
            f"metadata too large for BEGIN ({len(raw)} bytes > {MAX_BEGIN_BYTES}): "
            "send bulky metadata another way"
        )
    return raw


def decode_begin(payload: bytes) -> tuple[ScanGeometry, dict[str, Any]]:
    """Geometry and metadata of a BEGIN payload; ProtocolError ``begin_payload`` if malformed."""
    try:
        d = json.loads(payload)
        geometry = ScanGeometry.from_dict(d["geometry"])
        metadata = d.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise TypeError("metadata is not an object")
    except Exception as exc:  # any malformed JSON / geometry: one counted rejection
        raise ProtocolError("begin_payload", f"malformed BEGIN payload: {exc}") from None
    return geometry, metadata
