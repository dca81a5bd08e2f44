"""GPU encoding of frames (stemedge.gpu_encode), held to the CPU encoder byte for byte.

Without a GPU: the device encoder's own code (moments, histograms, the warp's payload steps and
the segmented CRC, run lane by lane on the host: ``stages="host"``), driven by the same Python
orchestration as on the device, must give exactly ``stemedge.compress(mode="dense")``'s blob on
every lossless-integer dtype, awkward shapes, sampled model passes and the stored fallback.
With a GPU (``gpu`` marker): the same on the device, through ``stemedge.compress(cupy_array)``.
"""

from __future__ import annotations

import numpy as np
import pytest

import stemedge
from _helpers import CODEC_INT_DTYPES, codec_frames
from stemedge import _native

pytest.importorskip("stemedge._cuda", reason="built without the CUDA extension")
from stemedge import gpu_encode


def _modes(blob) -> list[str]:
    return stemedge.codec.info(blob)["modes"]


@pytest.mark.parametrize("dtype", CODEC_INT_DTYPES)
@pytest.mark.parametrize(
    "shape",
    [(64, 33, 31), (300, 64, 64), (600, 7, 5), (2000, 1, 3), (200, 1, 32), (5, 7, 9), (3,),
     (3, 4, 8, 8)],
)  # fmt: skip
@pytest.mark.parametrize("rate", [0.3, 60.0, 1e4])
def test_the_gpu_encoder_gives_the_cpu_encoders_bytes(dtype, shape, rate):
    rate = min(rate, np.iinfo(dtype).max / 4)
    frames = codec_frames(dtype, shape, rate)
    chunk_frames = 150 if len(shape) == 3 and shape[0] >= 300 else None  # partial last chunk
    cpu = stemedge.compress(frames, mode="dense", chunk_frames=chunk_frames)
    got = gpu_encode.compress(frames, chunk_frames=chunk_frames, stages="host")
    assert got == cpu
    np.testing.assert_array_equal(stemedge.decompress(got), frames)


def test_sampled_model_passes_and_several_batches_give_the_cpus_bytes():
    # 700 frames of 64 x 64: moments every 5th frame, histograms every 5th (the CPU's sampling),
    # and a batch limit that splits the chunks over three launches of each stage.
    frames = codec_frames(np.uint16, (700, 64, 64), 120.0, seed=3)
    assert _native.codec_dense_sampling(700, 64 * 64) == (5, 5)
    cpu = stemedge.compress(frames, mode="dense", chunk_frames=700)
    assert gpu_encode.compress(frames, chunk_frames=700, stages="host") == cpu
    cpu = stemedge.compress(frames, mode="dense", chunk_frames=100)
    got = gpu_encode.compress(frames, chunk_frames=100, stages="host", batch_bytes=3 * 100 * 8192)
    assert got == cpu


def test_incompressible_and_empty_frames_are_stored_as_on_the_cpu():
    noise = np.random.default_rng(0).integers(0, 256, (64, 16, 16), dtype=np.uint8)
    got = gpu_encode.compress(noise, stages="host")
    assert got == stemedge.compress(noise, mode="dense") and _modes(got) == ["stored"]
    empty = np.zeros((0, 8, 8), np.uint16)
    got = gpu_encode.compress(empty, stages="host")
    assert got == stemedge.compress(empty, mode="dense")
    assert stemedge.decompress(got).shape == (0, 8, 8)


def test_what_the_gpu_encoder_does_not_take_is_refused_clearly():
    with pytest.raises(TypeError, match="asnumpy"):
        gpu_encode.compress(np.zeros((4, 8, 8), np.float32), stages="host")
    with pytest.raises(TypeError, match="asnumpy"):
        gpu_encode.compress(np.zeros((4, 8, 8), np.uint64), stages="host")
    with pytest.raises(TypeError, match="C-contiguous"):
        gpu_encode.compress(np.zeros((4, 8, 16), np.uint16)[:, :, ::2], stages="host")
    with pytest.raises(ValueError, match="chunk_frames"):
        gpu_encode.compress(np.zeros((4, 8, 8), np.uint16), chunk_frames=0, stages="host")
    with pytest.raises(ValueError, match="stages"):
        gpu_encode.compress(np.zeros((4, 8, 8), np.uint16), stages="gpu")

    class OnDevice:  # what stemedge.compress sees of a GPU array, before it needs cupy
        @property
        def __cuda_array_interface__(self):
            return {"shape": (4, 8, 8), "typestr": "<u2", "version": 3}

    with pytest.raises(TypeError, match="lossless in dense mode"):
        stemedge.compress(OnDevice(), max_abs_error=2)
    with pytest.raises(TypeError, match="lossless in dense mode"):
        stemedge.compress(OnDevice(), mode="events")


def test_the_host_steps_refuse_inconsistent_parts():
    s = np.zeros(16)
    with pytest.raises(ValueError, match="one length"):
        _native.codec_dense_class_map(s, np.zeros(15), 4)
    m = _native.codec_dense_class_map(s, s, 4)
    base, slot, classes = m["base"], m["slot"], m["classes"]
    with pytest.raises(ValueError, match="256"):
        _native.codec_dense_encode_model(base, slot, classes, np.zeros((1, 255), np.uint32), 1, 16)
    with pytest.raises(ValueError, match="do not match"):
        _native.codec_dense_encode_model(base, slot, classes, np.zeros((3, 256), np.uint32), 1, 16)
    with pytest.raises(ValueError, match="32 rANS states"):
        _native.codec_dense_chunk(np.dtype("u2"), (1, 4, 4), b"", np.zeros(8, np.uint32),
                                  np.zeros(0, np.uint16), np.zeros(0, np.uint8), 0, 0)  # fmt: skip
    with pytest.raises(ValueError, match="integers"):
        _native.codec_dense_chunk(np.dtype("f4"), (1, 4, 4), b"", np.zeros(32, np.uint32),
                                  np.zeros(0, np.uint16), np.zeros(0, np.uint8), 0, 0)  # fmt: skip


# --- on a GPU -------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", CODEC_INT_DTYPES)
def test_frames_on_the_gpu_compress_to_the_cpus_bytes(dtype):
    cp = pytest.importorskip("cupy")
    frames = codec_frames(dtype, (300, 48, 40), min(80.0, np.iinfo(dtype).max / 4), seed=1)
    cpu = stemedge.compress(frames, mode="dense", chunk_frames=64)
    on_device = cp.asarray(frames)
    stream = cp.cuda.Stream(non_blocking=True)
    got = gpu_encode.compress(on_device, chunk_frames=64, stream=stream)
    assert got == cpu
    assert stemedge.compress(on_device, chunk_frames=64) == cpu  # the public function dispatches
    back = stemedge.gpu_codec.decompress(got)
    np.testing.assert_array_equal(back.get(), frames)


@pytest.mark.gpu
def test_gpu_encoding_of_awkward_and_incompressible_frames():
    cp = pytest.importorskip("cupy")
    for frames in (
        codec_frames(np.uint16, (2000, 1, 3), 1e4),
        codec_frames(np.int8, (5, 7, 9), 0.3),
        np.random.default_rng(0).integers(0, 256, (64, 16, 16), dtype=np.uint8),
    ):
        assert gpu_encode.compress(cp.asarray(frames)) == stemedge.compress(frames, mode="dense")
