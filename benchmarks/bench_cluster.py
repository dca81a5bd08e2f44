"""Scale-out on Dask: overhead against the same analyses in one process, and 1 → 2 workers.

    python benchmarks/bench_cluster.py [--scan 128] [--det 128] [--repeats 3]

The data: shifted bright-field disks (``stemedge.sim.shifted_disks``), scan² frames of det²
uint16, saved as .npy (memory-mapped by every reader; the page cache holds it after the first
read). The analyses: CoM with virtual BF and ADF (the fused native pass) and the mean pattern.

Rows, medians of ``--repeats`` runs:

- **read once**: one native pass over the file's bytes (``stemedge.kernels.read_pass``, all
  cores): the memory-bandwidth floor;
- **in process**: ``run_offline`` on one thread (what a Dask worker does per partition);
- **Dask, 1 worker** and **Dask, 2 workers**: ``run_on_cluster`` on a LocalCluster started
  beforehand (its start-up time is printed apart), four partitions per worker.

Overhead = Dask 1 worker / in process; scaling = Dask 1 worker / Dask 2 workers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from _timing import median_time
from stemedge.analysis import CenterOfMassAnalysis, MeanPattern, run_offline
from stemedge.cluster import run_on_cluster
from stemedge.kernels import read_pass
from stemedge.masks import annulus, disk
from stemedge.sim import shifted_disks


def analyses(det: int):
    shape = (det, det)
    return [
        CenterOfMassAnalysis(
            virtual={"bf": disk(shape, det / 6), "adf": annulus(shape, det / 5, det / 2.2)},
            nthreads=1,
        ),
        MeanPattern(),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scan", type=int, default=256)
    ap.add_argument("--det", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    tmp = Path(tempfile.mkdtemp(prefix="stemedge_cluster_"))
    path = tmp / "scan.npy"
    data = shifted_disks((args.scan, args.scan), (args.det, args.det), args.det / 8).data
    np.save(path, data)
    nbytes = data.nbytes
    del data
    gb = nbytes / 1e9
    print(
        f"load average {os.getloadavg()[0]:.2f}; {args.scan}² scan of {args.det}² uint16 = "
        f"{gb:.2f} GB; medians of {args.repeats}"
    )
    mm = np.load(path, mmap_mode="r")
    t_read = median_time(lambda: read_pass(mm), args.repeats)
    t_one = median_time(lambda: run_offline(mm, analyses(args.det)), args.repeats)
    rows = {}
    for workers in (1, 2):
        t0 = time.perf_counter()
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
        client = Client(cluster)
        start = time.perf_counter() - t0
        run_on_cluster(path, analyses(args.det), cluster=client)  # warm: imports on workers
        rows[workers] = (
            median_time(
                lambda c=client: run_on_cluster(path, analyses(args.det), cluster=c), args.repeats
            ),
            start,
        )
        client.close()
        cluster.close()
    print(f"{'':<22} {'time':>9} {'GB/s':>7} {'vs in process':>14}")
    print(f"{'read once (floor)':<22} {t_read:>8.3f}s {gb / t_read:>7.2f} {t_read / t_one:>13.2f}×")
    print(f"{'in process, 1 thread':<22} {t_one:>8.3f}s {gb / t_one:>7.2f} {1:>13.2f}×")
    for workers, (t, start) in rows.items():
        label = f"Dask, {workers} worker{'s' if workers > 1 else ''}"
        print(
            f"{label:<22} {t:>8.3f}s {gb / t:>7.2f} {t_one / t:>13.2f}×   (start-up {start:.1f} s)"
        )
    print(
        f"overhead of Dask (1 worker / in process): {rows[1][0] / t_one:.2f}×; "
        f"scaling 1 → 2 workers: {rows[1][0] / rows[2][0]:.2f}×"
    )
    path.unlink()


if __name__ == "__main__":
    main()
