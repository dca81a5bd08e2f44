"""Quantum Detectors Merlin (Medipix3) MIB files, read through a memory map.

A MIB file is a sequence of frames, each an ASCII header (comma-separated, starting "MQ1") and
big-endian pixel data. The header's third field is its own size, so the frame stride is
``header_size + height * width * itemsize`` and a structured memmap skips the headers.

Supported: processed frames (pixel types U08, U16, U32; counter depths 1, 6, 12, 24), single
chips and assembled quads (2x2, as the file stores them). Not supported: raw frames (R64, the
packed chip readout), which raise ValueError; and colour/two-counter modes are not separated
(their frames come out interleaved, in file order).

Frames come out in file order, rows as stored. RosettaSciIO's ``file_reader`` flips the detector
rows (``np.flip(data, axis=-2)``); stemedge leaves orientation to the calibration (``flip_y``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from stemedge.sources.base import SourceError

__all__ = ["MIBFile", "MIBHeader", "find_hdr", "parse_mib_header", "read_hdr"]

_MAGIC = b"MQ1,"
_FIRST_READ = 4096  # more than any MIB header seen (single 384, quad 768 bytes)
_PIXEL_TYPES = {"U08": np.dtype(">u1"), "U16": np.dtype(">u2"), "U32": np.dtype(">u4")}
_MAX_TIMESTAMP_FRAMES = 10_000  # enough to see a few scan lines; bounded cost at open


@dataclasses.dataclass(frozen=True)
class MIBHeader:
    """One frame header (the fields Merlin writes, in order; see the MIB format manual)."""

    sequence_number: int
    header_size: int
    n_chips: int
    width: int
    height: int
    pixel_type: str  # U08, U16, U32 (processed) or R64 (raw)
    chip_layout: str  # "1x1", "2x2", "Nx1"
    chip_select: str
    timestamp: str  # local time, µs resolution
    shutter_s: float
    counter: int
    colour_mode: int
    gain_mode: int
    thresholds_keV: tuple[float, ...]
    timestamp_utc: str | None = None  # from the "MQ1A" extension, ns resolution
    shutter_ns: int | None = None
    counter_depth: int | None = None

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def file_dtype(self) -> np.dtype:
        """Big-endian pixel dtype as stored; raises ValueError for raw (R64) frames."""
        try:
            return _PIXEL_TYPES[self.pixel_type]
        except KeyError:
            raise ValueError(
                f"MIB pixel type {self.pixel_type!r} is not supported: stemedge reads processed "
                f"frames ({', '.join(_PIXEL_TYPES)}); raw R64 frames need unpacking of the "
                "chip counters. Record in Merlin's processed mode."
            ) from None

    @property
    def frame_nbytes(self) -> int:
        """Header plus pixels: the stride between frames in the file."""
        return self.header_size + self.height * self.width * self.file_dtype.itemsize


def _fields(raw: bytes) -> list[str]:
    return raw.rstrip(b"\x00 ").decode("ascii", "replace").split(",")


def parse_mib_header(raw: bytes) -> MIBHeader:
    """Parse one MIB frame header (``raw`` may run on past it; the header's own size field says
    where it ends). Raises ValueError when ``raw`` is not a MIB header."""
    if not raw.startswith(_MAGIC):
        raise ValueError(f"not a MIB frame header (starts with {raw[:8]!r}, expected b'MQ1,')")
    f = _fields(raw[:_FIRST_READ])
    try:
        header_size = int(f[2])
        f = _fields(raw[:header_size])
        n_chips = int(f[3])
        thresholds = tuple(float(v) for v in f[14:22])
        header = dict(
            sequence_number=int(f[1]),
            header_size=header_size,
            n_chips=n_chips,
            width=int(f[4]),
            height=int(f[5]),
            pixel_type=f[6].strip(),
            chip_layout=f[7].strip(),
            chip_select=f[8].strip(),
            timestamp=f[9].strip(),
            shutter_s=float(f[10]),
            counter=int(f[11]),
            colour_mode=int(f[12]),
            gain_mode=int(f[13]),
            thresholds_keV=thresholds,
        )
        if "MQ1A" in f:  # extension (newer firmware): UTC time in ns, shutter, counter depth
            i = f.index("MQ1A")
            header.update(
                timestamp_utc=f[i + 1].strip(),
                shutter_ns=int(f[i + 2].strip().removesuffix("ns")),
                counter_depth=int(f[i + 3]),
            )
    except (IndexError, ValueError) as exc:
        raise ValueError(f"malformed MIB frame header ({exc}): {raw[:80]!r}…") from None
    if header_size < len(_MAGIC) or min(header["width"], header["height"]) < 1:
        raise ValueError(f"implausible MIB frame header: {raw[:80]!r}…")
    return MIBHeader(**header)


def find_hdr(mib_path: str | Path) -> Path | None:
    """The acquisition header next to a MIB file (same name, .hdr or .HDR), if any."""
    mib_path = Path(mib_path)
    for suffix in (".hdr", ".HDR"):
        candidate = mib_path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def read_hdr(path: str | Path) -> dict[str, str]:
    """Parse a Merlin ``.hdr`` acquisition header: ``{"Counter Depth (number)": "6", …}``.

    Lines are ``key:<TAB>value``; the "HDR," first line, the "End" line and anything that is not
    a key/value line (padding, a half-written file) are skipped."""
    text = Path(path).read_bytes().decode("latin-1")
    result = {}
    for line in text.splitlines():
        key, sep, value = line.partition("\t")
        key = key.strip().rstrip(":").strip()
        if not sep or not key or key in ("HDR,", "End"):
            continue
        result[key] = value.strip()
    return result


def _hdr_value(hdr: dict[str, str] | None, prefix: str) -> str | None:
    """The value of the .hdr key starting with ``prefix`` (keys carry their units/choices)."""
    for key, value in (hdr or {}).items():
        if key.startswith(prefix):
            return value
    return None


def _hdr_int(hdr: dict[str, str] | None, prefix: str) -> int | None:
    value = _hdr_value(hdr, prefix)
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def _line_length_from_timestamps(times_ns: np.ndarray) -> int | None:
    """Scan-line length from frame times: at the end of each line the beam flies back, so every
    L-th gap is longer. Accept L only when those gaps are all longer than every other gap, by a
    margin well above the jitter (RosettaSciIO uses the same idea, less strictly)."""
    gaps = np.diff(times_ns.astype(np.int64))
    if gaps.size < 3:
        return None
    above = np.flatnonzero(gaps > gaps.mean())
    if above.size == 0:
        return None
    length = int(above[0]) + 1
    is_flyback = np.zeros(gaps.size, dtype=bool)
    is_flyback[length - 1 :: length] = True
    if length < 2 or is_flyback.all():
        return None
    line, flyback = gaps[~is_flyback], gaps[is_flyback]
    jitter = int(line.max() - line.min())
    margin = int(flyback.min() - line.max())
    return length if margin > max(4 * jitter, 1000) else None


def _positive_pair(value: Any, name: str) -> tuple[int, int]:
    try:
        y, x = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (scan_y, scan_x) pair of ints, got {value!r}") from None
    if y < 1 or x < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return y, x


class MIBFile:
    """A Merlin MIB file, memory-mapped.

    Parameters
    ----------
    path : str or Path
    scan_shape : (scan_y, scan_x), optional
        The scan. Default: worked out from the ``.hdr`` (frames per trigger) or the frame
        timestamps (flyback gaps), else ``(1, n_frames)``. Pass it whenever you know it.
    allow_partial : bool
        Accept a file that is shorter than the acquisition (cut mid-frame, or fewer frames than
        ``scan_shape``/the .hdr say, e.g. still being written): ``n_frames`` counts the complete
        frames. Without it such a file raises SourceError.

    Attributes
    ----------
    header : MIBHeader
        The first frame's header.
    hdr : dict or None
        The ``.hdr`` acquisition header, when there is one.
    n_frames : int
        Complete frames available.
    n_expected : int
        Frames the acquisition has (scan positions).
    scan_shape, frame_shape, dtype
        ``dtype`` is native-endian (what :meth:`read` returns).
    frames : ndarray (n_frames, height, width)
        Zero-copy strided view of the pixel data, big-endian as stored (values read correctly;
        use :meth:`read` for native-endian C-contiguous copies).
    headers : ndarray of bytes (n_frames,)
        The raw frame headers.
    """

    def __init__(
        self,
        path: str | Path,
        scan_shape: tuple[int, int] | None = None,
        *,
        allow_partial: bool = False,
    ) -> None:
        self.path = Path(path)
        self._closed = False
        size = self.path.stat().st_size
        self.header = self._first_header(size)
        file_dtype = self.header.file_dtype  # ValueError for raw frames: a kind we do not read
        self.dtype = file_dtype.newbyteorder("=")
        self.frame_shape = self.header.frame_shape
        hdr_path = find_hdr(self.path)
        self.hdr = read_hdr(hdr_path) if hdr_path is not None else None
        frame_bytes = self.header.frame_nbytes
        n_complete, tail = divmod(size, frame_bytes)
        if scan_shape is not None:
            scan_shape = _positive_pair(scan_shape, "scan_shape")
        self.n_expected = self._expected(n_complete, scan_shape)
        if (tail or n_complete < self.n_expected) and not allow_partial:
            raise SourceError(self._incomplete_message(n_complete, tail, scan_shape))
        self.n_frames = min(n_complete, self.n_expected)
        self._map(file_dtype)
        self._check_last_header()
        self.scan_shape = scan_shape or self._guess_scan_shape()

    # --- opening -----------------------------------------------------------------------------
    def _first_header(self, size: int) -> MIBHeader:
        with open(self.path, "rb") as fh:
            head = fh.read(_FIRST_READ)
        if not head.startswith(_MAGIC):
            what = "is empty" if size == 0 else f"does not start with a MIB header ({head[:8]!r})"
            raise SourceError(f"{self.path}: not a Merlin MIB file: it {what}")
        try:
            header_size = int(_fields(head[:64])[2])
        except (IndexError, ValueError):
            raise SourceError(f"{self.path}: malformed first MIB header {head[:80]!r}") from None
        if size < header_size:
            raise SourceError(
                f"{self.path}: incomplete MIB file: {size} bytes, shorter than one frame header "
                f"({header_size} bytes); it may still be being written"
            )
        try:
            return parse_mib_header(head)
        except ValueError as exc:
            raise SourceError(f"{self.path}: {exc}") from None

    def _expected(self, n_complete: int, scan_shape: tuple[int, int] | None) -> int:
        if scan_shape is not None:
            n = scan_shape[0] * scan_shape[1]
            if n_complete > n:
                raise ValueError(
                    f"scan_shape={scan_shape} has {n} positions but {self.path} holds "
                    f"{n_complete} frames; pass the acquisition's scan shape"
                )
            return n
        from_hdr = _hdr_int(self.hdr, "Frames in Acquisition")
        # A stale or zero ("continuous acquisition") count cannot be smaller than the file.
        return max(from_hdr or 0, n_complete)

    def _incomplete_message(self, n: int, tail: int, scan_shape) -> str:
        if tail:
            problem = (
                f"truncated MIB file: {n} complete frames, then {tail} bytes of an incomplete "
                f"frame (a frame is {self.header.frame_nbytes} bytes)"
            )
        else:
            origin = f"scan_shape={scan_shape}" if scan_shape else "the .hdr file"
            problem = (
                f"MIB file holds {n} complete frames but the acquisition has "
                f"{self.n_expected} (from {origin})"
            )
        return (
            f"{self.path}: {problem}; it may still be being written. Pass allow_partial=True to "
            "read the complete frames."
        )

    def _map(self, file_dtype: np.dtype) -> None:
        layout = np.dtype(
            [("header", f"S{self.header.header_size}"), ("data", file_dtype, self.frame_shape)]
        )
        if self.n_frames == 0:  # np.memmap refuses an empty map
            self._map_array = np.zeros(0, dtype=layout)
        else:
            self._map_array = np.memmap(self.path, dtype=layout, mode="r", shape=(self.n_frames,))
        self.frames: np.ndarray = self._map_array["data"]
        self.headers: np.ndarray = self._map_array["header"]

    def _check_last_header(self) -> None:
        """The last frame's header must match the first: catches a wrong frame stride (mixed
        frame sizes, garbage appended or overwritten) without reading every header."""
        if self.n_frames < 2:
            return
        last = bytes(self.headers[self.n_frames - 1])
        try:
            h = parse_mib_header(last)
            same = (h.header_size, h.frame_shape, h.pixel_type) == (
                self.header.header_size,
                self.frame_shape,
                self.header.pixel_type,
            )
        except ValueError:
            same = False
        if not same:
            raise SourceError(
                f"{self.path}: frame {self.n_frames - 1} does not start with a header like the "
                f"first frame's ({last[:40]!r}…): the file is corrupt or mixes frame sizes"
            )

    # --- scan shape --------------------------------------------------------------------------
    def _guess_scan_shape(self) -> tuple[int, int]:
        n = self.n_expected
        per_trigger = _hdr_int(self.hdr, "Frames per Trigger")
        if per_trigger and 1 < per_trigger < n and n % per_trigger == 0:
            return (n // per_trigger, per_trigger)  # one trigger per scan line
        trigger = (_hdr_value(self.hdr, "Trigger Start") or "").lower()
        if "internal" in trigger:
            return (1, n)  # free-running: frame times say nothing about a scan
        length = _line_length_from_timestamps(self.timestamps(_MAX_TIMESTAMP_FRAMES))
        if length and n % length == 0 and n // length > 1:
            return (n // length, length)
        return (1, n)

    def timestamps(self, max_frames: int | None = None) -> np.ndarray:
        """Frame times (datetime64[ns], UTC when the header has the MQ1A extension, else local
        time with µs resolution) of the first ``max_frames`` frames (default all)."""
        count = self.n_frames if max_frames is None else min(self.n_frames, int(max_frames))
        use_utc = self.header.timestamp_utc is not None
        out = np.empty(count, dtype="datetime64[ns]")
        for i in range(count):
            f = _fields(bytes(self.headers[i]))
            text = f[f.index("MQ1A") + 1] if use_utc else f[9].replace(" ", "T")
            # numpy warns on a timezone suffix; the MQ1A time is UTC by definition.
            out[i] = np.datetime64(text.strip().removesuffix("Z"), "ns")
        return out

    # --- data --------------------------------------------------------------------------------
    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``start:stop`` as a native-endian C-contiguous array: one copy (it gathers the
        frames from between their headers and byte-swaps in the same pass)."""
        if self._closed:
            raise ValueError(f"the MIBFile for {self.path} is closed")
        start, stop, _ = slice(start, stop).indices(self.n_frames)
        out = np.empty((max(stop - start, 0), *self.frame_shape), dtype=self.dtype)
        out[...] = self.frames[start:stop]
        return out

    def info(self) -> dict[str, Any]:
        """JSON-able summary for provenance."""
        h = self.header
        return {
            "path": str(self.path),
            "n_frames": self.n_frames,
            "n_expected": self.n_expected,
            "scan_shape": list(self.scan_shape),
            "frame_shape": list(self.frame_shape),
            "pixel_type": h.pixel_type,
            "counter_depth": h.counter_depth,
            "chip_layout": h.chip_layout,
            "n_chips": h.n_chips,
            "shutter_s": h.shutter_s,
            "first_timestamp": h.timestamp_utc or h.timestamp,
            "hdr": self.hdr,
        }

    def close(self) -> None:
        """Drop the memory map (arrays handed out keep it alive until they go). Idempotent."""
        self._closed = True
        self._map_array = np.zeros(0, dtype=self._map_array.dtype)
        self.frames = self._map_array["data"]
        self.headers = self._map_array["header"]

    def __enter__(self) -> MIBFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"MIBFile({str(self.path)!r}, n_frames={self.n_frames}, scan_shape={self.scan_shape},"
            f" frame_shape={self.frame_shape}, pixel_type={self.header.pixel_type})"
        )
