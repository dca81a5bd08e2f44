"""The Analysis contract: one mergeable computation for live, offline and Dask runs.

An analysis declares its results, starts an empty *partial* (a dict of numpy accumulators),
folds frame stacks at given scan indices into a partial, merges two partials, and turns a
partial into results. Partials from any split of the frames merge to the same result, so the
same object runs on the live ring (one partial per worker thread), offline on a file, and on
Dask (one partial per partition).

Lifecycle::

    a.bind(geometry)                 # once, before anything else; may precompute (mask plans)
    p = a.new_partial()
    a.process(p, frames, indices)    # any number of times, any order of stacks
    a.merge(p, q)                    # fold q into p
    results = a.finalize(p, coverage)

``coverage`` is the number of frames seen per scan position (int64 array of ``scan_shape``),
kept once by the runner (:class:`stemedge.analysis.runner.Coverage`); positions not yet seen are
0, so partial results during a scan show them as NaN.

Rules every analysis follows (the runners rely on them):

- ``process`` and ``merge`` change only the partial they are given, never the analysis object:
  one bound analysis is shared by all worker threads, each with its own partial.
- ``process`` validates its input (:meth:`Analysis.checked_indices`): indices outside
  the scan raise IndexError before anything is accumulated, so a bad stack loses nothing
  already accepted.
- Stacks may arrive in any order, at arbitrary (sparse, steered, out-of-order) indices, and a
  position may be measured more than once. Per-position accumulators are sums, and the
  built-in analyses report a position measured n times as the result of the *mean of its n
  frames* (sums divided by ``coverage``; a centre of mass is then the CoM of the summed frame).
- ``results()`` may depend on the bound geometry (e.g. calibrated results only exist with a
  calibration, a maximum has the frame dtype): call ``bind`` first.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from typing import Any

import numpy as np

from stemedge.geometry import ScanGeometry
from stemedge.kernels import _nthreads

__all__ = [
    "Analysis",
    "Partial",
    "ResultKind",
    "ResultSpec",
    "Results",
    "ScanIndices",
    "check_coverage",
    "check_partials",
    "scan_indices",
]


#: An analysis's accumulators: named numpy arrays, made by ``new_partial``.
Partial = dict[str, np.ndarray]
#: What ``finalize`` returns: result arrays by name.
Results = dict[str, np.ndarray]

_FLOAT32 = np.dtype(np.float32)


class ResultKind(enum.Enum):
    SCAN = "scan"  # one value (or small vector) per scan position: shape (*scan_shape, *extra)
    DETECTOR = "detector"  # one value per detector pixel: shape (*frame_shape, *extra)
    SINGLE = "single"  # a scalar or small array: shape extra


@dataclasses.dataclass(frozen=True)
class ResultSpec:
    """One declared result: its name, kind, dtype, trailing shape, units and meaning."""

    name: str
    kind: ResultKind
    dtype: np.dtype = _FLOAT32
    extra_shape: tuple[int, ...] = ()
    units: str = ""
    description: str = ""

    def shape(self, geometry: ScanGeometry) -> tuple[int, ...]:
        if self.kind is ResultKind.SCAN:
            return (*geometry.scan_shape, *self.extra_shape)
        if self.kind is ResultKind.DETECTOR:
            return (*geometry.frame_shape, *self.extra_shape)
        return self.extra_shape


class Analysis(abc.ABC):
    """Base class; see the module docstring for the lifecycle and the rules.

    Parameters
    ----------
    name : str, optional
        Identifier of this instance (group name in files, key in the runner's results); default
        the class attribute ``name``. Two analyses in one run need different names.
    """

    #: Short identifier, used as the group name in files and status events.
    name: str = "analysis"

    def __init__(self, *, name: str | None = None, nthreads: int | None = None) -> None:
        self._geometry: ScanGeometry | None = None
        self._nthreads = _nthreads(nthreads)  # native threads per call; 0: the whole pool
        if name is not None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"name must be a non-empty string, got {name!r}")
            self.name = name

    def checked_indices(self, frames: Any, indices: Any) -> ScanIndices:
        """Validate a stack for ``process``: indices on the grid (:func:`scan_indices`), frames
        of the bound geometry, one index per frame. Raises before anything is accumulated."""
        where = scan_indices(self.geometry, indices)
        self.geometry.check_stack(frames, len(where))
        return where

    @property
    def threads(self) -> int:
        """Native threads each ``process`` call uses (0: all cores)."""
        return self._nthreads

    def use_threads(self, n: int) -> None:
        """Set the native threads per call. The pipeline sets 1 for analyses left at 0 when it
        runs several workers: concurrent calls into the shared native pool would queue."""
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"threads must be an int >= 0 (0: all cores), got {n!r}")
        self._nthreads = int(n)

    @property
    def geometry(self) -> ScanGeometry:
        if self._geometry is None:
            raise RuntimeError(f"{type(self).__name__}: call bind(geometry) first")
        return self._geometry

    @property
    def bound(self) -> bool:
        """Whether ``bind`` has been called."""
        return self._geometry is not None

    def bind(self, geometry: ScanGeometry) -> None:
        """Fix the geometry (and precompute what depends on it). Rebinding to the same geometry
        is a no-op; to another one, an error."""
        if not isinstance(geometry, ScanGeometry):
            raise TypeError(f"geometry must be a ScanGeometry, got {type(geometry).__name__}")
        if self._geometry is not None and self._geometry != geometry:
            raise ValueError(
                f"{type(self).__name__} is bound to {self._geometry}; make a new one for {geometry}"
            )
        self._geometry = geometry

    @abc.abstractmethod
    def results(self) -> list[ResultSpec]:
        """The results ``finalize`` returns, in order."""

    @abc.abstractmethod
    def new_partial(self) -> Partial:
        """An empty accumulator."""

    @abc.abstractmethod
    def process(self, partial: Partial, frames: np.ndarray, indices: np.ndarray) -> None:
        """Fold ``frames`` (k, det_y, det_x), taken at flat scan ``indices`` (k,) int64, into
        ``partial``. The frames are a view into a ring slot: do not keep references to them."""

    @abc.abstractmethod
    def merge(self, into: Partial, other: Partial) -> None:
        """Fold ``other`` into ``into`` (both from ``new_partial``)."""

    @abc.abstractmethod
    def finalize(self, partial: Partial, coverage: np.ndarray) -> Results:
        """Results by name (matching ``results()``), from a partial that may not cover the scan."""

    def parameters(self) -> dict[str, Any]:
        """JSON-able parameters for provenance."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# --- helpers for implementations ----------------------------------------------------------------


class ScanIndices:
    """Validated flat scan indices of one stack, and how to scatter-add per-frame values.

    Made by :func:`scan_indices`. ``start`` is the first index when the indices are consecutive
    and ascending (the normal case: a slice add), else None; ``unique`` says whether no
    position repeats (a fancy-index add) — otherwise ``np.add.at`` accumulates the repeats.
    """

    __slots__ = ("flat", "start", "unique")

    def __init__(self, flat: np.ndarray, start: int | None, unique: bool) -> None:
        self.flat = flat
        self.start = start
        self.unique = unique

    def __len__(self) -> int:
        return self.flat.shape[0]

    def add_to(self, acc: np.ndarray, values: np.ndarray | int | float) -> None:
        """``acc[i] += values[j]`` for every frame j at scan index i (repeats accumulate).

        ``acc`` is indexed by flat scan position along axis 0; ``values`` has one row per frame
        (or is a scalar, e.g. 1 to count frames).
        """
        if self.start is not None:
            acc[self.start : self.start + self.flat.shape[0]] += values
        elif self.unique:
            acc[self.flat] += values  # no repeats: the buffered fancy add is exact and fast
        else:
            np.add.at(acc, self.flat, values)  # unbuffered: a repeated index adds every time


def scan_indices(geometry: ScanGeometry, indices: Any) -> ScanIndices:
    """Check flat scan ``indices`` (1-D integers) against ``geometry`` and classify them. A
    ScanIndices (from this function, for the same geometry) is returned as it is.

    Raises
    ------
    TypeError
        If the indices are not integers.
    ValueError
        If they are not one-dimensional.
    IndexError
        If any index lies outside the scan (``geometry.check_indices``).
    """
    if isinstance(indices, ScanIndices):
        return indices  # already checked and classified
    flat = geometry.as_indices(indices)
    k = flat.shape[0]
    if k == 0:
        return ScanIndices(flat, None, True)
    first, last = int(flat[0]), int(flat[-1])
    # Consecutive ascending indices (a raster stack) allow a slice add. With last - first = k - 1
    # they are consecutive iff strictly increasing: one comparison (np.diff costs twice as much).
    if last - first == k - 1 and (k <= 2 or bool((flat[1:] > flat[:-1]).all())):
        if first < 0 or last >= geometry.n_positions:
            geometry.check_indices(flat)
        return ScanIndices(flat, first, True)
    ordered = np.sort(flat)
    if ordered[0] < 0 or ordered[-1] >= geometry.n_positions:
        geometry.check_indices(flat)
    return ScanIndices(flat, None, not bool((ordered[1:] == ordered[:-1]).any()))


def check_coverage(geometry: ScanGeometry, coverage: Any) -> np.ndarray:
    """``coverage`` as a flat int64 array of ``n_positions`` (raising on a wrong shape)."""
    cov = np.asarray(coverage)
    if cov.shape != geometry.scan_shape or cov.dtype.kind not in "iu":
        raise ValueError(
            f"coverage must be an integer array of the scan shape {geometry.scan_shape} (frames "
            f"per position, e.g. Coverage.counts), got {cov.dtype} {cov.shape}"
        )
    return cov.reshape(-1)


def check_partials(into: Partial, other: Partial) -> None:
    """Refuse to merge partials with different accumulators (another analysis or geometry):
    numpy broadcasting would otherwise fold a mismatched one in silently."""
    if into.keys() != other.keys():
        raise ValueError(
            f"cannot merge partials with accumulators {sorted(other)} into {sorted(into)}; "
            "merge only partials made by the same analysis's new_partial()"
        )
    for key, acc in into.items():
        if acc.shape != other[key].shape or acc.dtype != other[key].dtype:
            raise ValueError(
                f"cannot merge partial[{key!r}] {other[key].dtype}{other[key].shape} into "
                f"{acc.dtype}{acc.shape}; merge only partials of analyses bound to one geometry"
            )
