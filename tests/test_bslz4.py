"""The native bitshuffle-LZ4 decoder against the bitshuffle library, on awkward sizes and hostile
input, per untranspose backend; the batched stack decoder and the codec registry."""

from __future__ import annotations

import struct
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stemedge import _native, codecs
from stemedge.ring import Encoding, FrameRing

bitshuffle = pytest.importorskip("bitshuffle")

BACKENDS = _native.bslz4_available_backends()
DTYPES = [np.uint8, np.uint16, np.uint32]


@pytest.fixture(params=BACKENDS)
def bs_backend(request):
    """Once per untranspose backend this CPU supports; the default is restored after."""
    previous = _native.bslz4_backend()
    _native.bslz4_set_backend(request.param)
    try:
        assert _native.bslz4_backend() == request.param  # prove which path runs
        yield request.param
    finally:
        _native.bslz4_set_backend(previous)


def frame(a: np.ndarray, block: int = 0) -> bytes:
    """DECTRIS / HDF5-filter framing: 12-byte header + bitshuffle.compress_lz4 blocks."""
    return codecs.bslz4_encode(a, block)


def random_array(rng, n: int, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    kind = rng.integers(3)
    if kind == 0:  # full range (incompressible)
        return rng.integers(0, info.max, n, dtype=dtype, endpoint=True)
    if kind == 1:  # sparse counts, like a detector
        return np.minimum(rng.poisson(0.3, n), info.max).astype(dtype)
    return np.minimum(rng.poisson(20, n), info.max).astype(dtype)


def reference(blob: bytes, n: int, dtype) -> np.ndarray:
    """bitshuffle's own decoder on the same payload."""
    body = np.frombuffer(blob, np.uint8)[12:]
    block = struct.unpack(">I", blob[8:12])[0] // np.dtype(dtype).itemsize
    return bitshuffle.decompress_lz4(body, (n,), np.dtype(dtype), block)


SIZES = [
    1,
    3,
    7,
    8,
    9,
    15,
    16,
    17,
    63,
    64,
    65,
    255,
    256,
    257,
    511,
    512,
    513,
    1000,
    2047,
    2048,
    2049,
    4095,
    4096,
    4097,
    8191,
    8192,
    8193,
    3 * 4096 + 13,
    65536 + 7,
]


# -- format --------------------------------------------------------------------------------------
def test_header_is_the_hdf5_filter_framing():
    a = np.arange(1000, dtype=np.uint16)
    blob = frame(a)
    total, block_bytes = struct.unpack(">QI", blob[:12])
    assert total == a.nbytes
    assert block_bytes == 8192  # default block of 4096 uint16 elements, in bytes
    # compress_lz4 writes the blocks only; the framing adds exactly the 12-byte header
    assert blob[12:] == bitshuffle.compress_lz4(a).tobytes()
    assert codecs.bslz4_header(blob) == (a.nbytes, 8192)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_matches_bitshuffle(bs_backend, dtype, n):
    rng = np.random.default_rng(n)
    a = random_array(rng, n, dtype)
    blob = frame(a)
    out = np.empty(n, dtype)
    assert _native.bslz4_decode(blob, out) is out
    np.testing.assert_array_equal(out, a)
    np.testing.assert_array_equal(out, reference(blob, n, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", [8, 16, 24, 64, 200, 512, 1024, 4096, 16384])
def test_block_sizes(bs_backend, dtype, block):
    rng = np.random.default_rng(block)
    for n in (block - 8 if block > 8 else 1, block, block + 3, 5 * block + 17):
        a = random_array(rng, n, dtype)
        out = np.empty(n, dtype)
        _native.bslz4_decode(frame(a, block), out)
        np.testing.assert_array_equal(out, a)


@pytest.mark.parametrize("dtype", DTYPES)
def test_frames_all_zero_and_all_max(bs_backend, dtype):
    for fill in (0, np.iinfo(dtype).max):
        a = np.full((512, 512), fill, dtype)
        out = np.empty_like(a)
        _native.bslz4_decode(frame(a), out)
        np.testing.assert_array_equal(out, a)


@pytest.mark.parametrize("dtype", [*DTYPES, np.float32])
def test_detector_frames_2d(bs_backend, dtype):
    rng = np.random.default_rng(1)
    if dtype is np.float32:
        a = rng.normal(size=(96, 80)).astype(np.float32)  # elem size 4 like uint32
    else:
        a = random_array(rng, 257 * 255, dtype).reshape(257, 255)  # odd, not a block multiple
    out = np.empty_like(a)
    _native.bslz4_decode(frame(a), out)
    np.testing.assert_array_equal(out, a)


def test_zero_block_size_means_bitshuffles_default():
    a = np.random.default_rng(2).integers(0, 1000, 10000).astype(np.uint16)
    blob = bytearray(frame(a))
    blob[8:12] = b"\0\0\0\0"  # bitshuffle's decoder then uses bshuf_default_block_size
    out = np.empty_like(a)
    _native.bslz4_decode(bytes(blob), out)
    np.testing.assert_array_equal(out, a)


def test_backends_agree_on_every_tail_length():
    """The SIMD kernels handle 32/64-group chunks and fall back to scalar for the tail; block
    sizes stepping by 8 elements cover every tail length."""
    rng = np.random.default_rng(3)
    for dtype in DTYPES:
        for block in range(8, 1200, 8):
            a = random_array(rng, block, dtype)
            blob = frame(a, block)
            results = []
            for b in BACKENDS:
                _native.bslz4_set_backend(b)
                out = np.empty_like(a)
                _native.bslz4_decode(blob, out)
                results.append(out)
            _native.bslz4_set_backend("auto")
            for r in results:
                np.testing.assert_array_equal(r, a)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from(DTYPES),
    n=st.integers(1, 6000),
    block=st.sampled_from([0, 8, 64, 128, 1000, 2048]),
    seed=st.integers(0, 2**32 - 1),
    backend=st.sampled_from(BACKENDS),
)
def test_property_roundtrip(dtype, n, block, seed, backend):
    a = random_array(np.random.default_rng(seed), n, dtype)
    blob = frame(a, block)
    out = np.empty(n, dtype)
    _native.bslz4_set_backend(backend)
    try:
        _native.bslz4_decode(blob, out)
    finally:
        _native.bslz4_set_backend("auto")
    np.testing.assert_array_equal(out, a)
    np.testing.assert_array_equal(out, reference(blob, n, dtype))


# -- hostile input -------------------------------------------------------------------------------
def small_blob() -> tuple[np.ndarray, bytes]:
    """Several blocks, a partial block and raw leftovers: every part of the format."""
    a = np.random.default_rng(4).poisson(3, 3 * 64 + 40 + 5).astype(np.uint16)
    return a, frame(a, 64)


def test_truncated_at_every_byte_raises(bs_backend):
    a, blob = small_blob()
    out = np.empty_like(a)
    for cut in range(len(blob)):
        with pytest.raises(ValueError):
            _native.bslz4_decode(blob[:cut], out)
    _native.bslz4_decode(blob, out)  # and the whole one still decodes
    np.testing.assert_array_equal(out, a)


def test_trailing_bytes_raise():
    a, blob = small_blob()
    with pytest.raises(ValueError, match="unexpected bytes"):
        _native.bslz4_decode(blob + b"\0", np.empty_like(a))


def test_bit_flips_never_crash(bs_backend):
    """Every single-bit flip either raises ValueError or decodes to *some* frame of the right
    size (a flip inside LZ4 literals is undetectable without the md5); never a crash."""
    a, blob = small_blob()
    out = np.empty_like(a)
    raised = 0
    for i in range(len(blob)):
        for bit in range(8):
            bad = bytearray(blob)
            bad[i] ^= 1 << bit
            try:
                _native.bslz4_decode(bytes(bad), out)
            except ValueError:
                raised += 1
    assert raised > 8 * 12  # at least every header flip is caught


def test_random_garbage_never_crashes(bs_backend):
    rng = np.random.default_rng(5)
    out = np.empty(1000, np.uint16)
    for _ in range(2000):
        n = int(rng.integers(0, 400))
        garbage = bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        if n >= 12 and rng.random() < 0.7:  # a plausible header, so the block walk is reached
            garbage[:12] = struct.pack(">QI", out.nbytes, int(rng.choice([0, 16, 128, 8192])))
        try:
            _native.bslz4_decode(bytes(garbage), out)
        except ValueError:
            pass


def test_wrong_header_total():
    a, blob = small_blob()
    for total in (0, a.nbytes - 2, a.nbytes + 2, 2**64 - 1):
        bad = struct.pack(">Q", total) + blob[8:]
        with pytest.raises(ValueError, match="header says"):
            _native.bslz4_decode(bad, np.empty_like(a))
    with pytest.raises(ValueError, match="header says"):  # right bytes, wrong output dtype
        _native.bslz4_decode(
            blob,
            np.empty(a.size // 2, np.uint32)
            if a.size % 2 == 0
            else np.empty(a.size + 1, np.uint16),
        )


def test_bad_block_sizes():
    a, blob = small_blob()
    out = np.empty_like(a)
    for block_bytes, match in (
        (3, "whole number"),
        (2 * 12, "multiple of 8"),
        (0xFFFFFFF0, r"decoded to|corrupt|claims"),
    ):
        bad = blob[:8] + struct.pack(">I", block_bytes) + blob[12:]
        with pytest.raises(ValueError, match=match):
            _native.bslz4_decode(bad, out)


def test_huge_compressed_block_size():
    a, blob = small_blob()
    for c in (0xFFFFFFFF, 0x7FFFFFFF, len(blob)):
        bad = blob[:12] + struct.pack(">I", c) + blob[16:]
        with pytest.raises(ValueError, match="claims"):
            _native.bslz4_decode(bad, np.empty_like(a))


def test_short_header():
    with pytest.raises(ValueError, match="shorter than its 12-byte header"):
        _native.bslz4_decode(b"\0" * 11, np.empty(4, np.uint16))


# -- arguments -----------------------------------------------------------------------------------
def test_argument_checks():
    a, blob = small_blob()
    out = np.empty_like(a)
    with pytest.raises(TypeError):
        _native.bslz4_decode([1, 2, 3], out)
    with pytest.raises(TypeError, match="uint8"):
        _native.bslz4_decode(np.frombuffer(blob[:-1] if len(blob) % 2 else blob, np.uint16), out)
    with pytest.raises(TypeError, match="contiguous"):
        _native.bslz4_decode(np.frombuffer(blob * 2, np.uint8)[::2], out)
    with pytest.raises(TypeError, match="dtype"):
        _native.bslz4_decode(blob, np.empty(a.size, np.float64))
    with pytest.raises(TypeError, match="big-endian"):
        _native.bslz4_decode(blob, np.empty(a.size, ">u2"))
    ro = np.empty_like(a)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _native.bslz4_decode(blob, ro)
    with pytest.raises(TypeError, match="C-contiguous"):
        _native.bslz4_decode(blob, np.empty(2 * a.size, np.uint16)[::2])
    # every bytes-like source works, read in place
    for src in (blob, bytearray(blob), memoryview(blob), np.frombuffer(blob, np.uint8)):
        out[:] = 0
        _native.bslz4_decode(src, out)
        np.testing.assert_array_equal(out, a)


def test_backend_selection():
    assert _native.bslz4_compiled_backends()[-1] == "scalar"
    assert set(BACKENDS) <= set(_native.bslz4_compiled_backends())
    with pytest.raises(ValueError, match="unknown bslz4 backend"):
        _native.bslz4_set_backend("neon")
    previous = _native.bslz4_backend()
    _native.bslz4_set_backend("auto")
    assert _native.bslz4_backend() == BACKENDS[0]
    _native.bslz4_set_backend(previous)
    assert _native.lz4_version().startswith("1.")


# -- plain LZ4 ("lz4<") --------------------------------------------------------------------------
def test_lz4_roundtrip_and_errors():
    a = np.random.default_rng(6).poisson(1, (64, 48)).astype(np.uint32)
    comp = _native.lz4_compress(a.tobytes())
    out = np.empty_like(a)
    _native.lz4_decode(comp, out)
    np.testing.assert_array_equal(out, a)
    with pytest.raises(ValueError, match=r"decoded to|corrupt"):
        _native.lz4_decode(comp, np.empty((64, 47), np.uint32))
    for cut in range(0, len(comp), max(1, len(comp) // 50)):
        with pytest.raises(ValueError):
            _native.lz4_decode(comp[:cut], out)


# -- batched decode ------------------------------------------------------------------------------
def stack_payloads(n: int, shape=(64, 48), dtype=np.uint16, seed=7):
    rng = np.random.default_rng(seed)
    frames = np.minimum(rng.poisson(2, (n, *shape)), np.iinfo(dtype).max).astype(dtype)
    fb = frames[0].nbytes
    raw = np.zeros(n * fb, np.uint8)
    nbytes = np.zeros(n, np.uint32)
    for i, f in enumerate(frames):
        p = frame(f)
        raw[i * fb : i * fb + len(p)] = np.frombuffer(p, np.uint8)
        nbytes[i] = len(p)
    return frames, raw, nbytes, fb


@pytest.mark.parametrize("nthreads", [1, 2, 0])
def test_decode_stack(nthreads):
    frames, raw, nbytes, fb = stack_payloads(9)
    out = np.full((12, *frames.shape[1:]), 7, frames.dtype)
    errors = _native.bslz4_decode_stack(raw, nbytes, 9, fb, out, nthreads)
    assert errors == []
    np.testing.assert_array_equal(out[:9], frames)
    assert np.all(out[9:] == 7)  # untouched beyond n_frames


def test_decode_stack_reports_corrupt_frames_and_decodes_the_rest():
    frames, raw, nbytes, fb = stack_payloads(6)
    raw[2 * fb + 20] ^= 0xFF  # corrupt frame 2's first LZ4 block
    raw[4 * fb : 4 * fb + 8] = 0  # frame 4's header total
    nbytes[5] = fb + 1  # frame 5 claims more than a frame
    out = np.empty((6, *frames.shape[1:]), frames.dtype)
    errors = _native.bslz4_decode_stack(raw, nbytes, 6, fb, out, 1)
    bad = {i for i, _ in errors}
    assert {4, 5} <= bad <= {2, 4, 5}
    assert "header says 0" in dict(errors)[4]
    assert "larger than a frame" in dict(errors)[5]
    for i in range(6):
        if i in bad:
            assert not out[i].any()  # zero-filled, never garbage
        else:
            np.testing.assert_array_equal(out[i], frames[i])


def test_decode_stack_argument_checks():
    frames, raw, nbytes, fb = stack_payloads(3)
    out = np.empty((3, *frames.shape[1:]), frames.dtype)
    with pytest.raises(TypeError, match="nbytes"):
        _native.bslz4_decode_stack(raw, nbytes.astype(np.int64), 3, fb, out, 1)
    with pytest.raises(ValueError, match="cannot hold"):
        _native.bslz4_decode_stack(raw, nbytes, 3, fb + 2, out, 1)
    with pytest.raises(ValueError, match="frame_bytes"):
        _native.bslz4_decode_stack(raw, nbytes, 3, fb // 2, out, 1)
    with pytest.raises(ValueError, match="room for"):
        _native.bslz4_decode_stack(raw, nbytes, 3, fb, out[:2], 1)
    with pytest.raises(ValueError, match="overlaps"):
        view = raw.view(np.uint16).reshape(3, *frames.shape[1:])
        _native.bslz4_decode_stack(raw, nbytes, 3, fb, view, 1)
    with pytest.raises(ValueError, match="sizes for"):
        _native.bslz4_decode_stack(raw, nbytes[:2], 3, fb, out, 1)


def test_decode_releases_the_gil():
    """While one thread decodes a long stack natively, another keeps running Python."""
    frames, raw, nbytes, fb = stack_payloads(16, shape=(512, 512), seed=8)
    out = np.empty_like(frames)
    big_raw = np.tile(raw, 8)
    big_nbytes = np.tile(nbytes, 8)
    big_out = np.empty((128, 512, 512), frames.dtype)
    done = threading.Event()
    errors = []

    def work():
        for _ in range(3):
            errors.extend(_native.bslz4_decode_stack(big_raw, big_nbytes, 128, fb, big_out, 1))
        done.set()

    t = threading.Thread(target=work)
    t.start()
    spins = 0
    while not done.is_set():
        spins += 1
    t.join()
    assert errors == []
    assert spins > 10_000  # with the GIL held the loop could not have run during the decode
    _native.bslz4_decode_stack(raw, nbytes, 16, fb, out, 1)
    np.testing.assert_array_equal(out, frames)


# -- codecs on ring stacks -----------------------------------------------------------------------
def fill_ring(ring: FrameRing, payloads, indices) -> None:
    with ring.acquire() as slot:
        fb = ring.frame_bytes
        for i, p in enumerate(payloads):
            slot.raw[i * fb : i * fb + len(p)] = np.frombuffer(p, np.uint8)
            slot.nbytes[i] = len(p)
            slot.indices[i] = indices[i]
        slot.commit(len(payloads), Encoding.BSLZ4)


def test_codecs_decode_stack_bslz4_and_raw():
    frames = np.random.default_rng(9).poisson(1, (5, 40, 56)).astype(np.uint16)
    ring = FrameRing((40, 56), np.uint16, slots=2, slot_frames=8, pinned=False)
    fill_ring(ring, [frame(f) for f in frames], np.arange(10, 15))
    ring.write(frames[:2], 100)
    ring.close()
    scratch = codecs.scratch_for(ring)
    assert scratch.shape == (8, 40, 56)
    stacks = list(iter(ring.read, None))
    try:
        dec = codecs.decode_stack(stacks[0], scratch)
        np.testing.assert_array_equal(dec, frames)
        assert np.shares_memory(dec, scratch)
        raw = codecs.decode_stack(stacks[1], scratch)
        assert raw is stacks[1].frames  # RAW: no copy, no decode
        with pytest.raises(ValueError, match="scratch_for"):
            codecs.decode_stack(stacks[0], np.empty((8, 40, 55), np.uint16))
        with pytest.raises(ValueError, match="scratch_for"):
            codecs.decode_stack(stacks[0], np.empty((4, 40, 56), np.uint16))
        with pytest.raises(TypeError):
            codecs.decode_stack(stacks[0], [[0]])
    finally:
        for s in stacks:
            s.release()


def test_codecs_corrupt_frames():
    frames = np.random.default_rng(10).poisson(1, (4, 32, 32)).astype(np.uint16)
    payloads = [frame(f) for f in frames]
    payloads[1] = payloads[1][:-5]
    ring = FrameRing((32, 32), np.uint16, slots=1, slot_frames=4, pinned=False)
    fill_ring(ring, payloads, [7, 8, 9, 10])
    with ring.read() as stack:
        with pytest.raises(codecs.CorruptFrames, match=r"1 of 4 .*\[8\]") as info:
            codecs.decode_stack(stack, codecs.scratch_for(ring))
        exc = info.value
        assert exc.ok.tolist() == [True, False, True, True]
        assert exc.indices.tolist() == [8]
        np.testing.assert_array_equal(exc.frames[exc.ok], frames[[0, 2, 3]])


def test_codec_registry():
    assert codecs.registered_codecs() == [Encoding.BSLZ4]
    with pytest.raises(ValueError, match="already registered"):
        codecs.register_codec(Encoding.BSLZ4, lambda s, o, n: o)
    with pytest.raises(ValueError, match="RAW"):
        codecs.register_codec(Encoding.RAW, lambda s, o, n: o)
    with pytest.raises(TypeError):
        codecs.register_codec(Encoding.BSLZ4, "nope", replace=True)
