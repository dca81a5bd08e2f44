"""``Pipeline(gpu=...)``: the live pipeline with its CoM/virtual analyses on the GPU streamer.

Without a GPU: the choice of consumer (``'auto'`` falls back to the CPU workers with identical
results; ``True`` refuses clearly). With a GPU (``gpu`` marker): the GPU run's results, the host
analyses' and the sinks' frames equal the CPU pipeline's, and partial results can be read while
it runs.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from _helpers import ssb_scan
from stemedge import masks
from stemedge._build import cuda_report
from stemedge.analysis import (
    CenterOfMassAnalysis,
    MeanPattern,
    SSBAnalysis,
    VirtualDetectorAnalysis,
)
from stemedge.calibration import Calibration
from stemedge.pipeline import Pipeline
from stemedge.sources.sim import SimSource

CAL = Calibration(scan_step_A=(0.5, 0.5), det_mrad_per_px=1.0, convergence_mrad=6.0)


def _source(dtype=np.uint16, scan=(12, 15), det=(24, 20)):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 3000, (*scan, *det)).astype(dtype)
    return SimSource(data, calibration=CAL)


def _analyses(det=(24, 20)):
    return [
        CenterOfMassAnalysis(radius=8, virtual={"bf": masks.disk(det, 5)}),
        VirtualDetectorAnalysis({"haadf": masks.annulus(det, 9, 12)}, normalize="mean"),
        MeanPattern(),
    ]


class Collect:
    """A sink that keeps a copy of every frame it is given, by scan index."""

    def __init__(self, n, det):
        self.frames = np.zeros((n, *det), np.float64)
        self.seen = np.zeros(n, np.int64)
        self.lock = threading.Lock()

    def write_frames(self, frames, indices):
        with self.lock:
            self.frames[indices] = frames
            self.seen[indices] += 1


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            np.testing.assert_allclose(a[name][key], b[name][key], rtol=1e-6, atol=1e-9,
                                       err_msg=f"{name}.{key}")  # fmt: skip


def test_auto_uses_the_cpu_workers_where_there_is_no_gpu():
    if cuda_report().get("devices"):
        pytest.skip("this machine has a GPU: 'auto' takes it (see the gpu tests)")
    cpu = Pipeline(_source(), _analyses()).run()
    auto = Pipeline(_source(), _analyses(), gpu="auto").run()
    assert auto.gpu is None and auto.summary()["gpu"] is False
    _assert_same(auto.results, cpu.results)


def test_gpu_true_refuses_clearly_when_it_cannot_run():
    with pytest.raises(ValueError, match="True, False or 'auto'"):
        Pipeline(_source(), _analyses(), gpu="yes")
    with pytest.raises(ValueError, match="CenterOfMassAnalysis, VirtualDetectorAnalysis or"):
        Pipeline(_source(), [MeanPattern()], gpu=True)
    with pytest.raises(ValueError, match="refresh"):  # accumulate-mode SSB has no GPU twin
        Pipeline(_source(), [SSBAnalysis(CAL)], gpu=True)
    if not cuda_report().get("devices"):
        with pytest.raises(ValueError, match="no CUDA GPU"):
            Pipeline(_source(), _analyses(), gpu=True)


def test_which_analyses_run_on_the_gpu():
    from stemedge.gpu_stream import runs_on_gpu

    com, virtual, mean = _analyses()
    assert runs_on_gpu(com) and runs_on_gpu(virtual) and not runs_on_gpu(mean)
    assert runs_on_gpu(SSBAnalysis(CAL, mode="refresh"))
    assert not runs_on_gpu(SSBAnalysis(CAL, mode="accumulate"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_the_gpu_pipeline_gives_the_cpu_pipelines_results(dtype):
    pytest.importorskip("cupy")
    det = (24, 20)
    source = _source(dtype)
    n = source.geometry.n_positions
    sink = Collect(n, det)
    run = Pipeline(source, _analyses(), sinks=[sink], gpu=True, slot_frames=16)
    result = run.run()
    cpu = Pipeline(_source(dtype), _analyses()).run()
    assert result.gpu is not None and result.gpu["frames"] == n
    assert result.counters.frames_processed == n and result.frames_rejected == 0
    _assert_same(result.results, cpu.results)
    np.testing.assert_array_equal(sink.seen, np.ones(n))
    np.testing.assert_array_equal(sink.frames, source._frames.astype(np.float64))


@pytest.mark.gpu
@pytest.mark.parametrize("binning", [1, 2])
def test_live_ssb_on_the_gpu_equals_the_cpu_refresh_mode(binning):
    pytest.importorskip("cupy")
    data, cal = ssb_scan(scan=(16, 18), det=(24, 22), dtype=np.uint16)

    def analyses():
        return [SSBAnalysis(cal, mode="refresh", binning=binning), CenterOfMassAnalysis(radius=6)]

    gpu_run = Pipeline(SimSource(data, calibration=cal), analyses(), gpu=True, slot_frames=7)
    result = gpu_run.run()
    cpu = Pipeline(SimSource(data, calibration=cal), analyses()).run()
    assert result.gpu is not None
    for key in ("phase_rad", "amplitude"):
        got, want = result.results["ssb"][key], cpu.results["ssb"][key]
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.nanmax(np.abs(want)))
    _assert_same({"com": result.results["com"]}, {"com": cpu.results["com"]})


@pytest.mark.gpu
def test_partial_results_can_be_read_while_the_gpu_pipeline_runs():
    pytest.importorskip("cupy")
    source = SimSource(_source()._frames.reshape(12, 15, 24, 20), calibration=CAL,
                       frame_rate=400.0)  # fmt: skip
    run = Pipeline(source, _analyses(), gpu=True, slot_frames=8).start()
    seen = []
    while not run._done.is_set() and len(seen) < 20:
        part = run.partial_results()
        seen.append(int(np.count_nonzero(np.isfinite(part["com"]["bf"]))))
        threading.Event().wait(0.05)
    result = run.wait()
    assert seen == sorted(seen) and result.complete


def test_the_demo_takes_gpu_and_says_why_it_cannot(tmp_path, capsys):
    from stemedge.cli import main

    if cuda_report().get("devices"):
        pytest.skip("this machine has a GPU")
    args = ["demo", "--out", str(tmp_path), "--scan", "16", "--det", "16", "--rate", "0"]
    assert main([*args, "--gpu", "on", "--quiet"]) != 0
    assert "no CUDA GPU" in capsys.readouterr().err
    assert main([*args, "--gpu", "auto", "--quiet"]) == 0  # falls back to the CPU workers
