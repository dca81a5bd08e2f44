"""The GPU ring consumer (stemedge.gpu_stream.GpuStreamer), held to the CPU analyses.

``gpu`` tests run where the CUDA extension finds a device; the pinned-ring test is the check
that FrameRing's ``cudaHostRegister`` pinning works and that asynchronous copies from the slab
deliver the frames intact.
"""

from __future__ import annotations

import importlib.util
import threading

import numpy as np
import pytest

from stemedge import masks
from stemedge.analysis import CenterOfMassAnalysis, VirtualDetectorAnalysis
from stemedge.analysis.runner import run_offline
from stemedge.calibration import Calibration
from stemedge.geometry import ScanGeometry
from stemedge.ring import FrameRing


def _scan(dtype, scan=(9, 14), det=(24, 20), seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.gamma(2.0, 30.0, (*scan, *det)).astype(dtype)
    return rng.integers(0, min(np.iinfo(dtype).max, 3000), (*scan, *det)).astype(dtype)


def _analyses(det):
    disk, ring_mask = masks.disk(det, 5), masks.annulus(det, 6, 10)
    return [
        CenterOfMassAnalysis(radius=8, virtual={"bf": disk, "adf": ring_mask}),
        VirtualDetectorAnalysis({"haadf": masks.annulus(det, 9, 12)}, normalize="mean"),
    ]


def _feed(ring, data, order):
    flat = data.reshape(-1, *data.shape[2:])
    for start in range(0, len(order), 5):  # stacks of 5 frames (slots are not full)
        idx = order[start : start + 5]
        ring.write(flat[idx], idx)
    ring.close()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.float32])
@pytest.mark.parametrize("buffers", [1, 2, 3])
@pytest.mark.parametrize("order", ["raster", "shuffled_with_repeats"])
def test_streamed_results_equal_the_cpu_analyses(dtype, buffers, order):
    pytest.importorskip("cupy")
    from stemedge.gpu_stream import GpuStreamer

    data = _scan(dtype)
    cal = Calibration(scan_step_A=(0.5, 0.5), det_mrad_per_px=1.0, convergence_mrad=6.0)
    geometry = ScanGeometry(data.shape[:2], data.shape[2:], data.dtype, cal)
    n = geometry.n_positions
    rng = np.random.default_rng(1)
    idx = np.arange(n) if order == "raster" else np.concatenate([rng.permutation(n), [3, 3, 7]])
    ring = FrameRing(data.shape[2:], dtype, slots=4, slot_frames=8, pinned=True)
    assert ring.pinned, ring.pin_note
    streamer = GpuStreamer(ring, geometry, _analyses(data.shape[2:]), buffers=buffers)
    feeder = threading.Thread(target=_feed, args=(ring, data, idx))
    feeder.start()
    stats = streamer.run(timeout=30)
    feeder.join()
    assert stats["frames"] == len(idx) and stats["pinned"] and ring.counters().pending == 0
    got = streamer.results()
    if order == "raster":
        ref = run_offline(data, _analyses(data.shape[2:]), calibration=cal)
    else:  # the CPU analyses over the same frames, repeats included
        ref_ring = FrameRing(data.shape[2:], dtype, slots=64, slot_frames=8, pinned=False)
        _feed(ref_ring, data, idx)
        cpu = _analyses(data.shape[2:])
        for a in cpu:
            a.bind(geometry)
        parts = [a.new_partial() for a in cpu]
        from stemedge.analysis.runner import Coverage

        cov = Coverage(geometry)
        for stack in ref_ring:
            with stack:
                for a, p in zip(cpu, parts, strict=True):
                    a.process(p, stack.frames, stack.indices)
                cov.add(stack.indices)
        ref = {a.name: a.finalize(p, cov.counts) for a, p in zip(cpu, parts, strict=True)}
    for name, results in ref.items():
        for key, value in results.items():
            np.testing.assert_allclose(got[name][key], value, rtol=2e-6, atol=1e-6, err_msg=key)


@pytest.mark.gpu
def test_pinned_slab_copies_to_the_device_intact_and_unpins():
    cp = pytest.importorskip("cupy")
    ring = FrameRing((64, 48), np.uint16, slots=3, slot_frames=4, pinned=True)
    assert ring.pinned, ring.pin_note
    frames = np.random.default_rng(2).integers(0, 65535, (4, 64, 48)).astype(np.uint16)
    ring.write(frames, 0)
    stream = cp.cuda.Stream(non_blocking=True)
    with ring.read(timeout=5) as stack:
        dev = cp.empty(frames.shape, np.uint16)
        dev.set(stack.frames, stream=stream)
        stream.synchronize()
    np.testing.assert_array_equal(dev.get(), frames)
    ring.close()
    ring._finalizer()  # what garbage collection runs: cudaHostUnregister, once
    assert not ring._finalizer.alive


def test_streamer_needs_cupy_and_mask_sum_analyses():
    if importlib.util.find_spec("cupy") is None:
        from stemedge.gpu_stream import GpuStreamer

        ring = FrameRing((8, 8), np.uint16, slots=2, slot_frames=2, pinned=False)
        geometry = ScanGeometry((2, 2), (8, 8), np.uint16)
        with pytest.raises(ImportError, match="cupy"):
            GpuStreamer(ring, geometry, [CenterOfMassAnalysis()])
    else:  # pragma: no cover - a machine with cupy
        pytest.skip("cupy is installed: the error path is not reachable")
