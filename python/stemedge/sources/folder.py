"""FolderWatcher: frames from a folder (a network share) that fills up during acquisition.

Each file holds the next consecutive frames of the scan, a ``(k, det_y, det_x)`` stack or a single
``(det_y, det_x)`` frame, and files follow each other in *natural* name order (``frame_2`` before
``frame_10``). The watcher delivers each file exactly once, only when it is complete, in order.

When is a file complete?
    Its size and modification time have not changed for ``settle_s`` (seen by this watcher, not
    from the file's mtime, whose clock on a share is the server's) **and** it parses completely:
    for ``.npy`` the header is whole and header offset + shape × itemsize equals the file size.
    The second test catches a writer that pauses longer than ``settle_s`` in the middle of a
    file; the first catches one that rewrites a file of the right size in place. Other kinds of
    file are opened with :func:`stemedge.sources.files.open_source` once settled; until it
    stops saying "incomplete" (SourceError) the watcher waits. Raw ``.raw``/``.bin`` files
    must hold a whole number of frames (their frame count); a raw writer that pauses at a frame
    boundary cannot be told from a finished one, so write those under a temporary name. Names
    starting
    with a dot and names ending in ``.tmp`` or ``.part`` are never read (write under such a name,
    then rename: a rename is atomic on one file system).

When is the acquisition over?
    After ``geometry.n_positions`` frames, or when the ``done_marker`` file appears. The marker
    says the writer has finished, so the files present then are read without waiting for them
    to settle (one that is still incomplete is an error), and the scan ends there.

Partial scans (a done marker before all frames arrived) are allowed by default: an operator
who stops a scan early still wants the part that was acquired. They are never silent:
:attr:`FolderWatcher.missing` holds the missing scan indices (a ``range``),
:attr:`FolderWatcher.complete` is False, and :meth:`~FolderWatcher.describe` reports both. Pass
``allow_partial=False`` to get a :class:`SourceError` instead.

Errors (:class:`SourceError`, naming the file): a file whose dtype or frame shape does not match
the geometry, a file that is not a readable ``.npy``, a file holding more frames than the scan
has left, a file that appears *before* files already delivered in name order (the watcher does
not silently reorder), and a stall: nothing new and complete for ``stall_timeout_s``.

Files are memory-mapped; a file must not change once it is complete (truncating a mapped file
kills the reader with SIGBUS on POSIX).
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from stemedge.geometry import ScanGeometry
from stemedge.sources.base import Chunk, Source, SourceError

__all__ = ["FolderWatcher", "natural_key"]

_SKIPPED_SUFFIXES = (".tmp", ".part")
_NPY_MAGIC = b"\x93NUMPY"
_NPY_PREAMBLE = {1: 10, 2: 12, 3: 12}  # magic + version + header length field, per major version


def natural_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """Sort key that orders digit runs by value: ``frame_2`` < ``frame_10``.

    Text and digit runs alternate (text first, maybe empty), so tuples compare str with str and
    int with int. Text compares case-insensitively; the name itself breaks ties (``a01``, ``a1``).
    """
    parts = re.split(r"([0-9]+)", name)
    key = tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts))
    return key, name


class _NpyHeader(NamedTuple):
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int


class _Seen(NamedTuple):
    """What the watcher last saw of a pending file, and since when (monotonic seconds)."""

    signature: tuple[int, int]  # (size, mtime_ns)
    since: float


def _read_npy_header(path: Path, size: int) -> _NpyHeader | None:
    """The .npy header, or None while the file is too short to hold all of it.

    Raises SourceError when the bytes present cannot be the start of a .npy file."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < len(_NPY_MAGIC) + 2:
            if not _NPY_MAGIC.startswith(head[: len(_NPY_MAGIC)]):
                raise SourceError(f"{path}: not a .npy file (the magic string is wrong)")
            return None
        if head[:6] != _NPY_MAGIC or head[6] not in _NPY_PREAMBLE:
            raise SourceError(
                f"{path}: not a .npy file (magic/version bytes {head[:8]!r}); write frames "
                "with numpy.save, or pick another pattern"
            )
        preamble = _NPY_PREAMBLE[head[6]]
        if len(head) < preamble:
            return None
        width = 2 if head[6] == 1 else 4
        data_offset = preamble + int.from_bytes(head[8 : 8 + width], "little")
        if size < data_offset:
            return None  # the header itself is still being written
        f.seek(0)
        try:
            version = np.lib.format.read_magic(f)
            # Version 3 only differs in allowing UTF-8 field names, which frames never have.
            reader = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = reader(f)
        except ValueError as exc:
            raise SourceError(f"{path}: corrupt .npy header ({exc})") from None
    return _NpyHeader(tuple(shape), np.dtype(dtype), bool(fortran_order), data_offset)


class FolderWatcher(Source):
    """Frames from files that appear in a folder during acquisition (see the module docstring).

    Parameters
    ----------
    folder : str or os.PathLike
        The folder to watch; it must exist.
    geometry : ScanGeometry
        The whole acquisition: every file's frames must match its ``frame_shape`` and ``dtype``,
        and the scan ends after ``geometry.n_positions`` frames.
    pattern : str
        Shell pattern the file names must match (``fnmatch``). ``.npy`` files are read here;
        other files are opened with :func:`stemedge.sources.files.open_source`.
    poll_s : float
        Seconds between looks at the folder.
    settle_s : float
        Seconds a file's size and mtime must stay unchanged before it is read.
    stall_timeout_s : float
        Raise ``SourceError("stalled …")`` when, for this long, no file was delivered and no
        pending file changed.
    done_marker : str or None
        Name of the file whose appearance ends the acquisition; None: only the frame count does.
    allow_partial : bool
        Whether a done marker before all frames arrived ends the scan quietly (True, reported in
        :attr:`missing`) or raises SourceError (False).

    Attributes
    ----------
    files : list of str
        Names of the files delivered (or being delivered), in order.
    delivered : int
        Frames delivered so far; the next file starts at this scan index.
    missing : range or None
        Scan indices never delivered, once the scan has ended early (done marker, or stopped
        by ``close()``/``stop``); None otherwise.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        geometry: ScanGeometry,
        *,
        pattern: str = "*.npy",
        poll_s: float = 0.05,
        settle_s: float = 0.2,
        stall_timeout_s: float = 30.0,
        done_marker: str | None = "DONE",
        allow_partial: bool = True,
    ) -> None:
        if not isinstance(geometry, ScanGeometry):
            raise TypeError(f"geometry must be a ScanGeometry, got {type(geometry).__name__}")
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"folder {str(self.folder)!r} is not an existing folder")
        for name, value in (("poll_s", poll_s), ("stall_timeout_s", stall_timeout_s)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if not (math.isfinite(settle_s) and settle_s >= 0):
            raise ValueError(f"settle_s must be ≥ 0 seconds, got {settle_s!r}")
        if not pattern:
            raise ValueError("pattern must be a non-empty shell pattern such as '*.npy'")
        self.geometry = geometry
        self.pattern = pattern
        self.poll_s = float(poll_s)
        self.settle_s = float(settle_s)
        self.stall_timeout_s = float(stall_timeout_s)
        self.done_marker = done_marker
        self.allow_partial = bool(allow_partial)
        self.files: list[str] = []
        self.delivered = 0
        self.missing: range | None = None
        self._ended_by: str | None = None
        self._last_key: tuple[Any, ...] | None = None
        self._seen: dict[str, _Seen] = {}
        # (name, why) of the next file while it is not ready yet, for the stall message.
        self._waiting_for: tuple[str, str] | None = None
        self._started = False
        self._closed = threading.Event()

    # -- the Source API -------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """True once every scan position has been delivered."""
        return self.delivered == self.geometry.n_positions

    def chunks(self, max_frames: int) -> Iterator[Chunk]:
        """Yield each file's frames in chunks of at most ``max_frames`` (chunks never span
        files: each is a read-only view of the file's memory map).

        Blocks while waiting for files; ends after ``n_positions`` frames, at the done marker,
        or when :meth:`close` is called from another thread. A FolderWatcher delivers its
        acquisition once: create a new one to read the folder again.

        Raises
        ------
        SourceError
            A file is wrong, out of order, or nothing arrived for ``stall_timeout_s``.
        """
        return self._iterate(max_frames, stop=None)

    def feed(self, ring, stop: threading.Event) -> None:
        """Push every frame into ``ring`` until done or ``stop`` is set; ``stop`` is also
        honoured while waiting for the next file, not only between chunks."""
        for chunk in self._iterate(ring.slot_frames, stop=stop):
            ring.write(chunk.frames, chunk.indices)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": type(self).__name__,
            "folder": str(self.folder),
            "pattern": self.pattern,
            "done_marker": self.done_marker,
            "poll_s": self.poll_s,
            "settle_s": self.settle_s,
            "stall_timeout_s": self.stall_timeout_s,
            "geometry": self.geometry.to_dict(),
            "files": list(self.files),
            "frames_delivered": self.delivered,
            "complete": self.complete,
            "ended_by": self._ended_by,
            "missing": None if self.missing is None else [self.missing.start, self.missing.stop],
        }

    def close(self) -> None:
        """Stop watching: an iteration in progress (in any thread) ends at its next look at the
        folder. Idempotent."""
        self._closed.set()

    # -- the watch loop -------------------------------------------------------------------------

    def _iterate(self, max_frames: int, stop: threading.Event | None) -> Iterator[Chunk]:
        if isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)):
            raise TypeError(f"max_frames must be an int, got {type(max_frames).__name__}")
        if max_frames < 1:
            raise ValueError(f"max_frames must be ≥ 1, got {max_frames}")
        if self._started:
            raise RuntimeError(
                "this FolderWatcher has already been iterated; create a new one to read "
                f"{self.folder} again"
            )
        self._started = True
        return self._watch(int(max_frames), stop)

    def _stopped(self, stop: threading.Event | None) -> bool:
        return self._closed.is_set() or (stop is not None and stop.is_set())

    def _watch(self, max_frames: int, stop: threading.Event | None) -> Iterator[Chunk]:
        n = self.geometry.n_positions
        last_activity = time.monotonic()
        while self.delivered < n:
            if self._stopped(stop):
                self._ended_by = "stopped"
                self.missing = range(self.delivered, n)
                return
            # Look for the marker before listing: files written before it are then all listed.
            done = self.done_marker is not None and (self.folder / self.done_marker).exists()
            pending, changed = self._scan()
            if changed:
                last_activity = time.monotonic()
            for name in pending:
                ready = self._ready(name, final=done)
                if ready is None:
                    break
                yield from self._deliver(name, ready, max_frames, stop)
                last_activity = time.monotonic()
                if self.delivered == n or self._stopped(stop):
                    break
            else:
                if done:
                    self._end_early()
                    return
            if done and self.delivered < n and not self._stopped(stop) and self._waiting_for:
                # The writer says it is finished, yet the next file is not complete.
                raise SourceError(
                    f"{self.folder / self._waiting_for[0]}: still incomplete although the done "
                    f"marker {self.done_marker!r} is there ({self._waiting_for[1]})"
                )
            if self.delivered < n and time.monotonic() - last_activity > self.stall_timeout_s:
                raise SourceError(self._stall_message())
            if self.delivered < n:
                (stop or self._closed).wait(self.poll_s)
        self._ended_by = "frames"

    def _end_early(self) -> None:
        n = self.geometry.n_positions
        self._ended_by = "done_marker"
        self.missing = range(self.delivered, n)
        if not self.allow_partial:
            raise SourceError(
                f"{self.folder}: the done marker {self.done_marker!r} appeared after "
                f"{self.delivered} of {n} frames; scan indices {self.delivered} … {n - 1} are "
                "missing (pass allow_partial=True to accept a partial scan)"
            )

    def _candidate(self, name: str) -> bool:
        return (
            not name.startswith(".")
            and not name.lower().endswith(_SKIPPED_SUFFIXES)
            and name != self.done_marker
            and fnmatch.fnmatch(name, self.pattern)
        )

    def _scan(self) -> tuple[list[str], bool]:
        """Pending (not yet delivered) file names in natural order, and whether any of them is
        new or changed since the last look. Records what was seen, so all pending files settle
        at once rather than one after the other."""
        now = time.monotonic()
        pending: list[tuple[Any, str]] = []
        changed = False
        delivered = set(self.files)
        with os.scandir(self.folder) as entries:
            for entry in entries:
                name = entry.name
                if name in delivered or not self._candidate(name):
                    continue
                try:
                    if not entry.is_file():
                        continue
                    st = entry.stat()
                except FileNotFoundError:
                    continue  # renamed or removed since listed
                key = natural_key(name)
                if self._last_key is not None and key < self._last_key:
                    raise SourceError(
                        f"{self.folder / name}: appeared after {self.files[-1]!r} was delivered "
                        "but comes before it in name order; the frames cannot be reordered. "
                        "Write files in name order (and under a .tmp name until complete)"
                    )
                signature = (st.st_size, st.st_mtime_ns)
                seen = self._seen.get(name)
                if seen is None or seen.signature != signature:
                    self._seen[name] = _Seen(signature, now)
                    changed = True
                pending.append((key, name))
        pending.sort()
        return [name for _, name in pending], changed

    def _ready(self, name: str, *, final: bool) -> _NpyHeader | Source | None:
        """What to deliver ``name`` with (its .npy header, or an open Source for another kind),
        or None while it is not complete. ``final``: the writer is done, do not wait to settle."""
        seen = self._seen[name]
        size = seen.signature[0]
        if not final and time.monotonic() - seen.since < self.settle_s:
            self._waiting_for = (name, "its size or mtime changed less than settle_s ago")
            return None
        path = self.folder / name
        if not name.lower().endswith(".npy"):
            return self._open_other(name, size)
        try:
            header = _read_npy_header(path, size)
        except FileNotFoundError:
            self._waiting_for = (name, "it disappeared")
            return None
        if header is None:
            self._waiting_for = (name, f"its .npy header is incomplete ({size} bytes)")
            return None
        k = self._check_header(path, header)
        expected = header.data_offset + k * self.geometry.frame_nbytes
        if size > expected:
            raise SourceError(
                f"{path}: {size} bytes, but its header describes {expected} "
                f"({k} frames); the file is not a plain .npy array"
            )
        if size < expected:
            self._waiting_for = (name, f"it has {size} of {expected} bytes")
            return None
        return header

    def _open_other(self, name: str, size: int) -> Source | None:
        """``name`` opened with :func:`stemedge.sources.files.open_source`, or None while the
        reader says it is incomplete (it never waits; we try again at the next look)."""
        # Imported here so this module works without the file readers (and their imports).
        from stemedge.sources.files import open_source

        g = self.geometry
        path = self.folder / name
        scan_shape = None  # self-describing files know how many frames they hold
        if path.suffix.lower() in (".raw", ".bin"):
            # Headerless: the frame count is the size over the frame size. A writer pausing at
            # a frame boundary looks complete, so write raw files under a .tmp name and rename.
            k, tail = divmod(size, g.frame_nbytes)
            if tail or k == 0:
                why = f"{size} bytes is not a whole number of {g.frame_nbytes}-byte frames"
                self._waiting_for = (name, why)
                return None
            scan_shape = (1, k)
        try:
            source = open_source(
                path, scan_shape=scan_shape, frame_shape=g.frame_shape, dtype=g.dtype
            )
        except SourceError as exc:  # incomplete or corrupt: a stall or the done marker says so
            self._waiting_for = (name, str(exc))
            return None
        except (ValueError, OSError) as exc:  # unknown kind, or frames that do not fit
            raise SourceError(f"{exc} (file {path}, scan geometry {g.to_dict()})") from None
        left = g.n_positions - self.delivered
        if source.geometry.n_positions > left:
            source.close()
            raise SourceError(
                f"{path}: holds {source.geometry.n_positions} frames, but only {left} of the "
                f"scan's {g.n_positions} positions are left after {self.delivered} frames"
            )
        return source

    def _check_header(self, path: Path, header: _NpyHeader) -> int:
        """The number of frames in the file; SourceError unless they fit the geometry."""
        g = self.geometry
        shape = header.shape
        if header.dtype != g.dtype or header.fortran_order or shape[-2:] != g.frame_shape:
            order = " (Fortran order)" if header.fortran_order else ""
            raise SourceError(
                f"{path}: holds a {header.dtype} array of shape {shape}{order}, but the scan "
                f"needs C-order {g.dtype} frames of {g.frame_shape[0]}×{g.frame_shape[1]} "
                "(a (k, det_y, det_x) stack or one frame); fix the writer or the ScanGeometry"
            )
        if len(shape) not in (2, 3):
            raise SourceError(
                f"{path}: a {len(shape)}-D array; expected (k, det_y, det_x) or (det_y, det_x)"
            )
        k = 1 if len(shape) == 2 else shape[0]
        left = g.n_positions - self.delivered
        if k > left:
            raise SourceError(
                f"{path}: holds {k} frames, but only {left} of the scan's {g.n_positions} "
                f"positions are left after {self.delivered} frames"
            )
        return k

    def _stall_message(self) -> str:
        g = self.geometry
        if self._waiting_for:
            name, why = self._waiting_for
            detail = f"waiting for {name}: {why}"
        else:
            after = f" after {self.files[-1]!r}" if self.files else ""
            detail = f"no file matching {self.pattern!r}{after}"
        return (
            f"stalled: nothing new and complete in {self.folder} for {self.stall_timeout_s:g} s "
            f"after {self.delivered} of {g.n_positions} frames ({detail}). Is the acquisition "
            f"still writing? Raise stall_timeout_s for a slow writer, or create the done marker "
            f"{self.done_marker!r} to end a partial scan"
        )

    # -- delivery -------------------------------------------------------------------------------

    def _deliver(
        self,
        name: str,
        ready: _NpyHeader | Source,
        max_frames: int,
        stop: threading.Event | None,
    ) -> Iterator[Chunk]:
        self.files.append(name)
        self._last_key = natural_key(name)
        self._seen.pop(name, None)
        self._waiting_for = None
        if isinstance(ready, _NpyHeader):
            yield from self._deliver_npy(self.folder / name, ready, max_frames, stop)
        else:
            yield from self._deliver_other(ready, max_frames, stop)

    def _deliver_npy(
        self, path: Path, header: _NpyHeader, max_frames: int, stop: threading.Event | None
    ) -> Iterator[Chunk]:
        k = 1 if len(header.shape) == 2 else header.shape[0]
        if k == 0:
            return  # an empty stack: nothing to map (mmap refuses empty regions)
        try:
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise SourceError(f"{path}: cannot memory-map the .npy file ({exc})") from None
        # A plain ndarray view (not np.memmap) so callers that check the type see an ndarray.
        frames = np.asarray(mapped).reshape(k, *self.geometry.frame_shape)
        for i in range(0, k, max_frames):
            if self._stopped(stop):
                return
            block = frames[i : i + max_frames]
            start = self.delivered
            self.delivered += len(block)
            yield Chunk(block, np.arange(start, start + len(block), dtype=np.int64))

    def _deliver_other(
        self, source: Source, max_frames: int, stop: threading.Event | None
    ) -> Iterator[Chunk]:
        first = self.delivered  # the file's own scan index 0 lands here
        with source:
            for chunk in source.chunks(max_frames):
                if self._stopped(stop):
                    return
                self.delivered += len(chunk.frames)
                yield Chunk(chunk.frames, first + chunk.indices.astype(np.int64))
