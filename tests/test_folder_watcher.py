"""FolderWatcher against real files, most written by a slow writer in another process."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from stemedge.geometry import ScanGeometry
from stemedge.sources.base import SourceError
from stemedge.sources.folder import FolderWatcher, natural_key

GEOMETRY = ScanGeometry((3, 4), (4, 5), np.uint16)  # 12 frames of 4×5
FAST = {"poll_s": 0.01, "settle_s": 0.1, "stall_timeout_s": 5.0}


def frames(start: int, count: int) -> np.ndarray:
    """The frames at scan indices start … start+count-1: each one unique and recognisable."""
    base = np.arange(20, dtype=np.uint16).reshape(4, 5)
    return np.stack([base + np.uint16(100 * i) for i in range(start, start + count)])


# The writer runs in its own process and follows a plan: a list of steps, each written after
# its "delay". kind "direct": np.save in place; "tmp": write NAME.tmp, then rename; "split":
# header and about half the data, a pause of "pause" s, then the rest; "marker": an empty
# file. "single": save one 2-D frame instead of a stack. Names ending in .raw get the bare
# frame bytes (no header) instead of np.save.
WRITER_SCRIPT = r"""
import json, os, sys, time
import numpy as np

folder, plan = sys.argv[1], json.loads(sys.argv[2])
base = np.arange(20, dtype=np.uint16).reshape(4, 5)
for step in plan:
    time.sleep(step.get("delay", 0.0))
    path = os.path.join(folder, step["name"])
    if step["kind"] == "marker":
        open(path, "w").close()
        continue
    data = np.stack([base + np.uint16(100 * i)
                     for i in range(step["start"], step["start"] + step["count"])])
    data = data.astype(step.get("dtype", "uint16"))
    if step.get("single"):
        data = data[0]
    is_raw = path.endswith(".raw")

    def write(target):
        with open(target, "wb") as f:
            if is_raw:
                f.write(data.tobytes())
            else:
                np.save(f, data)

    if step["kind"] == "direct":
        write(path)
    elif step["kind"] == "tmp":
        write(path + ".tmp")
        os.replace(path + ".tmp", path)
    elif step["kind"] == "split":
        raw = data.tobytes()
        cut = len(raw) // 2 + 6  # not on a frame boundary
        with open(path, "wb") as f:
            if not is_raw:
                header = np.lib.format.header_data_from_array_1_0(data)
                np.lib.format.write_array_header_1_0(f, header)
            f.write(raw[:cut])
            f.flush()
            time.sleep(step["pause"])
            f.write(raw[cut:])
"""


@pytest.fixture
def writer():
    """Start writer processes; each must have finished cleanly by the end of the test."""
    procs: list[subprocess.Popen] = []

    def start(folder: Path, plan: list[dict]) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, str(folder), json.dumps(plan)],
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        assert proc.returncode == 0, err


def collect(watcher: FolderWatcher, max_frames: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """All frames and indices the watcher yields, copied out of the memory maps."""
    got_frames, got_indices = [], []
    for chunk in watcher.chunks(max_frames):
        assert 1 <= len(chunk.frames) <= max_frames
        assert chunk.indices.dtype == np.int64 and len(chunk.indices) == len(chunk.frames)
        assert type(chunk.frames) is np.ndarray and chunk.frames.flags.c_contiguous
        got_frames.append(np.array(chunk.frames))
        got_indices.append(chunk.indices.copy())
    if not got_frames:
        return np.empty((0, 4, 5), np.uint16), np.empty(0, np.int64)
    return np.concatenate(got_frames), np.concatenate(got_indices)


def save(path: Path, data: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, data)


# --- the live case --------------------------------------------------------------------------


def test_slow_writer_every_frame_once_in_order(tmp_path, writer):
    plan = [
        # A dot-file the pattern matches: never read (its dtype would be an error).
        {"name": ".frame_0.npy", "kind": "direct", "start": 0, "count": 1, "dtype": "float32"},
        {"name": "frame_1.npy", "kind": "direct", "start": 0, "count": 3, "delay": 0.05},
        {"name": "frame_2.npy", "kind": "tmp", "start": 3, "count": 1, "single": True},
        # Header and half the data, then a pause longer than settle_s: the size is stable but
        # the file is not complete yet.
        {"name": "frame_3.npy", "kind": "split", "start": 4, "count": 2, "pause": 0.4},
        {"name": "frame_9.npy", "kind": "tmp", "start": 6, "count": 2, "delay": 0.05},
        {"name": "frame_10.npy", "kind": "direct", "start": 8, "count": 3, "delay": 0.05},
        {"name": "frame_11.npy", "kind": "tmp", "start": 11, "count": 1, "delay": 0.05},
    ]
    writer(tmp_path, plan)
    watcher = FolderWatcher(tmp_path, GEOMETRY, **FAST)
    got, indices = collect(watcher, max_frames=2)
    np.testing.assert_array_equal(indices, np.arange(12))
    np.testing.assert_array_equal(got, frames(0, 12))
    assert watcher.files == [s["name"] for s in plan[1:]]
    info = watcher.describe()
    assert info["complete"] and info["missing"] is None and info["ended_by"] == "frames"
    assert info["frames_delivered"] == 12 and info["folder"] == str(tmp_path)


def test_existing_files_are_read_in_natural_order(tmp_path):
    # Lexicographic order would put frame_10 before frame_2.
    files = [("frame_10.npy", 5, 7), ("frame_2.npy", 2, 3), ("frame_1.npy", 0, 2)]
    for name, start, count in files:
        save(tmp_path / name, frames(start, count))
    watcher = FolderWatcher(tmp_path, GEOMETRY, poll_s=0.01, settle_s=0.0)
    got, indices = collect(watcher, max_frames=4)
    np.testing.assert_array_equal(indices, np.arange(12))
    np.testing.assert_array_equal(got, frames(0, 12))
    assert watcher.files == ["frame_1.npy", "frame_2.npy", "frame_10.npy"]


def test_natural_key():
    names = ["f10.npy", "F2.npy", "f1.npy", "f02.npy", "g.npy", "f1b.npy"]
    # F2 and f02 have equal keys: the name breaks the tie (upper case first).
    expected = ["f1.npy", "f1b.npy", "F2.npy", "f02.npy", "f10.npy", "g.npy"]
    assert sorted(names, key=natural_key) == expected


def test_scratch_names_are_never_read(tmp_path):
    save(tmp_path / "frame_0.npy", frames(0, 12))
    for scratch in ("frame_0.tmp", "frame_00.part", ".frame_000"):  # would sort first
        (tmp_path / scratch).write_bytes(b"garbage")
    watcher = FolderWatcher(tmp_path, GEOMETRY, pattern="frame_0*", poll_s=0.01, settle_s=0.0)
    _, indices = collect(watcher)
    assert len(indices) == 12 and watcher.files == ["frame_0.npy"]


def test_raw_files_go_through_the_file_readers(tmp_path, writer):
    pytest.importorskip("stemedge.sources.files")
    writer(
        tmp_path,
        [
            {"name": "scan_1.raw", "kind": "direct", "start": 0, "count": 5},
            # Half-way through a frame, then a pause longer than settle_s: not complete.
            {"name": "scan_2.raw", "kind": "split", "start": 5, "count": 4, "pause": 0.3},
            {"name": "scan_10.raw", "kind": "tmp", "start": 9, "count": 3, "delay": 0.05},
        ],
    )
    watcher = FolderWatcher(tmp_path, GEOMETRY, pattern="*.raw", **FAST)
    got, indices = collect(watcher, max_frames=3)
    np.testing.assert_array_equal(indices, np.arange(12))
    np.testing.assert_array_equal(got, frames(0, 12))
    assert watcher.files == ["scan_1.raw", "scan_2.raw", "scan_10.raw"]


# --- errors ---------------------------------------------------------------------------------


def test_file_appearing_earlier_in_order_after_later_ones_is_an_error(tmp_path):
    save(tmp_path / "frame_2.npy", frames(0, 2))
    save(tmp_path / "frame_3.npy", frames(2, 2))
    watcher = FolderWatcher(tmp_path, GEOMETRY, poll_s=0.01, settle_s=0.0)
    chunks = watcher.chunks(2)
    assert next(chunks).indices.tolist() == [0, 1]
    assert next(chunks).indices.tolist() == [2, 3]
    save(tmp_path / "frame_1.npy", frames(4, 2))  # late, and before frame_3 in name order
    with pytest.raises(SourceError, match=r"frame_1\.npy.*after 'frame_3\.npy'"):
        next(chunks)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (frames(0, 2).astype(np.float32), "float32"),
        (frames(0, 2).astype(">u2"), ">u2"),
        (np.zeros((2, 4, 6), np.uint16), r"\(2, 4, 6\)"),
        (np.asfortranarray(frames(0, 1)[0]), "Fortran"),
        (np.zeros((1, 2, 4, 5), np.uint16), "4-D"),
        (np.zeros(20, np.uint16), r"\(20,\)"),
        (frames(0, 13), "13 frames, but only 12"),
    ],
)
def test_a_file_that_does_not_fit_the_geometry_is_an_error(tmp_path, data, match):
    save(tmp_path / "frame_1.npy", data)
    watcher = FolderWatcher(tmp_path, GEOMETRY, poll_s=0.01, settle_s=0.0)
    with pytest.raises(SourceError, match=rf"frame_1\.npy.*{match}"):
        collect(watcher)


def test_a_file_that_is_not_npy_is_an_error(tmp_path):
    (tmp_path / "frame_1.npy").write_bytes(b"PK\x03\x04 this is a zip file, not a .npy")
    watcher = FolderWatcher(tmp_path, GEOMETRY, poll_s=0.01, settle_s=0.0)
    with pytest.raises(SourceError, match=r"frame_1\.npy: not a \.npy file"):
        collect(watcher)


def test_trailing_bytes_are_an_error(tmp_path):
    save(tmp_path / "frame_1.npy", frames(0, 12))
    with open(tmp_path / "frame_1.npy", "ab") as f:
        f.write(b"extra")
    with pytest.raises(SourceError, match=r"frame_1\.npy: .*not a plain \.npy"):
        collect(FolderWatcher(tmp_path, GEOMETRY, poll_s=0.01, settle_s=0.0))


def test_stall_raises_within_the_timeout(tmp_path):
    save(tmp_path / "frame_1.npy", frames(0, 3))
    watcher = FolderWatcher(tmp_path, GEOMETRY, poll_s=0.01, settle_s=0.0, stall_timeout_s=0.3)
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=r"stalled.*after 3 of 12 frames.*after 'frame_1.npy'"):
        collect(watcher)
    assert 0.3 <= time.monotonic() - t0 < 1.5


def test_stall_on_an_incomplete_file_names_it(tmp_path):
    data = frames(0, 12)
    with open(tmp_path / "frame_1.npy", "wb") as f:  # header and 100 bytes of data, then nothing
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(data))
        f.write(data.tobytes()[:100])
    watcher = FolderWatcher(tmp_path, GEOMETRY, poll_s=0.01, settle_s=0.05, stall_timeout_s=0.3)
    with pytest.raises(SourceError, match=r"stalled.*waiting for frame_1\.npy: it has \d+ of \d+"):
        collect(watcher)


# --- the done marker ------------------------------------------------------------------------


def test_done_marker_ends_a_partial_scan(tmp_path, writer):
    writer(
        tmp_path,
        [
            {"name": "frame_1.npy", "kind": "tmp", "start": 0, "count": 3},
            {"name": "frame_2.npy", "kind": "direct", "start": 3, "count": 2, "delay": 0.05},
            {"name": "DONE", "kind": "marker", "delay": 0.05},
        ],
    )
    watcher = FolderWatcher(tmp_path, GEOMETRY, **FAST)  # stall timeout 5 s: not what ends it
    t0 = time.monotonic()
    got, indices = collect(watcher)
    assert time.monotonic() - t0 < 4.0
    np.testing.assert_array_equal(indices, np.arange(5))
    np.testing.assert_array_equal(got, frames(0, 5))
    assert watcher.missing == range(5, 12) and not watcher.complete
    info = watcher.describe()
    assert info["missing"] == [5, 12] and info["ended_by"] == "done_marker"
    assert info["files"] == ["frame_1.npy", "frame_2.npy"]


def test_partial_scan_can_be_refused(tmp_path):
    save(tmp_path / "frame_1.npy", frames(0, 5))
    (tmp_path / "DONE").touch()
    watcher = FolderWatcher(tmp_path, GEOMETRY, poll_s=0.01, allow_partial=False)
    with pytest.raises(SourceError, match=r"after 5 of 12 frames; scan indices 5 … 11"):
        collect(watcher)


def test_incomplete_file_with_done_marker_is_an_error(tmp_path):
    data = frames(0, 4)
    with open(tmp_path / "frame_1.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(data))
    (tmp_path / "DONE").touch()
    with pytest.raises(SourceError, match=r"frame_1\.npy: still incomplete although the done"):
        collect(FolderWatcher(tmp_path, GEOMETRY, poll_s=0.01))


# --- lifetime and arguments -----------------------------------------------------------------


def test_close_from_another_thread_ends_the_wait(tmp_path):
    save(tmp_path / "frame_1.npy", frames(0, 2))
    watcher = FolderWatcher(tmp_path, GEOMETRY, poll_s=0.01, settle_s=0.0)
    threading.Timer(0.2, watcher.close).start()
    t0 = time.monotonic()
    _, indices = collect(watcher)
    assert time.monotonic() - t0 < 1.0
    assert indices.tolist() == [0, 1] and watcher.describe()["ended_by"] == "stopped"
    assert watcher.missing == range(2, 12)


def test_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="folder"):
        FolderWatcher(tmp_path / "missing", GEOMETRY)
    with pytest.raises(ValueError, match="poll_s"):
        FolderWatcher(tmp_path, GEOMETRY, poll_s=0)
    with pytest.raises(ValueError, match="settle_s"):
        FolderWatcher(tmp_path, GEOMETRY, settle_s=-1)
    with pytest.raises(TypeError, match="geometry"):
        FolderWatcher(tmp_path, (3, 4))
    watcher = FolderWatcher(tmp_path, GEOMETRY)
    with pytest.raises(ValueError, match="max_frames"):
        watcher.chunks(0)
    save(tmp_path / "frame_1.npy", frames(0, 12))
    watcher = FolderWatcher(tmp_path, GEOMETRY, poll_s=0.01, settle_s=0.0)
    assert len(collect(watcher)[1]) == 12
    with pytest.raises(RuntimeError, match="already"):
        watcher.chunks(2)
