"""Fixtures for the kernel benchmarks: datasets built once per session, the detector geometry.

Run with ``PYTHONPATH=python python -m pytest benchmarks --benchmark-only`` (see README.md). At the
end a summary prints, per group, each median as a multiple of the group's ``read_pass`` median (of
the native median in the numpy groups) and as GB/s (bytes of the input array per second).
"""

from __future__ import annotations

import numpy as np
import pytest

from _workloads import DET, Geometry, geometry, make_frames


@pytest.fixture(scope="session")
def geom() -> Geometry:
    """Masks (BF disk, CoM disk, DF annulus) and MaskSets for the 128×128 detector, built once."""
    return geometry(DET)


@pytest.fixture(scope="session")
def frames_cache() -> dict:
    """Datasets keyed by (scan_shape, dtype), built on first use and kept for the session."""
    return {}


@pytest.fixture
def get_frames(frames_cache):
    """``get_frames(scan_shape, dtype)`` → a (scan_y, scan_x, 128, 128) shifted-disk array (seed 0).

    Built with ``out=`` a fresh ``numpy.empty`` array, so every page is touched before timing.
    """

    def get(scan_shape: tuple[int, int], dtype: str) -> np.ndarray:
        key = (tuple(scan_shape), dtype)
        if key not in frames_cache:
            frames_cache[key] = make_frames(scan_shape, DET, dtype, seed=0).data
        return frames_cache[key]

    return get


def _baseline(members) -> float | None:
    """The group's reference median: its read_pass, else its native kernel (numpy groups)."""
    for key, value in (("op", "read_pass"), ("impl", "native")):
        found = [m.stats.median for m in members if m.extra_info.get(key) == value]
        if found:
            return found[0]
    return None


def _summary_rows(benchmarks) -> list[str]:
    """Lines 'group  name  median  ×baseline  GB/s', one per benchmark, fastest first."""
    groups: dict[str, list] = {}
    for b in benchmarks:
        groups.setdefault(b.group or "", []).append(b)
    rows = []
    for group, members in sorted(groups.items()):
        ref = _baseline(members)
        for m in sorted(members, key=lambda m: m.stats.median):
            med = m.stats.median
            ratio = f"{med / ref:6.2f}×" if ref else "     -"
            gbs = m.extra_info.get("bytes", 0) / med / 1e9
            rows.append(f"{group:32s} {m.name:58s} {med * 1e3:9.3f} ms {ratio} {gbs:7.1f} GB/s")
    return rows


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    """Print medians as ratios to the group's read_pass (or native, for numpy groups) and GB/s."""
    session = getattr(config, "_benchmarksession", None)  # pytest-benchmark's session object
    benchmarks = [b for b in getattr(session, "benchmarks", []) if getattr(b, "stats", None)]
    if not benchmarks:
        return
    title = "medians ÷ the group's read_pass (numpy groups: ÷ native), same run; GB/s read"
    terminalreporter.write_sep("-", title)
    for row in _summary_rows(benchmarks):
        terminalreporter.write_line(row)
