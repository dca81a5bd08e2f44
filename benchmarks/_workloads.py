"""Workloads shared by the pytest benchmarks and ``compare.py``.

One place defines the synthetic dataset, the detector geometry (BF disk, CoM disk, DF annulus),
the native calls (with preallocated outputs and MaskSets built once, so neither allocation nor
mask compilation is timed where the API allows) and the numpy one-liners they are compared with.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

try:
    import stemedge
except ImportError:  # running from a checkout without PYTHONPATH=python
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    import stemedge

from stemedge.masks import MaskSet, annulus, disk
from stemedge.sim import DiskScan, shifted_disks

__all__ = [
    "DET",
    "DTYPES",
    "OPS",
    "Geometry",
    "check_agreement",
    "geometry",
    "make_frames",
    "native_ops",
    "numpy_ops",
    "stemedge",
]

DET = (128, 128)  #: detector shape of the pytest benchmarks
DTYPES = ("uint16", "float32")  #: frame dtypes benchmarked
#: The operations, in table order (``read_pass`` is the reference, not an operation).
OPS = ("com_whole", "com_disk", "virtual_bf", "annular_df", "bf_df", "fused")

COUNTS_PER_PX = 100.0  # disk value above background: fits uint16 and is exact in float32
BACKGROUND = 1.0  # so that every pixel, the DF ring included, carries signal


@dataclasses.dataclass(frozen=True, eq=False)
class Geometry:
    """Detector masks for one detector shape, compiled once.

    ``r_bf`` is det/8 (the radius of the simulated disk and of the virtual BF detector); the CoM
    disk is ``r_bf + 2``; the annular DF detector is ``r_bf + 4 < d <= det/2 - 1``.
    """

    det_shape: tuple[int, int]
    r_bf: float
    r_com: float
    df_inner: float
    df_outer: float
    bf: np.ndarray
    df: np.ndarray
    com_disk: np.ndarray
    ms_bf: MaskSet
    ms_df: MaskSet
    ms_both: MaskSet

    def labels(self) -> dict[str, str]:
        """Human-readable operation names for tables."""
        return {
            "read_pass": "read_pass (reference)",
            "com_whole": "CoM, whole frame",
            "com_disk": f"CoM in disk r={self.r_com:g}",
            "virtual_bf": f"virtual BF, disk r={self.r_bf:g}",
            "annular_df": f"annular DF, {self.df_inner:g}<r<={self.df_outer:g}",
            "bf_df": "BF+DF, one pass",
            "fused": "CoM+BF+DF, fused",
        }


def geometry(det_shape: tuple[int, int]) -> Geometry:
    """The benchmark detector geometry for ``det_shape`` (see :class:`Geometry`)."""
    det = min(det_shape)
    r_bf = float(det // 8)
    r_com = r_bf + 2
    df_inner, df_outer = r_bf + 4, float(det // 2 - 1)
    bf = disk(det_shape, r_bf)
    df = annulus(det_shape, df_inner, df_outer)
    return Geometry(
        det_shape=tuple(det_shape),
        r_bf=r_bf,
        r_com=r_com,
        df_inner=df_inner,
        df_outer=df_outer,
        bf=bf,
        df=df,
        com_disk=disk(det_shape, r_com),
        ms_bf=MaskSet(bf, names=["bf"]),
        ms_df=MaskSet(df, names=["df"]),
        ms_both=MaskSet([bf, df], names=["bf", "df"]),
    )


def make_frames(
    scan_shape: tuple[int, int],
    det_shape: tuple[int, int],
    dtype,
    out: np.ndarray | None = None,
    seed: int = 0,
) -> DiskScan:
    """Shifted-disk frames (disk radius det/8, default shift field), filled into ``out``.

    Pass a preallocated ``out`` (``numpy.empty``) to fill in place: the fill touches every page, so
    later timings see no first-touch cost.
    """
    dt = np.dtype(dtype)
    if out is None:
        out = np.empty((*scan_shape, *det_shape), dt)
    return shifted_disks(
        scan_shape,
        det_shape,
        float(min(det_shape) // 8),
        counts_per_px=COUNTS_PER_PX,
        background=BACKGROUND,
        dtype=dt,
        seed=seed,
        out=out,
    )


def native_ops(geom: Geometry, scan_shape: tuple[int, ...]) -> dict[str, Callable]:
    """Native calls ``op(frames)`` for frames of ``scan_shape``, outputs preallocated per op.

    ``fused`` (``com_and_virtual_images``) has no ``out=``: its small result arrays are allocated
    per call (a few hundred kB at 256² positions).
    """

    def com_out():
        return np.empty((*scan_shape, 2), np.float32), np.empty(scan_shape, np.float32)

    def img_out(k):
        return np.empty((k, *scan_shape), np.float32)

    com_w, com_d = com_out(), com_out()
    bf_img, df_img, both_img = img_out(1), img_out(1), img_out(2)
    return {
        "read_pass": stemedge.read_pass,
        "com_whole": lambda f: stemedge.center_of_mass(f, out=com_w),
        "com_disk": lambda f: stemedge.center_of_mass(f, radius=geom.r_com, out=com_d),
        "virtual_bf": lambda f: stemedge.virtual_images(f, geom.ms_bf, out=bf_img),
        "annular_df": lambda f: stemedge.virtual_images(f, geom.ms_df, out=df_img),
        "bf_df": lambda f: stemedge.virtual_images(f, geom.ms_both, out=both_img),
        "fused": lambda f: stemedge.com_and_virtual_images(f, geom.ms_both),
    }


def _np_com(f: np.ndarray, origin: tuple[int, int]):
    """The numpy CoM one-liner: projections, first moments, divide (shifts (n, 2), sum (n,))."""
    y, x = np.arange(f.shape[-2]), np.arange(f.shape[-1])
    s = f.sum((-2, -1))
    cy = (f.sum(-1) * y).sum(-1) / s - origin[0]
    cx = (f.sum(-2) * x).sum(-1) / s - origin[1]
    return np.stack([cy, cx], -1), s


def numpy_ops(geom: Geometry) -> dict[str, Callable]:
    """The numpy one-liners ``op(stack)`` for a frame stack (n, det_y, det_x).

    CoM: ``s = f.sum((-2,-1)); cy = (f.sum(-1) * y).sum(-1) / s - oy`` (same for x), on
    ``f * mask`` for the disk; virtual images: ``np.tensordot(f, mask, axes=2)``; BF+DF:
    ``np.tensordot(f, masks, axes=([1, 2], [1, 2]))`` (frames first, so they are not transposed
    into a copy); fused: the whole-frame CoM plus that tensordot.
    Images come back as (k, n), CoM as (shifts, intensity).
    """
    origin = (geom.det_shape[0] // 2, geom.det_shape[1] // 2)
    both = np.stack([geom.bf, geom.df])

    def images(f, masks):
        return np.tensordot(f, masks, axes=([1, 2], [1, 2])).T

    return {
        "com_whole": lambda f: _np_com(f, origin),
        "com_disk": lambda f: _np_com(f * geom.com_disk, origin),
        "virtual_bf": lambda f: np.tensordot(f, geom.bf, axes=2)[np.newaxis],
        "annular_df": lambda f: np.tensordot(f, geom.df, axes=2)[np.newaxis],
        "bf_df": lambda f: images(f, both),
        "fused": lambda f: (*_np_com(f, origin), images(f, both)),
    }


def _as_tuple(result) -> tuple[np.ndarray, ...]:
    """A native or numpy result as a tuple of float64 arrays with the scan axes flattened."""
    parts = result if isinstance(result, tuple) else (result,)
    return tuple(np.asarray(p, dtype=np.float64) for p in parts)


def check_agreement(
    stack: np.ndarray, geom: Geometry, truth: np.ndarray | None = None
) -> dict[str, float]:
    """Run every native op and its numpy one-liner on ``stack`` (n, dy, dx); assert they agree.

    Tolerances: 1e-3 px on shifts and 1e-4 relative on sums (native results are float32).
    ``truth`` (n, 2), the simulator's exact first moments, is checked against the whole-frame CoM.
    Returns the largest relative deviation per op.
    """
    nat, ref = native_ops(geom, stack.shape[:1]), numpy_ops(geom)
    worst: dict[str, float] = {}
    for op in OPS:
        got, want = _as_tuple(nat[op](stack)), _as_tuple(ref[op](stack))
        assert len(got) == len(want), op
        dev = 0.0
        has_shifts = op.startswith("com") or op == "fused"  # (shifts, intensity[, images])
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            atol = 1e-3 if has_shifts and i == 0 else 0.0
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=atol, err_msg=f"{op}: native≠numpy")
            dev = max(dev, float(np.max(np.abs(g - w) / np.maximum(np.abs(w), 1.0))))
        worst[op] = dev
    if truth is not None:
        shifts = stemedge.center_of_mass(stack).shifts
        np.testing.assert_allclose(shifts, truth, atol=1e-3, err_msg="CoM vs simulator truth")
    return worst
