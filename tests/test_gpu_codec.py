"""GPU decoding of codec chunks (stemedge.gpu_codec), held to the CPU decoder.

Without a GPU: the device decoder's own code, run lane by lane on the host
(``decode_dense_host``), must give the CPU decoder's bytes on every lossless-integer dtype and
awkward shapes, and must refuse corrupt payloads hidden behind a valid checksum with a status,
never a crash. With a GPU (``gpu`` marker): whole containers decoded on the device.
"""

from __future__ import annotations

import numpy as np
import pytest

import stemedge
from _helpers import CODEC_INT_DTYPES, codec_frames
from stemedge import _native
from stemedge.codec import CodecError

pytest.importorskip("stemedge._cuda", reason="built without the CUDA extension")
from stemedge import gpu_codec


def _dense_chunk(frames) -> bytes:
    blob = _native.codec_compress(frames, mode="dense")
    assert _native.codec_info(blob)["mode"] == "dense"
    return blob


@pytest.mark.parametrize("dtype", CODEC_INT_DTYPES)
@pytest.mark.parametrize(
    "shape", [(64, 33, 31), (128, 64, 64), (600, 7, 5), (2000, 1, 3), (300, 2, 16), (200, 1, 32)]
)
@pytest.mark.parametrize("rate", [0.3, 60.0, 1e4])
def test_the_gpu_decoder_gives_the_cpu_decoders_bytes(dtype, shape, rate):
    rate = min(rate, np.iinfo(dtype).max / 4)
    frames = codec_frames(dtype, shape, rate)
    chunk = _dense_chunk(frames)
    got = gpu_codec.decode_dense_host(chunk)
    assert got.dtype == frames.dtype and got.shape == frames.shape
    np.testing.assert_array_equal(got, frames)


def test_only_lossless_integer_dense_chunks_go_to_the_gpu():
    counts = codec_frames(np.uint16, (64, 32, 32), 0.01, outliers=0)
    events = _native.codec_compress(counts, mode="events")
    lossy = _native.codec_compress(codec_frames(np.uint16, (64, 32, 32), 80), max_abs_error=2)
    floats = _native.codec_compress(np.random.default_rng(0).random((8, 16, 16)).astype("f4"))
    for blob in (events, lossy, floats):
        assert _native.codec_dense_layout(blob) is None
        with pytest.raises(ValueError, match="DENSE"):
            gpu_codec.decode_dense_host(blob)


def _with_valid_crc(chunk: bytearray) -> bytes:
    chunk[-4:] = _native.codec_crc32c(bytes(chunk[:-4])).to_bytes(4, "little")
    return bytes(chunk)


def test_corrupt_payloads_behind_a_valid_checksum_are_refused_not_crashed():
    frames = codec_frames(np.uint16, (64, 24, 20), 50.0)
    chunk = _dense_chunk(frames)
    layout = _native.codec_dense_layout(chunk)
    rng = np.random.default_rng(3)
    refused = 0
    for trial in range(60):
        bad = bytearray(chunk)
        lo = layout["words_offset"] if trial % 2 else layout["bits_offset"]
        hi = lo + (2 * layout["n_words"] if trial % 2 else layout["nbits"] // 8)
        bad[int(rng.integers(lo, hi))] ^= 1 << int(rng.integers(0, 8))
        bad = _with_valid_crc(bad)
        try:
            out = gpu_codec.decode_dense_host(bad)
        except CodecError:
            refused += 1
            with pytest.raises(Exception):  # noqa: B017 - the CPU decoder refuses it too
                stemedge.decompress(bad)
            continue
        # A flip the streams cannot show (a raw bit): the CPU decoder decodes the same values
        # and then refuses them by the CRC of the decoded bytes, which the GPU route does not
        # compute (it relies on the chunk CRC, checked before decoding).
        with pytest.raises(CodecError, match="checksum"):
            stemedge.decompress(bad)
        assert out.shape == frames.shape
    assert refused >= 20
    flipped = bytearray(chunk)
    flipped[len(chunk) // 2] ^= 4  # without fixing the checksum: refused before decoding
    with pytest.raises(ValueError, match="checksum"):
        _native.codec_dense_layout(bytes(flipped))


# --- on a GPU -------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", CODEC_INT_DTYPES)
def test_containers_decode_on_the_gpu_as_on_the_cpu(dtype):
    cp = pytest.importorskip("cupy")
    dense = codec_frames(dtype, (200, 48, 40), min(80.0, np.iinfo(dtype).max / 4), seed=1)
    sparse = codec_frames(dtype, (64, 48, 40), 0.01, seed=2, outliers=0)
    frames = np.concatenate([dense, sparse, dense[:5] * 0])  # dense, events and stored chunks
    blob = stemedge.compress(frames, chunk_frames=32)
    stream = cp.cuda.Stream(non_blocking=True)
    got = gpu_codec.decompress(blob, stream=stream)
    assert isinstance(got, cp.ndarray) and got.dtype == frames.dtype
    np.testing.assert_array_equal(got.get(), frames)
    chunk = _dense_chunk(dense[:64])
    np.testing.assert_array_equal(gpu_codec.decompress(chunk).get(), dense[:64])


@pytest.mark.gpu
def test_corrupt_chunks_raise_on_the_gpu():
    pytest.importorskip("cupy")
    chunk = _dense_chunk(codec_frames(np.uint16, (64, 24, 20), 50.0))
    layout = _native.codec_dense_layout(chunk)
    bad = bytearray(chunk)
    for i in range(layout["words_offset"], layout["words_offset"] + 2 * layout["n_words"], 97):
        bad[i] ^= 0x5A
    with pytest.raises(CodecError, match="corrupt chunk"):
        gpu_codec.decompress(_with_valid_crc(bad))
