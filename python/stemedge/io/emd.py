"""EMD 1.0 files, laid out the way py4DSTEM ≥ 0.14 (through its file layer ``emdfile``) writes them.

A streaming :class:`EMDWriter` for live acquisitions, the one-call :func:`write_emd`, and the lazy
reader :func:`read_emd`.

Layout written (``[...]`` are HDF5 attributes)::

    /                          [emd_group_type='file', version_major=1, version_minor=0, UUID,
                                authoring_program='stemedge <version>', authoring_user='']
    /stemedge_root             [emd_group_type='root', python_class='Root']
      metadatabundle           [emd_group_type='metadatabundle']
        stemedge_calibration   [emd_group_type='metadata', python_class='Metadata']
                               Calibration.to_dict(), one dataset per field (emdfile typing)
        provenance             [emd_group_type='metadata', python_class='Metadata']
        calibration            only with ``py4dstem=True``: py4DSTEM's Calibration keys
                               [python_class='Calibration']
      datacube                 [emd_group_type='array', python_class='Array' (or 'DataCube')]
        data                   (scan_y, scan_x, det_y, det_x), chunked by frame [units];
                               with compression="stemedge": HDF5 filter 421, one stemedge
                               codec chunk per HDF5 chunk
        dim0 … dim3            2-element linear dim vectors [name, units]: scan axes in 'A'
                               (Å, from scan_step_A), detector axes in 'mrad' with 0 at the
                               beam origin; 'pixels' without a calibration
        <results group>        [emd_group_type='node', python_class='Node'] (write_results)
          <name>               an Array group like the datacube (data, dim*)
      stemedge                 no EMD tags, so EMD readers skip it
        log                    event log, one JSON string per event (resizable)
        written                (scan_y, scan_x) uint8: which positions hold a frame

Results hang under the datacube (as py4DSTEM hangs virtual images there), so the EMD tree has one
top-level data node and ``emdfile.read(path)`` returns the datacube itself.

``python_class`` is 'Array' by default because ``emdfile.read`` alone cannot build py4DSTEM's
classes ('DataCube', 'Calibration' are only known once py4DSTEM is imported): files py4DSTEM writes
do not open with emdfile alone. ``py4dstem=True`` writes those class names so that
``py4DSTEM.read`` returns a calibrated DataCube, at the price of needing py4DSTEM to read it.
"""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stemedge.calibration import Calibration
from stemedge.geometry import FRAME_DTYPES, ScanGeometry
from stemedge.io.provenance import environment, jsonable, utc_now
from stemedge.sources.base import SourceError

__all__ = [
    "DATACUBE_NAME",
    "ROOT_NAME",
    "STEMEDGE_COMPRESSION",
    "EMDFile",
    "EMDWriter",
    "read_emd",
    "write_emd",
]

ROOT_NAME = "stemedge_root"
DATACUBE_NAME = "datacube"
_STEMEDGE_GROUP = "stemedge"  # stemedge's own, non-EMD items
_LAYOUT_VERSION = 1
_DATA_UNITS = "pixel intensity"  # what py4DSTEM writes on a DataCube's data
# Names inside an Array group that a results group must not shadow.
_RESERVED = frozenset({"data", "metadatabundle", "dim0", "dim1", "dim2", "dim3"})
_CHUNK_TARGET_BYTES = 1 << 20  # ~1 MiB chunks: HDF5's sweet spot, and one fits its default cache
_CHUNK_CACHE_BYTES = 64 << 20
STEMEDGE_COMPRESSION = "stemedge"  # compression= value: the stemedge codec (stemedge.codec.hdf5)
_CODEC_OPTIONS = ("mode", "max_abs_error", "threshold")


# --------------------------------------------------------------------------------------------
# EMD metadata groups (emdfile's typing: every dataset carries a 'type' attribute)
# --------------------------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_)
    )


def _write_metadata(
    bundle: h5py.Group, name: str, items: Mapping[str, Any], python_class: str = "Metadata"
) -> None:
    """(Re)write an EMD Metadata group ``name`` in ``bundle`` holding ``items``."""
    if name in bundle:
        del bundle[name]
    grp = bundle.create_group(name)
    grp.attrs["emd_group_type"] = "metadata"
    grp.attrs["python_class"] = python_class
    for key, value in items.items():
        _write_item(grp, str(key), value)


def _write_item(grp: h5py.Group, key: str, value: Any) -> None:
    if isinstance(value, Mapping):
        sub = grp.create_group(key)
        sub.attrs["type"] = "dict"
        for k, v in value.items():
            _write_item(sub, str(k), v)
        return
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        sub = grp.create_group(key)  # emdfile's layout for a list of strings
        sub.attrs["type"] = ("list" if isinstance(value, list) else "tuple") + "_of_strings"
        sub.attrs["length"] = len(value)
        for i, text in enumerate(value):
            sub.create_dataset(str(i), data=text.encode("utf-8"))
        return
    if value is None:
        ds, kind = grp.create_dataset(key, data=b"_None"), "None"
    elif isinstance(value, (bool, np.bool_)):
        ds, kind = grp.create_dataset(key, data=bool(value), dtype=bool), "bool"
    elif _is_number(value):
        ds, kind = grp.create_dataset(key, data=np.asarray(value)), "number"
    elif isinstance(value, str):
        ds, kind = grp.create_dataset(key, data=value.encode("utf-8")), "string"
    elif isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.ndim:
        ds, kind = grp.create_dataset(key, data=value), "array"
    elif isinstance(value, (list, tuple)) and value and all(_is_number(v) for v in value):
        kind = "list" if isinstance(value, list) else "tuple"
        ds = grp.create_dataset(key, data=np.asarray(value))
    else:
        # Anything emdfile cannot type (nested lists, lists of dicts, …) becomes a JSON string:
        # emdfile users see readable text, our reader turns it back into the value.
        text = json.dumps(jsonable(value))
        ds, kind = grp.create_dataset(key, data=text.encode("utf-8")), "string"
        ds.attrs["stemedge_json"] = 1
    ds.attrs["type"] = kind


def _attr_str(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)


def _read_metadata(grp: h5py.Group) -> dict[str, Any]:
    """An EMD Metadata group (ours or emdfile's) as a plain dict."""
    return {key: _read_item(item) for key, item in grp.items()}


def _read_item(item: h5py.Group | h5py.Dataset) -> Any:
    kind = _attr_str(item.attrs.get("type"))
    if isinstance(item, h5py.Group):
        if kind in ("list_of_strings", "tuple_of_strings"):
            texts = [_read_item(item[str(i)]) for i in range(int(item.attrs["length"]))]
            return texts if kind == "list_of_strings" else tuple(texts)
        if kind in ("list_of_arrays", "tuple_of_arrays", "tuple_of_tuples"):
            return [np.asarray(item[str(i)][()]) for i in range(int(item.attrs["length"]))]
        return _read_metadata(item)
    value = item[()]
    if kind == "None":
        return None
    if isinstance(value, bytes):
        text = value.decode("utf-8")
        if item.attrs.get("stemedge_json"):
            return json.loads(text)
        return None if text == "_None" else text
    if kind in ("number", "bool"):
        return value.item() if isinstance(value, np.generic) else value
    if kind == "list":
        return np.asarray(value).tolist()
    if kind == "tuple":
        return tuple(np.asarray(value).tolist())
    return np.asarray(value) if isinstance(value, np.ndarray) else value


# --------------------------------------------------------------------------------------------
# EMD Array groups
# --------------------------------------------------------------------------------------------
Dim = tuple[np.ndarray, str, str]  # (vector, name, units)


def _pixel_dim(name: str) -> Dim:
    return np.array([0.0, 1.0]), name, "pixels"


def _scan_dims(cal: Calibration | None) -> list[Dim]:
    if cal is None:
        return [_pixel_dim("scan_y"), _pixel_dim("scan_x")]
    sy, sx = cal.scan_step_A
    return [(np.array([0.0, sy]), "scan_y", "A"), (np.array([0.0, sx]), "scan_x", "A")]


def _detector_dims(cal: Calibration | None, frame_shape: tuple[int, int]) -> list[Dim]:
    if cal is None:
        return [_pixel_dim("det_y"), _pixel_dim("det_x")]
    step = cal.det_mrad_per_px
    oy, ox = cal.origin_for(frame_shape)
    # Angle 0 sits at the beam origin, so dim[i] is the scattering angle of pixel i.
    return [
        (np.array([-oy * step, (1.0 - oy) * step]), "det_y", "mrad"),
        (np.array([-ox * step, (1.0 - ox) * step]), "det_x", "mrad"),
    ]


def _emd_root(f: h5py.File, version: str) -> tuple[h5py.Group, h5py.Group]:
    """Mark ``f`` as an EMD 1.0 file written by stemedge ``version``; create and return its root
    group and the root's metadata bundle."""
    f.attrs["emd_group_type"] = "file"
    f.attrs["version_major"] = 1
    f.attrs["version_minor"] = 0
    f.attrs["UUID"] = str(uuid.uuid4())
    f.attrs["authoring_program"] = f"stemedge {version}"
    f.attrs["authoring_user"] = ""
    root = f.create_group(ROOT_NAME)
    root.attrs["emd_group_type"] = "root"
    root.attrs["python_class"] = "Root"
    bundle = root.create_group("metadatabundle")
    bundle.attrs["emd_group_type"] = "metadatabundle"
    return root, bundle


def _create_array_group(parent: h5py.Group, name: str, python_class: str) -> h5py.Group:
    grp = parent.create_group(name)
    grp.attrs["emd_group_type"] = "array"
    grp.attrs["python_class"] = python_class
    return grp


def _write_dims(grp: h5py.Group, dims: list[Dim]) -> None:
    for n, (vector, name, units) in enumerate(dims):
        ds = grp.create_dataset(f"dim{n}", data=np.asarray(vector, dtype=float))
        ds.attrs["name"] = name
        ds.attrs["units"] = units


def _read_dims(grp: h5py.Group, shape: tuple[int, ...]) -> list[Dim]:
    """The dim vectors of an Array group, expanded to full length (emdfile stores linear dims as
    their first two values)."""
    dims = []
    for n, length in enumerate(shape):
        ds = grp.get(f"dim{n}")
        if ds is None:
            dims.append((np.arange(length, dtype=float), f"dim{n}", "pixels"))
            continue
        vec = np.asarray(ds[()])
        if vec.dtype.kind in "iuf" and vec.size == 2 and length != 2:
            vec = vec[0] + (vec[1] - vec[0]) * np.arange(length)
        name, units = _attr_str(ds.attrs.get("name")), _attr_str(ds.attrs.get("units"))
        dims.append((vec, name or f"dim{n}", units or ""))
    return dims


def _creation_kwargs(
    shape: tuple[int, ...],
    dtype: np.dtype,
    chunks: tuple[int, ...] | None,
    compression: Any,
    compression_opts: Any,
) -> dict[str, Any]:
    """The one place where dataset creation keywords are made (datacube and results).

    ``compression`` is passed through to h5py: a name ("gzip", "lzf"), an HDF5 filter id, or a
    mapping of h5py keywords (what hdf5plugin's filter objects are, e.g. ``hdf5plugin.LZ4()``)."""
    kwargs: dict[str, Any] = {"shape": shape, "dtype": dtype, "chunks": chunks}
    if compression is None:
        return kwargs
    if isinstance(compression, Mapping):
        kwargs.update(compression)
    else:
        kwargs["compression"] = compression
    if compression_opts is not None:
        kwargs["compression_opts"] = compression_opts
    if kwargs["chunks"] is None:
        kwargs["chunks"] = True  # HDF5 filters need a chunked layout
    return kwargs


def _codec_options(options: Any) -> dict[str, Any]:
    """``compression_opts`` of ``compression="stemedge"``: a dict with any of mode,
    max_abs_error, threshold (values checked by ``stemedge.codec.hdf5.filter_options``)."""
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise TypeError(
            'with compression="stemedge", compression_opts must be a dict of '
            f"{', '.join(_CODEC_OPTIONS)} or None, got {type(options).__name__}"
        )
    unknown = sorted(set(options) - set(_CODEC_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown stemedge codec option(s) {unknown}; known: {', '.join(_CODEC_OPTIONS)}"
        )
    return {"mode": "auto", "max_abs_error": 0.0, "threshold": 0, **options}


class _PendingChunk:
    """The frames of a codec chunk not yet complete: kept as given, so that the chunk is
    compressed from the original values once complete (never decoded and re-encoded, which for
    lossy options could add error on error)."""

    __slots__ = ("dirty", "filled", "frames")

    def __init__(self, frames: np.ndarray, filled: np.ndarray) -> None:
        self.frames = frames  # (chunk_frames, det_y, det_x), zero where not filled
        self.filled = filled  # (valid frames,) bool: the chunk's positions inside the scan
        self.dirty = True  # changed since last written to the file


def _default_chunk_frames(geometry: ScanGeometry) -> int:
    return int(np.clip(_CHUNK_TARGET_BYTES // geometry.frame_nbytes, 1, geometry.scan_shape[1]))


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or name in _RESERVED:
        raise ValueError(
            f"{what} must be a non-empty str without '/' and not one of {sorted(_RESERVED)}, "
            f"got {name!r}"
        )
    return name


def _py4dstem_calibration(cal: Calibration | None) -> dict[str, Any]:
    """py4DSTEM's Calibration keys. It has one square R pixel size (we write the y step) and no
    rotation/origin keys whose convention we have checked, so those are left out."""
    items: dict[str, Any] = {
        "Q_pixel_size": 1.0,
        "R_pixel_size": 1.0,
        "Q_pixel_units": "pixels",
        "R_pixel_units": "pixels",
        "QR_flip": False,
    }
    if cal is not None:
        items.update(
            Q_pixel_size=cal.det_mrad_per_px,
            Q_pixel_units="mrad",
            R_pixel_size=cal.scan_step_A[0],
            R_pixel_units="A",
            convergence_semiangle_mrad=cal.convergence_mrad,
        )
    # py4DSTEM.read re-links the calibration to the nodes listed here.
    items["_root_treepath"] = ""
    items["_target_paths"] = [f"/{DATACUBE_NAME}"]
    return items


# --------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------
def _consecutive_runs(indices: np.ndarray) -> Iterator[tuple[int, int]]:
    """[a, b) ranges of ``indices`` whose values go up by one, in input order (so a later
    duplicate overwrites an earlier one, as the caller asked)."""
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    return itertools.pairwise([0, *breaks.tolist(), len(indices)])


class EMDWriter:
    """Streaming EMD 1.0 writer: frames arrive at arbitrary scan positions, in any order.

    Parameters
    ----------
    path : str or Path
        File to create. An existing file is refused unless ``overwrite=True``.
    geometry : ScanGeometry
        Scan and frame shape, dtype and (optional) calibration of the acquisition.
    provenance : dict, optional
        What produced the data, e.g. ``{"source": source.describe(), "parameters": {...}}``.
        Stored (JSON-able values) in the file's provenance, next to what the writer records
        itself. ``writer.provenance`` can be updated until ``close()``.
    compression, compression_opts
        ``compression="stemedge"``: the datacube is compressed by the stemedge codec (HDF5
        filter 421, see ``stemedge.codec.hdf5``; any h5py with stemedge imported, or with
        ``HDF5_PLUGIN_PATH`` at ``stemedge.codec.hdf5.plugin_dir()``, reads it), and
        ``compression_opts`` is a dict of codec options: ``mode`` ("auto", "dense", "events",
        "bytes"), ``max_abs_error`` (0: lossless; > 0 bounds ``|x − stored|``), ``threshold``
        (counted data: values below it stored as 0). Each chunk is compressed once, from the
        frames as given, and written directly; results stay uncompressed (codec options, lossy
        ones above all, are meant for frames). Any other value is passed to h5py for the
        datacube and results (see :func:`_creation_kwargs`).
    chunk_frames : int, optional
        Frames per HDF5 chunk along scan_x (chunks are ``(1, chunk_frames, det_y, det_x)``).
        Default: as many as fit in ~1 MiB. Use 1 when frames arrive in random order and are
        compressed, so a frame never rewrites a neighbour's chunk (with the stemedge codec,
        frames of incomplete chunks wait in memory until their chunk is complete).
    py4dstem : bool
        Tag the datacube and calibration with py4DSTEM's class names (see the module docstring).
    overwrite : bool
        Replace an existing file at ``path``.

    Notes
    -----
    Thread-safe: one lock serialises every HDF5 call (h5py runs one at a time anyway).
    ``flush()`` puts everything written so far on disk, with provenance; if the process dies
    after a flush and before the next write, the file is complete and valid up to that point.
    Writes after the last flush may be lost (HDF5 has no journal; SWMR would forbid adding
    results and provenance later, so it is not used).
    """

    def __init__(
        self,
        path: str | Path,
        geometry: ScanGeometry,
        *,
        provenance: dict[str, Any] | None = None,
        compression: Any = None,
        compression_opts: Any = None,
        chunk_frames: int | None = None,
        py4dstem: bool = False,
        overwrite: bool = False,
    ) -> None:
        if not isinstance(geometry, ScanGeometry):
            raise TypeError(f"geometry must be a ScanGeometry, got {type(geometry).__name__}")
        if provenance is not None and not isinstance(provenance, Mapping):
            raise TypeError(f"provenance must be a dict or None, got {type(provenance).__name__}")
        self.path = Path(path)
        self.geometry = geometry
        self.provenance: dict[str, Any] = dict(provenance or {})
        self._codec: dict[str, Any] | None = None
        if isinstance(compression, str) and compression == STEMEDGE_COMPRESSION:
            self._codec = _codec_options(compression_opts)
            self._compression: tuple[Any, Any] = (None, None)  # results: uncompressed
        else:
            self._compression = (compression, compression_opts)
        self._pending: dict[tuple[int, int], _PendingChunk] = {}
        self._lock = threading.Lock()
        self._written = np.zeros(geometry.n_positions, dtype=bool)
        self._frames_written = 0
        self._start_time = utc_now()
        self._environment = environment()
        self._closed = True  # until the file exists: close() must not touch it
        if chunk_frames is None:
            chunk_frames = _default_chunk_frames(geometry)
        if not 1 <= int(chunk_frames) <= geometry.scan_shape[1]:
            raise ValueError(
                f"chunk_frames must be between 1 and scan_x={geometry.scan_shape[1]}, "
                f"got {chunk_frames!r}"
            )
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")
        self._file = h5py.File(self.path, "w", rdcc_nbytes=_CHUNK_CACHE_BYTES)
        try:
            self._build(int(chunk_frames), py4dstem)
            self._write_state("open")
            self._file.flush()
        except BaseException:
            self._file.close()
            raise
        self._closed = False

    # --- layout ------------------------------------------------------------------------------
    def _build(self, chunk_frames: int, py4dstem: bool) -> None:
        geo, cal = self.geometry, self.geometry.calibration
        root, self._bundle = _emd_root(self._file, self._environment["stemedge_version"])
        self._cube = _create_array_group(root, DATACUBE_NAME, "DataCube" if py4dstem else "Array")
        shape = (*geo.scan_shape, *geo.frame_shape)
        chunks = (1, chunk_frames, *geo.frame_shape)
        if self._codec is not None:
            from stemedge.codec.hdf5 import filter_options

            kwargs = {"shape": shape, "dtype": geo.dtype}
            kwargs.update(filter_options(geo.dtype, chunks, **self._codec))
            opts = self._codec  # checked by filter_options: now in the codec's own types
            self._codec = {
                "mode": str(opts["mode"]),
                "max_abs_error": float(opts["max_abs_error"]),
                "threshold": int(opts["threshold"]),
            }
        else:
            kwargs = _creation_kwargs(shape, geo.dtype, chunks, *self._compression)
        self._data = self._cube.create_dataset("data", fillvalue=0, **kwargs)
        self._chunk_shape = self._data.chunks
        # Chunks of an unfiltered dataset are the frames' bytes: they can be written directly.
        self._direct = (
            self._data.compression is None
            and not self._data.id.get_create_plist().get_nfilters()
            and self._data.chunks[2:] == tuple(geo.frame_shape)
        )
        self._data.attrs["units"] = _DATA_UNITS
        _write_dims(self._cube, _scan_dims(cal) + _detector_dims(cal, geo.frame_shape))
        if cal is not None:
            _write_metadata(self._bundle, "stemedge_calibration", cal.to_dict())
        if py4dstem:
            _write_metadata(self._bundle, "calibration", _py4dstem_calibration(cal), "Calibration")
        own = root.create_group(_STEMEDGE_GROUP)
        own.attrs["layout_version"] = _LAYOUT_VERSION
        self._log = own.create_dataset(
            "log", shape=(0,), maxshape=(None,), chunks=(256,), dtype=h5py.string_dtype()
        )
        self._mask = own.create_dataset("written", shape=geo.scan_shape, dtype=np.uint8)

    def _write_state(self, status: str) -> None:
        """Rewrite provenance and the written-positions mask (called with the lock held)."""
        self._mask[...] = self._written.reshape(self.geometry.scan_shape)
        self._provenance_json = json.dumps(jsonable(self.provenance), sort_keys=True)
        items = {
            **json.loads(self._provenance_json),
            **self._environment,
            "status": status,
            "start_time": self._start_time,
            "end_time": None if status == "open" else utc_now(),
            "frames_written": self._frames_written,
            "positions_covered": int(self._written.sum()),
            "n_positions": self.geometry.n_positions,
            "geometry": jsonable(self.geometry.to_dict()),
        }
        if self._codec is not None:
            from stemedge.codec.hdf5 import FILTER_ID

            items["compression"] = {
                "codec": STEMEDGE_COMPRESSION,
                "hdf5_filter_id": FILTER_ID,
                "chunk_shape": list(self._chunk_shape),
                **self._codec,
            }
        _write_metadata(self._bundle, "provenance", items)

    def _update_counts(self) -> None:
        """What changes between flushes, written in place: rewriting the provenance group each
        time costs ~10 ms and leaves its old copy as dead space in the file."""
        if json.dumps(jsonable(self.provenance), sort_keys=True) != self._provenance_json:
            self._write_state("open")
            return
        self._mask[...] = self._written.reshape(self.geometry.scan_shape)
        prov = self._bundle["provenance"]
        prov["frames_written"][()] = self._frames_written
        prov["positions_covered"][()] = int(self._written.sum())

    # --- state -------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        """The datacube's HDF5 chunk shape ``(1, chunk_frames, det_y, det_x)``."""
        return self._chunk_shape

    @property
    def frames_written(self) -> int:
        """Frames accepted so far (a position written twice counts twice)."""
        return self._frames_written

    @property
    def positions_covered(self) -> int:
        """Distinct scan positions holding a frame."""
        return int(self._written.sum())

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"the EMDWriter for {self.path} is closed")

    # --- frames ------------------------------------------------------------------------------
    def _check_frames(self, frames: Any, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        geo = self.geometry
        if isinstance(frames, np.ndarray) and frames.ndim == 2:
            frames = frames[np.newaxis]
        idx = geo.as_indices(np.reshape(indices, -1))
        geo.check_stack(frames, idx.size)
        geo.check_indices(idx)
        return frames, idx

    def write_frames(self, frames: np.ndarray, indices: Any) -> None:
        """Write ``frames`` (n, det_y, det_x) (or one (det_y, det_x) frame) at flat scan
        ``indices`` (n,). Any order; a run of consecutive indices is written as one slice per
        scan row (at most three HDF5 writes), scattered indices one frame each."""
        frames, idx = self._check_frames(frames, indices)
        if self._codec is not None:
            self._write_codec(frames, idx)
            return
        with self._lock:
            self._check_open()
            for a, b in _consecutive_runs(idx):
                self._write_run(frames[a:b], int(idx[a]))
            self._written[idx] = True
            self._frames_written += idx.size

    def _write_run(self, frames: np.ndarray, start: int) -> None:
        scan_x = self.geometry.scan_shape[1]
        pos, end, i = start, start + frames.shape[0], 0
        while pos < end:
            y, x = divmod(pos, scan_x)
            n = min(scan_x - x, end - pos)  # the frames of this run in scan row y
            self._write_row(frames[i : i + n], y, x)
            pos, i = pos + n, i + n

    def _write_row(self, frames: np.ndarray, y: int, x: int) -> None:
        """Frames at (y, x … x+n). Whole chunks of an unfiltered dataset go straight to the file
        (``write_direct_chunk``: no chunk cache, no type conversion; ~3× faster than a slice
        write); the unaligned ends go through h5py."""
        k = self._data.chunks[1]
        n = frames.shape[0]
        a = -(-x // k) * k  # first chunk boundary at or after x
        b = min((x + n) // k * k, self.geometry.scan_shape[1] // k * k)
        if not self._direct or a >= b:
            self._data[y, x : x + n] = frames
            return
        if a > x:
            self._data[y, x:a] = frames[: a - x]
        for c in range(a, b, k):
            chunk = np.ascontiguousarray(frames[c - x : c - x + k])
            self._data.id.write_direct_chunk((y, c, 0, 0), chunk)
        if b < x + n:
            self._data[y, b : x + n] = frames[b - x :]

    # --- frames through the stemedge codec -----------------------------------------------------
    def _codec_pieces(
        self, frames: np.ndarray, idx: np.ndarray
    ) -> Iterator[tuple[int, int, int, np.ndarray]]:
        """(y, c, lo, part): ``part`` holds the frames at chunk (y, c)'s offsets lo, lo+1, …,
        in input order."""
        k, scan_x = self._chunk_shape[1], self.geometry.scan_shape[1]
        for a, b in _consecutive_runs(idx):
            pos, end, i = int(idx[a]), int(idx[a]) + (b - a), a
            while pos < end:
                y, x = divmod(pos, scan_x)
                c = x // k * k
                n = min(c + k, scan_x, x + end - pos) - x
                yield y, c, x - c, frames[i : i + n]
                pos, i = pos + n, i + n

    def _encode_chunk(self, frames: np.ndarray) -> bytes:
        """One HDF5 chunk's frames (an edge chunk's valid ones) → a stemedge chunk of the
        dataset's chunk shape (zero-padded at the scan's edge)."""
        from stemedge import _native

        k = self._chunk_shape[1]
        if frames.shape[0] < k:
            pad = np.zeros((k - frames.shape[0], *frames.shape[1:]), frames.dtype)
            frames = np.concatenate([frames, pad])
        chunk = np.ascontiguousarray(frames).reshape(self._chunk_shape)
        return _native.codec_compress(chunk, **self._codec)

    def _write_codec(self, frames: np.ndarray, idx: np.ndarray) -> None:
        """Whole chunks are compressed outside the lock (the codec releases the GIL, so
        concurrent writers compress in parallel) and written directly; pieces of chunks wait in
        memory until their chunk is complete (or the file is flushed)."""
        k, scan_x = self._chunk_shape[1], self.geometry.scan_shape[1]
        work = []
        for y, c, lo, part in self._codec_pieces(frames, idx):
            whole = lo == 0 and part.shape[0] == min(k, scan_x - c)
            work.append((y, c, lo, part, self._encode_chunk(part) if whole else None))
        with self._lock:
            self._check_open()
            for y, c, lo, part, blob in work:
                if blob is not None:
                    self._pending.pop((y, c), None)
                    self._data.id.write_direct_chunk((y, c, 0, 0), blob, filter_mask=0)
                else:
                    self._add_to_pending(y, c, lo, part)
                start = y * scan_x + c + lo
                self._written[start : start + part.shape[0]] = True
            self._frames_written += idx.size

    def _add_to_pending(self, y: int, c: int, lo: int, part: np.ndarray) -> None:
        """Put ``part`` into chunk (y, c)'s pending frames; write the chunk once complete."""
        k, scan_x = self._chunk_shape[1], self.geometry.scan_shape[1]
        valid = min(k, scan_x - c)
        pending = self._pending.get((y, c))
        if pending is None:
            frames = np.zeros((k, *self.geometry.frame_shape), self.geometry.dtype)
            filled = self._written[y * scan_x + c : y * scan_x + c + valid].copy()
            if filled.any():
                # A chunk already in the file gets frames again: start from its stored (decoded)
                # frames, the one case where a chunk is decoded and coded again.
                frames[:valid] = self._data[y, c : c + valid]
            pending = self._pending[(y, c)] = _PendingChunk(frames, filled)
        n = part.shape[0]
        pending.frames[lo : lo + n] = part
        pending.filled[lo : lo + n] = True
        pending.dirty = True
        if pending.filled.all():
            del self._pending[(y, c)]
            self._write_pending(y, c, pending)

    def _write_pending(self, y: int, c: int, pending: _PendingChunk) -> None:
        valid = pending.filled.size
        blob = self._encode_chunk(pending.frames[:valid])
        self._data.id.write_direct_chunk((y, c, 0, 0), blob, filter_mask=0)
        pending.dirty = False

    def _flush_pending(self) -> None:
        """Write the incomplete chunks (missing frames as zeros, as unwritten positions read);
        they stay in memory to be completed (called with the lock held)."""
        for (y, c), pending in self._pending.items():
            if pending.dirty:
                self._write_pending(y, c, pending)

    # --- results, log ------------------------------------------------------------------------
    def write_results(
        self,
        group_name: str,
        arrays: Mapping[str, np.ndarray],
        units: Mapping[str, str] | None = None,
        *,
        kinds: Mapping[str, str] | None = None,
    ) -> None:
        """Store analysis results as EMD arrays in the node ``group_name`` under the datacube.

        Parameters
        ----------
        group_name : str
            Results group, e.g. "com" or "virtual". Written again, its arrays are replaced.
        arrays : dict of str to ndarray
            The results. Their dim vectors follow ``kinds``.
        units : dict of str to str, optional
            Units of each array's values (e.g. {"phase": "rad"}).
        kinds : dict of str to str, optional
            "scan" (first two axes are the scan: Å), "detector" (last two axes are the
            detector: mrad) or "other" (pixels). Default: "scan" when the leading axes match
            the scan shape, else "detector" when the trailing axes match the frame shape.
        """
        _check_name(group_name, "group_name")
        if not isinstance(arrays, Mapping):
            raise TypeError(f"arrays must be a dict of name to array, got {type(arrays).__name__}")
        units, kinds = dict(units or {}), dict(kinds or {})
        prepared = {}
        for name, array in arrays.items():
            _check_name(name, "result name")
            prepared[name] = self._result_array(name, array, kinds.get(name))
        with self._lock:
            self._check_open()
            node = self._cube.get(group_name)
            if node is None:
                node = self._cube.create_group(group_name)
                node.attrs["emd_group_type"] = "node"
                node.attrs["python_class"] = "Node"
            for name, (array, dims) in prepared.items():
                if name in node:
                    del node[name]
                grp = _create_array_group(node, name, "Array")
                kwargs = _creation_kwargs(array.shape, array.dtype, None, *self._compression)
                ds = grp.create_dataset("data", data=array, **kwargs)
                ds.attrs["units"] = str(units.get(name, ""))
                _write_dims(grp, dims)

    def _result_array(self, name: str, array: Any, kind: str | None) -> tuple[np.ndarray, list]:
        geo = self.geometry
        array = np.asarray(array)
        if array.ndim == 0 or array.dtype.kind not in "biufc":
            raise ValueError(
                f"result {name!r} must be a numeric array with at least one axis, got "
                f"{array.dtype} with shape {array.shape} (put scalars in provenance instead)"
            )
        if kind is None:
            if array.shape[:2] == geo.scan_shape:
                kind = "scan"
            elif array.shape[-2:] == geo.frame_shape:
                kind = "detector"
            else:
                kind = "other"
        dims = [_pixel_dim(f"dim{n}") for n in range(array.ndim)]
        cal = geo.calibration
        if kind == "scan" and array.shape[:2] == geo.scan_shape:
            dims[:2] = _scan_dims(cal)
        elif kind == "detector" and array.shape[-2:] == geo.frame_shape:
            dims[-2:] = _detector_dims(cal, geo.frame_shape)
        elif kind != "other":
            raise ValueError(
                f"kinds[{name!r}] must be 'scan' (leading axes {geo.scan_shape}), 'detector' "
                f"(trailing axes {geo.frame_shape}) or 'other'; got {kind!r} for shape "
                f"{array.shape}"
            )
        return array, dims

    def log(self, event: Mapping[str, Any]) -> None:
        """Append ``event`` (a JSON-able dict: microscope state, an operator action…) to the event
        log. A "time" (ISO-8601 UTC) is added unless the event has one."""
        if not isinstance(event, Mapping):
            raise TypeError(f"event must be a dict, got {type(event).__name__}")
        record = jsonable(event)
        record.setdefault("time", utc_now())
        text = json.dumps(record)
        with self._lock:
            self._check_open()
            n = self._log.shape[0]
            self._log.resize((n + 1,))
            self._log[n] = text

    # --- lifetime ----------------------------------------------------------------------------
    def flush(self) -> None:
        """Put everything written so far on disk, with the counts, the written-positions mask and
        provenance, so that the file is valid if the process stops here."""
        with self._lock:
            self._check_open()
            self._flush_pending()
            self._update_counts()
            self._file.flush()

    def close(self, status: str = "closed") -> None:
        """Write the final provenance (``status``, end time, counts) and close the file.
        Closing again does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._flush_pending()
                self._pending.clear()
                self._write_state(status)
            finally:
                self._file.close()

    def __enter__(self) -> EMDWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("closed" if exc_type is None else f"aborted: {exc_type.__name__}: {exc}")


def write_emd(
    path: str | Path,
    data4d: np.ndarray,
    calibration: Calibration | None = None,
    results: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    provenance: dict[str, Any] | None = None,
    **writer_options: Any,
) -> Path:
    """Write a whole 4D array (scan_y, scan_x, det_y, det_x) to an EMD file in one call.

    ``results`` maps a group name to a dict of arrays (see :meth:`EMDWriter.write_results`);
    ``writer_options`` go to :class:`EMDWriter` (compression, compression_opts, chunk_frames,
    py4dstem, overwrite; ``compression="stemedge"`` for the stemedge codec). Returns the path."""
    if not isinstance(data4d, np.ndarray) or data4d.ndim != 4:
        raise ValueError(
            "data4d must be a 4D numpy array (scan_y, scan_x, det_y, det_x), got "
            f"{getattr(data4d, 'shape', type(data4d).__name__)}"
        )
    geometry = ScanGeometry(data4d.shape[:2], data4d.shape[2:], data4d.dtype, calibration)
    n = geometry.n_positions
    with EMDWriter(path, geometry, provenance=provenance, **writer_options) as writer:
        writer.write_frames(data4d.reshape(n, *geometry.frame_shape), np.arange(n))
        for group, arrays in (results or {}).items():
            writer.write_results(group, arrays)
    return Path(path)


# --------------------------------------------------------------------------------------------
# reader
# --------------------------------------------------------------------------------------------
class _UnsupportedDtypeError(ValueError):
    """A datacube of a dtype stemedge does not stream (passed on as the ValueError it is)."""


class EMDFile:
    """An open EMD file: the datacube (lazy) and what stemedge stored next to it.

    Attributes
    ----------
    path : Path
    geometry : ScanGeometry
        From the datacube's shape and dtype (native byte order) and ``calibration``.
    data : h5py.Dataset
        The datacube (scan_y, scan_x, det_y, det_x), read lazily: slice it.
    calibration : Calibration or None
        stemedge's calibration metadata; None for files stemedge did not write (their dim
        vectors are in ``dims``).
    dims : list of (vector, name, units)
        The datacube's dim vectors, expanded to full length.
    results : dict
        group name → array name → ndarray, for the results nodes under the datacube.
    provenance : dict
    log : list of dict
    positions_written : ndarray of bool (scan_y, scan_x) or None
        Which positions hold a frame (stemedge files; None for others).
    datacube_path : str
        HDF5 path of the datacube group.
    """

    def __init__(self, path: Path, h5file: h5py.File, cube: h5py.Group) -> None:
        self.path = path
        self._file = h5file
        self.datacube_path = cube.name
        self.data: h5py.Dataset = cube["data"]
        root = h5file[cube.name.split("/")[1]]
        bundle = root.get("metadatabundle")
        self.calibration = self._calibration(bundle)
        dtype = self.data.dtype.newbyteorder("=")
        if dtype not in FRAME_DTYPES:
            # Not incomplete or corrupt, so not a SourceError: a reader waiting for a file to
            # complete must not wait for this one.
            names = ", ".join(str(d) for d in FRAME_DTYPES)
            raise _UnsupportedDtypeError(
                f"{path}: the datacube at {cube.name} has dtype {self.data.dtype}; stemedge "
                f"streams {names} only (convert the file, e.g. with h5py and astype)"
            )
        shape = self.data.shape
        self.geometry = ScanGeometry(shape[:2], shape[2:], dtype, self.calibration)
        self.dims = _read_dims(cube, shape)
        self.results = self._results(cube)
        has_prov = bundle is not None and "provenance" in bundle
        self.provenance: dict[str, Any] = _read_metadata(bundle["provenance"]) if has_prov else {}
        own = root.get(_STEMEDGE_GROUP)
        self.log: list[dict[str, Any]] = []
        self.positions_written: np.ndarray | None = None
        if isinstance(own, h5py.Group):
            if "log" in own:
                self.log = [json.loads(s) for s in own["log"].asstr()[()]]
            if "written" in own:
                self.positions_written = own["written"][()].astype(bool)

    def _calibration(self, bundle: h5py.Group | None) -> Calibration | None:
        if bundle is None or "stemedge_calibration" not in bundle:
            return None
        fields = _read_metadata(bundle["stemedge_calibration"])
        try:
            return Calibration.from_dict(fields)
        except (TypeError, ValueError) as exc:
            raise SourceError(f"{self.path}: calibration metadata not understood: {exc}") from exc

    @staticmethod
    def _results(cube: h5py.Group) -> dict[str, dict[str, np.ndarray]]:
        results: dict[str, dict[str, np.ndarray]] = {}
        for name, node in cube.items():
            if (
                not isinstance(node, h5py.Group)
                or _attr_str(node.attrs.get("emd_group_type")) != "node"
            ):
                continue
            results[name] = {
                key: np.asarray(arr["data"][()])
                for key, arr in node.items()
                if isinstance(arr, h5py.Group) and "data" in arr
            }
        return results

    def close(self) -> None:
        """Close the file (``data`` is unusable afterwards). Idempotent."""
        self._file.close()

    def __enter__(self) -> EMDFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        geo = self.geometry
        return (
            f"EMDFile({str(self.path)!r}, scan_shape={geo.scan_shape}, "
            f"frame_shape={geo.frame_shape}, dtype={geo.dtype})"
        )


def _open_h5(path: Path) -> h5py.File:
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise SourceError(
            f"{path}: cannot open as HDF5 ({exc}); the file is truncated, still being "
            "written, locked by a writer, or not HDF5"
        ) from exc


def _is_datacube(grp: h5py.Group) -> bool:
    if _attr_str(grp.attrs.get("emd_group_type")) != "array":
        return False
    data = grp.get("data")
    if not isinstance(data, h5py.Dataset) or data.ndim != 4:
        return False
    last = grp.get("dim3")  # a stack of 3D arrays is 4D too: its last dim holds labels
    return not (isinstance(last, h5py.Dataset) and _attr_str(last.attrs.get("name")) == "_labels_")


def _find_datacube(f: h5py.File, path: Path) -> h5py.Group:
    """The datacube: a 4D EMD array, preferring one tagged DataCube or named 'datacube'."""
    found: list[h5py.Group] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group) and _is_datacube(obj):
            found.append(obj)

    f.visititems(visit)
    if not found:
        is_emd = _attr_str(f.attrs.get("emd_group_type")) == "file"
        what = "an EMD 1.0 file" if is_emd else "HDF5 but not an EMD 1.0 file"
        raise SourceError(
            f"{path}: no 4D datacube found ({what}; looked for a group with "
            "emd_group_type='array' holding a 4D 'data' dataset)"
        )

    def rank(g: h5py.Group) -> int:
        tagged = _attr_str(g.attrs.get("python_class")) == "DataCube"
        return 0 if tagged else 1 if g.name.rsplit("/", 1)[-1] == DATACUBE_NAME else 2

    return min(found, key=rank)


def read_emd(path: str | Path) -> EMDFile:
    """Open an EMD 1.0 file (written by stemedge, py4DSTEM or emdfile) and find its datacube.

    The data stay on disk (``EMDFile.data`` is the h5py dataset); close the returned object or
    use it as a context manager.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    SourceError
        The file is truncated, corrupt, locked, not HDF5 or has no 4D datacube; the message
        names the file and the problem.
    ValueError
        The datacube's dtype is not a frame dtype (uint8, uint16, uint32, float32).
    """
    path = Path(path)
    f = _open_h5(path)
    try:
        return EMDFile(path, f, _find_datacube(f, path))
    except (SourceError, _UnsupportedDtypeError):
        f.close()
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        f.close()
        raise SourceError(
            f"{path}: unreadable EMD structure ({type(exc).__name__}: {exc})"
        ) from exc
