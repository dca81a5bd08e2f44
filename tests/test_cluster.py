"""Scale-out on Dask: a LocalCluster of 2 worker processes runs every built-in analysis over a
file partitioned by scan rows and gets exactly the single-process results; a worker killed
mid-job still gives the complete result; a partition that cannot be read fails the run with a
clear error, never a silently incomplete map."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("distributed")

from stemedge.analysis import (
    CenterOfMassAnalysis,
    MaxPattern,
    MeanPattern,
    SSBAnalysis,
    SumPattern,
    VirtualDetectorAnalysis,
    run_offline,
)
from stemedge.cluster import ClusterError, row_partitions, run_on_cluster
from stemedge.io import write_emd
from stemedge.masks import annulus, disk
from stemedge.sim import lattice, simulate_4dstem

DET = (24, 24)


def _analyses():
    return [
        CenterOfMassAnalysis(virtual={"bf": disk(DET, 5)}, nthreads=1),
        VirtualDetectorAnalysis({"adf": annulus(DET, 7, 11)}, nthreads=1),
        MeanPattern(),
        MaxPattern(),
        SumPattern(),
        SSBAnalysis(),
    ]


@pytest.fixture(scope="module")
def scan():
    return simulate_4dstem(
        lattice((64, 64), 0.26, dopant_fraction=0.1).phase,
        scan_step_A=0.26 * 4,
        det_shape=DET,
        dose=500.0,
        seed=1,
    )


@pytest.fixture(scope="module")
def files(scan, tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster")
    emd = write_emd(d / "scan.emd", scan.data, calibration=scan.calibration)
    np.save(d / "scan.npy", scan.data)
    scan.data.tofile(d / "scan.raw")
    return {"emd": emd, "npy": d / "scan.npy", "raw": d / "scan.raw"}


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    with Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def reference(scan):
    return run_offline(scan.data, _analyses(), calibration=scan.calibration)


def _assert_identical(got, reference):
    assert set(got) == set(reference)
    for name, arrays in reference.items():
        assert set(got[name]) == set(arrays), name
        for key, value in arrays.items():
            np.testing.assert_array_equal(got[name][key], value, err_msg=f"{name}/{key}")


def test_row_partitions_cover_the_scan_once():
    assert row_partitions(10, 3) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert row_partitions(4, 10) == [(0, 4)]
    with pytest.raises(ValueError, match="rows"):
        row_partitions(4, 0)


@pytest.mark.parametrize("kind", ["emd", "npy", "raw"])
def test_every_analysis_equals_the_single_process_run(kind, files, scan, client, reference):
    opts = {"scan_shape": scan.data.shape[:2], "frame_shape": DET, "dtype": "float32"}
    run = run_on_cluster(
        files[kind],
        _analyses(),
        cluster=client,
        rows=3,
        calibration=scan.calibration,
        open_kwargs=opts if kind == "raw" else None,
    )
    ny = scan.data.shape[0]
    assert run.workers == 2 and len(run.partitions) == -(-ny // 3)  # blocks of 3 rows
    np.testing.assert_array_equal(run.coverage, np.ones(scan.data.shape[:2], np.int64))
    _assert_identical(run.results, reference)


def test_a_real_merlin_file_on_the_cluster(client):
    from _helpers import MERLIN
    from stemedge.sources.files import open_source

    path = MERLIN / "Quad_9_Frame_CounterDepth_12_Rows_256.mib"
    if not path.exists():
        pytest.skip(f"no real Merlin data at {MERLIN}")
    opts = {"scan_shape": (3, 3)}
    src = open_source(path, **opts)
    ref = run_offline(src, [MeanPattern(), MaxPattern()])
    src.close()
    run = run_on_cluster(
        path, [MeanPattern(), MaxPattern()], cluster=client, rows=1, open_kwargs=opts
    )
    _assert_identical(run.results, ref)


class _KillOnce:
    """A worker plugin that kills its worker process the first time a partition starts."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.name = "stemedge-kill-once"

    def setup(self, worker) -> None:
        pass

    def teardown(self, worker) -> None:
        pass

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "executing" and "stemedge-rows-" in str(key):
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL)  # only the first one
            except FileExistsError:
                return
            os.close(fd)
            os._exit(1)  # the process dies mid-job, as a crashed or OOM-killed worker would


def test_a_worker_killed_mid_job_still_gives_the_complete_result(files, scan, reference, tmp_path):
    from distributed import Client, LocalCluster
    from distributed.diagnostics.plugin import WorkerPlugin

    marker = tmp_path / "killed"
    plugin = type("KillOnce", (_KillOnce, WorkerPlugin), {})(str(marker))
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    with Client(cluster) as c:
        c.register_plugin(plugin)
        run = run_on_cluster(
            files["emd"], _analyses(), cluster=c, rows=2, calibration=scan.calibration
        )
    cluster.close()
    assert marker.exists()  # a worker did die
    _assert_identical(run.results, reference)


def test_a_corrupt_partition_fails_the_run_clearly(scan, client, tmp_path):
    import h5py

    path = write_emd(
        tmp_path / "scan.emd",
        scan.data,
        calibration=scan.calibration,
        compression="stemedge",
        chunk_frames=scan.data.shape[1],  # one chunk per scan row
    )
    with h5py.File(path, "r") as f:  # where row 13's compressed chunk sits in the file
        dset = f["stemedge_root/datacube/data"]
        info = dset.id.get_chunk_info_by_coord((13, 0, 0, 0))
    with open(path, "r+b") as f:
        f.seek(info.byte_offset + info.size // 2)
        f.write(b"\xff" * 16)
    with pytest.raises(ClusterError, match="scan rows 12–14 failed") as err:
        run_on_cluster(
            path, [MeanPattern()], cluster=client, rows=3, retries=0, calibration=scan.calibration
        )
    assert "corrupt" in str(err.value)


def test_bad_requests_are_refused_before_anything_runs(files, scan, client):
    bound = MeanPattern()
    bound.bind(
        __import__("stemedge.geometry", fromlist=["ScanGeometry"]).ScanGeometry(
            scan.data.shape[:2], DET, np.float32
        )
    )
    with pytest.raises(ValueError, match="bound"):
        run_on_cluster(files["emd"], [bound], cluster=client)
    with pytest.raises(ValueError, match="unique"):
        run_on_cluster(files["emd"], [MeanPattern(), MeanPattern()], cluster=client)
    with pytest.raises(ValueError, match="cluster must be"):
        run_on_cluster(files["emd"], [MeanPattern()], cluster="mars")


def test_stemedge_process_on_the_cluster_writes_the_same_results(files, tmp_path):
    from stemedge.cli import main
    from stemedge.io import read_emd

    one, many = tmp_path / "one.emd", tmp_path / "many.emd"
    assert main(["process", str(files["emd"]), "--out", str(one), "--quiet"]) == 0
    args = ["process", str(files["emd"]), "--out", str(many), "--quiet", "--cluster", "local"]
    assert main([*args, "--cluster-workers", "2", "--partition-rows", "5"]) == 0
    with read_emd(one) as a, read_emd(many) as b:
        ra, rb = a.results, b.results
        assert set(ra) == set(rb) and {"com", "mean_pattern", "max_pattern"} <= set(ra)
        for name in ra:
            for key in ra[name]:
                np.testing.assert_array_equal(rb[name][key], ra[name][key], err_msg=f"{name}/{key}")


def test_slurm_jobs_are_written_as_asked():
    # No SLURM scheduler here: check the job script dask-jobqueue would submit for us.
    pytest.importorskip("dask_jobqueue")
    from stemedge.cluster import slurm_cluster

    cluster = slurm_cluster(
        0, cores=8, memory="32GB", queue="gpu", walltime="01:00:00", account="stem"
    )
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -p gpu", "#SBATCH -A stem", "#SBATCH -t 01:00:00", "--nthreads 8"):
        assert line in script, script
    assert "distributed.cli.dask_worker" in script and "--memory-limit 29.80GiB" in script
