"""The stemedge codec around HDF5, numcodecs/zarr and the CLI: real plugin, real files.

The HDF5 filter plugin (cpp/hdf5/h5filter_stemedge.c) is loaded the two ways users meet it:
registered by ``import stemedge`` (this process and a fresh interpreter) and found by HDF5 itself
through HDF5_PLUGIN_PATH in an interpreter that never imports stemedge.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest

from _helpers import MERLIN, subprocess_env
from stemedge import _native
from stemedge.calibration import Calibration
from stemedge.cli import main
from stemedge.codec import CodecError
from stemedge.codec.hdf5 import FILTER_ID, filter_options, plugin_dir, register
from stemedge.geometry import ScanGeometry
from stemedge.io.emd import EMDWriter, read_emd, write_emd
from stemedge.sources.files import open_source

MERLIN_MIB = MERLIN / "001_4x2_6bit.mib"


def _counts(shape, lam=0.3, dtype=np.uint16, seed=0):
    return np.random.default_rng(seed).poisson(lam, shape).astype(dtype)


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- the filter through h5py's normal write path --------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "make"),
    [
        (np.uint8, lambda s: _counts(s, 2.0, np.uint8)),
        (np.uint16, lambda s: _counts(s, 0.3)),
        (np.uint32, lambda s: _counts(s, 50.0, np.uint32)),
        (np.int16, lambda s: _counts(s, 5.0, np.int16) - 5),
        (np.float32, lambda s: np.random.default_rng(1).normal(size=s).astype(np.float32)),
        (np.float64, lambda s: np.random.default_rng(2).normal(size=s)),
    ],
)
def test_h5py_dataset_through_the_filter_reads_back_identical(tmp_path, dtype, make):
    data = make((3, 10, 16, 18))  # scan_x 10 = 2 chunks of 4 + an edge chunk
    opts = filter_options(dtype, (1, 4, 16, 18))
    assert opts["compression"] == FILTER_ID and opts["chunks"] == (1, 4, 16, 18)
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("d", data=data, **opts)
        f["d"][1, 2] = data[1, 2] + 1  # a partial-chunk update: decode, modify, encode
        data[1, 2] += 1
    with h5py.File(path, "r") as f:
        ds = f["d"]
        assert ds.id.get_create_plist().get_filter(0)[0] == FILTER_ID
        np.testing.assert_array_equal(ds[()], data)
        np.testing.assert_array_equal(ds[2, 7:], data[2, 7:])
        # Every stored chunk is a plain stemedge chunk of the chunk shape, filter mask 0.
        mask, blob = ds.id.read_direct_chunk((1, 8, 0, 0))
        assert mask == 0
        assert _native.codec_info(blob)["shape"] == (1, 4, 16, 18)
        np.testing.assert_array_equal(_native.codec_decompress(blob)[0, :2], data[1, 8:])
        if dtype == np.uint16:  # sparse counts: compressed even in chunks this small
            stored_raw = ds.id.get_num_chunks() * 4 * 16 * 18 * 2  # edge chunks are whole
            assert ds.id.get_storage_size() < stored_raw / 2


def test_lossy_and_threshold_options_reach_the_filter(tmp_path):
    smooth = np.random.default_rng(3).normal(100, 20, (2, 8, 16, 16)).astype(np.float32)
    counts = _counts((2, 8, 16, 16), 2.0)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        lossy = filter_options(np.float32, (1, 8, 16, 16), max_abs_error=0.25)
        f.create_dataset("lossy", data=smooth, **lossy)
        f.create_dataset("thr", data=counts, **filter_options(np.uint16, counts.shape, threshold=2))
        err = np.abs(f["lossy"][()].astype(np.float64) - smooth)
        assert 0 < err.max() <= 0.25
        assert _native.codec_info(f["lossy"].id.read_direct_chunk((0, 0, 0, 0))[1])[
            "max_abs_error"
        ] == pytest.approx(0.25)
        np.testing.assert_array_equal(f["thr"][()], np.where(counts < 2, 0, counts))


def test_filter_options_refuse_what_the_codec_cannot_do():
    with pytest.raises(TypeError, match="dtype"):
        filter_options(np.complex64, (1, 4, 8, 8))
    with pytest.raises(TypeError, match="native byte order"):
        filter_options(">u2", (1, 4, 8, 8))
    with pytest.raises(ValueError, match="mode"):
        filter_options(np.uint16, (1, 4, 8, 8), mode="zip")
    with pytest.raises(ValueError, match="max_abs_error"):
        filter_options(np.uint16, (1, 4, 8, 8), max_abs_error=-1)
    with pytest.raises(ValueError, match="chunk_shape"):
        filter_options(np.uint16, (0, 4, 8, 8))
    with pytest.raises(CodecError, match="refuses"):  # lossy floats in "bytes" mode
        filter_options(np.float32, (1, 4, 8, 8), mode="bytes", max_abs_error=0.5)


def test_register_is_idempotent_and_the_plugin_is_in_plugin_dir():
    assert register() and register()
    assert (plugin_dir() / "libh5stemedge.so").is_file()
    assert h5py.h5z.filter_avail(FILTER_ID)


def test_corrupt_chunks_raise_an_error_not_a_crash(tmp_path):
    data = _counts((3, 8, 16, 16), 3.0)
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("d", data=data, **filter_options(np.uint16, (1, 8, 16, 16)))
        ds.id.write_direct_chunk((1, 0, 0, 0), b"not a stemedge chunk at all")
        # A sound chunk of the wrong size (HDF5 would read past it if the filter passed it on).
        ds.id.write_direct_chunk((2, 0, 0, 0), _native.codec_compress(data[0, :2]))
        info = ds.id.get_chunk_info(0)
    raw = bytearray(path.read_bytes())
    mid = info.byte_offset + info.size // 2
    raw[mid : mid + 8] = bytes(b ^ 0x5A for b in raw[mid : mid + 8])  # damage chunk 0's payload
    path.write_bytes(bytes(raw))
    with h5py.File(path, "r") as f:
        for y in (0, 1, 2):
            with pytest.raises(OSError):
                f["d"][y]


# --- EMD files written with the codec, read elsewhere -----------------------------------------


def _compressed_emd(tmp_path, **opts):
    data = _counts((3, 8, 32, 32), 0.1)
    results = {"com": {"shift": np.ones((3, 8, 2))}}
    options = {"compression": "stemedge", "compression_opts": opts or None, "chunk_frames": 3}
    path = write_emd(tmp_path / "c.emd", data, results=results, **options)
    np.save(tmp_path / "expected.npy", data)
    return path, data


def test_emd_writer_with_the_codec_reads_back_in_a_fresh_interpreter(tmp_path):
    path, data = _compressed_emd(tmp_path)
    with h5py.File(path, "r") as f:
        ds = f["stemedge_root/datacube/data"]
        assert ds.id.get_create_plist().get_filter(0)[0] == FILTER_ID
        assert ds.chunks == (1, 3, 32, 32)
        assert ds.id.get_storage_size() < data.nbytes / 3
    with read_emd(path) as emd:
        np.testing.assert_array_equal(emd.data[()], data)
        np.testing.assert_array_equal(emd.results["com"]["shift"], 1.0)  # stored uncompressed
        comp = emd.provenance["compression"]
        assert comp["codec"] == "stemedge" and comp["hdf5_filter_id"] == FILTER_ID
        assert comp["mode"] == "auto" and comp["max_abs_error"] == 0
    code = (
        "import stemedge, h5py, numpy as np, sys\n"
        f"with h5py.File({str(path)!r}, 'r') as f:\n"
        "    d = f['stemedge_root/datacube/data'][()]\n"
        f"assert np.array_equal(d, np.load({str(tmp_path / 'expected.npy')!r}))\n"
        "print('same')\n"
    )
    run = _run(code)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "same"


def test_hdf5_plugin_path_reads_without_importing_stemedge(tmp_path):
    path, _ = _compressed_emd(tmp_path)
    code = (
        "import sys, h5py, numpy as np\n"
        f"with h5py.File({str(path)!r}, 'r') as f:\n"
        "    d = f['stemedge_root/datacube/data'][()]\n"
        f"assert np.array_equal(d, np.load({str(tmp_path / 'expected.npy')!r}))\n"
        "assert not any(m.startswith('stemedge') for m in sys.modules)\n"
        "print('same')\n"
    )
    run = _run(code, HDF5_PLUGIN_PATH=str(plugin_dir()))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "same"
    # Without the plugin path (and without stemedge) HDF5 cannot decode: the filter is needed.
    run = _run(code, HDF5_PLUGIN_PATH=str(tmp_path / "nowhere"))
    assert run.returncode != 0 and "OSError" in run.stderr


def test_emd_writer_codec_any_order_pieces_duplicates_and_lossy_bound(tmp_path):
    geo = ScanGeometry((4, 10), (8, 9), np.float32, Calibration(scan_step_A=0.5))
    truth = np.random.default_rng(4).normal(50, 10, (40, 8, 9)).astype(np.float32)
    order = np.random.default_rng(5).permutation(40)
    path = tmp_path / "lossy.emd"
    opts = {"max_abs_error": 0.05}
    with EMDWriter(path, geo, compression="stemedge", compression_opts=opts, chunk_frames=4) as w:
        assert w.chunk_shape == (1, 4, 8, 9)
        w.write_frames(truth[order[:7]] + 3, order[:7])  # overwritten below
        for i in range(0, 40, 3):  # scattered pieces of chunks, a flush in between
            w.write_frames(truth[order[i : i + 3]], order[i : i + 3])
            if i == 21:
                w.flush()  # incomplete chunks go to the file, and stay pending
    with read_emd(path) as emd:
        got = emd.data[()].reshape(40, 8, 9)
        assert emd.positions_written.all()
        assert emd.calibration.scan_step_A == (0.5, 0.5)
    assert np.abs(got.astype(np.float64) - truth).max() <= 0.05


def test_emd_writer_codec_incomplete_chunks_are_written_on_close(tmp_path):
    geo = ScanGeometry((2, 6), (4, 4), np.uint16)
    frames = _counts((3, 4, 4), 5.0)
    path = tmp_path / "partial.emd"
    with EMDWriter(path, geo, compression="stemedge", compression_opts={"threshold": 1}) as w:
        w.write_frames(frames, [1, 2, 9])  # two chunks, none complete
    with read_emd(path) as emd:
        got = emd.data[()].reshape(12, 4, 4)
        assert emd.positions_written.reshape(-1).nonzero()[0].tolist() == [1, 2, 9]
    expected = np.zeros((12, 4, 4), np.uint16)
    expected[[1, 2, 9]] = frames
    np.testing.assert_array_equal(got, expected)


def test_emd_writer_codec_from_threads_sharing_chunks(tmp_path):
    geo = ScanGeometry((6, 20), (16, 16), np.uint16)
    truth = _counts((120, 16, 16), 0.5)
    path = tmp_path / "threads.emd"
    with EMDWriter(path, geo, compression="stemedge", chunk_frames=5) as w:

        def write(t: int) -> None:  # thread t: frames t, t+4, … two at a time, chunks shared
            idx = np.arange(t, 120, 4)
            for i in range(0, idx.size, 2):
                w.write_frames(truth[idx[i : i + 2]], idx[i : i + 2])

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(write, range(4)))
        w.write_frames(truth[:20], np.arange(20))  # whole chunks over complete ones
    with read_emd(path) as emd:
        np.testing.assert_array_equal(emd.data[()].reshape(120, 16, 16), truth)


def test_emd_writer_codec_option_errors(tmp_path):
    geo = ScanGeometry((2, 2), (4, 4), np.uint16)
    with pytest.raises(ValueError, match="unknown stemedge codec option"):
        EMDWriter(tmp_path / "a.emd", geo, compression="stemedge", compression_opts={"lvl": 1})
    with pytest.raises(TypeError, match="compression_opts"):
        EMDWriter(tmp_path / "b.emd", geo, compression="stemedge", compression_opts=3)
    with pytest.raises(ValueError, match="mode"):
        EMDWriter(tmp_path / "c.emd", geo, compression="stemedge", compression_opts={"mode": "zip"})


# --- numcodecs and zarr -----------------------------------------------------------------------


def test_numcodecs_codec_round_trip_and_config():
    numcodecs = pytest.importorskip("numcodecs")
    from stemedge.codec.numcodecs_codec import StemedgeCodec

    data = _counts((8, 32, 32), 0.1)
    codec = numcodecs.get_codec({"id": "stemedge", "threshold": 0, "mode": "auto"})
    assert isinstance(codec, StemedgeCodec)
    blob = codec.encode(data)
    assert len(blob) < data.nbytes / 4
    np.testing.assert_array_equal(codec.decode(blob), data)
    out = np.empty_like(data)
    assert codec.decode(blob, out=out) is out
    np.testing.assert_array_equal(out, data)
    flat = np.empty(data.nbytes, np.uint8)  # what some callers hand over: raw bytes
    codec.decode(blob, out=flat)
    np.testing.assert_array_equal(flat.view(np.uint16).reshape(data.shape), data)
    lossy = StemedgeCodec(max_abs_error=0.5, mode="dense")
    config = json.loads(json.dumps(lossy.get_config()))
    assert config == {"id": "stemedge", "mode": "dense", "max_abs_error": 0.5, "threshold": 0}
    assert numcodecs.get_codec(config) == lossy
    with pytest.raises(TypeError, match="native byte order"):
        codec.encode(data.astype(">u2"))


def test_zarr_v2_array_with_the_codec(tmp_path):
    pytest.importorskip("numcodecs")
    zarr = pytest.importorskip("zarr")
    from stemedge.codec.numcodecs_codec import StemedgeCodec

    data = _counts((3, 5, 16, 16), 0.5)
    z = zarr.create_array(
        str(tmp_path / "z.zarr"),
        shape=data.shape,
        chunks=(1, 2, 16, 16),
        dtype=data.dtype,
        compressors=StemedgeCodec(),
        zarr_format=2,
    )
    z[...] = data
    again = zarr.open_array(str(tmp_path / "z.zarr"), mode="r")
    np.testing.assert_array_equal(again[...], data)
    meta = json.loads((tmp_path / "z.zarr" / ".zarray").read_text())
    assert meta["compressor"]["id"] == "stemedge"


# --- the command line -------------------------------------------------------------------------


def test_cli_compress_decompress_npy_round_trip(tmp_path, capsys):
    data = _counts((4, 9, 16, 16), 0.4)
    src = tmp_path / "scan.npy"
    np.save(src, data)
    comp = tmp_path / "scan.emd"
    argv = ["compress", str(src), str(comp), "--chunk-frames", "4", "--quiet"]
    assert main(argv) == 0
    assert capsys.readouterr().out == ""
    assert main(["compress", str(src), str(comp), "--mode", "events", "--workers", "3"]) == 0
    printed = capsys.readouterr().out
    assert "ratio" in printed and f"raw {data.nbytes:,} bytes" in printed
    with read_emd(comp) as emd:
        np.testing.assert_array_equal(emd.data[()], data)
        assert emd.provenance["compression"]["mode"] == "events"
    back = tmp_path / "back.npy"
    assert main(["decompress", str(comp), str(back), "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(back), data)
    back_emd = tmp_path / "back.emd"
    assert main(["decompress", str(comp), str(back_emd), "--quiet"]) == 0
    with h5py.File(back_emd, "r") as f:
        ds = f["stemedge_root/datacube/data"]
        assert ds.id.get_create_plist().get_nfilters() == 0
        np.testing.assert_array_equal(ds[()], data)


def test_cli_compress_lossy_and_errors(tmp_path, capsys):
    data = np.random.default_rng(6).normal(0, 1, (2, 3, 8, 8)).astype(np.float32)
    src = tmp_path / "f.npy"
    np.save(src, data)
    out = tmp_path / "f.emd"
    assert main(["compress", str(src), str(out), "--max-abs-error", "0.01", "--quiet"]) == 0
    with read_emd(out) as emd:
        assert np.abs(emd.data[()] - data).max() <= 0.01
    capsys.readouterr()
    assert main(["compress", str(out), str(out)]) == 2  # would overwrite its input
    assert "overwrite the input" in capsys.readouterr().err
    assert main(["compress", str(src), str(tmp_path / "x.zip")]) == 2
    assert main(["compress", str(src), str(out), "--mode", "bytes", "--max-abs-error", "1"]) == 2
    assert "refuses" in capsys.readouterr().err
    assert main(["decompress", str(src), str(tmp_path / "y.npy")]) == 2
    assert main(["compress", str(tmp_path / "missing.npy"), str(out)]) == 2


def test_cli_compress_raw_file_needs_and_uses_its_shape(tmp_path):
    data = _counts((2, 4, 8, 8), 1.0)
    raw = tmp_path / "scan.raw"
    data.tofile(raw)
    out = tmp_path / "raw.emd"
    assert main(["compress", str(raw), str(out), "--quiet"]) == 2
    argv = ["compress", str(raw), str(out), "--scan-shape", "2", "4", "--frame-shape", "8", "8"]
    assert main([*argv, "--dtype", "uint16", "--quiet"]) == 0
    with read_emd(out) as emd:
        np.testing.assert_array_equal(emd.data[()], data)


@pytest.mark.skipif(not MERLIN_MIB.is_file(), reason="needs the real Merlin files")
def test_cli_compress_real_merlin_file_is_lossless(tmp_path, capsys):
    out = tmp_path / "merlin.emd"
    assert main(["compress", str(MERLIN_MIB), str(out)]) == 0
    assert "ratio" in capsys.readouterr().out
    with open_source(MERLIN_MIB) as src:
        frames = np.concatenate([c.frames.copy() for c in src.chunks(64)])
        geo = src.geometry
    with read_emd(out) as emd:
        assert emd.geometry.scan_shape == geo.scan_shape
        np.testing.assert_array_equal(emd.data[()].reshape(frames.shape), frames)
        assert emd.data.id.get_storage_size() < frames.nbytes
    back = tmp_path / "merlin.npy"
    assert main(["decompress", str(out), str(back), "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(back).reshape(frames.shape), frames)
