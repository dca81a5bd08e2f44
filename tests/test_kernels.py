"""The native CPU kernels held to plain numpy references (float64), on every backend and dtype.

Tolerances: integer frames are summed exactly by the kernels, so integer sums must match numpy's
int64/float64 sums exactly; float32 frames are summed in float64 in both, so they agree to ~1e-12
relative; results are rounded to the requested result dtype (float32 by default) at the end.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stemedge
from stemedge import _native
from stemedge.masks import MaskSet, annulus, disk

DTYPES = [np.uint8, np.uint16, np.uint32, np.float32]


def random_frames(shape, dtype, rng, high=None):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.normal(100.0, 30.0, size=shape).astype(dtype)
    high = high if high is not None else min(np.iinfo(dtype).max, 5000)
    return rng.integers(0, high, size=shape, endpoint=True).astype(dtype)


def ref_sums(frames, masks, threshold=None):
    """Σ M·I per frame and mask, float64: shape (..., k)."""
    f = frames.astype(np.float64)
    if threshold is not None:
        f = np.where(
            frames >= np.asarray(threshold, dtype=frames.dtype)
            if frames.dtype.kind == "f"
            else frames >= threshold,
            f,
            0.0,
        )
    return np.einsum("...yx,kyx->...k", f, np.asarray(masks, np.float64))


def ref_com(frames, mask=None, origin=None, threshold=None):
    dy, dx = frames.shape[-2:]
    mask = np.ones((dy, dx)) if mask is None else np.asarray(mask, np.float64)
    yy, xx = np.mgrid[:dy, :dx].astype(np.float64)
    s, sy, sx = np.moveaxis(ref_sums(frames, [mask, mask * yy, mask * xx], threshold), -1, 0)
    oy, ox = (dy // 2, dx // 2) if origin is None else origin
    with np.errstate(divide="ignore", invalid="ignore"):
        shifts = np.stack(
            [np.where(s != 0, sy / s - oy, 0.0), np.where(s != 0, sx / s - ox, 0.0)], -1
        )
    return shifts, s


# --- centre of mass -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("det", [(1, 1), (1, 7), (5, 3), (13, 17), (64, 64), (33, 130)])
def test_com_whole_frame_matches_numpy(backend, dtype, det):
    rng = np.random.default_rng(hash((det, np.dtype(dtype).str)) % 2**32)
    frames = random_frames((3, 5, *det), dtype, rng)
    res = stemedge.center_of_mass(frames, dtype=np.float64)
    shifts, s = ref_com(frames)
    np.testing.assert_allclose(res.intensity, s, rtol=1e-12)
    np.testing.assert_allclose(res.shifts, shifts, rtol=0, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_com_float32_result_within_1e4_px(dtype):
    rng = np.random.default_rng(1)
    frames = random_frames((200, 48, 48), dtype, rng)
    res = stemedge.center_of_mass(frames)
    assert res.shifts.dtype == np.float32 and res.intensity.dtype == np.float32
    shifts, _ = ref_com(frames)
    assert np.abs(res.shifts - shifts).max() < 1e-4


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("radius", "inner"), [(7.0, None), (12.5, 4.0), (0.0, None), (100.0, None)]
)
def test_com_in_disk_and_annulus(backend, dtype, radius, inner):
    rng = np.random.default_rng(2)
    frames = random_frames((17, 31, 29), dtype, rng)
    origin = (14.3, 13.0)
    res = stemedge.center_of_mass(
        frames, radius=radius, inner_radius=inner, origin=origin, dtype=np.float64
    )
    mask = (
        disk((31, 29), radius, origin)
        if inner is None
        else annulus((31, 29), inner, radius, origin)
    )
    shifts, s = ref_com(frames, mask, origin)
    np.testing.assert_allclose(res.intensity, s, rtol=1e-12)
    np.testing.assert_allclose(res.shifts, shifts, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_com_custom_weighted_mask(backend, dtype):
    rng = np.random.default_rng(3)
    frames = random_frames((9, 24, 40), dtype, rng)
    mask = disk((24, 40), 9.0, antialias=True) * rng.uniform(0.5, 1.5, (24, 40)).astype(np.float32)
    res = stemedge.center_of_mass(frames, mask=mask, dtype=np.float64)
    shifts, s = ref_com(frames, mask)
    # Weighted masks multiply in float32 for 8/16-bit data (exact products, float32 row sums).
    np.testing.assert_allclose(res.intensity, s, rtol=1e-6)
    np.testing.assert_allclose(res.shifts, shifts, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.5, 100.0, 101.0, 1e12, -5.0])
def test_com_threshold(backend, dtype, threshold):
    rng = np.random.default_rng(4)
    frames = random_frames((11, 20, 21), dtype, rng, high=200)
    res = stemedge.center_of_mass(frames, threshold=threshold, dtype=np.float64)
    shifts, s = ref_com(frames, threshold=threshold)
    np.testing.assert_allclose(res.intensity, s, rtol=1e-12)
    np.testing.assert_allclose(res.shifts, shifts, atol=1e-9)


def test_com_empty_and_zero_frames():
    frames = np.zeros((4, 8, 8), np.uint16)
    frames[2, 1, 1] = 3
    res = stemedge.center_of_mass(frames)
    np.testing.assert_array_equal(res.intensity, [0, 0, 3, 0])
    np.testing.assert_array_equal(res.shifts[[0, 1, 3]], 0.0)
    np.testing.assert_allclose(res.shifts[2], [1 - 4, 1 - 4])
    nan = stemedge.center_of_mass(frames, empty=np.nan)
    assert np.isnan(nan.shifts[0]).all() and not np.isnan(nan.shifts[2]).any()
    none = stemedge.center_of_mass(np.zeros((0, 8, 8), np.float32))
    assert none.shifts.shape == (0, 2) and none.intensity.shape == (0,)
    scan = stemedge.center_of_mass(np.zeros((0, 5, 8, 8), np.uint8))
    assert scan.shifts.shape == (0, 5, 2)


def test_com_counts_near_overflow(backend):
    # uint16 / uint32 frames full of the maximum value: sums exceed 2^32 and must stay exact.
    for dtype in (np.uint8, np.uint16, np.uint32):
        frames = np.full((3, 70, 90), np.iinfo(dtype).max, dtype)
        frames[1, :10] = 0
        res = stemedge.center_of_mass(frames, dtype=np.float64)
        _, s = ref_com(frames)
        np.testing.assert_array_equal(res.intensity, s)
        np.testing.assert_allclose(
            res.shifts[0], [(70 - 1) / 2 - 35, (90 - 1) / 2 - 45], atol=1e-12
        )


def test_com_nan_propagates_unless_thresholded(backend):
    frames = np.ones((3, 6, 6), np.float32)
    frames[1, 2, 3] = np.nan
    res = stemedge.center_of_mass(frames)
    assert np.isnan(res.intensity[1]) and np.isfinite(res.intensity[[0, 2]]).all()
    thr = stemedge.center_of_mass(frames, threshold=0.5)  # NaN >= t is False: the pixel counts as 0
    assert thr.intensity[1] == 35.0


def test_com_4d_strided_views_are_read_in_place(backend):
    rng = np.random.default_rng(5)
    data = random_frames((12, 14, 20, 22), np.uint16, rng)
    view = data[2:11:3, ::-2, 1:19, 3:]  # any slicing of scan axes, rows cropped: no copy needed
    res = stemedge.center_of_mass(view, dtype=np.float64)
    shifts, s = ref_com(np.ascontiguousarray(view))
    assert res.shifts.shape == (*view.shape[:2], 2)
    np.testing.assert_allclose(res.intensity, s, rtol=1e-12)
    np.testing.assert_allclose(res.shifts, shifts, atol=1e-9)


def test_com_out_arrays_are_filled_in_place():
    rng = np.random.default_rng(6)
    frames = random_frames((4, 5, 16, 16), np.float32, rng)
    shifts = np.full((4, 5, 2), -1.0, np.float64)
    intensity = np.full((4, 5), -1.0, np.float32)
    res = stemedge.center_of_mass(frames, out=(shifts, intensity))
    assert res.shifts is shifts and res.intensity is intensity
    ref, s = ref_com(frames)
    np.testing.assert_allclose(shifts, ref, atol=1e-9)
    np.testing.assert_allclose(intensity, s, rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        stemedge.center_of_mass(frames, out=(np.empty((20, 2)), intensity))


def test_com_origin_from_calibration():
    frames = np.zeros((1, 9, 9), np.float32)
    frames[0, 6, 2] = 1
    cal = stemedge.Calibration(det_origin_px=(5.0, 1.0))
    res = stemedge.center_of_mass(frames, origin=cal)
    np.testing.assert_allclose(res.shifts[0], [1.0, 1.0])


# --- virtual images -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["auto", "sparse", "dense"])
def test_virtual_images_match_numpy(backend, dtype, mode):
    rng = np.random.default_rng(7)
    det = (37, 41)
    frames = random_frames((6, 7, *det), dtype, rng)
    masks = np.stack(
        [
            disk(det, 9),
            annulus(det, 10, 18),
            disk(det, 6, (5, 35), antialias=True),
            (rng.random(det) < 0.3).astype(np.float32),  # scattered pixels: many short runs
            rng.normal(size=det).astype(np.float32),  # dense signed weights
            np.ones(det, np.float32),
        ]
    )
    images = stemedge.virtual_images(frames, masks, mode=mode, dtype=np.float64)
    ref = np.moveaxis(ref_sums(frames, masks), -1, 0)
    assert images.shape == (6, 6, 7)
    binary = [0, 1, 3, 5]
    if np.dtype(dtype).kind == "u":  # binary masks on integer data: exact
        np.testing.assert_array_equal(images[binary], ref[binary])
    np.testing.assert_allclose(images, ref, rtol=2e-6, atol=1e-3 * np.abs(ref).max())


def test_virtual_image_single_mask_and_mean():
    rng = np.random.default_rng(8)
    frames = random_frames((10, 16, 16), np.uint16, rng)
    m = disk((16, 16), 5)
    img = stemedge.virtual_images(frames, m)
    assert img.shape == (10,)
    np.testing.assert_allclose(img, (frames * m).sum((1, 2)), rtol=1e-6)
    mean = stemedge.virtual_images(frames, m, normalize="mean")
    np.testing.assert_allclose(mean, img / m.sum(), rtol=1e-6)


def test_disk_plus_ring_is_full_frame_exact():
    rng = np.random.default_rng(9)
    frames = random_frames((50, 32, 32), np.uint32, rng, high=2**31)
    bf, ring = disk((32, 32), 7.5), annulus((32, 32), 7.5, 100)
    images = stemedge.virtual_images(frames, [bf, ring], dtype=np.float64)
    np.testing.assert_array_equal(images.sum(0), frames.astype(np.float64).sum((1, 2)))


def test_maskset_reuse_and_storage_choice():
    det = (64, 64)
    rng = np.random.default_rng(10)
    ms = MaskSet([disk(det, 10), (rng.random(det) < 0.5).astype(np.float32)], names=["bf", "noise"])
    info = ms.describe()
    assert info[0]["storage"] == "sparse" and info[0]["binary"]
    assert info[1]["storage"] == "dense"  # half the pixels in runs of ~2 px: read whole rows
    assert info[0]["pixels_read"] == int(disk(det, 10).sum())
    frames = random_frames((5, *det), np.float32, rng)
    a = stemedge.virtual_images(frames, ms)
    b = stemedge.virtual_images(frames, ms.masks)
    np.testing.assert_array_equal(a, b)


# --- fused pass -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_equals_separate_passes(backend, dtype):
    rng = np.random.default_rng(11)
    det = (40, 40)
    frames = random_frames((8, 9, *det), dtype, rng)
    bf, adf = disk(det, 8), annulus(det, 10, 19)
    fused = stemedge.com_and_virtual_images(
        frames, [bf, adf], radius=15, threshold=50, dtype=np.float64
    )
    com = stemedge.center_of_mass(frames, radius=15, threshold=50, dtype=np.float64)
    images = stemedge.virtual_images(frames, [bf, adf], dtype=np.float64)
    np.testing.assert_array_equal(fused.shifts, com.shifts)
    np.testing.assert_array_equal(fused.intensity, com.intensity)
    np.testing.assert_array_equal(fused.images, images)


# --- backends agree, property-based ---------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 5),
    dy=st.integers(1, 40),
    dx=st.integers(1, 70),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31),
    thr=st.one_of(st.none(), st.floats(0, 300)),
)
def test_all_backends_agree_with_reference(n, dy, dx, dtype, seed, thr):
    rng = np.random.default_rng(seed)
    frames = random_frames((n, dy, dx), dtype, rng, high=300)
    masks = np.stack(
        [
            np.ones((dy, dx), np.float32),
            (rng.random((dy, dx)) < 0.4).astype(np.float32),
            rng.uniform(-1, 1, (dy, dx)).astype(np.float32),
        ]
    )
    plan = MaskSet(masks).plan
    previous = _native.active_backend()
    results = {}
    try:
        for name in _native.available_backends():
            _native.set_backend(name)
            results[name] = _native.reduce(
                frames, plan, [True, True, False], [np.nan if thr is None else thr] * 3
            )
    finally:
        _native.set_backend(previous)
    ref = results.pop("ref")
    yy, xx = np.mgrid[:dy, :dx]
    expect = ref_sums(
        frames,
        [masks[0], masks[0] * yy, masks[0] * xx, masks[1], masks[1] * yy, masks[1] * xx, masks[2]],
        thr,
    )
    np.testing.assert_allclose(ref, expect.reshape(n, 7), rtol=1e-9, atol=1e-6)
    for name, got in results.items():
        np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-3, err_msg=name)


def test_backend_selection_is_real():
    assert "ref" in _native.compiled_backends()
    info = stemedge.build_info()
    assert info["simd_active"] in info["simd_available"]
    previous = _native.active_backend()
    try:
        _native.set_backend("ref")
        assert _native.active_backend() == "ref"
        with pytest.raises(ValueError, match="unknown backend"):
            _native.set_backend("quantum")
    finally:
        _native.set_backend(previous)
    assert _native.active_backend() == previous


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "error", "match"),
    [
        (np.zeros((2, 4, 4), np.int16), TypeError, "uint8, uint16, uint32 or float32"),
        (np.zeros((2, 4, 4), np.float64), TypeError, "astype"),
        (np.zeros((2, 4, 4), ">u2"), TypeError, "big-endian"),
        (np.zeros((2, 4, 8), np.uint16)[:, :, ::2], TypeError, "ascontiguousarray"),
        (np.zeros((4, 4), np.uint16), ValueError, "stack"),
        (np.zeros((1, 2, 3, 4, 4), np.uint16), ValueError, "stack"),
        (np.zeros((2, 0, 4), np.uint16), ValueError, "empty"),
        ([[[1, 2]]], TypeError, "numpy array"),
    ],
)
def test_bad_frames_are_refused_clearly(frames, error, match):
    with pytest.raises(error, match=match):
        stemedge.center_of_mass(frames)
    with pytest.raises(error, match=match):
        stemedge.virtual_images(frames, np.ones((4, 4), np.float32))


def test_bad_arguments_are_refused_clearly():
    frames = np.zeros((2, 8, 8), np.uint16)
    with pytest.raises(ValueError, match="detector shape"):
        stemedge.virtual_images(frames, np.ones((8, 9), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        stemedge.virtual_images(frames, np.full((8, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="inner_radius needs radius"):
        stemedge.center_of_mass(frames, inner_radius=2)
    with pytest.raises(ValueError, match="not both"):
        stemedge.center_of_mass(frames, radius=3, mask=np.ones((8, 8)))
    with pytest.raises(ValueError, match="origin"):
        stemedge.center_of_mass(frames, origin=(1, 2, 3))
    with pytest.raises(TypeError, match="float32 or float64"):
        stemedge.center_of_mass(frames, dtype=np.int32)
    with pytest.raises(ValueError, match="nthreads"):
        stemedge.center_of_mass(frames, nthreads=0)
    with pytest.raises(ValueError, match="normalize"):
        stemedge.virtual_images(frames, np.ones((8, 8)), normalize="max")
    with pytest.raises(TypeError, match="float32"):
        _native.MaskPlan(np.ones((1, 8, 8)))  # float64 masks: no silent conversion at the boundary


# --- threads and the GIL --------------------------------------------------------------------------


def test_concurrent_calls_from_python_threads_are_correct():
    rng = np.random.default_rng(12)
    frames = [random_frames((64, 32, 32), dt, rng) for dt in DTYPES]
    expected = [ref_com(f)[0] for f in frames]
    errors = []

    def work(i):
        for _ in range(5):
            got = stemedge.center_of_mass(frames[i], dtype=np.float64).shifts
            if not np.allclose(got, expected[i], atol=1e-9):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i % 4,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_gil_is_released_during_compute():
    """While one thread runs a long kernel, another Python thread keeps running.

    With the GIL held the counting thread would make no progress for the kernel's duration; we
    require that it ran for a good part of it (a loose bound: the machine is shared).
    """
    frames = np.ones((4096, 128, 128), np.uint16)  # 128 MiB: tens of ms per pass
    done = threading.Event()
    counts = []

    def counter():
        n = 0
        while not done.is_set():
            n += 1
        counts.append(n)

    # Calibrate the counting rate with nothing else running.
    t = threading.Thread(target=counter)
    t.start()
    time.sleep(0.05)
    done.set()
    t.join()
    rate = counts.pop() / 0.05

    done.clear()
    t = threading.Thread(target=counter)
    t.start()
    t0 = time.perf_counter()
    for _ in range(5):
        stemedge.center_of_mass(frames, nthreads=1)
    elapsed = time.perf_counter() - t0
    done.set()
    t.join()
    assert counts[0] > 0.2 * rate * elapsed, (counts[0], rate * elapsed)
