"""GPU benchmark (issue 6): the device kernels against the device's own copy speeds.

Run on a machine with an NVIDIA GPU, cupy and a build with the CUDA extension::

    python benchmarks/bench_gpu.py                 # all sections, 576² uint16 frames
    python benchmarks/bench_gpu.py --quick         # smaller sizes, a smoke run
    python benchmarks/bench_gpu.py --json gpu.json

Sections (each reports medians of ``--repeats`` device-timed runs, cupy events):

1. **resident**: CoM, 2 virtual images, and both fused, on frames already on the device,
   against a device-to-device copy of the same bytes (bandwidth = bytes *read* / time; target
   ≥ 80 %), with frames/s against the 4D Camera's 87 k frames/s of 576² uint16.
2. **streaming**: frames from a pinned :class:`FrameRing` through :class:`GpuStreamer` (CoM +
   2 virtual images computed) against the pinned host→device copy bandwidth (target ≥ 80 %).
   The producer commits slots whose frame bytes were written once beforehand (a detector that
   fills the slots by DMA): this measures the ring→GPU side, not a host memcpy.
3. **ssb**: a 256²×128² scan (bright-field radius 30 px), the whole offline route on the
   device: seconds per reconstruction and frames/s; the plan (CPU, geometry only) apart. Live
   (refresh mode): frames/s ingested into the device cube, seconds per refresh, and the whole
   live pipeline (``Pipeline(gpu=True)``) from host frames in frames/s.
4. **codec**: DENSE chunks decoded on the device (one warp per chunk, all chunks in one launch),
   end to end from the compressed bytes on the host, against the CPU decoder on all cores; and
   device-resident frames encoded (stemedge.gpu_encode, the CPU's bytes) against the CPU
   encoder on all cores.

Every failure is printed with its section; the other sections still run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import traceback

import numpy as np

from _timing import median_time


def _cp():
    import cupy

    return cupy


def device_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median device seconds of ``fn()`` on the current stream (cupy events)."""
    cp = _cp()
    for _ in range(warmup):
        fn()
    cp.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
    return statistics.median(times)


def _copy_into(dst, src):
    return lambda: _cp().copyto(dst, src)


def _masks(det):
    from stemedge import masks

    r = min(det) / 8
    return [masks.disk(det, r), masks.annulus(det, 1.5 * r, min(det) / 2 - 1)]


def resident(args) -> dict:
    import stemedge

    cp = _cp()
    det = (args.det, args.det)
    n = args.frames
    frames = cp.random.poisson(2.0, (n, *det)).astype(cp.uint16)
    nbytes = frames.nbytes
    copy_s = device_time(_copy_into(cp.empty_like(frames), frames), args.repeats)
    copy_gbs = nbytes / copy_s / 1e9
    vms = _masks(det)
    runs = {
        "com": lambda: stemedge.center_of_mass(frames),
        "virtual_2": lambda: stemedge.virtual_images(frames, vms),
        "com_and_virtual_2": lambda: stemedge.com_and_virtual_images(frames, vms),
    }
    out = {"frames": n, "frame_shape": det, "bytes": nbytes, "d2d_copy_read_GBps": copy_gbs}
    print(f"\n[resident] {n} frames of {det[0]}² uint16 ({nbytes / 1e9:.2f} GB) on the device")
    print(f"  device-to-device copy: {copy_gbs:7.1f} GB/s read")
    for name, fn in runs.items():
        s = device_time(fn, args.repeats)
        gbs = nbytes / s / 1e9
        fps = n / s
        out[name] = {"s": s, "GBps": gbs, "of_copy": gbs / copy_gbs, "frames_per_s": fps,
                     "of_87k": fps / 87_000}  # fmt: skip
        print(f"  {name:18s} {gbs:7.1f} GB/s = {gbs / copy_gbs:5.2f}× copy, "
              f"{fps:10,.0f} frames/s = {fps / 87_000:5.2f}× 87 k")  # fmt: skip
    return out


def streaming(args) -> dict:
    from stemedge.analysis import CenterOfMassAnalysis
    from stemedge.geometry import ScanGeometry
    from stemedge.gpu_stream import GpuStreamer
    from stemedge.ring import FrameRing

    cp = _cp()
    det = (args.det, args.det)
    slot_frames, slots = args.slot_frames, args.slots
    ring = FrameRing(det, np.uint16, slots=slots, slot_frames=slot_frames, pinned=True)
    if not ring.pinned:
        raise RuntimeError(f"the ring could not be pinned: {ring.pin_note}")
    # Pinned host→device bandwidth of one slot-sized copy, from the ring's own slab.
    slot_view = ring._views[0][0]
    dev = cp.empty(slot_view.shape, slot_view.dtype)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        h2d_s = device_time(lambda: dev.set(slot_view, stream=stream), args.repeats * 4)
    h2d_gbs = slot_view.nbytes / h2d_s / 1e9
    # Frame bytes written once into every slot; the producer then only writes indices.
    rng = np.random.default_rng(0)
    for s in range(slots):
        ring._views[s][0][:] = rng.poisson(2.0, slot_view.shape).astype(np.uint16)
    scan_n = args.stream_frames
    side = int(np.ceil(np.sqrt(scan_n)))
    geometry = ScanGeometry((side, side), det, np.uint16)
    analyses = [CenterOfMassAnalysis(radius=min(det) / 8, virtual=_masks(det))]
    streamer = GpuStreamer(ring, geometry, analyses, buffers=args.buffers)

    def produce():
        i = 0
        while i < scan_n:
            ws = ring.acquire(timeout=30)
            k = min(slot_frames, scan_n - i)
            ws.indices[:k] = np.arange(i, i + k)
            ws.commit(k)
            i += k
        ring.close()

    t = threading.Thread(target=produce)
    t0 = time.perf_counter()
    t.start()
    stats = streamer.run(timeout=60)
    wall = time.perf_counter() - t0
    t.join()
    gbs = stats["bytes"] / wall / 1e9
    fps = stats["frames"] / wall
    print(f"\n[streaming] pinned ring ({slots} slots × {slot_frames} frames of {det[0]}² uint16), "
          f"{args.buffers} device buffers, CoM + 2 virtual images")  # fmt: skip
    print(f"  pinned host→device copy (one slot): {h2d_gbs:6.1f} GB/s")
    print(f"  ring → GPU + kernels:               {gbs:6.1f} GB/s = {gbs / h2d_gbs:5.2f}× copy, "
          f"{fps:9,.0f} frames/s ({stats['frames']} frames, {wall:.2f} s)")  # fmt: skip
    link_fps = h2d_gbs * 1e9 / (576 * 576 * 2)
    print(f"  what the link allows for 576² uint16: {link_fps:9,.0f} frames/s")
    return {"pinned_h2d_GBps": h2d_gbs, "GBps": gbs, "of_h2d": gbs / h2d_gbs,
            "frames_per_s": fps, "stats": stats}  # fmt: skip


def ssb_section(args) -> dict:
    import stemedge
    from stemedge.ptycho.plan import SSBPlan

    cp = _cp()
    scan, det = (args.ssb_scan, args.ssb_scan), (args.ssb_det, args.ssb_det)
    cal = stemedge.Calibration(
        scan_step_A=(0.4, 0.4), det_mrad_per_px=20.0 / args.ssb_radius, convergence_mrad=20.0
    )
    t0 = time.perf_counter()
    plan = SSBPlan(cal, scan, det)
    plan_s = time.perf_counter() - t0
    # Poisson frames with a bright-field disk of 200 counts/px (shot noise only: timing data).
    disk = cp.asarray(stemedge.masks.disk(det, cal.bf_radius_px) * 200.0 + 0.5)
    data = cp.empty((*scan, *det), cp.uint16)
    for y in range(scan[0]):
        data[y] = cp.random.poisson(disk, (scan[1], *det)).astype(cp.uint16)
    s = device_time(lambda: stemedge.ssb(data, cal, plan=plan), max(1, args.repeats // 2))
    n = scan[0] * scan[1]
    print(f"\n[ssb] {scan[0]}²×{det[0]}² uint16 ({data.nbytes / 1e9:.1f} GB), bright-field "
          f"{plan.n_pixels} px (r = {cal.bf_radius_px:.0f}), "
          f"{len(plan.cand_qy)} candidate Q")  # fmt: skip
    print(f"  plan (CPU, geometry only): {plan_s:6.2f} s, once per geometry")
    print(f"  reconstruction on the device: {s:6.3f} s = {n / s:10,.0f} frames/s")
    out = {"scan": scan, "det": det, "bf_pixels": plan.n_pixels, "plan_s": plan_s,
           "s": s, "frames_per_s": n / s}  # fmt: skip
    out.update(_ssb_live(args, cal, plan, data))
    return out


def _ssb_live(args, cal, plan, data) -> dict:
    """Live SSB (refresh mode) on the device: the per-frame cost (gathering each stack's
    bright-field pixels into the cube), a refresh from the cube, and the whole live pipeline
    from host frames (SimSource -> pinned ring -> GpuStreamer)."""
    from stemedge.analysis import SSBAnalysis
    from stemedge.pipeline import Pipeline
    from stemedge.ptycho.device import gather_device, reconstruct_cube
    from stemedge.sources.sim import SimSource

    cp = _cp()
    n = data.shape[0] * data.shape[1]
    frames = data.reshape(n, *data.shape[2:])
    cube = cp.zeros((n, plan.n_pixels), cp.float32)
    rows = cp.empty((256, plan.n_pixels), cp.float32)
    sptr = cp.cuda.get_current_stream().ptr

    def ingest():
        for start in range(0, n, 256):
            k = min(256, n - start)
            gather_device(frames[start : start + k], plan, rows[:k], sptr)
            cube[start : start + k] += rows[:k]

    ingest_s = device_time(ingest, max(1, args.repeats // 2))
    reps = max(1, args.repeats // 2)
    refresh_s = device_time(lambda: reconstruct_cube(cube, plan, n, sptr), reps)
    cp.get_default_memory_pool().free_all_blocks()
    source = SimSource(data.get(), calibration=cal)
    pipe = Pipeline(source, [SSBAnalysis(cal, mode="refresh")], gpu=True)
    result = pipe.run()
    print(f"  live, frames on the device: {n / ingest_s:10,.0f} frames/s ingested "
          f"(gather into the cube), a refresh from the cube {refresh_s:6.3f} s")  # fmt: skip
    print(f"  live pipeline from host frames (pinned ring -> GpuStreamer, refresh at the end): "
          f"{result.frames_per_s:10,.0f} frames/s, "
          f"{result.bytes_per_s / 1e9:5.2f} GB/s")  # fmt: skip
    return {"live_ingest_frames_per_s": n / ingest_s, "live_refresh_s": refresh_s,
            "live_pipeline_frames_per_s": result.frames_per_s,
            "live_pipeline_GBps": result.bytes_per_s / 1e9, "gpu_stats": result.gpu}  # fmt: skip


def codec_section(args) -> dict:
    import stemedge
    from stemedge import gpu_codec

    rng = np.random.default_rng(0)
    n = 1024 if not args.quick else 128
    frames = rng.poisson(rng.uniform(50, 200, (256, 256)), (n, 256, 256)).astype(np.uint16)
    blob = stemedge.compress(frames, chunk_frames=64)
    assert np.array_equal(gpu_codec.decompress(blob).get(), frames)
    cpu_gbs = frames.nbytes / median_time(lambda: stemedge.decompress(blob), args.repeats) / 1e9
    # host parsing + upload + decode + status read back
    gpu_gbs = frames.nbytes / median_time(lambda: gpu_codec.decompress(blob), args.repeats) / 1e9
    print(f"\n[codec] {n} frames 256² uint16, 50–200 counts/px, {len(blob) / 1e6:.1f} MB "
          f"compressed in {n // 64} chunks")  # fmt: skip
    print(f"  GPU decode (host parse + upload + kernel): {gpu_gbs:6.2f} GB/s of raw data")
    print(f"  CPU decode (all cores):                    {cpu_gbs:6.2f} GB/s")
    # Encoding frames already on the device (the bytes checked against the CPU's).
    on_device = _cp().asarray(frames)
    cpu_blob = stemedge.compress(frames, mode="dense", chunk_frames=64)
    assert stemedge.compress(on_device, chunk_frames=64) == cpu_blob
    t = median_time(lambda: stemedge.compress(frames, mode="dense", chunk_frames=64), args.repeats)
    cpu_enc = frames.nbytes / t / 1e9
    # stages + model on the host + compressed bytes back
    t = median_time(lambda: stemedge.compress(on_device, chunk_frames=64), args.repeats)
    gpu_enc = frames.nbytes / t / 1e9
    print(f"  GPU encode (device-resident frames -> bytes on the host): {gpu_enc:6.2f} GB/s")
    print(f"  CPU encode (all cores, mode='dense'):                      {cpu_enc:6.2f} GB/s")
    return {"gpu_decode_GBps": gpu_gbs, "cpu_decode_GBps": cpu_gbs, "chunks": n // 64,
            "gpu_encode_GBps": gpu_enc, "cpu_encode_GBps": cpu_enc}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--sections", nargs="+", default=["resident", "streaming", "ssb", "codec"])
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    big = not args.quick
    args.det = 576 if big else 128
    args.frames = 4096 if big else 256
    args.slot_frames, args.slots, args.buffers = (32, 16, 3) if big else (8, 6, 3)
    args.stream_frames = 65_536 if big else 2048
    args.ssb_scan, args.ssb_det, args.ssb_radius = (256, 128, 30) if big else (32, 64, 12)

    from stemedge import _cuda

    report = _cuda.device_report()
    print("device:", json.dumps(report))
    out = {"device": report}
    sections = {"resident": resident, "streaming": streaming, "ssb": ssb_section,
                "codec": codec_section}  # fmt: skip
    failed = False
    for name in args.sections:
        try:
            out[name] = sections[name](args)
        except Exception:  # keep the other sections' figures
            failed = True
            print(f"\n[{name}] FAILED")
            traceback.print_exc()
            out[name] = {"error": traceback.format_exc()}
        _cp().get_default_memory_pool().free_all_blocks()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
