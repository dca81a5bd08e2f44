"""DECTRIS stream: bitshuffle-LZ4 decode speed, and simulator → receiver → ring → CoM end to end.

    python benchmarks/bench_dectris.py [--repeats 3] [--frames 30000] [--skip-e2e]

1. Decoder throughput in GB/s of *decoded* bytes, 512×512 uint16 Poisson frames at 0.1 and 10
   counts/px, framed as DECTRIS sends them (12-byte header + bitshuffle.compress_lz4 blocks):
   the native decoder on 1 thread, on 2 threads (two Python threads each decoding their own
   frames with ``decode_stack(nthreads=1)``, as pipeline workers do, and one call spreading a
   stack over the native pool), per untranspose backend, against ``bitshuffle.decompress_lz4``
   in the same process, on 1 and on 2 Python threads (it holds the GIL, so 2 threads do not
   help). bitshuffle runs with OMP_NUM_THREADS=1 unless set (its OpenMP loop over blocks costs
   more than it gains on small frames on 2 cores).
2. End to end: ``python -m stemedge.net.dectris_sim`` in another process (PUSH, loopback TCP)
   → :class:`DectrisReceiver` → FrameRing (32 slots × 16 frames) → 2 worker threads that decode
   (``codecs.decode_stack``) and compute the centre of mass (``_native.reduce`` with one
   all-ones mask, first moments) — unpaced with backpressure (block policy: the highest rate),
   and paced at 10 kHz with the drop policy (what a detector that cannot wait sees). Reports
   frames/s, drops, and CPU µs per frame in the receiving and the sending process.

All numbers are medians of ``--repeats`` runs. NOTE the sender, the receiver and both workers
share the machine's cores (2 on the reference box), so end-to-end rates here are lower bounds of
what a receiving workstation reaches with the detector sending from its own hardware.
Target: ≥ 10 k frames/s of 512² uint16 with live CoM and 0 drops.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before bitshuffle loads its OpenMP runtime

import numpy as np

from stemedge import _native, codecs
from stemedge.masks import MaskSet
from stemedge.net.dectris import DectrisReceiver
from stemedge.net.dectris_sim import make_frames
from stemedge.ring import FrameRing

SHAPE, DTYPE = (512, 512), np.uint16
COUNTS = (0.1, 10.0)


# -- 1. decoder ----------------------------------------------------------------------------------
def _payload_stack(frames: np.ndarray):
    fb = frames[0].nbytes
    raw = np.zeros(len(frames) * fb, np.uint8)
    nbytes = np.zeros(len(frames), np.uint32)
    blobs = []
    for i, f in enumerate(frames):
        p = codecs.bslz4_encode(f)
        blobs.append(p)
        raw[i * fb : i * fb + len(p)] = np.frombuffer(p, np.uint8)
        nbytes[i] = len(p)
    return raw, nbytes, fb, blobs


def _timed(fn, repeats: int) -> float:
    fn()  # warm up (page faults, scratch buffers)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class _Workers:
    """Long-lived threads that each run their job once per ``run()`` — like pipeline workers.
    (Fresh threads per pass would start on the parent's core and finish a ~1 ms job before the
    scheduler spreads them, so they would look serialised.)"""

    def __init__(self, jobs) -> None:
        self._jobs = jobs
        self._start = threading.Barrier(len(jobs) + 1)
        self._done = threading.Barrier(len(jobs) + 1)
        self._stop = False
        self._threads = [threading.Thread(target=self._loop, args=(j,), daemon=True) for j in jobs]
        for t in self._threads:
            t.start()

    def _loop(self, job) -> None:
        while True:
            self._start.wait()
            if self._stop:
                return
            job()
            self._done.wait()

    def run(self) -> None:
        self._start.wait()
        self._done.wait()

    def close(self) -> None:
        self._stop = True
        self._start.wait()
        for t in self._threads:
            t.join()


PASSES = 8  # each timed sample decodes the n frames this many times (~10 ms per thread)


def _decoder_rows(counts: float, n: int, repeats: int, bitshuffle) -> tuple[float, list]:
    """(mean payload bytes, [(decoder, seconds per n * PASSES frames)]) for one count level."""
    frames = make_frames(n, SHAPE, DTYPE, counts=counts, seed=11)
    raw, nbytes, fb, blobs = _payload_stack(frames)
    out = np.empty_like(frames)
    out2 = np.empty_like(frames)
    half = n // 2

    def native(nthreads: int) -> None:
        for _ in range(PASSES):
            errors = _native.bslz4_decode_stack(raw, nbytes, n, fb, out, nthreads)
            assert not errors, errors[:1]

    def native_half(lo: int, dst: np.ndarray) -> None:
        sub_raw = raw[lo * fb : (lo + half) * fb]
        for _ in range(PASSES):
            _native.bslz4_decode_stack(sub_raw, nbytes[lo : lo + half], half, fb, dst, 1)

    native_two_threads = _Workers([lambda: native_half(0, out), lambda: native_half(half, out2)])

    bodies = [np.frombuffer(b, np.uint8)[12:] for b in blobs]

    def bshuf(idx) -> None:
        for _ in range(PASSES):
            for i in idx:
                bitshuffle.decompress_lz4(bodies[i], SHAPE, np.dtype(DTYPE), 4096)

    bshuf_two_threads = _Workers([lambda: bshuf(range(half)), lambda: bshuf(range(half, n))])

    rows = []
    default = _native.bslz4_backend()
    try:
        for backend in _native.bslz4_available_backends():
            _native.bslz4_set_backend(backend)
            rows.append((f"native {backend}, 1 thread", _timed(lambda: native(1), repeats)))
    finally:
        _native.bslz4_set_backend(default)
    rows.append(
        (
            f"native {default}, 2 Python threads × nthreads=1",
            _timed(native_two_threads.run, repeats),
        )
    )
    rows.append(
        (f"native {default}, 1 call, nthreads=2 (pool)", _timed(lambda: native(2), repeats))
    )
    rows.append(("bitshuffle.decompress_lz4, 1 thread", _timed(lambda: bshuf(range(n)), repeats)))
    rows.append(
        ("bitshuffle.decompress_lz4, 2 Python threads", _timed(bshuf_two_threads.run, repeats))
    )
    native_two_threads.close()
    bshuf_two_threads.close()
    native(1)  # what was timed is right
    np.testing.assert_array_equal(out, frames)
    return float(nbytes.mean()), rows


def bench_decoder(repeats: int) -> None:
    import bitshuffle

    n = 32
    print(
        f"\n1. Decoder: {SHAPE[0]}×{SHAPE[1]} uint16 Poisson frames, GB/s of decoded bytes "
        f"({n} distinct frames × {PASSES} per sample, median of {repeats}; bitshuffle "
        f"{bitshuffle.__version__}, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})"
    )
    print(f"{'counts/px':>9} {'payload':>9} {'decoder':<44} {'µs/frame':>9} {'GB/s':>7}")
    frame_bytes = SHAPE[0] * SHAPE[1] * np.dtype(DTYPE).itemsize
    for counts in COUNTS:
        payload, rows = _decoder_rows(counts, n, repeats, bitshuffle)
        for k, (name, t) in enumerate(rows):
            label = f"{counts:>9g} {payload / 1024:>7.1f}kB" if k == 0 else " " * 19
            per = t / (n * PASSES)
            print(f"{label} {name:<44} {per * 1e6:>9.1f} {frame_bytes / per / 1e9:>7.2f}")


# -- 2. end to end -------------------------------------------------------------------------------
def _e2e(n_frames: int, counts: float, rate: float | None, policy: str) -> dict[str, float]:
    cmd = [
        sys.executable,
        "-m",
        "stemedge.net.dectris_sim",
        "--port",
        "0",
        "--frames",
        str(n_frames),
        "--shape",
        str(SHAPE[0]),
        "--dtype",
        "uint16",
        "--counts",
        str(counts),
        "--distinct",
        "16",
        "--timeout",
        "60",
    ]
    if rate is not None:
        cmd += ["--rate", str(rate)]
    ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        endpoint = proc.stdout.readline().split()[1]
        with DectrisReceiver(
            endpoint, scan_shape=(n_frames // 100, 100), begin_timeout_s=60
        ) as rec:
            geo = rec.geometry  # waits for the series header
            ring = FrameRing(geo.frame_shape, geo.dtype, slots=32, slot_frames=16, policy=policy)
            plan = MaskSet(np.ones(SHAPE, np.float32)).plan
            com_sum = np.zeros(3)
            lock = threading.Lock()

            def worker() -> None:
                scratch = codecs.scratch_for(ring)
                acc = np.zeros(3)
                for stack in ring:
                    frames = codecs.decode_stack(stack, scratch)
                    acc += _native.reduce(frames, plan, [True], [np.nan], 1).sum(axis=0)
                with lock:
                    com_sum[:] += acc

            self0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            workers = [threading.Thread(target=worker) for _ in range(2)]
            for w in workers:
                w.start()
            try:
                rec.feed(ring, threading.Event())
            finally:
                ring.close()
                for w in workers:
                    w.join()
            wall = time.perf_counter() - t0
            self1 = resource.getrusage(resource.RUSAGE_SELF)
            summary = json.loads(proc.stdout.read().strip().splitlines()[-1])
            proc.wait(30)
            c, rc = rec.counters(), ring.counters()
    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    sent = summary["images_sent"]
    assert sent == rc.frames_processed + c["frames_dropped"] + c["frames_rejected"], (sent, c)
    assert com_sum[0] > 0  # the moments were computed (sum of counts > 0)
    cpu_recv = (self1.ru_utime - self0.ru_utime) + (self1.ru_stime - self0.ru_stime)
    cpu_send = (ch1.ru_utime - ch0.ru_utime) + (ch1.ru_stime - ch0.ru_stime)
    return {
        "fps": rc.frames_processed / wall,
        "dropped": c["frames_dropped"],
        "rejected": c["frames_rejected"],
        "recv_us": cpu_recv / sent * 1e6,
        "send_us": cpu_send / sent * 1e6,  # includes the simulator's start-up (compressing)
        "p99_ms": rc.latency_p99_s * 1e3,
        "payload_kB": summary["mean_payload_bytes"] / 1024,
    }


def bench_e2e(n_frames: int, repeats: int) -> None:
    print(
        f"\n2. End to end, {n_frames} frames per run, median of {repeats} "
        f"(sender, receiver and 2 workers share {os.cpu_count()} cores)"
    )
    print(
        f"{'counts/px':>9} {'mode':<26} {'frames/s':>9} {'dropped':>8} {'rejected':>8} "
        f"{'recv µs/f':>9} {'send µs/f':>9} {'p99 lat':>8}"
    )
    for counts in COUNTS:
        for label, rate, policy in (
            ("unpaced, block policy", None, "block"),
            ("paced 10 kHz, drop policy", 10_000.0, "drop"),
        ):
            runs = [_e2e(n_frames, counts, rate, policy) for _ in range(repeats)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(
                f"{counts:>9g} {label:<26} {med['fps']:>9,.0f} {med['dropped']:>8.0f} "
                f"{med['rejected']:>8.0f} {med['recv_us']:>9.0f} {med['send_us']:>9.0f} "
                f"{med['p99_ms']:>6.1f}ms"
            )
            if rate is not None:
                print(
                    f"{'':>9} {'':<26} runs: "
                    + ", ".join(f"{r['fps']:,.0f} fps/{r['dropped']} dropped" for r in runs)
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frames", type=int, default=30_000, help="frames per end-to-end run")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--skip-decoder", action="store_true")
    args = ap.parse_args()
    print(
        f"stemedge DECTRIS benchmark — {os.cpu_count()} CPUs, bslz4 backends "
        f"{_native.bslz4_available_backends()}, LZ4 {_native.lz4_version()}"
    )
    if not args.skip_decoder:
        bench_decoder(args.repeats)
    if not args.skip_e2e:
        bench_e2e(args.frames, args.repeats)


if __name__ == "__main__":
    main()
