"""The frame codec: exact round trips over every dtype and awkward shapes, the lossy bounds, size
against the entropy of the generating model, and a decoder that refuses every malformed input
with a clear error (truncated, bit-flipped, wrong header, corrupt streams behind valid checksums).
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import stemedge
from _helpers import CODEC_INT_DTYPES
from stemedge import _native
from stemedge.codec import CodecError, compress, decompress, info

ALL_DTYPES = [
    np.bool_, np.uint8, np.uint16, np.uint32, np.uint64,
    np.int8, np.int16, np.int32, np.int64, np.float32, np.float64,
]  # fmt: skip


def _poisson_entropy_bits(lam: float) -> float:
    """H(Poisson(λ)) in bits, summed over k until the tail is negligible."""
    k = np.arange(0, int(lam + 12 * math.sqrt(lam) + 30))
    logp = k * math.log(lam) - lam - np.array([math.lgamma(x + 1) for x in k])
    p = np.exp(logp)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _counted(shape, lam, dtype, seed=0):
    return np.random.default_rng(seed).poisson(lam, shape).astype(dtype)


# --- round trips -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.dtype(d) for d in ALL_DTYPES]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9),
    ),
    st.sampled_from(["auto", "bytes"]),
    st.integers(1, 5),
)
def test_lossless_round_trip_any_dtype_and_shape(a, mode, chunk_frames):
    blob = compress(a, mode=mode, chunk_frames=chunk_frames, nthreads=2)
    out = decompress(blob)
    assert out.dtype == a.dtype and out.shape == a.shape
    np.testing.assert_array_equal(out, a)  # NaN == NaN here, bit patterns preserved below
    assert out.tobytes() == a.tobytes()


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(CODEC_INT_DTYPES),
    st.tuples(st.integers(1, 40), st.integers(1, 13), st.integers(1, 11)),
    st.sampled_from(["dense", "auto"]),
    st.floats(0.0, 1e4),
)
def test_integer_data_round_trips_in_dense_mode(dtype, shape, mode, scale):
    info_ = np.iinfo(dtype)
    rng = np.random.default_rng(int(scale) + shape[0])
    a = np.clip(rng.normal(scale, math.sqrt(scale) + 1, shape), info_.min, info_.max).astype(dtype)
    a.flat[:: max(1, a.size // 3)] = info_.max  # outliers: escapes
    a.flat[1 :: max(1, a.size // 4)] = info_.min
    out = decompress(compress(a, mode=mode))
    np.testing.assert_array_equal(out, a)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bound", [0.0, 1.0, 2.0])
def test_dense_round_trip_on_a_diffraction_pattern(seed, bound):
    """Regression: a bright-field disk (λ 50–200) on a dim background drives rANS states close
    to 2^32, where a reciprocal-multiplication division is off by one (it was)."""
    yy, xx = np.mgrid[:128, :128]
    r = np.hypot(yy - 64, xx - 64)
    lam = np.where(r < 32, 50.0 + 150.0 * (1.0 - (r / 32) ** 2), 0.5)
    a = np.random.default_rng(seed).poisson(lam, (32, 128, 128)).astype(np.uint16)
    out = decompress(compress(a, max_abs_error=bound))
    assert np.abs(out.astype(np.int64) - a).max() <= bound


@pytest.mark.parametrize("dtype", CODEC_INT_DTYPES)
def test_vector_coders_handle_escapes(dtype):
    """Escapes on the vector paths: values far outside their pixel's residual window, in frames
    the moments do not sample (512 frames: every 4th), so the class stays narrow and the value
    must be escaped (raw bits of the element); groups with one, several and no escapes. The
    outliers keep the chunk on the vector path: no low ones for unsigned types (a class reaching
    below 0 sends the chunk to the scalar decoder), and for 8-bit types only values beyond the
    window (one inside it would widen the table past the vector path's 127 symbols)."""
    lim = np.iinfo(dtype)
    rng = np.random.default_rng(7)
    a = rng.poisson(3.0 if lim.max < 256 else 100.0, (512, 4, 16)).astype(np.int64)
    if lim.max < 256:
        one, row = (lim.max, lim.max - 5) if lim.min == 0 else (lim.min, lim.min + 2)
    else:
        one, row = lim.max, lim.max // 2
    a[41, 0, 5] = one
    a[45, 2, :] = row
    if lim.min < 0:
        a[43, 1, 3] = a[43, 1, 9] = lim.min
    a = a.clip(lim.min, lim.max).astype(dtype)
    chunk = _native.codec_compress(a, "dense", 0.0)
    layout = _native.codec_dense_layout(chunk)
    esc = np.asarray(layout["esc"])
    fc = np.asarray(layout["fc"]).reshape(len(esc), -1)
    assert any(fc[k, esc[k]] & 0xFFFF for k in range(len(esc)))  # the escape symbol is in use
    try:
        _native.codec_set_simd(False)
        scalar_chunk = _native.codec_compress(a, "dense", 0.0)
        scalar = _native.codec_decompress(chunk)
    finally:
        _native.codec_set_simd(True)
    assert chunk == scalar_chunk
    np.testing.assert_array_equal(scalar, a)
    np.testing.assert_array_equal(_native.codec_decompress(chunk), a)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
@pytest.mark.parametrize("shape", [(300, 31, 37), (70, 1, 1040), (5, 3, 5), (1, 1, 17)])
def test_vector_model_passes_match_scalar(dtype, shape):
    """The encoder's AVX-512 model passes (per-pixel moments over pixel blocks of 1024, the
    residual-histogram bins) give the scalar loops' model, hence the same chunk: blocks and
    16-pixel groups with tails, sampled frames (300 frames: moments from every 2nd), signed
    values, residuals at the window's edges and far outside it (the overflow bin)."""
    lim = np.iinfo(dtype)
    rng = np.random.default_rng(shape[0])
    lam = rng.uniform(0.0, 60.0 if lim.max < 256 else 3000.0, shape[1:])
    a = rng.poisson(lam, shape).astype(np.int64) + (lim.min // 2 if lim.min < 0 else 0)
    a.reshape(-1)[:: max(1, a.size // 50)] = lim.max  # outliers: escapes and overflow bins
    a.reshape(-1)[1 :: max(1, a.size // 37)] = lim.min
    # Pixel 0: constant in the frames the moments sample (every 2nd of 300), residuals at the
    # window's edges (±127, ±128 with no shift) in the others, which the histogram counts.
    flat = a.reshape(shape[0], -1)
    centre = (int(lim.min) + int(lim.max)) // 2
    flat[:, 0] = centre
    flat[1::2, 0] = centre + np.resize([127, 128, -127, -128], flat[1::2, 0].shape)
    a = np.clip(a, lim.min, lim.max).astype(dtype)
    vector = _native.codec_compress(a, "dense", 0.0)
    try:
        _native.codec_set_simd(False)
        scalar = _native.codec_compress(a, "dense", 0.0)
    finally:
        _native.codec_set_simd(True)
    assert vector == scalar
    np.testing.assert_array_equal(_native.codec_decompress(vector), a)


@pytest.mark.parametrize("dtype", CODEC_INT_DTYPES)
@pytest.mark.parametrize("det", [(16, 16), (8, 12), (9, 7)])
@pytest.mark.parametrize("bound", [0.0, 2.0])
def test_vector_and_scalar_decoders_agree(dtype, det, bound):
    """The AVX-512 dense coder (where the CPU has it) writes exactly the scalar coder's bytes and
    decodes to its output, outliers, wide classes (raw low bits) and the 16-pixel groups' edges
    included; shapes whose frames are not whole 16-pixel groups take the scalar path."""
    lim = np.iinfo(dtype)
    rng = np.random.default_rng(det[0])
    lam = np.where(np.arange(det[0] * det[1]).reshape(det) % 3 == 0, 2000.0, 3.0)
    a = np.clip(rng.poisson(lam, (40, *det)) + (lim.min if lim.min < 0 else 0), lim.min, lim.max)
    a = a.astype(dtype)
    a[5, 0, 0] = lim.max  # escapes
    a[7, det[0] - 1, det[1] - 1] = lim.min
    chunk = _native.codec_compress(a, "dense", bound)
    try:
        _native.codec_set_simd(False)
        scalar = _native.codec_decompress(chunk)
        scalar_chunk = _native.codec_compress(a, "dense", bound)
    finally:
        _native.codec_set_simd(True)
    vector = _native.codec_decompress(chunk)
    assert chunk == scalar_chunk  # the vector encoder writes the scalar encoder's bytes
    np.testing.assert_array_equal(vector, scalar)
    assert np.abs(scalar.astype(np.int64) - a).max() <= bound


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_events_mode_round_trip_and_auto_choice(dtype):
    a = _counted((64, 32, 32), 0.01, dtype)
    a[3, 4, 5] = np.iinfo(dtype).max  # a value beyond the value table: escape
    blob = compress(a, mode="events")
    np.testing.assert_array_equal(decompress(blob), a)
    assert info(compress(a))["modes"] == ["events"]  # auto picks events for sparse counts
    assert info(compress(_counted((64, 32, 32), 50.0, dtype)))["modes"] == ["dense"]


def test_float_lossless_and_nan_inf_are_kept():
    a = np.random.default_rng(0).normal(size=(20, 8, 8)).astype(np.float32)
    a[0, 0, :4] = [np.nan, np.inf, -np.inf, -0.0]
    out = decompress(compress(a))
    assert out.tobytes() == a.tobytes()


# --- lossy modes: the bound holds --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int16, np.int32])
@pytest.mark.parametrize("bound", [1, 2, 7])
def test_integer_max_abs_error_bound(dtype, bound):
    lim = np.iinfo(dtype)
    rng = np.random.default_rng(bound)
    a = np.clip(rng.normal(0 if lim.min < 0 else 200, 100, (30, 12, 10)), lim.min, lim.max).astype(
        dtype
    )
    a.flat[:5] = [lim.min, lim.max, lim.max - 1, lim.min + 1, 0]  # range ends must not wrap
    blob = compress(a, max_abs_error=bound)
    out = decompress(blob)
    err = np.abs(out.astype(np.int64) - a.astype(np.int64))
    assert err.max() <= bound
    assert len(blob) <= len(compress(a))  # never worse than lossless


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bound", [1e-3, 0.5, 40.0])
def test_float_max_abs_error_bound_with_special_values(dtype, bound):
    a = np.random.default_rng(1).normal(100, 30, (25, 9, 11)).astype(dtype)
    a.flat[:6] = [np.nan, np.inf, -np.inf, np.finfo(dtype).max, np.finfo(dtype).tiny, 1e30]
    out = decompress(compress(a, max_abs_error=bound))
    finite = np.isfinite(a)
    assert np.all(np.abs(out[finite].astype(np.float64) - a[finite].astype(np.float64)) <= bound)
    assert out[~finite].tobytes() == a[~finite].tobytes()


def test_threshold_zeroes_small_counts_and_keeps_the_rest():
    a = _counted((40, 16, 16), 3.0, np.uint16)
    out = decompress(compress(a, threshold=3))
    assert np.all(out[a < 3] == 0) and np.array_equal(out[a >= 3], a[a >= 3])


def test_lossy_options_that_cannot_be_honoured_are_refused():
    with pytest.raises(CodecError, match="lossy"):
        compress(np.zeros((4, 4), np.float32), threshold=2)
    with pytest.raises(CodecError, match="lossy"):
        compress(np.zeros((4, 4), np.int64), max_abs_error=2)
    with pytest.raises(CodecError):
        compress(np.zeros((4, 4), np.float32), mode="events")
    with pytest.raises(CodecError):
        compress(-np.ones((4, 4), np.int16), mode="events")
    with pytest.raises(ValueError, match="mode"):
        compress(np.zeros(3, np.uint8), mode="zip")


# --- size against the floor --------------------------------------------------------------------


@pytest.mark.parametrize(
    "lam, dtype, limit",
    [
        (0.01, np.uint8, 1.05),
        (0.01, np.uint16, 1.05),
        (100.0, np.uint16, 1.08),
        (1e4, np.uint32, 1.10),
    ],
)
def test_size_is_near_the_entropy_of_the_generating_model(lam, dtype, limit):
    shape = (256, 64, 64)
    a = _counted(shape, lam, dtype, seed=3)
    floor_bytes = a.size * _poisson_entropy_bits(lam) / 8
    n = len(compress(a))
    assert n <= limit * floor_bytes, n / floor_bytes


# --- malformed input ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(5)
    sets = {
        "dense": rng.poisson(30.0, (16, 12, 10)).astype(np.uint16),
        "events": rng.poisson(0.02, (16, 12, 10)).astype(np.uint8),
        "bytes": rng.poisson(5.0, (16, 12, 10)).astype(np.float32),
        "shift": rng.poisson(5000.0, (16, 12, 10)).astype(np.uint32),
    }
    out = {}
    for name, a in sets.items():
        chunk = _native.codec_compress(a)
        assert _native.codec_info(chunk)["mode"] == name.replace("shift", "dense")
        out[name] = (a, chunk)
    return out


def _refix_crc(chunk: bytearray) -> bytearray:
    """Recompute the chunk checksum so the decoder itself meets the corruption."""
    header = struct.unpack_from("<I", chunk, 12)[0]
    body = struct.unpack_from("<Q", chunk, header - 12)[0]
    struct.pack_into(
        "<I", chunk, header + body, _native.codec_crc32c(bytes(chunk[: header + body]))
    )
    return chunk


def test_truncated_chunks_and_containers_are_refused(blobs):
    for a, chunk in blobs.values():
        for n in sorted({0, 1, 3, 4, 10, 20, len(chunk) // 2, len(chunk) - 4, len(chunk) - 1}):
            with pytest.raises(CodecError):
                decompress(chunk[:n])
        container = compress(a)
        for n in (5, 12, 40, len(container) - 1):
            with pytest.raises(CodecError):
                decompress(container[:n])


def test_bit_flips_are_caught_by_the_checksums(blobs):
    rng = np.random.default_rng(0)
    for _, chunk in blobs.values():
        for pos in rng.integers(0, len(chunk), 60):
            bad = bytearray(chunk)
            bad[pos] ^= 1 << int(rng.integers(0, 8))
            with pytest.raises(CodecError):
                decompress(bytes(bad))


def test_corrupt_streams_behind_valid_checksums_never_crash(blobs):
    """Flip bytes in the body and fix the checksum: the model and stream checks must hold
    (run under AddressSanitizer by .ci/asan: no out-of-bounds access either)."""
    rng = np.random.default_rng(1)
    for a, chunk in blobs.values():
        header = struct.unpack_from("<I", chunk, 12)[0]
        for _ in range(150):
            bad = bytearray(chunk)
            for pos in rng.integers(header, len(chunk) - 4, int(rng.integers(1, 4))):
                bad[pos] = int(rng.integers(0, 256))
            try:
                out = decompress(bytes(_refix_crc(bad)))
            except CodecError:
                continue
            np.testing.assert_array_equal(out, a)  # a harmless change decodes to the original


def test_wrong_headers_are_refused(blobs):
    _, chunk = blobs["dense"]
    with pytest.raises(CodecError, match="magic"):
        decompress(b"XXXX" + chunk[4:])
    bad = bytearray(chunk)
    bad[4] = 9  # version
    with pytest.raises(CodecError, match="version"):
        decompress(bytes(bad))
    for offset, value in [(5, 99), (6, 77), (8, 12), (16, 0xFF)]:  # dtype, mode, ndim, shape
        bad = bytearray(chunk)
        bad[offset] = value
        with pytest.raises(CodecError):
            decompress(bytes(_refix_crc(bad)) if offset != 8 else bytes(bad))
    with pytest.raises(CodecError, match="magic"):
        decompress(b"")
    with pytest.raises(TypeError):
        decompress(12345)


@pytest.mark.parametrize("simd", [True, False])
def test_checksum_is_crc32c(simd):
    """The known answer of CRC-32C, and every fast path (carry-less folding where the CPU has
    VPCLMULQDQ, else three crc32 chains joined by x^n mod P) against a bytewise one, at and
    around their block sizes, from unaligned starts."""
    _native.codec_set_simd(simd)
    try:
        _check_crc32c()
    finally:
        _native.codec_set_simd(True)


def _check_crc32c():
    assert _native.codec_crc32c(b"123456789") == 0xE3069283
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 1023, 1024, 1025, 1279, 1280, 1281, 1535, 12287, 12288, 40001):
        data = memoryview(rng.integers(0, 256, n + 3, dtype=np.uint8).tobytes())[3:]
        crc = 0xFFFFFFFF
        for byte in data:
            crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
        assert _native.codec_crc32c(data) == crc ^ 0xFFFFFFFF, n


def test_decode_into_a_wrong_buffer_is_refused(blobs):
    a, chunk = blobs["dense"]
    with pytest.raises(ValueError, match="out must be"):
        _native.codec_decompress(chunk, out=np.empty(a.size - 1, a.dtype))
    with pytest.raises(ValueError, match="out must be"):
        _native.codec_decompress(chunk, out=np.empty(a.shape, np.float32))


def test_unverified_header_read_still_catches_corruption_when_decoding(blobs):
    # codec_info(verify=False) and decoding into `out` skip a checksum pass; the decoder's own
    # check must still refuse a corrupt body, and a container with one must not decode.
    a, chunk = blobs["dense"]
    bad = bytearray(chunk)
    bad[len(bad) // 2] ^= 0x10
    assert _native.codec_info(bytes(bad), verify=False)["shape"] == a.shape
    with pytest.raises(ValueError, match="checksum"):
        _native.codec_info(bytes(bad))
    out = np.zeros_like(a)
    with pytest.raises(ValueError, match="checksum"):
        _native.codec_decompress(bytes(bad), out=out)
    blob = bytearray(compress(a, nthreads=1))
    blob[len(blob) - len(chunk) // 2] ^= 0x10
    with pytest.raises(CodecError, match="checksum"):
        decompress(bytes(blob), nthreads=1)


def test_top_level_api_and_info():
    a = _counted((300, 20, 20), 2.0, np.uint16)
    blob = stemedge.compress(a, chunk_frames=64)
    meta = stemedge.codec.info(blob)
    assert meta["chunks"] == 5 and meta["shape"] == a.shape and meta["ratio"] > 2
    np.testing.assert_array_equal(stemedge.decompress(blob, nthreads=1), a)
