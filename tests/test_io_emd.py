"""EMD 1.0 writer and reader: round trips, streaming from threads, emdfile interop, bad files."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import textwrap
import threading

import emdfile
import h5py
import numpy as np
import pytest

from _helpers import PACKAGE_PARENT
from stemedge.calibration import Calibration
from stemedge.geometry import FRAME_DTYPES, ScanGeometry
from stemedge.io import EMDWriter, read_emd, write_emd
from stemedge.io.emd import DATACUBE_NAME, ROOT_NAME
from stemedge.sources.base import SourceError

CAL = Calibration(scan_step_A=(0.5, 2.0), det_mrad_per_px=0.25, det_origin_px=(3.0, 2.0))
REPO_PYTHON = str(PACKAGE_PARENT)


def _frames(shape, dtype, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(size=shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype, endpoint=True)


def _iso(text: str) -> datetime.datetime:
    t = datetime.datetime.fromisoformat(text)
    assert t.utcoffset() == datetime.timedelta(0), text
    return t


@pytest.mark.parametrize("dtype", FRAME_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (1, 1, 1, 1), (1, 4, 2, 3), (5, 1, 9, 1)])
def test_round_trip_every_dtype_and_odd_shapes(tmp_path, dtype, shape):
    data = _frames(shape, dtype)
    path = write_emd(tmp_path / "a.emd", data, CAL)
    with read_emd(path) as f:
        assert f.geometry == ScanGeometry(shape[:2], shape[2:], dtype, CAL)
        assert f.data.dtype == dtype
        np.testing.assert_array_equal(f.data[()], data)
        assert f.calibration == CAL
        assert f.positions_written.all()


def test_round_trip_without_calibration_uses_pixel_dims(tmp_path):
    data = _frames((2, 3, 4, 5), np.uint8)
    with read_emd(write_emd(tmp_path / "a.h5", data)) as f:
        assert f.calibration is None
        assert [units for _, _, units in f.dims] == ["pixels"] * 4
        np.testing.assert_array_equal(f.dims[1][0], [0, 1, 2])


def test_provenance_results_and_log(tmp_path):
    geo = ScanGeometry((3, 5), (7, 6), np.uint16, CAL)
    source = {"kind": "sim", "seed": np.int64(3), "shape": (3, 5)}
    params = {
        "nested": [1, [2, 3]],
        "names": ["a", "b"],
        "none": None,
        "flag": True,
        "arr": np.arange(3.0),
        "nan": float("nan"),
    }
    with EMDWriter(tmp_path / "a.emd", geo, provenance={"source": source}) as w:
        w.provenance["parameters"] = params
        w.write_frames(_frames((15, 7, 6), np.uint16), np.arange(15))
        w.log({"event": "stage moved", "x_um": np.float32(1.5)})
        w.log({"event": "beam blanked", "time": "then"})
        com = np.ones((3, 5, 2), np.float32)
        w.write_results("com", {"com": com, "mean_dp": np.zeros((7, 6))}, {"com": "mrad"})
    with read_emd(tmp_path / "a.emd") as f:
        prov = f.provenance
        assert prov["stemedge_version"] == __import__("stemedge").__version__
        assert _iso(prov["start_time"]) <= _iso(prov["end_time"])
        assert (prov["frames_written"], prov["positions_covered"]) == (15, 15)
        assert prov["status"] == "closed"
        assert prov["source"] == {"kind": "sim", "seed": 3, "shape": [3, 5]}
        assert prov["parameters"]["nested"] == [1, [2, 3]]
        assert prov["parameters"]["names"] == ["a", "b"]
        assert prov["parameters"]["none"] is None and prov["parameters"]["flag"] is True
        np.testing.assert_array_equal(prov["parameters"]["arr"], np.arange(3.0))
        assert prov["parameters"]["nan"] == "nan"
        assert [e["event"] for e in f.log] == ["stage moved", "beam blanked"]
        assert f.log[0]["x_um"] == 1.5 and _iso(f.log[0]["time"])
        assert f.log[1]["time"] == "then"
        assert set(f.results) == {"com"}
        np.testing.assert_array_equal(f.results["com"]["com"], com)
        assert f.results["com"]["com"].dtype == np.float32
        grp = f._file[f"{ROOT_NAME}/{DATACUBE_NAME}/com/com"]
        assert grp["data"].attrs["units"] == "mrad"
        assert [grp[f"dim{n}"].attrs["units"] for n in range(3)] == ["A", "A", "pixels"]
        dp = f._file[f"{ROOT_NAME}/{DATACUBE_NAME}/com/mean_dp"]
        np.testing.assert_allclose(dp["dim0"][()], [-0.75, -0.5])  # (0 - origin) · 0.25 mrad
        assert dp["dim1"].attrs["units"] == "mrad"


def test_results_kinds_and_replacement(tmp_path):
    geo = ScanGeometry((4, 4), (4, 4), np.uint8, CAL)  # scan and detector look alike
    with EMDWriter(tmp_path / "a.emd", geo) as w:
        w.write_results(
            "maps", {"a": np.zeros((4, 4)), "b": np.zeros((4, 4))}, kinds={"b": "detector"}
        )
        w.write_results("maps", {"a": np.ones((4, 4))})
        with pytest.raises(ValueError, match="kinds"):
            w.write_results("maps", {"c": np.zeros((3, 3))}, kinds={"c": "scan"})
        with pytest.raises(ValueError, match="group_name"):
            w.write_results("data", {"c": np.zeros(3)})
        with pytest.raises(ValueError, match="at least one axis"):
            w.write_results("maps", {"c": np.float64(1.0)})
    with read_emd(tmp_path / "a.emd") as f:
        np.testing.assert_array_equal(f.results["maps"]["a"], 1.0)
        node = f._file[f"{ROOT_NAME}/{DATACUBE_NAME}/maps"]
        assert node["a/dim0"].attrs["units"] == "A"
        assert node["b/dim0"].attrs["units"] == "mrad"


def test_streaming_random_order_from_two_threads(tmp_path):
    geo = ScanGeometry((7, 9), (5, 6), np.uint16, CAL)
    data = _frames((63, 5, 6), np.uint16)
    order = np.random.default_rng(1).permutation(63)
    with EMDWriter(tmp_path / "a.emd", geo, chunk_frames=3, compression="gzip") as w:

        def worker(part: np.ndarray) -> None:
            i = 0
            while i < part.size:  # single frames and small groups, in random order
                k = 1 + i % 3
                idx = part[i : i + k]
                w.write_frames(data[idx], idx)
                i += k

        threads = [threading.Thread(target=worker, args=(order[t::2],)) for t in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (w.frames_written, w.positions_covered) == (63, 63)
    with read_emd(tmp_path / "a.emd") as f:
        assert f.data.compression == "gzip"
        np.testing.assert_array_equal(f.data[()].reshape(63, 5, 6), data)


@pytest.mark.parametrize("start,stop", [(0, 63), (5, 40), (9, 18), (3, 7), (60, 63), (8, 10)])
def test_consecutive_runs_across_rows(tmp_path, start, stop):
    geo = ScanGeometry((7, 9), (3, 2), np.float32)
    data = _frames((63, 3, 2), np.float32)
    with EMDWriter(tmp_path / "a.emd", geo) as w:
        w.write_frames(data[start:stop], np.arange(start, stop))
    with read_emd(tmp_path / "a.emd") as f:
        expected = np.zeros_like(data)
        expected[start:stop] = data[start:stop]
        np.testing.assert_array_equal(f.data[()].reshape(63, 3, 2), expected)
        assert f.positions_written.reshape(-1).nonzero()[0].tolist() == list(range(start, stop))


def test_duplicates_last_wins_and_single_frame(tmp_path):
    geo = ScanGeometry((2, 2), (2, 2), np.uint8)
    with EMDWriter(tmp_path / "a.emd", geo) as w:
        w.write_frames(np.stack([np.full((2, 2), v, np.uint8) for v in (1, 2, 3)]), [3, 3, 0])
        w.write_frames(np.full((2, 2), 9, np.uint8), 1)
        assert (w.frames_written, w.positions_covered) == (4, 3)
    with read_emd(tmp_path / "a.emd") as f:
        assert f.data[()][..., 0, 0].tolist() == [[3, 9], [0, 2]]


def test_write_frames_rejects_bad_input(tmp_path):
    geo = ScanGeometry((2, 3), (4, 5), np.uint16)
    good = np.zeros((2, 4, 5), np.uint16)
    with EMDWriter(tmp_path / "a.emd", geo) as w:
        with pytest.raises(TypeError, match="dtype uint16"):
            w.write_frames(good.astype(np.float32), [0, 1])
        with pytest.raises(ValueError, match=r"shape \(n, 4, 5\)"):
            w.write_frames(np.zeros((2, 5, 4), np.uint16), [0, 1])
        with pytest.raises(IndexError, match="outside"):
            w.write_frames(good, [5, 6])
        with pytest.raises(TypeError, match="integers"):
            w.write_frames(good, [0.0, 1.0])
        with pytest.raises(ValueError, match="2 frames but 3 indices"):
            w.write_frames(good, [0, 1, 2])
        with pytest.raises(TypeError, match="numpy array"):
            w.write_frames(good.tolist(), [0, 1])
        with pytest.raises(ValueError, match="chunk_frames"):
            EMDWriter(tmp_path / "b.emd", geo, chunk_frames=4)


def test_existing_file_is_refused_unless_overwrite(tmp_path):
    data = _frames((1, 2, 3, 3), np.uint8)
    write_emd(tmp_path / "a.emd", data)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_emd(tmp_path / "a.emd", data)
    write_emd(tmp_path / "a.emd", data + 1, overwrite=True)
    with read_emd(tmp_path / "a.emd") as f:
        np.testing.assert_array_equal(f.data[()], data + 1)


def test_close_twice_exit_on_error_and_use_after_close(tmp_path):
    geo = ScanGeometry((1, 2), (2, 2), np.uint8)
    with pytest.raises(RuntimeError, match="boom"):
        with EMDWriter(tmp_path / "a.emd", geo) as w:
            w.write_frames(np.ones((1, 2, 2), np.uint8), [1])
            raise RuntimeError("boom")
    w.close()
    assert w.closed
    with pytest.raises(ValueError, match="closed"):
        w.write_frames(np.ones((1, 2, 2), np.uint8), [0])
    with pytest.raises(ValueError, match="closed"):
        w.flush()
    with read_emd(tmp_path / "a.emd") as f:
        assert f.provenance["status"] == "aborted: RuntimeError: boom"
        assert f.provenance["positions_covered"] == 1


def test_file_survives_process_death_after_flush(tmp_path):
    path = tmp_path / "live.emd"
    script = textwrap.dedent(
        f"""
        import os, numpy as np
        from stemedge.geometry import ScanGeometry
        from stemedge.io import EMDWriter
        w = EMDWriter({str(path)!r}, ScanGeometry((3, 4), (5, 5), np.uint16))
        w.write_frames(np.full((6, 5, 5), 7, np.uint16), np.arange(6))
        w.log({{"event": "halfway"}})
        w.flush()
        w.provenance["source"] = {{"kind": "test"}}
        w.write_frames(np.full((1, 5, 5), 8, np.uint16), [11])
        w.flush()
        os._exit(0)  # dies without close()
        """
    )
    env = {**os.environ, "PYTHONPATH": REPO_PYTHON}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=60)
    with read_emd(path) as f:
        data = f.data[()].reshape(12, 5, 5)
        assert (data[:6] == 7).all() and (data[6:11] == 0).all() and (data[11] == 8).all()
        assert f.positions_written.reshape(-1).tolist() == [True] * 6 + [False] * 5 + [True]
        assert f.provenance["status"] == "open" and f.provenance["end_time"] is None
        assert f.provenance["frames_written"] == 7
        assert f.provenance["source"] == {"kind": "test"}
        assert [e["event"] for e in f.log] == ["halfway"]


def test_emdfile_reads_our_file(tmp_path):
    data = _frames((3, 5, 7, 6), np.uint16)
    results = {"virtual": {"bf": np.arange(15.0).reshape(3, 5)}}
    write_emd(tmp_path / "a.emd", data, CAL, results=results)
    cube = emdfile.read(str(tmp_path / "a.emd"))
    assert isinstance(cube, emdfile.Array)
    assert cube.shape == data.shape
    np.testing.assert_array_equal(cube.data, data)
    assert cube.dim_names == ("scan_y", "scan_x", "det_y", "det_x")
    assert tuple(cube.dim_units) == ("A", "A", "mrad", "mrad")
    np.testing.assert_allclose(cube.dims[0], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(cube.dims[1], [0.0, 2.0, 4.0, 6.0, 8.0])
    np.testing.assert_allclose(cube.dims[2], (np.arange(7) - 3.0) * 0.25)
    np.testing.assert_allclose(cube.dims[3], (np.arange(6) - 2.0) * 0.25)
    np.testing.assert_array_equal(cube.tree("virtual/bf").data, results["virtual"]["bf"])
    cal = cube.root.metadata["stemedge_calibration"]
    assert Calibration.from_dict({k: cal[k] for k in cal.keys}) == CAL


def test_we_read_an_emdfile_written_file(tmp_path):
    data = _frames((4, 3, 5, 6), np.uint16)
    arr = emdfile.Array(
        data,
        name="scan",
        dims=[[0, 1.5], [0, 1.5], [0, 0.1], [0, 0.1]],
        dim_units=["A", "A", "mrad", "mrad"],
    )
    root = emdfile.Root(name="experiment")
    root.tree(arr)
    root.tree(emdfile.Array(np.zeros((4, 3)), name="some_map"))
    emdfile.save(str(tmp_path / "theirs.h5"), root)
    with read_emd(tmp_path / "theirs.h5") as f:
        assert f.datacube_path == "/experiment/scan"
        np.testing.assert_array_equal(f.data[()], data)
        assert f.geometry.scan_shape == (4, 3) and f.calibration is None
        np.testing.assert_allclose(f.dims[0][0], [0, 1.5, 3.0, 4.5])
        assert f.dims[2][2] == "mrad"
        assert f.provenance == {} and f.log == [] and f.positions_written is None


def test_py4dstem_flavour_layout(tmp_path):
    """py4dstem=True tags the classes py4DSTEM.read builds a calibrated DataCube from (checked
    by hand with py4DSTEM 0.14.18; py4DSTEM is not a test dependency)."""
    write_emd(tmp_path / "a.emd", _frames((2, 2, 4, 4), np.uint8), CAL, py4dstem=True)
    with h5py.File(tmp_path / "a.emd", "r") as h:
        assert h[f"{ROOT_NAME}/{DATACUBE_NAME}"].attrs["python_class"] == "DataCube"
        cal = h[f"{ROOT_NAME}/metadatabundle/calibration"]
        assert cal.attrs["python_class"] == "Calibration"
        assert cal["R_pixel_size"][()] == 0.5 and cal["Q_pixel_size"][()] == 0.25
        assert cal["_target_paths/0"][()] == b"/datacube"
    with read_emd(tmp_path / "a.emd") as f:
        assert f.calibration == CAL


def test_truncated_file_raises_source_error(tmp_path):
    path = write_emd(tmp_path / "cut.emd", _frames((6, 6, 16, 16), np.uint16))
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(SourceError, match=r"cut\.emd.*truncated"):
        read_emd(path)


def test_garbage_and_missing_datacube_raise_source_error(tmp_path):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(SourceError, match=r"garbage\.h5.*not HDF5"):
        read_emd(garbage)
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match=r"empty\.h5"):
        read_emd(empty)
    emdfile.save(str(tmp_path / "flat.h5"), np.zeros((4, 4)))
    with pytest.raises(SourceError, match=r"flat\.h5: no 4D datacube.*an EMD 1\.0 file"):
        read_emd(tmp_path / "flat.h5")
    with h5py.File(tmp_path / "plain.h5", "w") as h:
        h["data"] = np.zeros((2, 2, 2, 2))
    with pytest.raises(SourceError, match=r"not an EMD 1\.0 file"):
        read_emd(tmp_path / "plain.h5")
    emdfile.save(str(tmp_path / "f64.h5"), np.zeros((2, 2, 3, 3)))
    with pytest.raises(ValueError, match="dtype float64"):
        read_emd(tmp_path / "f64.h5")
    with pytest.raises(FileNotFoundError):
        read_emd(tmp_path / "missing.h5")


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_runs_across_chunk_boundaries_round_trip(tmp_path, compression):
    """Whole chunks go straight to the file (unfiltered data), the ends through h5py; runs that
    start, end and wrap at any offset, including the short chunk at the end of a scan row."""
    rng = np.random.default_rng(7)
    g = ScanGeometry((3, 10), (6, 5), np.uint16)
    data = rng.integers(0, 60000, (30, 6, 5)).astype(np.uint16)
    path = tmp_path / "runs.emd"
    with EMDWriter(path, g, chunk_frames=4, compression=compression) as w:
        assert w._direct is (compression is None)
        for a, b in [(0, 4), (4, 13), (13, 14), (14, 27), (27, 30)]:
            w.write_frames(data[a:b], np.arange(a, b))
    with read_emd(path) as f:
        np.testing.assert_array_equal(f.data[...].reshape(30, 6, 5), data)
