"""Mergeable analyses (stemedge.analysis) and the offline runner.

Each analysis is checked against a plain float64 numpy reference on random frames of every frame
dtype and odd detector sizes, against the one-shot kernels (``center_of_mass``,
``virtual_images``, ``com_and_virtual_images``), and for its merge property: frames split into
random chunks, processed in random order into several partials and merged in random order give
the one-shot result exactly. Then the edge cases: empty frames, NaN pixels, partial coverage,
repeated positions, out-of-range indices, and the calibrated results (deflection in mrad and
the iDPC phase) on a simulated scan against ``stemedge.dpc.dpc``.
"""

from __future__ import annotations

import functools
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import stemedge
from stemedge.analysis import (
    Analysis,
    CenterOfMassAnalysis,
    Coverage,
    MaxPattern,
    MeanPattern,
    ResultKind,
    SumPattern,
    VirtualDetectorAnalysis,
    merge_partials,
    run_offline,
    scan_indices,
)
from stemedge.calibration import Calibration
from stemedge.dpc import dpc
from stemedge.geometry import ScanGeometry
from stemedge.masks import MaskSet, annulus, disk
from stemedge.sim import lattice, simulate_4dstem
from stemedge.sources.base import Chunk, Source

DTYPES = (np.uint8, np.uint16, np.uint32, np.float32)
SCAN = (5, 7)
DET = (9, 11)  # odd, non-square: the origin D//2 is (4, 5)


# --- data and references -------------------------------------------------------------------------


def random_scan(dtype, scan=SCAN, det=DET, seed=0) -> np.ndarray:
    """Random frames using much of each dtype's range (so integer sums are large)."""
    rng = np.random.default_rng(seed)
    hi = {np.uint8: 255, np.uint16: 60000, np.uint32: 2**31}.get(dtype)
    if hi is None:
        return rng.uniform(0, 1000, (*scan, *det)).astype(dtype)
    return rng.integers(0, hi, (*scan, *det), dtype=dtype, endpoint=True)


def np_moments(frames: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """Float64 Σ M·I, Σ y·M·I, Σ x·M·I per frame (frames (..., dy, dx))."""
    f = frames.astype(np.float64) * mask
    yy, xx = np.indices(mask.shape)
    return f.sum((-2, -1)), (f * yy).sum((-2, -1)), (f * xx).sum((-2, -1))


def np_com(frames, mask, origin, empty=0.0):
    s, sy, sx = np_moments(frames, mask)
    with np.errstate(divide="ignore", invalid="ignore"):
        shifts = np.stack(
            [
                np.where(s != 0, sy / s - origin[0], empty),
                np.where(s != 0, sx / s - origin[1], empty),
            ],
            axis=-1,
        )
    return shifts, s


def np_virtual(frames, masks):
    return np.einsum("...yx,kyx->k...", frames.astype(np.float64), np.asarray(masks, np.float64))


def geometry_of(data: np.ndarray, calibration=None) -> ScanGeometry:
    return ScanGeometry(data.shape[:2], data.shape[2:], data.dtype, calibration)


def split_run(analysis: Analysis, data: np.ndarray, seed: int, calibration=None):
    """Random chunks, processed in random order into 1-4 partials, merged in random order."""
    rng = np.random.default_rng(seed)
    geometry = geometry_of(data, calibration)
    analysis.bind(geometry)
    flat = data.reshape(-1, *data.shape[2:])
    n = len(flat)
    cuts = np.sort(rng.choice(np.arange(1, n), size=rng.integers(1, min(n - 1, 8)), replace=False))
    bounds = list(zip([0, *cuts], [*cuts, n], strict=True))
    rng.shuffle(bounds)
    n_partials = int(rng.integers(1, 5))
    partials = [analysis.new_partial() for _ in range(n_partials)]
    coverages = [Coverage(geometry) for _ in range(n_partials)]
    for a, b in bounds:
        w = int(rng.integers(n_partials))
        idx = np.arange(a, b, dtype=np.int64)
        if rng.random() < 0.5:  # also exercise out-of-order indices within a stack
            perm = rng.permutation(b - a)
            frames, idx = np.ascontiguousarray(flat[a:b][perm]), idx[perm]
        else:
            frames = flat[a:b]
        analysis.process(partials[w], frames, idx)
        coverages[w].add(idx)
    order = rng.permutation(n_partials)
    merged = merge_partials(analysis, [partials[i] for i in order])
    coverage = Coverage(geometry)
    for i in order:
        coverage.merge(coverages[i])
    return analysis.finalize(merged, coverage.counts)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


class ListSource(Source):
    """A real Source over given (frames, indices) chunks, in the given order."""

    def __init__(self, geometry: ScanGeometry, chunks: list[Chunk]):
        self.geometry = geometry
        self._chunks = chunks

    def chunks(self, max_frames: int) -> Iterator[Chunk]:
        yield from self._chunks


# --- centre of mass ------------------------------------------------------------------------------

COM_CASES = {
    "whole": ({}, np.ones(DET)),
    "disk": ({"radius": 3.0}, disk(DET, 3.0, (4, 5))),
    "annulus": ({"radius": 4.0, "inner_radius": 1.5}, annulus(DET, 1.5, 4.0, (4, 5))),
    "mask": ({"mask": np.linspace(0, 1, 99).reshape(DET)}, np.linspace(0, 1, 99).reshape(DET)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(COM_CASES))
def test_com_matches_numpy_and_kernel(dtype, case):
    kwargs, mask = COM_CASES[case]
    data = random_scan(dtype)
    res = run_offline(data, CenterOfMassAnalysis(**kwargs), chunk_frames=6)["com"]
    assert set(res) == {"shifts_px", "intensity"}  # no calibration: no physical units
    shifts, s = np_com(data, mask, (4, 5))
    np.testing.assert_allclose(res["shifts_px"], shifts, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res["intensity"], s, rtol=1e-6)
    # The same native pass as the one-shot kernel: identical to the last bit.
    com = stemedge.center_of_mass(data, **kwargs)
    np.testing.assert_array_equal(res["shifts_px"], com.shifts)
    np.testing.assert_array_equal(res["intensity"], com.intensity)


@pytest.mark.parametrize("dtype", DTYPES)
def test_com_fused_with_virtual_matches_kernel(dtype):
    data = random_scan(dtype, det=(13, 10))
    masks = {"bf": disk((13, 10), 2.5), "df": annulus((13, 10), 2.5, 6)}
    a = CenterOfMassAnalysis(radius=5, threshold=3, virtual=masks)
    res = run_offline(data, a, chunk_frames=4)["com"]
    ref = stemedge.com_and_virtual_images(data, list(masks.values()), radius=5, threshold=3)
    np.testing.assert_array_equal(res["shifts_px"], ref.shifts)
    np.testing.assert_array_equal(res["intensity"], ref.intensity)
    np.testing.assert_array_equal(res["bf"], ref.images[0])
    np.testing.assert_array_equal(res["df"], ref.images[1])
    np.testing.assert_allclose(res["df"], np_virtual(data, [masks["df"]])[0], rtol=1e-6)
    assert [s.name for s in a.results()] == ["shifts_px", "intensity", "bf", "df"]


def test_com_threshold_matches_numpy():
    data = random_scan(np.uint16)
    res = run_offline(data, CenterOfMassAnalysis(threshold=30000))["com"]
    shifts, s = np_com(np.where(data >= 30000, data, 0), np.ones(DET), (4, 5))
    np.testing.assert_allclose(res["shifts_px"], shifts, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res["intensity"], s, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_com_split_merge_equals_one_shot(dtype):
    data = random_scan(dtype, scan=(6, 9))
    masks = {"bf": disk(DET, 2), "ring": annulus(DET, 2, 5)}
    make = functools.partial(CenterOfMassAnalysis, radius=4.5, virtual=masks, normalize="mean")
    one_shot = run_offline(data, make(), chunk_frames=54)["com"]
    for seed in range(4):
        assert_same(split_run(make(), data, seed), one_shot)


def test_com_empty_frames():
    data = np.zeros((3, 4, *DET), np.uint16)
    res = run_offline(data, CenterOfMassAnalysis(virtual=[disk(DET, 2)], empty=-1.0))["com"]
    assert np.all(res["shifts_px"] == -1.0)  # zero intensity: `empty`, as center_of_mass
    assert np.all(res["intensity"] == 0) and np.all(res["mask0"] == 0)
    res0 = run_offline(data, CenterOfMassAnalysis())["com"]
    np.testing.assert_array_equal(res0["shifts_px"], stemedge.center_of_mass(data).shifts)


def test_com_nan_pixels():
    data = random_scan(np.float32)
    data[1, 2, 4, 4] = np.nan  # inside the CoM disk and the virtual mask
    data[3, 3, 0, 0] = np.nan  # outside both
    a = CenterOfMassAnalysis(radius=3, virtual={"bf": disk(DET, 3.0)})
    res = run_offline(data, a)["com"]
    bad = np.zeros(SCAN, bool)
    bad[1, 2] = True
    assert np.all(np.isnan(res["shifts_px"][bad])) and np.isnan(res["intensity"][1, 2])
    assert np.isnan(res["bf"][1, 2])
    assert np.all(np.isfinite(res["shifts_px"][~bad])) and np.all(np.isfinite(res["bf"][~bad]))
    # threshold= drops NaN pixels (and those below it) from the CoM: a finite shift everywhere.
    res_t = run_offline(data, CenterOfMassAnalysis(radius=3, threshold=0.0))["com"]
    shifts, _ = np_com(np.nan_to_num(data), disk(DET, 3.0, (4, 5)), (4, 5))
    np.testing.assert_allclose(res_t["shifts_px"], shifts, rtol=1e-5, atol=1e-5)


def test_com_origin_from_calibration_and_explicit():
    data = random_scan(np.uint16)
    cal = Calibration(det_origin_px=(3.5, 6.25))
    res = run_offline(data, CenterOfMassAnalysis(idpc=False), calibration=cal)["com"]
    shifts, _ = np_com(data, np.ones(DET), (3.5, 6.25))
    np.testing.assert_allclose(res["shifts_px"], shifts, rtol=1e-5, atol=1e-5)
    assert set(res) == {"shifts_px", "intensity", "deflection_mrad"}  # idpc=False: no phase
    a = CenterOfMassAnalysis(origin=(2, 2), radius=2)
    res = run_offline(data, a, calibration=cal)["com"]
    shifts, _ = np_com(data, disk(DET, 2, (2, 2)), (2, 2))  # the disk follows the origin
    np.testing.assert_allclose(res["shifts_px"], shifts, rtol=1e-5, atol=1e-5)
    assert a.origin == (2.0, 2.0) and a.parameters()["origin"] == [2.0, 2.0]


# --- virtual detectors ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_virtual_matches_numpy_and_kernel(dtype):
    data = random_scan(dtype, det=(7, 12))
    masks = [disk((7, 12), 2), annulus((7, 12), 1, 4), np.random.default_rng(1).random((7, 12))]
    for normalize in ("sum", "mean"):
        a = VirtualDetectorAnalysis(masks, normalize=normalize, nthreads=1)
        res = run_offline(data, a, chunk_frames=5)["virtual"]
        ref = stemedge.virtual_images(data, masks, normalize=normalize)
        expect = np_virtual(data, masks)
        if normalize == "mean":
            expect /= np.asarray(masks, np.float64).sum((1, 2))[:, None, None]
        for m, name in enumerate(["mask0", "mask1", "mask2"]):
            assert res[name].dtype == np.float32 and res[name].shape == data.shape[:2]
            np.testing.assert_array_equal(res[name], ref[m])
            np.testing.assert_allclose(res[name], expect[m], rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_virtual_split_merge_equals_one_shot(dtype):
    data = random_scan(dtype, scan=(4, 11), det=(6, 5))
    masks = MaskSet([disk((6, 5), 1), np.ones((6, 5))], names=["bf", "all"])
    one_shot = run_offline(data, VirtualDetectorAnalysis(masks))["virtual"]
    for seed in range(3):
        assert_same(split_run(VirtualDetectorAnalysis(masks), data, seed), one_shot)


def test_virtual_mask_inputs_and_errors():
    m = disk(DET, 2)
    assert VirtualDetectorAnalysis({"a": m, "b": m}).masks.names == ["a", "b"]
    assert VirtualDetectorAnalysis(np.stack([m, m])).masks.names == ["mask0", "mask1"]
    with pytest.raises(ValueError, match="unique"):
        VirtualDetectorAnalysis(MaskSet([m, m], names=["x", "x"]))
    with pytest.raises(ValueError, match="at least one"):
        VirtualDetectorAnalysis({})
    with pytest.raises(TypeError, match="MaskSet"):
        VirtualDetectorAnalysis(3)
    with pytest.raises(ValueError, match="normalize"):
        VirtualDetectorAnalysis([m], normalize="max")
    with pytest.raises(ValueError, match="detector shape"):
        VirtualDetectorAnalysis([disk((8, 8), 2)]).bind(geometry_of(random_scan(np.uint8)))


# --- patterns ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_patterns_match_numpy(dtype):
    data = random_scan(dtype, det=(5, 13))
    res = run_offline(data, [SumPattern(), MeanPattern(), MaxPattern()], chunk_frames=4)
    s = data.astype(np.float64).sum((0, 1))
    assert res["sum_pattern"]["sum"].dtype == np.float64
    if dtype == np.float32:  # float64 sums in another order: equal to round-off
        np.testing.assert_allclose(res["sum_pattern"]["sum"], s, rtol=1e-12)
    else:  # integer frames are summed exactly
        np.testing.assert_array_equal(res["sum_pattern"]["sum"], s)
    np.testing.assert_allclose(res["mean_pattern"]["mean"], s / 35, rtol=1e-12)
    assert res["max_pattern"]["max"].dtype == dtype
    np.testing.assert_array_equal(res["max_pattern"]["max"], data.max((0, 1)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_patterns_split_merge_equals_one_shot(dtype):
    data = random_scan(dtype, scan=(3, 10))
    for make in (SumPattern, MeanPattern, MaxPattern):
        one_shot = run_offline(data, make())
        (only,) = one_shot.values()
        for seed in range(3):
            split = split_run(make(), data, seed)
            if dtype == np.float32 and make is not MaxPattern:
                # float64 sums of float32 frames in another order: equal to round-off.
                for k in split:
                    np.testing.assert_allclose(split[k], only[k], rtol=1e-13)
            else:
                assert_same(split, only)


def test_pattern_sum_exact_for_large_integers():
    # uint16 frames: the exact uint32 block accumulator; uint32: uint64 (no float rounding).
    data = np.full((2, 3, 4, 4), 2**32 - 1, np.uint32)
    s = run_offline(data, SumPattern())["sum_pattern"]["sum"]
    assert np.all(s == 6 * (2**32 - 1))
    data8 = np.full((20, 20, 2, 3), 255, np.uint8)  # 400 frames > the 257 of one uint16 block
    assert np.all(run_offline(data8, SumPattern())["sum_pattern"]["sum"] == 400 * 255)


def test_pattern_nan_semantics():
    data = random_scan(np.float32, det=(4, 5))
    data[0, 0, 1, 1] = np.nan  # NaN in one frame
    data[:, :, 2, 3] = np.nan  # NaN in every frame
    res = run_offline(data, [SumPattern(), MeanPattern(), MaxPattern()])
    finite = np.ones((4, 5), bool)
    finite[1, 1] = finite[2, 3] = False
    for r in (res["sum_pattern"]["sum"], res["mean_pattern"]["mean"]):
        assert np.isnan(r[1, 1]) and np.isnan(r[2, 3]) and np.all(np.isfinite(r[finite]))
    mx = res["max_pattern"]["max"]
    assert mx[1, 1] == np.nanmax(data[..., 1, 1])  # NaN ignored by the maximum
    assert np.isnan(mx[2, 3])  # … unless the pixel is NaN in every frame
    np.testing.assert_array_equal(mx[finite], data.max((0, 1))[finite])


def test_pattern_before_any_frame():
    geometry = geometry_of(random_scan(np.uint16))
    coverage = np.zeros(SCAN, np.int64)
    for make, key, expect in [(MeanPattern, "mean", np.nan), (MaxPattern, "max", 0)]:
        a = make()
        a.bind(geometry)
        np.testing.assert_array_equal(a.finalize(a.new_partial(), coverage)[key], expect)
    a = MaxPattern()
    a.bind(geometry_of(random_scan(np.float32)))
    assert np.all(np.isnan(a.finalize(a.new_partial(), coverage)["max"]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_pattern_makes_no_float64_copy_of_the_stack(dtype):
    frames = random_scan(dtype, scan=(1, 64), det=(64, 64))[0]  # 64 frames of 64²
    a = SumPattern()
    a.bind(ScanGeometry((1, 64), (64, 64), dtype))
    p = a.new_partial()
    a.process(p, frames, np.arange(64))  # warm up numpy's buffers
    tracemalloc.start()
    a.process(p, frames, np.arange(64))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # A float64 copy of the stack would be 2 MiB; one frame-sized accumulator is 32 KiB.
    assert peak < frames.size * 8 // 8


# --- scatter: partial coverage, repeats, out-of-order and out-of-range indices -------------------


def all_analyses():
    return [
        CenterOfMassAnalysis(virtual={"bf": disk(DET, 2)}),
        VirtualDetectorAnalysis({"bf": disk(DET, 2)}),
        SumPattern(),
        MeanPattern(),
        MaxPattern(),
    ]


def test_partial_coverage_is_nan_where_unseen():
    data = random_scan(np.uint16)
    cal = Calibration(scan_step_A=0.5)
    flat = data.reshape(-1, *DET)
    seen = np.array([0, 1, 2, 9, 20, 21, 34], np.int64)
    src = ListSource(geometry_of(data, cal), [Chunk(flat[seen], seen)])
    res = run_offline(src, all_analyses())
    mask = np.zeros(35, bool)
    mask[seen] = True
    mask = mask.reshape(SCAN)
    com = res["com"]
    for key in ("shifts_px", "deflection_mrad", "intensity", "bf"):
        assert np.all(np.isnan(com[key][~mask])) and np.all(np.isfinite(com[key][mask]))
    assert np.all(np.isnan(com["idpc_rad"]))  # iDPC only once the whole scan is covered
    np.testing.assert_array_equal(res["virtual"]["bf"], com["bf"])
    ref = stemedge.center_of_mass(data[mask])
    np.testing.assert_array_equal(com["shifts_px"][mask], ref.shifts)
    np.testing.assert_allclose(res["mean_pattern"]["mean"], flat[seen].mean(0), rtol=1e-12)


def test_repeated_positions_report_the_mean_frame():
    data = random_scan(np.uint16, seed=3)
    again = random_scan(np.uint16, seed=4)  # a second measurement of some positions
    flat, flat2 = data.reshape(-1, *DET), again.reshape(-1, *DET)
    twice = np.array([3, 17, 17, 30])  # position 17 measured three times in all
    chunks = [
        Chunk(flat[20:], np.arange(20, 35)),
        Chunk(flat2[twice], twice),  # repeats inside one stack (np.add.at path)
        Chunk(flat[:20], np.arange(20)),
    ]
    res = run_offline(ListSource(geometry_of(data), chunks), all_analyses())
    counts = np.ones(35, int)
    np.add.at(counts, twice, 1)
    sums = flat.astype(np.float64)
    np.add.at(sums, twice, flat2[twice].astype(np.float64))
    mean_frames = (sums / counts[:, None, None]).reshape(*SCAN, *DET)
    shifts, s = np_com(mean_frames, np.ones(DET), (4, 5))
    com = res["com"]
    np.testing.assert_allclose(com["shifts_px"], shifts, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(com["intensity"], s, rtol=1e-6)
    np.testing.assert_allclose(com["bf"], np_virtual(mean_frames, [disk(DET, 2)])[0], rtol=1e-6)
    np.testing.assert_array_equal(res["virtual"]["bf"], com["bf"])
    np.testing.assert_array_equal(res["sum_pattern"]["sum"], sums.sum(0))  # every frame counts
    np.testing.assert_allclose(res["mean_pattern"]["mean"], sums.sum(0) / 39, rtol=1e-12)
    expect_max = np.maximum(flat.max(0), flat2[twice].max(0))
    np.testing.assert_array_equal(res["max_pattern"]["max"], expect_max)


def test_stacks_that_only_look_consecutive():
    # First and last index 4 apart in a 5-frame stack, but not a raster run: no slice add.
    data = random_scan(np.float32, seed=7)
    flat = data.reshape(-1, *DET)
    odd = np.array([10, 12, 11, 13, 14])
    chunks = [
        Chunk(flat[:10], np.arange(10)),
        Chunk(flat[odd], odd),
        Chunk(flat[15:], np.arange(15, 35)),
    ]
    res = run_offline(ListSource(geometry_of(data), chunks), all_analyses())
    ref = run_offline(data, all_analyses())
    for name in ("com", "virtual", "max_pattern"):
        assert_same(res[name], ref[name])
    np.testing.assert_allclose(res["sum_pattern"]["sum"], ref["sum_pattern"]["sum"], rtol=1e-13)


def test_worker_threads_share_one_analysis():
    # The live pipeline shares one bound analysis between threads, each with its own partial.
    data = random_scan(np.uint16, scan=(8, 16))
    flat = data.reshape(-1, *DET)
    a = CenterOfMassAnalysis(radius=4, virtual={"bf": disk(DET, 2)}, nthreads=1)
    a.bind(geometry_of(data))
    partials = [a.new_partial() for _ in range(4)]

    def work(w):
        for start in range(16 * w, 128, 64):
            a.process(partials[w], flat[start : start + 16], np.arange(start, start + 16))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))
    res = a.finalize(merge_partials(a, partials), np.ones((8, 16), np.int64))
    assert_same(
        res, run_offline(data, CenterOfMassAnalysis(radius=4, virtual={"bf": disk(DET, 2)}))["com"]
    )


@pytest.mark.parametrize("bad", [35, -1, 10**12])
def test_out_of_range_indices_raise_and_change_nothing(bad):
    data = random_scan(np.uint8)
    flat = data.reshape(-1, *DET)
    for a in all_analyses():
        a.bind(geometry_of(data))
        p = a.new_partial()
        a.process(p, flat[:4], np.arange(4))
        before = {k: v.copy() for k, v in p.items()}
        for idx in (np.array([5, 6, bad]), np.array([bad, 0, 1]), np.array([33, 34, bad])):
            with pytest.raises(IndexError, match="outside the 5×7 scan"):
                a.process(p, flat[:3], idx)
        assert_same(p, before)
    src = ListSource(geometry_of(data), [Chunk(flat[:2], np.array([0, bad]))])
    with pytest.raises(IndexError, match=f"scan index {bad} "):
        run_offline(src, SumPattern())


def test_scan_indices_classification():
    g = ScanGeometry((4, 4), (2, 2), np.uint8)
    consecutive = scan_indices(g, np.arange(3, 9))
    assert consecutive.start == 3 and consecutive.unique
    shuffled = scan_indices(g, np.array([5, 3, 4]))
    assert shuffled.start is None and shuffled.unique
    repeated = scan_indices(g, np.array([0, 2, 2, 3]))  # first/last look consecutive
    assert repeated.start is None and not repeated.unique
    assert scan_indices(g, [1, 2]).start == 1  # lists and other ints are converted
    with pytest.raises(TypeError, match="integer"):
        scan_indices(g, np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="one-dimensional"):
        scan_indices(g, np.zeros((2, 2), np.int64))


def test_coverage_helper():
    g = ScanGeometry((3, 4), (2, 2), np.uint8)
    c = Coverage(g)
    c.add(np.arange(0, 5))
    c.add(np.array([11, 4, 4]))
    c.add(np.array([], np.int64))
    assert c.counts.dtype == np.int64 and c.counts.shape == (3, 4)
    assert c.counts.ravel().tolist() == [1, 1, 1, 1, 3, 0, 0, 0, 0, 0, 0, 1]
    assert c.n_frames == 8 and not c.complete and int(c.seen.sum()) == 6
    other = Coverage(g)
    other.add(np.arange(12))
    c.merge(other)
    assert c.complete and c.n_frames == 20
    with pytest.raises(IndexError):
        c.add(np.array([12]))
    with pytest.raises(ValueError, match="merge a coverage"):
        c.merge(Coverage(ScanGeometry((2, 2), (2, 2), np.uint8)))
    assert repr(c) == "Coverage(12/12 positions seen, 20 frames)"


# --- calibrated results: deflection and iDPC on a simulated scan ---------------------------------


@functools.cache
def simulated_scan():
    s = lattice((16, 16), 0.25, a_A=2.0, phase_rad=0.08, seed=2)
    return simulate_4dstem(s.phase, scan_step_A=0.25, det_shape=(24, 24), rotation_deg=30.0)


def test_deflection_and_idpc_match_dpc_on_simulated_scan():
    r = simulated_scan()
    res = run_offline(r.data, CenterOfMassAnalysis(), calibration=r.calibration)["com"]
    ref = dpc(stemedge.center_of_mass(r.data, origin=r.calibration).shifts, r.calibration)
    assert res["deflection_mrad"].dtype == np.float32 and res["idpc_rad"].dtype == np.float32
    np.testing.assert_array_equal(res["deflection_mrad"], ref.field_mrad)
    np.testing.assert_allclose(res["idpc_rad"], ref.phase, atol=1e-6 * np.abs(ref.phase).max())
    assert np.corrcoef(res["idpc_rad"].ravel(), r.phase.ravel())[0, 1] > 0.9  # the right sign
    # Split, shuffled and merged: the same maps; and idpc options reach stemedge.dpc.idpc.
    split = split_run(CenterOfMassAnalysis(), r.data, seed=5, calibration=r.calibration)
    assert_same(split, res)
    opts = {"pad": 1, "eps": 1e-3}
    res1 = run_offline(r.data, CenterOfMassAnalysis(idpc=opts), calibration=r.calibration)["com"]
    ref1 = dpc(stemedge.center_of_mass(r.data).shifts, r.calibration, pad=1, idpc_eps=1e-3)
    np.testing.assert_allclose(res1["idpc_rad"], ref1.phase, atol=1e-6 * np.abs(ref1.phase).max())


def test_deflection_is_rotated_into_the_scan_frame():
    data = random_scan(np.uint16)
    cal = Calibration(det_mrad_per_px=0.5, rotation_deg=90.0)
    res = run_offline(data, CenterOfMassAnalysis(), calibration=cal)["com"]
    s = res["shifts_px"]
    # θ = 90°: T = [[0, 1], [-1, 0]], so E = (s_x, -s_y), times 0.5 mrad/px.
    expect = 0.5 * np.stack([s[..., 1], -s[..., 0]], axis=-1)
    np.testing.assert_allclose(res["deflection_mrad"], expect, atol=1e-6)


def test_idpc_nan_when_a_shift_is_nan():
    r = simulated_scan()
    data = r.data.copy()
    data[3, 4, 12, 12] = np.nan
    res = run_offline(data, CenterOfMassAnalysis(), calibration=r.calibration)["com"]
    assert np.all(np.isnan(res["idpc_rad"]))
    assert np.isnan(res["deflection_mrad"][3, 4]).all()


# --- runner, contract and argument errors --------------------------------------------------------


def test_results_match_declared_specs():
    data = random_scan(np.float32)
    cal = Calibration()
    analyses = all_analyses()
    res = run_offline(data, analyses, calibration=cal)
    g = geometry_of(data, cal)
    for a in analyses:
        specs = a.results()
        assert [s.name for s in specs] == list(res[a.name]), a.name
        for spec in specs:
            arr = res[a.name][spec.name]
            assert arr.shape == spec.shape(g) and arr.dtype == spec.dtype, (a.name, spec.name)
    kinds = {s.name: s.kind for s in analyses[0].results()}
    assert kinds["idpc_rad"] is ResultKind.SCAN
    assert analyses[2].results()[0].kind is ResultKind.DETECTOR


def test_runner_names_and_inputs():
    data = random_scan(np.uint8)
    names = [a.name for a in all_analyses()]
    assert names == ["com", "virtual", "sum_pattern", "mean_pattern", "max_pattern"]
    with pytest.raises(ValueError, match=r"unique.*\['sum_pattern'\].*name="):
        run_offline(data, [SumPattern(), SumPattern()])
    res = run_offline(data, [SumPattern(), SumPattern(name="sum2")])
    np.testing.assert_array_equal(res["sum_pattern"]["sum"], res["sum2"]["sum"])
    with pytest.raises(ValueError, match="4D"):
        run_offline(data[0], SumPattern())
    with pytest.raises(TypeError, match="astype"):
        run_offline(data.astype(np.float64), SumPattern())
    with pytest.raises(TypeError, match="Source"):
        run_offline(data.tolist(), SumPattern())
    with pytest.raises(ValueError, match="chunk_frames"):
        run_offline(data, SumPattern(), chunk_frames=0)
    with pytest.raises(TypeError, match="Analysis"):
        run_offline(data, [SumPattern(), "com"])
    with pytest.raises(TypeError, match="calibration"):
        run_offline(data, SumPattern(), calibration={"voltage_kV": 300})
    with pytest.raises(ValueError, match="name"):
        SumPattern(name="")


def test_runner_sliced_array_and_progress(capsys):
    data = random_scan(np.uint16, scan=(6, 10))
    sliced = data[:, ::3]  # scan axes that cannot merge: chunks within rows, still views
    a = [CenterOfMassAnalysis(), SumPattern()]
    res = run_offline(sliced, a, chunk_frames=2, progress=True)
    ref = run_offline(np.ascontiguousarray(sliced), [CenterOfMassAnalysis(), SumPattern()])
    assert_same(res["com"], ref["com"])
    assert_same(res["sum_pattern"], ref["sum_pattern"])
    assert "frame" in capsys.readouterr().err  # the tqdm bar


def test_runner_source_calibration_override():
    data = random_scan(np.uint16)
    flat = data.reshape(-1, *DET)
    src = ListSource(
        geometry_of(data, Calibration(det_mrad_per_px=1.0)), [Chunk(flat, np.arange(35))]
    )
    res = run_offline(src, CenterOfMassAnalysis(idpc=False))["com"]
    res2 = run_offline(
        src, CenterOfMassAnalysis(idpc=False), calibration=Calibration(det_mrad_per_px=2.0)
    )["com"]
    np.testing.assert_allclose(res2["deflection_mrad"], 2 * res["deflection_mrad"], rtol=1e-6)


def test_bind_and_merge_errors():
    data = random_scan(np.uint16)
    g = geometry_of(data)
    a = CenterOfMassAnalysis(mask=np.ones((3, 3)))
    with pytest.raises(ValueError, match="mask has shape"):
        a.bind(g)
    a = CenterOfMassAnalysis()
    with pytest.raises(RuntimeError, match="bind"):
        a.new_partial()
    a.bind(g)
    a.bind(g)  # the same geometry again: fine
    with pytest.raises(ValueError, match="bound to"):
        a.bind(geometry_of(random_scan(np.uint8)))
    p = a.new_partial()
    with pytest.raises(ValueError, match="frames must have shape"):
        a.process(p, data[0, :, :3], np.arange(7))
    with pytest.raises(ValueError, match="one index per frame"):
        a.process(p, data[0], np.arange(6))
    with pytest.raises(TypeError, match="dtype"):
        a.process(p, data[0].astype(np.float32), np.arange(7))
    with pytest.raises(TypeError, match="numpy array"):
        a.process(p, data[0].tolist(), np.arange(7))
    other = CenterOfMassAnalysis(virtual=[disk(DET, 2)])
    other.bind(g)
    with pytest.raises(ValueError, match="merge"):
        a.merge(p, other.new_partial())
    s = SumPattern()
    s.bind(geometry_of(random_scan(np.uint16, det=(4, 4))))
    with pytest.raises(ValueError, match="merge"):
        SumPattern.merge(s, s.new_partial(), {"sum": np.zeros((1, 4))})  # would broadcast
    with pytest.raises(ValueError, match="coverage"):
        a.finalize(p, np.zeros(35, np.int64))
    q = a.new_partial()
    merged = merge_partials(a, [p, q])
    assert merged is not p and merged is not q


def test_constructor_errors():
    with pytest.raises(ValueError, match="not both"):
        CenterOfMassAnalysis(radius=3, mask=np.ones(DET))
    with pytest.raises(ValueError, match="inner_radius needs radius"):
        CenterOfMassAnalysis(inner_radius=3)
    with pytest.raises(ValueError, match="clash"):
        CenterOfMassAnalysis(virtual={"intensity": np.ones(DET)})
    with pytest.raises(ValueError, match="idpc must be"):
        CenterOfMassAnalysis(idpc={"padding": 2})
    with pytest.raises(ValueError, match="pad"):
        CenterOfMassAnalysis(idpc={"pad": 0})  # checked now, not at the end of a scan
    with pytest.raises(ValueError, match="origin"):
        CenterOfMassAnalysis(origin=(1, np.nan))
    with pytest.raises(ValueError, match="threshold"):
        CenterOfMassAnalysis(threshold=np.nan)
    with pytest.raises(ValueError, match="nthreads"):
        CenterOfMassAnalysis(nthreads=0)
