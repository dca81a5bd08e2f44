"""Ring hand-off overhead: CPU time the FrameRing costs per frame, and at a paced 10 k frames/s.

    python benchmarks/bench_ring.py [--repeats 5] [--seconds 2]

Measures the hand-off only — acquire, commit, read, release through the Python API the pipeline
uses — not the frame data (a detector receive writes it, a kernel reads it: those are the
receiver's and the analysis' costs). CPU time is per thread (time.thread_time), so waiting costs
nothing and the numbers hold on a loaded machine; medians of the repeats.

Target (issue 3): hand-off < 5 % of one core at 10 k frames/s of 256² uint16.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np

from stemedge.ring import FrameRing

SHAPE, DTYPE = (256, 256), np.uint16


def _run(slot_frames: int, n_frames: int, rate: float | None) -> dict[str, float]:
    ring = FrameRing(SHAPE, DTYPE, slots=16, slot_frames=slot_frames)
    cpu = {}

    def consumer():
        t = time.thread_time()
        for _stack in ring:
            pass
        cpu["consumer"] = time.thread_time() - t

    th = threading.Thread(target=consumer)
    th.start()
    t_cpu, t_wall = time.thread_time(), time.perf_counter()
    idx = np.arange(slot_frames, dtype=np.int64)
    sent = 0
    while sent < n_frames:
        if rate is not None:
            delay = t_wall + (sent + slot_frames) / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        slot = ring.acquire()
        slot.indices[:] = idx + sent
        slot.commit(slot_frames)
        sent += slot_frames
    ring.close()
    cpu["producer"] = time.thread_time() - t_cpu
    th.join()
    wall = time.perf_counter() - t_wall
    c = ring.counters()
    assert c.frames_in == c.frames_processed == sent, c
    total = cpu["producer"] + cpu["consumer"]
    return {
        "us_per_frame": total / sent * 1e6,
        "core_fraction": total / wall,
        "wall": wall,
        "fps": sent / wall,
        "p99_ms": c.latency_p99_s * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()

    print(
        f"FrameRing hand-off, {SHAPE[0]}×{SHAPE[1]} {np.dtype(DTYPE).name}, "
        f"medians of {args.repeats}"
    )
    print("\nunpaced (as fast as possible): CPU µs per frame, producer + consumer")
    print(f"{'slot_frames':>12} {'CPU µs/frame':>13} {'frames/s':>12}")
    for sf in (1, 4, 16, 64):
        runs = [_run(sf, 200_000 if sf > 1 else 50_000, None) for _ in range(args.repeats)]
        print(
            f"{sf:>12} {statistics.median(r['us_per_frame'] for r in runs):>13.3f} "
            f"{statistics.median(r['fps'] for r in runs):>12,.0f}"
        )

    rate = 10_000.0
    print(f"\npaced at {rate:,.0f} frames/s for {args.seconds} s: share of one core")
    print(f"{'slot_frames':>12} {'core share':>11} {'target':>8} {'p99 latency':>12}")
    for sf in (1, 16):
        runs = [_run(sf, int(rate * args.seconds), rate) for _ in range(args.repeats)]
        share = statistics.median(r["core_fraction"] for r in runs)
        p99 = statistics.median(r["p99_ms"] for r in runs)
        print(f"{sf:>12} {share * 100:>10.2f}% {'< 5 %':>8} {p99:>10.3f} ms")


if __name__ == "__main__":
    main()
