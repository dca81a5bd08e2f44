"""File sources: every kind yields each frame once, in order, as C-contiguous native arrays;
open_source dispatches by extension and fails fast on incomplete or corrupt files."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from _helpers import MERLIN
from stemedge.calibration import Calibration
from stemedge.geometry import FRAME_DTYPES, ScanGeometry
from stemedge.io import EMDWriter, write_emd
from stemedge.sources.base import Source, SourceError
from stemedge.sources.files import EMDSource, MIBSource, NpySource, RawSource, open_source

CAL = Calibration(scan_step_A=1.5, det_mrad_per_px=0.5)
SINGLE_MIB = MERLIN / "001_4x2_6bit.mib"


def _data(shape=(3, 5, 4, 6), dtype=np.uint16, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(size=shape).astype(dtype)
    return rng.integers(0, 200, size=shape).astype(dtype)


def _collect(source: Source, max_frames: int) -> tuple[np.ndarray, np.ndarray]:
    frames, indices = [], []
    for chunk in source.chunks(max_frames):
        assert chunk.frames.shape[0] == chunk.indices.shape[0] <= max_frames
        assert type(chunk.frames) is np.ndarray and chunk.frames.flags.c_contiguous
        assert chunk.frames.dtype == source.geometry.dtype and chunk.frames.dtype.isnative
        assert chunk.indices.dtype == np.int64
        frames.append(chunk.frames.copy())
        indices.append(chunk.indices)
    return np.concatenate(frames), np.concatenate(indices)


def _check_covers(source: Source, expected_stack: np.ndarray) -> None:
    n = expected_stack.shape[0]
    for max_frames in (1, 4, 7, 1000):
        frames, indices = _collect(source, max_frames)
        assert indices.tolist() == list(range(n))  # every frame once, in order
        np.testing.assert_array_equal(frames, expected_stack)


def _writers(data: np.ndarray, tmp_path: Path) -> dict[str, Source]:
    n = data.shape[0] * data.shape[1]
    np.save(tmp_path / "d.npy", data)
    data.tofile(tmp_path / "d.raw")
    write_emd(tmp_path / "d.emd", data, CAL)
    return {
        "npy": NpySource(tmp_path / "d.npy"),
        "raw": RawSource(tmp_path / "d.raw", data.shape[:2], data.shape[2:], data.dtype),
        "emd": EMDSource(tmp_path / "d.emd"),
        "npy3d": NpySource(
            _save(tmp_path / "s.npy", data.reshape(n, *data.shape[2:])), data.shape[:2]
        ),
    }


def _save(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


@pytest.mark.parametrize("dtype", FRAME_DTYPES, ids=str)
def test_every_kind_covers_each_frame_once_in_order(tmp_path, dtype):
    data = _data((3, 5, 4, 6), dtype)
    stack = data.reshape(15, 4, 6)
    for kind, source in _writers(data, tmp_path).items():
        with source:
            assert source.geometry.scan_shape == (3, 5), kind
            assert source.geometry.frame_shape == (4, 6)
            _check_covers(source, stack)


def test_odd_shapes(tmp_path):
    for k, shape in enumerate([(1, 1, 1, 1), (1, 7, 3, 1), (5, 1, 1, 9)]):
        data = _data(shape, np.uint8)
        (tmp_path / str(k)).mkdir()
        for source in _writers(data, tmp_path / str(k)).values():
            with source:
                _check_covers(source, data.reshape(-1, *shape[2:]))


def test_npy_layouts(tmp_path):
    data = _data((2, 3, 4, 5), np.uint16)
    stack = data.reshape(6, 4, 5)
    big = _save(tmp_path / "big.npy", data.astype(">u2"))
    with NpySource(big) as src:
        assert src.geometry.dtype == np.uint16
        _check_covers(src, stack)
    fortran = _save(tmp_path / "f.npy", np.asfortranarray(data))
    with NpySource(fortran) as src:
        _check_covers(src, stack)
    fortran3 = _save(tmp_path / "f3.npy", np.asfortranarray(stack))
    with NpySource(fortran3, (2, 3)) as src:
        _check_covers(src, stack)
    with NpySource(_save(tmp_path / "s.npy", stack)) as src:
        assert src.geometry.scan_shape == (1, 6)
    with NpySource(tmp_path / "big.npy", (3, 2)) as src:  # relabel: same 6 positions
        assert src.geometry.scan_shape == (3, 2)
        _check_covers(src, stack)
    with pytest.raises(ValueError, match="has 4 positions"):
        NpySource(tmp_path / "s.npy", (2, 2))
    with pytest.raises(ValueError, match="float64"):
        NpySource(_save(tmp_path / "f64.npy", data.astype(np.float64)))
    with pytest.raises(ValueError, match="expected frames"):
        NpySource(_save(tmp_path / "2d.npy", stack[0]))


def test_raw_offset_endianness_and_sizes(tmp_path):
    data = _data((2, 3, 4, 5), np.uint16)
    path = tmp_path / "d.bin"
    path.write_bytes(b"H" * 100 + data.astype(">u2").tobytes())
    with RawSource(path, (2, 3), (4, 5), ">u2", offset=100) as src:
        assert src.geometry.dtype == np.uint16
        assert src.describe()["file_dtype"] == ">u2"
        _check_covers(src, data.reshape(6, 4, 5))
    with pytest.raises(ValueError, match="check scan_shape"):
        RawSource(path, (2, 3), (4, 5), ">u2", offset=0)
    cut = tmp_path / "cut.raw"
    cut.write_bytes(data.tobytes()[: 4 * 40 + 7])
    with pytest.raises(SourceError, match=r"cut\.raw: raw file holds 4 complete frames of 6"):
        RawSource(cut, (2, 3), (4, 5), np.uint16)
    with RawSource(cut, (2, 3), (4, 5), np.uint16, allow_partial=True) as src:
        assert src.n_frames == 4
        _check_covers(src, data.reshape(6, 4, 5)[:4])


def test_emd_source_calibration_and_partial_file(tmp_path):
    data = _data((3, 4, 2, 2), np.float32)
    other = Calibration(scan_step_A=9.0)
    write_emd(tmp_path / "cal.emd", data, CAL)
    write_emd(tmp_path / "nocal.emd", data)
    with EMDSource(tmp_path / "cal.emd", calibration=other) as src:
        assert src.geometry.calibration == CAL  # the file's wins
    with EMDSource(tmp_path / "nocal.emd", calibration=other) as src:
        assert src.geometry.calibration == other
    with EMDSource(tmp_path / "nocal.emd", scan_shape=(2, 6)) as src:
        assert src.geometry.scan_shape == (2, 6)
        _check_covers(src, data.reshape(12, 2, 2))
    # A stopped acquisition: only the positions that got frames are yielded.
    stack = data.reshape(12, 2, 2)
    written = np.array([0, 1, 2, 5, 6, 7, 8, 11])
    with EMDWriter(tmp_path / "part.emd", ScanGeometry((3, 4), (2, 2), np.float32)) as w:
        w.write_frames(stack[written], written)
    with EMDSource(tmp_path / "part.emd") as src:
        assert src.n_frames == 8
        for max_frames in (1, 3, 100):
            frames, indices = _collect(src, max_frames)
            assert indices.tolist() == written.tolist()
            np.testing.assert_array_equal(frames, stack[written])


@pytest.mark.skipif(not SINGLE_MIB.exists(), reason="real MIB test files not present")
def test_mib_source(tmp_path):
    with MIBSource(SINGLE_MIB) as src:
        assert src.geometry.scan_shape == (2, 4) and src.geometry.dtype == np.uint8
        frames, indices = _collect(src, 3)
        assert indices.tolist() == list(range(8))
        assert frames.sum(axis=(1, 2), dtype=np.int64)[0] == 448386  # RosettaSciIO 0.15.0
        assert src.describe()["mib"]["counter_depth"] == 6


def test_open_source_dispatch(tmp_path):
    data = _data((2, 3, 4, 5), np.uint16)
    sources = _writers(data, tmp_path)
    for s in sources.values():
        s.close()
    (tmp_path / "d.h5").write_bytes((tmp_path / "d.emd").read_bytes())
    expected = {"d.npy": NpySource, "d.emd": EMDSource, "d.h5": EMDSource}
    for name, cls in expected.items():
        with open_source(tmp_path / name, calibration=CAL) as src:
            assert type(src) is cls
            assert src.geometry.calibration == CAL
            _check_covers(src, data.reshape(6, 4, 5))
    with open_source(
        tmp_path / "d.raw", scan_shape=(2, 3), frame_shape=(4, 5), dtype="uint16"
    ) as src:
        assert type(src) is RawSource
        assert src.describe()["kind"] == "raw" and src.describe()["n_frames"] == 6
    if SINGLE_MIB.exists():
        with open_source(SINGLE_MIB) as src:
            assert type(src) is MIBSource
    with pytest.raises(ValueError, match="needs frame_shape=, dtype="):
        open_source(tmp_path / "d.raw", scan_shape=(2, 3))
    with pytest.raises(ValueError, match=r"unknown file kind '\.tif'"):
        (tmp_path / "x.tif").write_bytes(b"x")
        open_source(tmp_path / "x.tif")
    with pytest.raises(ValueError, match=r"not frame_shape=\(5, 4\)"):
        open_source(tmp_path / "d.npy", frame_shape=(5, 4))
    with pytest.raises(ValueError, match="not dtype=uint8"):
        open_source(tmp_path / "d.emd", dtype=np.uint8)
    with pytest.raises(FileNotFoundError):
        open_source(tmp_path / "nope.npy")


def test_open_source_fails_fast_on_incomplete_files(tmp_path):
    """What a folder watcher sees: files cut short while being written."""
    data = _data((4, 4, 16, 16), np.uint16)
    np.save(tmp_path / "full.npy", data)
    write_emd(tmp_path / "full.emd", data)
    cuts = {
        "npy": (tmp_path / "full.npy").read_bytes()[:3000],
        "emd": (tmp_path / "full.emd").read_bytes()[:5000],
        "mib": SINGLE_MIB.read_bytes()[:70_000] if SINGLE_MIB.exists() else b"MQ1,0",
        "h5": b"",
    }
    for ext, payload in cuts.items():
        path = tmp_path / f"cut.{ext}"
        path.write_bytes(payload)
        t0 = time.perf_counter()
        with pytest.raises(SourceError, match=rf"cut\.{ext}"):
            open_source(path)
        assert time.perf_counter() - t0 < 1.0
    (tmp_path / "cut.raw").write_bytes(data.tobytes()[:1000])
    with pytest.raises(SourceError, match="1 complete frames of 16"):
        open_source(tmp_path / "cut.raw", scan_shape=(4, 4), frame_shape=(16, 16), dtype="u2")


def test_max_frames_is_checked(tmp_path):
    with NpySource(_save(tmp_path / "a.npy", _data((1, 2, 2, 2), np.uint8))) as src:
        with pytest.raises(ValueError, match="at least 1"):
            next(src.chunks(0))
        with pytest.raises(TypeError, match="max_frames must be an int"):
            next(src.chunks(2.5))
        assert src.describe() == {
            "kind": "npy",
            "path": str(tmp_path / "a.npy"),
            "scan_shape": [1, 2],
            "frame_shape": [2, 2],
            "dtype": "uint8",
            "n_frames": 2,
            "nbytes": 8,
        }
