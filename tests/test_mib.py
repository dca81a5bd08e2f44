"""Merlin MIB reader against two real files, plus synthetic files for what they do not cover.

Golden numbers below were read with RosettaSciIO 0.15.0 (``rsciio.quantumdetector``,
``file_reader`` and ``load_mib_data``) from the same files (checksums in
/work/shared/realdata/rosettasciio_merlin/SOURCE.txt). RosettaSciIO's ``file_reader`` flips the
detector rows (``np.flip(data, axis=-2)``); stemedge keeps the file's row order, so the pixel
coordinates here are RosettaSciIO's with the rows un-flipped (``load_mib_data`` order).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from _helpers import MERLIN
from stemedge.io.mib import MIBFile, parse_mib_header, read_hdr
from stemedge.sources.base import SourceError

DATA = MERLIN
SINGLE = DATA / "001_4x2_6bit.mib"
QUAD = DATA / "Quad_9_Frame_CounterDepth_12_Rows_256.mib"

needs_data = pytest.mark.skipif(not SINGLE.exists(), reason="real MIB test files not present")

# RosettaSciIO 0.15.0: per-frame sums, and pixels (frame, row, col) → value.
SINGLE_SUMS = [448386, 449671, 452147, 455427, 450760, 453755, 455591, 457927]
SINGLE_PIXELS = {
    (0, 0, 0): 2,
    (0, 100, 200): 2,
    (0, 255, 3): 5,
    (0, 17, 250): 0,
    (7, 0, 0): 2,
    (7, 100, 200): 0,
    (7, 255, 3): 2,
    (0, 73, 19): 63,
    (3, 128, 128): 3,
    (7, 200, 50): 3,
}
QUAD_SUMS = [780796, 828211, 784649, 775810, 777753, 824420, 839262, 828868, 789317]
QUAD_PIXELS = {
    (0, 0, 0): 10,
    (0, 12, 266): 4093,
    (0, 3, 100): 0,
    (8, 2, 5): 0,
    (8, 0, 511): 1843,
    (4, 300, 300): 0,
    (4, 511, 511): 10,
    (4, 256, 0): 0,
}


@needs_data
def test_single_chip_6bit_file_matches_rosettasciio():
    with MIBFile(SINGLE) as mib:
        assert mib.scan_shape == (2, 4)  # RosettaSciIO: navigation (4, 2) = 2 rows of 4
        assert (mib.n_frames, mib.frame_shape, mib.dtype) == (8, (256, 256), np.uint8)
        frames = mib.read()
        assert frames.flags.c_contiguous and frames.dtype == np.uint8
        assert frames.sum(axis=(1, 2), dtype=np.int64).tolist() == SINGLE_SUMS
        for (i, y, x), value in SINGLE_PIXELS.items():
            assert frames[i, y, x] == value
        assert frames.max() == 63  # 6-bit counter
        assert int(frames[:, 128].sum()) == 26685
        assert mib.header.counter_depth == 6 and mib.header.pixel_type == "U08"
        assert mib.header.shutter_ns == 100_000_000 and mib.header.chip_layout == "1x1"
        assert mib.hdr["Frames in Acquisition (Number)"] == "8"


@needs_data
def test_quad_12bit_file_matches_rosettasciio():
    with MIBFile(QUAD) as mib:
        assert mib.scan_shape == (1, 9)  # internal trigger: no scan to find
        assert (mib.n_frames, mib.frame_shape, mib.dtype) == (9, (512, 512), np.uint16)
        assert mib.frames.dtype == np.dtype(">u2")  # the zero-copy view keeps file order
        frames = mib.read()
        assert frames.dtype == np.dtype("=u2") and frames.flags.c_contiguous
        np.testing.assert_array_equal(frames, mib.frames)
        assert frames.sum(axis=(1, 2), dtype=np.int64).tolist() == QUAD_SUMS
        for (i, y, x), value in QUAD_PIXELS.items():
            assert frames[i, y, x] == value
        assert frames.max() == 4095  # 12-bit counter
        h = mib.header
        assert (h.n_chips, h.chip_layout, h.header_size, h.counter_depth) == (4, "2x2", 768, 12)
        np.testing.assert_array_equal(mib.read(2, 4), frames[2:4])
    with MIBFile(QUAD, scan_shape=(3, 3)) as mib:
        assert mib.scan_shape == (3, 3)


@needs_data
def test_scan_shape_from_timestamps_without_hdr(tmp_path):
    for src in (SINGLE, QUAD):
        shutil.copy(src, tmp_path / src.name)
    assert MIBFile(tmp_path / SINGLE.name).scan_shape == (2, 4)  # flyback gap every 4 frames
    assert MIBFile(tmp_path / QUAD.name).scan_shape == (1, 9)  # even spacing
    times = MIBFile(tmp_path / SINGLE.name).timestamps()
    assert str(times[0]) == "2021-05-07T16:51:10.905800928"


@needs_data
def test_headers_parse():
    h = parse_mib_header(SINGLE.read_bytes()[:384])
    assert (h.sequence_number, h.width, h.height, h.n_chips) == (1, 256, 256, 1)
    assert h.thresholds_keV[:2] == (40.0, 511.0)
    assert h.timestamp_utc == "2021-05-07T16:51:10.905800928Z"
    hdr = read_hdr(QUAD.with_suffix(".hdr"))
    assert hdr["Counter Depth (number)"] == "12"
    assert hdr["Trigger Start (Positive, Negative, Internal)"] == "Internal"
    with pytest.raises(ValueError, match="not a MIB frame header"):
        parse_mib_header(b"XYZ")


@needs_data
def test_truncated_mid_frame(tmp_path):
    frame = 384 + 256 * 256
    cut = tmp_path / "cut.mib"
    cut.write_bytes(SINGLE.read_bytes()[: 3 * frame + 1000])
    with pytest.raises(SourceError, match=r"cut\.mib: truncated MIB file: 3 complete frames"):
        MIBFile(cut)
    with MIBFile(cut, allow_partial=True) as mib:
        assert mib.n_frames == 3
        assert mib.read().sum(axis=(1, 2), dtype=np.int64).tolist() == SINGLE_SUMS[:3]


@needs_data
def test_fewer_frames_than_acquisition(tmp_path):
    frame = 384 + 256 * 256
    short = tmp_path / "short.mib"
    short.write_bytes(SINGLE.read_bytes()[: 5 * frame])
    shutil.copy(SINGLE.with_suffix(".hdr"), short.with_suffix(".hdr"))
    with pytest.raises(SourceError, match="holds 5 complete frames but the acquisition has 8"):
        MIBFile(short)
    with pytest.raises(SourceError, match="allow_partial=True"):
        MIBFile(short.with_suffix(".mib"), scan_shape=(3, 3))
    with MIBFile(short, allow_partial=True) as mib:
        assert (mib.n_frames, mib.n_expected, mib.scan_shape) == (5, 8, (2, 4))
    with pytest.raises(ValueError, match="has 4 positions"):
        MIBFile(SINGLE, scan_shape=(2, 2))


@needs_data
def test_corrupt_files(tmp_path):
    bad = tmp_path / "bad.mib"
    bad.write_bytes(b"\x00" * 5000)
    with pytest.raises(SourceError, match=r"bad\.mib: not a Merlin MIB file"):
        MIBFile(bad)
    bad.write_bytes(b"")
    with pytest.raises(SourceError, match="is empty"):
        MIBFile(bad)
    bad.write_bytes(SINGLE.read_bytes()[:200])
    with pytest.raises(SourceError, match="shorter than one frame header"):
        MIBFile(bad)
    raw = bytearray(SINGLE.read_bytes())
    last = 7 * (384 + 256 * 256)
    raw[last : last + 3] = b"XXX"
    bad.write_bytes(bytes(raw))
    with pytest.raises(SourceError, match="frame 7 does not start with a header"):
        MIBFile(bad)
    r64 = SINGLE.read_bytes().replace(b",U08,", b",R64,", 1)
    bad.write_bytes(r64)
    with pytest.raises(ValueError, match="R64"):
        MIBFile(bad)


def _write_mib(path: Path, frames: np.ndarray, pixel_type: str, depth: int) -> None:
    """A MIB file as Merlin writes one: 384-byte headers in the real files' field layout."""
    n, h, w = frames.shape
    big = frames.astype(frames.dtype.newbyteorder(">"))
    with open(path, "wb") as fh:
        for i in range(n):
            t = 1_000_000 * i
            fields = [
                "MQ1",
                f"{i + 1:06d}",
                "00384",
                "01",
                f"{w:04d}",
                f"{h:04d}",
                pixel_type,
                "   1x1",
                "01",
                "2024-01-01 00:00:00.000000",
                "0.001000",
                "0",
                "0",
                "0",
                *["0.000000E+0"] * 8,
                "3RX",
                *["000"] * 27,
                "MQ1A",
                f"2024-01-01T00:00:00.{t:09d}Z",
                "1000000ns",
                str(depth),
                "",
            ]
            header = ",".join(fields).encode().ljust(384, b"\x00")
            fh.write(header + big[i].tobytes())


def test_synthetic_24bit_frames(tmp_path):
    frames = np.random.default_rng(0).integers(0, 2**24, (6, 5, 7), dtype=np.uint32)
    _write_mib(tmp_path / "s.mib", frames, "U32", 24)
    with MIBFile(tmp_path / "s.mib", scan_shape=(2, 3)) as mib:
        assert mib.dtype == np.uint32 and mib.header.counter_depth == 24
        np.testing.assert_array_equal(mib.read(), frames)
    with MIBFile(tmp_path / "s.mib") as mib:
        assert mib.scan_shape == (1, 6)  # evenly spaced times: no scan lines to find


def test_synthetic_single_frame_and_empty_partial(tmp_path):
    frames = np.arange(12, dtype=np.uint16).reshape(1, 3, 4)
    _write_mib(tmp_path / "one.mib", frames, "U16", 12)
    with MIBFile(tmp_path / "one.mib") as mib:
        assert (mib.n_frames, mib.scan_shape) == (1, (1, 1))
        np.testing.assert_array_equal(mib.read(), frames)
    data = (tmp_path / "one.mib").read_bytes()
    (tmp_path / "part.mib").write_bytes(data[:-5])
    with MIBFile(tmp_path / "part.mib", allow_partial=True) as mib:
        assert mib.n_frames == 0 and mib.read().shape == (0, 3, 4)
