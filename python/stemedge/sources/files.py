"""File sources: ``.npy``, raw binary, EMD/HDF5 and Merlin MIB files as :class:`Source` objects.

Every source reads through a memory map (or, for HDF5, straight into the chunk array) and yields
C-contiguous, native-endian chunks in scan order. Opening never blocks: an incomplete or corrupt
file raises :class:`~stemedge.sources.base.SourceError` at once, so a folder watcher can call
:func:`open_source` on files that are still being written and simply try again later.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stemedge.calibration import Calibration
from stemedge.geometry import FRAME_DTYPES, ScanGeometry
from stemedge.io.emd import read_emd
from stemedge.io.mib import MIBFile
from stemedge.sources.base import Chunk, Source, SourceError

__all__ = ["EMDSource", "MIBSource", "NpySource", "RawSource", "open_source"]

_KINDS = {
    ".npy": "npy",
    ".raw": "raw",
    ".bin": "raw",
    ".h5": "emd",
    ".hdf5": "emd",
    ".emd": "emd",
    ".mib": "mib",
}


def _check_max_frames(max_frames: Any) -> int:
    if isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)):
        raise TypeError(f"max_frames must be an int, got {type(max_frames).__name__}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    return int(max_frames)


def _native_dtype(dtype: Any, path: Path) -> np.dtype:
    """The native-endian twin of ``dtype``; ValueError unless it is a frame dtype (a kind of
    file we do not stream, not an incomplete one: so no SourceError)."""
    native = np.dtype(dtype).newbyteorder("=")
    if native not in FRAME_DTYPES:
        names = ", ".join(str(d) for d in FRAME_DTYPES)
        raise ValueError(
            f"{path}: frames of dtype {np.dtype(dtype)} are not supported; stemedge streams "
            f"{names} (convert the file first)"
        )
    return native


def _as_chunk(frames: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``frames`` as a C-contiguous native-endian plain ndarray: a view when it already is one
    (no copy of memory-mapped data), else one converting copy."""
    if frames.dtype == dtype and frames.flags.c_contiguous:
        return frames.view(np.ndarray)
    return np.ascontiguousarray(frames, dtype=dtype)


def _with_scan_shape(geometry: ScanGeometry, scan_shape: Any, path: Path) -> ScanGeometry:
    """Relabel the scan: flat indices are row-major, so any shape with as many positions
    addresses the same frames."""
    if scan_shape is None:
        return geometry
    new = dataclasses.replace(geometry, scan_shape=scan_shape)
    if new.n_positions != geometry.n_positions:
        raise ValueError(
            f"scan_shape={tuple(scan_shape)} has {new.n_positions} positions but {path} holds "
            f"{geometry.n_positions} frames ({geometry.scan_shape[0]}×{geometry.scan_shape[1]})"
        )
    return new


class _FileSource(Source):
    """Frames 0 … n_frames-1 of a file, read in flat scan order by ``_read(a, b)``."""

    kind = "file"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such file: {self.path}")
        self.n_frames = 0

    def _read(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def read_frames(self, start: int, stop: int) -> np.ndarray:
        """Frames at flat scan positions [start, stop), a new contiguous array (random access:
        what a Dask partition reads)."""
        if not (0 <= start <= stop <= self.n_frames):
            raise IndexError(f"frames [{start}, {stop}) outside [0, {self.n_frames})")
        return self._read(start, stop)

    def chunks(self, max_frames: int) -> Iterator[Chunk]:
        step = _check_max_frames(max_frames)
        for start in range(0, self.n_frames, step):
            stop = min(start + step, self.n_frames)
            yield Chunk(self._read(start, stop), np.arange(start, stop, dtype=np.int64))

    def describe(self) -> dict[str, Any]:
        geo = self.geometry
        return {
            "kind": self.kind,
            "path": str(self.path),
            "scan_shape": list(geo.scan_shape),
            "frame_shape": list(geo.frame_shape),
            "dtype": str(geo.dtype),
            "n_frames": self.n_frames,
            "nbytes": self.n_frames * geo.frame_nbytes,
        }


class NpySource(_FileSource):
    """A ``.npy`` file of frames, memory-mapped.

    Parameters
    ----------
    path : str or Path
    scan_shape : (scan_y, scan_x), optional
        Needed for a 3D stack (n, det_y, det_x) (default ``(1, n)``); for a 4D array it may
        relabel the scan with the same number of positions.
    calibration : Calibration, optional
    """

    kind = "npy"

    def __init__(
        self,
        path: str | Path,
        scan_shape: tuple[int, int] | None = None,
        *,
        calibration: Calibration | None = None,
    ) -> None:
        super().__init__(path)
        try:
            arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise SourceError(
                f"{self.path}: not a complete .npy file ({exc}); it may still be being written"
            ) from exc
        if arr.ndim not in (3, 4):
            raise ValueError(
                f"{self.path}: holds an array of shape {arr.shape}; expected frames "
                "(n, det_y, det_x) or (scan_y, scan_x, det_y, det_x)"
            )
        dtype = _native_dtype(arr.dtype, self.path)
        n = int(np.prod(arr.shape[:-2]))
        own_scan = arr.shape[:2] if arr.ndim == 4 else (1, n)
        geometry = ScanGeometry(own_scan, arr.shape[-2:], dtype, calibration)
        self.geometry = _with_scan_shape(geometry, scan_shape, self.path)
        self._array = arr
        self.n_frames = n
        # A C-ordered file is a frame stack as it lies: chunks are slices of the map.
        self._stack = arr.reshape(n, *arr.shape[-2:]) if arr.flags.c_contiguous else None

    def _read(self, start: int, stop: int) -> np.ndarray:
        if self._stack is not None:
            return _as_chunk(self._stack[start:stop], self.geometry.dtype)
        # Fortran-ordered file: gather the frames (one copy).
        flat = np.arange(start, stop)
        if self._array.ndim == 3:
            part = self._array[flat]
        else:
            part = self._array[np.divmod(flat, self._array.shape[1])]
        return _as_chunk(part, self.geometry.dtype)

    def close(self) -> None:
        self._array = self._stack = None


class RawSource(_FileSource):
    """Headerless binary frames in scan order (``offset`` bytes of header skipped), memory-mapped.

    Parameters
    ----------
    path : str or Path
    scan_shape, frame_shape : (y, x)
    dtype : dtype
        Pixel dtype as stored; big-endian (e.g. ``'>u2'``) is byte-swapped per chunk.
    offset : int
        Bytes before the first frame.
    allow_partial : bool
        Accept a file with fewer complete frames than the scan (still being written) and read
        those; without it such a file raises SourceError.
    calibration : Calibration, optional
    """

    kind = "raw"

    def __init__(
        self,
        path: str | Path,
        scan_shape: tuple[int, int],
        frame_shape: tuple[int, int],
        dtype: Any,
        offset: int = 0,
        *,
        allow_partial: bool = False,
        calibration: Calibration | None = None,
    ) -> None:
        super().__init__(path)
        file_dtype = np.dtype(dtype)
        self.geometry = ScanGeometry(
            scan_shape, frame_shape, _native_dtype(file_dtype, self.path), calibration
        )
        if int(offset) != offset or offset < 0:
            raise ValueError(f"offset must be a non-negative int, got {offset!r}")
        self.offset = int(offset)
        size = self.path.stat().st_size - self.offset
        need = self.geometry.n_positions
        n_complete, tail = divmod(max(size, 0), self.geometry.frame_nbytes)
        if n_complete > need or (n_complete == need and tail):
            raise ValueError(
                f"{self.path}: {size} bytes after offset {self.offset}, but scan_shape × "
                f"frame_shape × dtype make {need * self.geometry.frame_nbytes}; check "
                "scan_shape, frame_shape, dtype and offset"
            )
        if n_complete < need and not allow_partial:
            raise SourceError(
                f"{self.path}: raw file holds {n_complete} complete frames of {need} "
                f"({max(size, 0)} bytes after offset {self.offset}, "
                f"{self.geometry.frame_nbytes} per frame); it may still be being written, or "
                "scan_shape/frame_shape/dtype/offset are wrong. Pass allow_partial=True to read "
                "the complete frames."
            )
        self.n_frames = n_complete
        frame_shape = self.geometry.frame_shape
        if n_complete:
            self._map = np.memmap(
                self.path, file_dtype, "r", self.offset, (n_complete, *frame_shape)
            )
        else:  # np.memmap refuses an empty map
            self._map = np.zeros((0, *frame_shape), file_dtype)

    def _read(self, start: int, stop: int) -> np.ndarray:
        return _as_chunk(self._map[start:stop], self.geometry.dtype)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "offset": self.offset, "file_dtype": self._map.dtype.str}

    def close(self) -> None:
        self._map = self._map[:0].copy()


class MIBSource(_FileSource):
    """A Quantum Detectors Merlin ``.mib`` file (see :class:`stemedge.io.mib.MIBFile`).

    Chunks are native-endian copies: one copy per chunk gathers the frames from between their
    headers and byte-swaps them in the same pass.
    """

    kind = "mib"

    def __init__(
        self,
        path: str | Path,
        scan_shape: tuple[int, int] | None = None,
        *,
        allow_partial: bool = False,
        calibration: Calibration | None = None,
    ) -> None:
        super().__init__(path)
        self.mib = MIBFile(self.path, scan_shape, allow_partial=allow_partial)
        self.geometry = ScanGeometry(
            self.mib.scan_shape, self.mib.frame_shape, self.mib.dtype, calibration
        )
        self.n_frames = self.mib.n_frames

    def _read(self, start: int, stop: int) -> np.ndarray:
        return self.mib.read(start, stop)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mib": self.mib.info()}

    def close(self) -> None:
        self.mib.close()


class EMDSource(_FileSource):
    """The datacube of an EMD 1.0 file (stemedge, py4DSTEM or emdfile), read frame-row-wise
    straight into each chunk.

    The calibration is the file's when it has one, else ``calibration``. A stemedge file from an
    acquisition that stopped early records which positions hold frames; only those are yielded
    (positions never written would read as zeros).
    """

    kind = "emd"

    def __init__(
        self,
        path: str | Path,
        *,
        scan_shape: tuple[int, int] | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        super().__init__(path)
        self.emd = read_emd(self.path)
        try:
            geometry = self.emd.geometry
            if geometry.calibration is None and calibration is not None:
                geometry = dataclasses.replace(geometry, calibration=calibration)
            self.geometry = _with_scan_shape(geometry, scan_shape, self.path)
        except BaseException:
            self.emd.close()
            raise
        mask = self.emd.positions_written
        all_written = mask is None or bool(mask.all())
        self._positions = None if all_written else np.flatnonzero(mask)
        self.n_frames = geometry.n_positions if all_written else self._positions.size

    def chunks(self, max_frames: int) -> Iterator[Chunk]:
        if self._positions is None:
            yield from super().chunks(max_frames)
            return
        step = _check_max_frames(max_frames)
        for start in range(0, self._positions.size, step):
            idx = self._positions[start : start + step]
            breaks = np.flatnonzero(np.diff(idx) != 1) + 1
            parts = [self._read(int(run[0]), int(run[-1]) + 1) for run in np.split(idx, breaks)]
            yield Chunk(np.concatenate(parts) if len(parts) > 1 else parts[0], idx.copy())

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Flat positions [start, stop): at most three reads (partial row, whole rows, partial
        row), each straight into the output."""
        dset = self.emd.data
        scan_x = dset.shape[1]  # the file's own scan, whatever scan_shape relabels it to
        out = np.empty((stop - start, *self.geometry.frame_shape), self.geometry.dtype)
        pos, i = start, 0
        try:
            while pos < stop:
                y, x = divmod(pos, scan_x)
                if x == 0 and stop - pos >= scan_x:
                    rows = (stop - pos) // scan_x
                    n = rows * scan_x
                    dest = out[i : i + n].reshape(rows, scan_x, *out.shape[1:])
                    dset.read_direct(dest, np.s_[y : y + rows])
                else:
                    n = min(scan_x - x, stop - pos)
                    dset.read_direct(out[i : i + n], np.s_[y, x : x + n])
                pos, i = pos + n, i + n
        except (OSError, RuntimeError, ValueError) as exc:
            raise SourceError(
                f"{self.path}: reading frames {start}…{stop - 1} failed ({exc}); the file is "
                "corrupt or truncated"
            ) from exc
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "datacube": self.emd.datacube_path}

    def close(self) -> None:
        self.emd.close()


def open_source(
    path: str | Path,
    *,
    scan_shape: tuple[int, int] | None = None,
    frame_shape: tuple[int, int] | None = None,
    dtype: Any = None,
    calibration: Calibration | None = None,
    allow_partial: bool = False,
    offset: int = 0,
) -> Source:
    """Open a file of frames as a :class:`Source`, choosing the reader by extension.

    ``.npy`` → :class:`NpySource`; ``.raw``/``.bin`` → :class:`RawSource` (needs
    ``scan_shape``, ``frame_shape``, ``dtype``; ``offset``); ``.h5``/``.hdf5``/``.emd`` →
    :class:`EMDSource`; ``.mib`` → :class:`MIBSource`. For self-describing files
    ``frame_shape`` and ``dtype`` are optional checks, and ``scan_shape`` may relabel the scan
    (same number of positions). The calibration comes from the file where it has one, else
    ``calibration``. ``allow_partial`` applies to raw and MIB files (read the complete frames of
    a file still being written).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    SourceError
        The file is incomplete (still being written) or corrupt. Opening never waits.
    ValueError
        Unknown extension, frames of a dtype stemedge does not stream, or arguments that do not
        fit the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    kind = _KINDS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"{path}: unknown file kind {path.suffix!r}; supported: "
            f"{', '.join(sorted(_KINDS))}. For other headerless layouts use "
            "RawSource(path, scan_shape, frame_shape, dtype, offset)."
        )
    if kind == "raw":
        missing = [
            n
            for n, v in (("scan_shape", scan_shape), ("frame_shape", frame_shape), ("dtype", dtype))
            if v is None
        ]
        if missing:
            raise ValueError(f"{path}: a raw file needs {', '.join(m + '=' for m in missing)}")
        return RawSource(
            path,
            scan_shape,
            frame_shape,
            dtype,
            offset,
            allow_partial=allow_partial,
            calibration=calibration,
        )
    if kind == "npy":
        source: Source = NpySource(path, scan_shape, calibration=calibration)
    elif kind == "mib":
        source = MIBSource(path, scan_shape, allow_partial=allow_partial, calibration=calibration)
    else:
        source = EMDSource(path, scan_shape=scan_shape, calibration=calibration)
    try:
        _check_matches(source, path, frame_shape, dtype)
    except BaseException:
        source.close()
        raise
    return source


def _check_matches(source: Source, path: Path, frame_shape: Any, dtype: Any) -> None:
    geo = source.geometry
    if frame_shape is not None and tuple(frame_shape) != geo.frame_shape:
        raise ValueError(
            f"{path}: frames are {geo.frame_shape}, not frame_shape={tuple(frame_shape)}"
        )
    if dtype is not None and np.dtype(dtype).newbyteorder("=") != geo.dtype:
        raise ValueError(f"{path}: frames are {geo.dtype}, not dtype={np.dtype(dtype)}")
