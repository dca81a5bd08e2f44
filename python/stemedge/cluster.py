"""Scale-out (issue 9): the same analyses over a file partitioned by scan rows, on Dask.

Each partition is a block of scan rows. A Dask task opens the file itself (workers read
EMD/HDF5, npy, raw and MIB files directly: nothing but the file name travels), runs the
analyses over its rows and returns their partials and its coverage. The partials merge on the
workers pairwise (a tree), and the client finalises one merged partial per analysis: exactly
what :func:`stemedge.analysis.run_offline` computes in one process.

A partition whose worker dies is rerun by Dask on another worker; one that fails more often
than Dask allows raises :class:`ClusterError` naming its rows. The merged coverage is checked
against the partitions, so a result is complete or there is none.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stemedge.analysis.base import Analysis, Results
from stemedge.calibration import Calibration
from stemedge.geometry import ScanGeometry

__all__ = [
    "ClusterError",
    "ClusterRun",
    "connect",
    "row_partitions",
    "run_on_cluster",
    "slurm_cluster",
]


class ClusterError(RuntimeError):
    """A partition failed for good, or the merged coverage does not add up."""


@dataclasses.dataclass
class ClusterRun:
    """Results (``{analysis: {result: array}}``), the coverage, and how the run went."""

    results: dict[str, Results]
    coverage: np.ndarray
    partitions: list[tuple[int, int]]
    workers: int
    elapsed_s: float


def row_partitions(scan_y: int, rows: int) -> list[tuple[int, int]]:
    """``[(y0, y1), ...]`` blocks of ``rows`` scan rows covering ``[0, scan_y)``."""
    if not (isinstance(rows, int) and rows >= 1):
        raise ValueError(f"rows must be a positive integer, got {rows!r}")
    return [(y, min(y + rows, scan_y)) for y in range(0, scan_y, rows)]


def slurm_cluster(n_workers: int = 2, **job: Any):
    """dask-jobqueue's SLURMCluster scaled to ``n_workers`` jobs; ``job`` (``cores``,
    ``memory``, ``queue``, ``walltime``, ``account``, ``job_extra_directives`` …) overrides
    dask's ``jobqueue.slurm`` configuration. One worker process per job, one thread per core."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as e:
        raise ImportError("a SLURM cluster needs dask-jobqueue: pip install dask-jobqueue") from e
    opts = {"cores": 1, "memory": "4GB", "processes": 1, **job}
    cluster = SLURMCluster(**opts)
    cluster.scale(jobs=n_workers)
    return cluster


def connect(cluster: Any = "local", *, n_workers: int = 2, threads_per_worker: int = 1, **job: Any):
    """A ``distributed.Client``: ``"local"`` (a LocalCluster of ``n_workers`` processes), a
    scheduler address (``"tcp://host:8786"``), ``"slurm"`` (:func:`slurm_cluster`, ``job``
    passed on) or a Client itself."""
    from distributed import Client, LocalCluster

    if isinstance(cluster, Client):
        return cluster
    if cluster in (None, "local"):
        lc = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=":0",
        )
        return Client(lc)
    if cluster == "slurm":
        return Client(slurm_cluster(n_workers, **job))
    if isinstance(cluster, str) and "://" in cluster:
        return Client(cluster)
    raise ValueError(
        f"cluster must be 'local', 'slurm', a scheduler address or a Client, got {cluster!r}"
    )


def _open(path: str, open_kwargs: dict[str, Any], calibration: Calibration | None):
    from stemedge.sources.files import open_source

    source = open_source(path, **open_kwargs)
    geometry = source.geometry
    if calibration is not None:
        geometry = dataclasses.replace(geometry, calibration=calibration)
    return source, geometry


def _run_partition(
    path: str,
    open_kwargs: dict[str, Any],
    calibration: Calibration | None,
    analyses: list[Analysis],
    rows: tuple[int, int],
    chunk_frames: int,
) -> tuple[list[Any], np.ndarray]:
    """On a worker: the partials of ``analyses`` over scan rows ``rows`` and the coverage."""
    from stemedge.analysis.runner import Coverage

    source, geometry = _open(path, open_kwargs, calibration)
    try:
        for a in analyses:
            a.use_threads(1)  # one Dask thread per core: no nested threading
            a.bind(geometry)
        partials = [a.new_partial() for a in analyses]
        coverage = Coverage(geometry)
        nx = geometry.scan_shape[1]
        start, stop = rows[0] * nx, rows[1] * nx
        for i in range(start, stop, chunk_frames):
            j = min(i + chunk_frames, stop)
            frames = source.read_frames(i, j)
            indices = np.arange(i, j, dtype=np.int64)
            coverage.add(indices)
            for a, p in zip(analyses, partials, strict=True):
                a.process(p, frames, indices)
        return partials, coverage.counts
    finally:
        source.close()


def _merge(
    geometry: ScanGeometry,
    analyses: list[Analysis],
    left: tuple[list[Any], np.ndarray],
    right: tuple[list[Any], np.ndarray],
) -> tuple[list[Any], np.ndarray]:
    """On a worker: two partition results merged (partials and coverage)."""
    for a in analyses:
        a.bind(geometry)
    for a, into, other in zip(analyses, left[0], right[0], strict=True):
        a.merge(into, other)
    return left[0], left[1] + right[1]


def run_on_cluster(
    path: str | Path,
    analyses: Analysis | Sequence[Analysis],
    *,
    cluster: Any = "local",
    n_workers: int = 2,
    rows: int | None = None,
    open_kwargs: dict[str, Any] | None = None,
    calibration: Calibration | None = None,
    chunk_frames: int = 64,
    retries: int = 2,
    progress: bool = False,
) -> ClusterRun:
    """Run ``analyses`` over the file at ``path`` on a Dask cluster, partitioned by scan rows.

    Parameters
    ----------
    path : str or Path
        A file every worker can read (a shared filesystem on a cluster).
    analyses : Analysis or sequence of Analysis
        Unbound analyses with unique names; each task gets its own copy.
    cluster : "local", "slurm", scheduler address or distributed.Client
        See :func:`connect`. A Client passed in stays open; one made here is closed.
    n_workers : int
        Workers of a LocalCluster / SLURM jobs made here.
    rows : int, optional
        Scan rows per partition; default: about four partitions per worker.
    open_kwargs : dict, optional
        For :func:`stemedge.sources.files.open_source` (scan_shape, frame_shape, dtype).
    calibration : Calibration, optional
        Replaces the file's own (calibrated results need one).
    chunk_frames : int
        Frames per stack within a partition.
    retries : int
        Extra attempts of a partition that raised (a dead worker's partitions are rerun by
        Dask anyway, up to its ``allowed-failures``).
    progress : bool
        A progress bar over the partitions.
    """
    from distributed import as_completed

    analyses = [analyses] if isinstance(analyses, Analysis) else list(analyses)
    names = [a.name for a in analyses]
    if not analyses or len(set(names)) != len(names):
        raise ValueError(f"give one or more analyses with unique names, got {names}")
    for a in analyses:
        if a.bound:
            raise ValueError(f"analysis {a.name!r} is bound; pass unbound analyses")
    open_kwargs = dict(open_kwargs or {})
    path = str(path)
    source, geometry = _open(path, open_kwargs, calibration)  # fail early, here
    incomplete = getattr(source, "_positions", None) is not None
    source.close()
    if incomplete:
        raise ValueError(
            f"{path} holds a partly written scan; process it in one process (stemedge process)"
        )
    for a in analyses:
        copy.deepcopy(a).bind(geometry)  # checks (shapes, calibration) before any task runs
    ny = geometry.scan_shape[0]
    client = connect(cluster, n_workers=n_workers)
    owned = client is not cluster
    t0 = time.perf_counter()
    try:
        workers = max(1, len(client.scheduler_info()["workers"]))
        parts = row_partitions(ny, rows or max(1, math.ceil(ny / (4 * workers))))
        # The analyses are unbound: they travel pickled and bind on the workers.
        futures = {
            client.submit(
                _run_partition,
                path,
                open_kwargs,
                calibration,
                analyses,
                part,
                chunk_frames,
                retries=retries,
                pure=False,
                key=f"stemedge-rows-{part[0]}-{part[1]}-{time.time_ns()}",
            ): part
            for part in parts
        }
        bar = _progress(len(parts)) if progress else None
        pending = list(futures)
        done: list[Any] = []
        try:
            for fut in as_completed(pending):
                if fut.status == "error":
                    y0, y1 = futures[fut]
                    raise ClusterError(
                        f"scan rows {y0}–{y1 - 1} failed after {retries + 1} attempts: "
                        f"{type(fut.exception()).__name__}: {fut.exception()}"
                    ) from fut.exception()
                done.append(fut)
                if bar is not None:
                    bar.update(1)
                # merge pairwise as partitions finish: a tree on the workers
                while len(done) >= 2:
                    a, b = done.pop(), done.pop()
                    done.append(client.submit(_merge, geometry, analyses, a, b, pure=False))
        finally:
            if bar is not None:
                bar.close()
        partials, counts = done[0].result()
    except ClusterError:
        raise
    except Exception as e:  # KilledWorker and the like: a partition could not be computed
        raise ClusterError(f"the cluster run failed: {type(e).__name__}: {e}") from e
    finally:
        if owned:
            cluster_obj = client.cluster
            client.close()
            if cluster_obj is not None:
                cluster_obj.close()
    expected = np.ones(geometry.scan_shape, np.int64)
    if not np.array_equal(counts, expected):
        missing = int((counts == 0).sum())
        raise ClusterError(
            f"merged coverage does not add up: {missing} positions missing, "
            f"{int((counts > 1).sum())} seen more than once"
        )
    for a in analyses:
        a.bind(geometry)
    results = {a.name: a.finalize(p, counts) for a, p in zip(analyses, partials, strict=True)}
    return ClusterRun(results, counts, parts, workers, time.perf_counter() - t0)


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="partition", desc="stemedge cluster", leave=False)
