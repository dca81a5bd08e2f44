"""Native per-pixel frame sum (sum/mean pattern) against numpy, on awkward inputs."""

from __future__ import annotations

import numpy as np
import pytest

from stemedge import _native

DTYPES = [np.uint8, np.uint16, np.uint32, np.float32]


def _frames(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(100, 50, shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape", [(1, 1, 1), (3, 5, 7), (17, 33, 65), (40, 3, 5000), (5, 4097, 3), (2, 64, 64)]
)
@pytest.mark.parametrize("nthreads", [1, 0])
def test_sum_matches_numpy_exactly_for_integers(dtype, shape, nthreads):
    f = _frames(shape, dtype)
    acc = np.full(shape[1:], 0.5)
    _native.sum_frames(f, acc, nthreads)
    ref = 0.5 + f.sum(axis=0, dtype=np.float64 if f.dtype.kind == "f" else np.uint64)
    if f.dtype.kind == "f":
        np.testing.assert_allclose(acc, ref, rtol=1e-12)
    else:
        np.testing.assert_array_equal(acc, ref)  # exact: integer tiles, then float64


def test_integer_tiles_do_not_overflow():
    # 65537 × 65535 would overflow a uint32 tile; the kernel must flush before that.
    f = np.full((70000, 1, 2), 65535, np.uint16)
    acc = np.zeros((1, 2))
    _native.sum_frames(f, acc, 1)
    assert acc[0, 0] == 70000 * 65535


def test_strided_views_nan_and_empty_stacks():
    big = _frames((6, 20, 30), np.float32)
    view = big[::2, 3:15, 4:25]  # frames and rows strided, pixels contiguous
    acc = np.zeros(view.shape[1:])
    _native.sum_frames(view, acc, 1)
    np.testing.assert_allclose(acc, view.sum(axis=0, dtype=np.float64), rtol=1e-12)
    view[1, 2, 3] = np.nan
    acc[:] = 0
    _native.sum_frames(view, acc, 1)
    assert np.isnan(acc[2, 3]) and np.isfinite(np.delete(acc.ravel(), 2 * 21 + 3)).all()
    acc[:] = 1
    _native.sum_frames(np.zeros((0, 12, 21), np.float32), acc, 1)
    assert np.all(acc == 1)


def test_bad_arguments_are_refused():
    f = _frames((2, 4, 5), np.uint16)
    with pytest.raises(TypeError, match="acc"):
        _native.sum_frames(f, np.zeros((4, 5), np.float32), 1)
    with pytest.raises(TypeError, match="acc"):
        _native.sum_frames(f, np.zeros((5, 4)), 1)
    with pytest.raises(TypeError, match="acc"):
        _native.sum_frames(f, np.zeros((4, 10))[:, ::2], 1)
    with pytest.raises(TypeError, match="dtype"):
        _native.sum_frames(f.astype(np.int16), np.zeros((4, 5)), 1)
    with pytest.raises(ValueError, match="stack"):
        _native.sum_frames(f.reshape(1, 2, 4, 5), np.zeros((4, 5)), 1)
