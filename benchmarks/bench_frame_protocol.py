"""SEFP loopback throughput: FrameSender (another process) → FrameReceiver → FrameRing → consumer.

    python benchmarks/bench_frame_protocol.py [--repeats 5] [--frames 4096] [--transports tcp ipc]

``STEMEDGE_BENCH_FPM=64`` sends 64 frames per message (8 MiB) instead of 16. ``--untuned`` leaves
glibc malloc's thresholds at their defaults (receivers normally raise them, process-wide:
``stemedge.net.malloc_tuning``), to see what that is worth.

What is measured, all in one run, medians of ``--repeats`` (interleaved rounds):

* ``ring``: frames 256×256 uint16, ``frames_per_message`` = ``slot_frames`` = 16 (2 MiB messages),
  received with ``FrameReceiver.feed``; a consumer thread releases them. Two ways: "lent" (the
  default: each message's frames handed to the ring as a view of libzmq's buffer, no copy) and
  "recv_into slots" (``lend_bytes=None``: copied out of libzmq into the ring's slab).
  GB/s = accepted payload bytes / (END − BEGIN) at the receiver. The frame accounting
  ``sent = processed + dropped + rejected`` is checked after every run.
* ``raw zmq``: the ceiling for this transport — the same two-part messages over a plain
  PUSH/PULL pair, received with ``recv(copy=False)`` (no copy into a slot, no checks).
* ``memcpy``: ``np.copyto`` of one message (2 MiB; cache-resident) and of messages cycling through
  a ring-sized slab (16 MiB; what the receive's copy out of libzmq costs).
* sink hand-off: the pipeline's forwarder case — two threads call ``write_frames`` with stacks
  that are invalid after the call; ``copy`` (libzmq copies, GIL released), ``track`` (zero-copy,
  wait until sent) and ``borrow`` (zero-copy, no wait: unsafe for a sink, the upper bound), to a
  plain PULL drainer in another process.

The sender sends a fixed 32 MiB pattern with ``hand_off="borrow"`` so the receiver is what is
measured. On a 2-core machine the sender, the receiver and both libzmq I/O threads share two cores.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import tempfile
import threading
import time

import numpy as np
import zmq

from stemedge.geometry import ScanGeometry
from stemedge.net import FrameReceiver, FrameSender
from stemedge.net.frame_protocol import Header
from stemedge.ring import FrameRing

SHAPE, DTYPE = (256, 256), np.uint16
FPM = int(os.environ.get("STEMEDGE_BENCH_FPM", "16"))  # frames per message (= slot frames)
FRAME_BYTES = SHAPE[0] * SHAPE[1] * 2
PATTERN_FRAMES = 256  # 32 MiB sent over and over: bigger than the caches, no per-run generation


def _pattern() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 4096, (PATTERN_FRAMES, *SHAPE), dtype=DTYPE)


# -- the sender process -------------------------------------------------------------------------
def _sender_main(conn) -> None:
    """Serve requests from the parent until None: each sends one scan and replies."""
    data = _pattern()
    while (req := conn.recv()) is not None:
        kind, ep, n = req[:3]
        t0 = time.perf_counter()
        if kind == "sefp":
            _send_sefp(ep, n, data)
        elif kind == "raw":
            _send_raw(ep, n, data)
        else:
            _drain(ep, n)
        conn.send(time.perf_counter() - t0)


def _send_sefp(ep: str, n: int, data: np.ndarray) -> None:
    side = int(np.ceil(np.sqrt(n)))
    g = ScanGeometry((side, side), SHAPE, DTYPE)
    with FrameSender(ep, frames_per_message=FPM, hand_off="borrow") as tx:
        tx.begin(g)
        for first in range(0, n, FPM):
            a = first % PATTERN_FRAMES
            tx.send(data[a : a + FPM], first)


def _send_raw(ep: str, n: int, data: np.ndarray) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, 32)
    s.connect(ep)
    head = Header(n_frames=FPM, payload_nbytes=FPM * FRAME_BYTES).pack()
    for first in range(0, n, FPM):
        a = first % PATTERN_FRAMES
        s.send(head, zmq.SNDMORE)
        s.send(data[a : a + FPM], copy=False)
    s.send(b"end", zmq.SNDMORE)
    s.send(b"")
    s.close(linger=-1)
    ctx.term()


def _drain(ep: str, n_messages: int) -> None:
    """The far end of the sink test: a plain PULL that receives and forgets."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.setsockopt(zmq.RCVHWM, 32)
    s.bind(ep)
    ends = 0
    while ends < 1:
        head = s.recv()
        s.recv(copy=False)
        ends += Header.unpack(head).type == 3
    s.close(linger=0)
    ctx.term()


# -- receiver side ------------------------------------------------------------------------------
TUNE_MALLOC = True  # --untuned: glibc's default thresholds (every large message faulted in)


def _ring_run(conn, ep: str, n: int, lend: bool = True) -> tuple[float, dict]:
    rx = FrameReceiver(
        ep,
        stall_timeout_s=20,
        begin_timeout_s=20,
        lend_bytes=(256 << 10) if lend else None,
        tune_malloc=TUNE_MALLOC,
    )
    try:
        conn.send(("sefp", ep, n))
        g = rx.geometry  # BEGIN received: the clock starts
        t0 = time.perf_counter()
        ring = FrameRing(g.frame_shape, g.dtype, slots=8, slot_frames=FPM, pinned=False)

        def consume():
            for _stack in ring:
                pass

        th = threading.Thread(target=consume)
        th.start()
        rx.feed(ring, threading.Event())
        dt = time.perf_counter() - t0
        ring.close()
        th.join()
        conn.recv()
        c, s = ring.counters(), rx.stats
        ok = n == c.frames_processed + c.frames_dropped + s["rejected"] and s["missing"] == 0
        if not ok:
            raise AssertionError(f"frames lost: sent {n}, ring {c}, receiver {s}")
        acct = {
            "sent": n,
            "processed": c.frames_processed,
            "dropped": c.frames_dropped,
            "rejected": s["rejected"],
        }
        return s["accepted"] * FRAME_BYTES / dt / 1e9, acct
    finally:
        rx.close()


def _raw_run(conn, ep: str, n: int) -> float:
    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.setsockopt(zmq.RCVHWM, 64)
    s.bind(ep)
    try:
        conn.send(("raw", ep, n))
        nbytes, t0 = 0, None
        while True:
            head = s.recv()
            payload = s.recv(copy=False)
            if t0 is None:
                t0 = time.perf_counter()
            if head == b"end":
                break
            nbytes += len(payload)
        dt = time.perf_counter() - t0
        conn.recv()
        # the first message started the clock: leave its bytes out
        return (nbytes - FPM * FRAME_BYTES) / dt / 1e9
    finally:
        s.close(linger=0)
        ctx.term()


def _sink_run(conn, ep: str, n: int, hand_off: str, threads: int = 2) -> float:
    """write_frames from ``threads`` workers, each from its own slot-like buffer."""
    side = int(np.ceil(np.sqrt(n)))
    g = ScanGeometry((side, side), SHAPE, DTYPE)
    slab = _pattern()
    conn.send(("drain", ep, n))
    time.sleep(0.2)  # let the drainer bind
    with FrameSender(ep, frames_per_message=FPM, hand_off=hand_off) as tx:
        tx.begin(g)
        per = n // threads

        def work(w: int) -> None:
            for first in range(w * per, (w + 1) * per, FPM):
                a = (first % PATTERN_FRAMES) // FPM * FPM
                tx.write_frames(slab[a : a + FPM], np.arange(first, first + FPM))

        t0 = time.perf_counter()
        ths = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        tx.end()
        dt = time.perf_counter() - t0
    conn.recv()
    return per * threads * FRAME_BYTES / dt / 1e9


def _memcpy(nbytes: int, slab_bytes: int, repeats: int = 200) -> float:
    src = np.ones(nbytes, np.uint8)
    dst = np.ones(slab_bytes, np.uint8)  # every page touched before timing
    k = slab_bytes // nbytes
    t0 = time.perf_counter()
    for i in range(repeats):
        j = i % k
        np.copyto(dst[j * nbytes : (j + 1) * nbytes], src)
    return repeats * nbytes / (time.perf_counter() - t0) / 1e9


def _endpoint(transport: str, tag: str, ipc_dir: str) -> str:
    if transport == "ipc":
        return f"ipc://{ipc_dir}/{tag}.ipc"
    return f"tcp://127.0.0.1:{_free_port()}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frames", type=int, default=4096, help="frames per run (128 KiB each)")
    ap.add_argument("--transports", nargs="+", default=["tcp", "ipc"])
    ap.add_argument("--no-sink", action="store_true", help="skip the sink hand-off comparison")
    ap.add_argument("--runs", action="store_true", help="print every run, not just the summary")
    ap.add_argument(
        "--untuned", action="store_true", help="leave glibc malloc's thresholds at their defaults"
    )
    args = ap.parse_args()
    global TUNE_MALLOC
    TUNE_MALLOC = not args.untuned
    if TUNE_MALLOC:  # before any run, raw ones included: one process-wide setting for all
        from stemedge.net.malloc_tuning import keep_freed_memory

        keep_freed_memory()
    n = args.frames // FPM * FPM

    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=_sender_main, args=(child,))
    proc.start()
    load0 = os.getloadavg()[0]
    res: dict[tuple[str, str], list[float]] = {}
    acct = None
    ipc_dir = tempfile.mkdtemp(prefix="sefp-")  # libzmq leaves ipc socket files behind
    try:
        for r in range(args.repeats):
            for tr in args.transports:
                res.setdefault((tr, "raw zmq recv(copy=False)"), []).append(
                    _raw_run(parent, _endpoint(tr, f"raw{r}", ipc_dir), n)
                )
                gbps, acct = _ring_run(parent, _endpoint(tr, f"ring{r}", ipc_dir), n)
                res.setdefault((tr, "SEFP → ring, messages lent"), []).append(gbps)
                gbps, acct = _ring_run(parent, _endpoint(tr, f"copy{r}", ipc_dir), n, lend=False)
                res.setdefault((tr, "SEFP → ring, recv_into slots"), []).append(gbps)
        # the sink runs come after, not interleaved: receive runs that followed them were
        # noisier (the sender process had just been a drainer)
        for r in range(0 if args.no_sink else args.repeats):
            for tr in args.transports:
                for mode in ("copy", "track", "borrow"):
                    res.setdefault((tr, f"sink write_frames hand_off={mode}"), []).append(
                        _sink_run(parent, _endpoint(tr, f"sink{mode}{r}", ipc_dir), n, mode)
                    )
        mem = [_memcpy(FPM * FRAME_BYTES, FPM * FRAME_BYTES) for _ in range(args.repeats)]
        slab = [_memcpy(FPM * FRAME_BYTES, 8 * FPM * FRAME_BYTES) for _ in range(args.repeats)]
    finally:
        parent.send(None)
        proc.join()
        shutil.rmtree(ipc_dir, ignore_errors=True)
    load1 = os.getloadavg()[0]

    print(
        f"\nSEFP loopback, {n} frames of {SHAPE[0]}×{SHAPE[1]} uint16 per run "
        f"({n * FRAME_BYTES / 2**20:.0f} MiB), {FPM} frames/message, {os.cpu_count()} cores, "
        f"median of {args.repeats} (load {load0:.1f} → {load1:.1f}); malloc thresholds "
        f"{'raised (stemedge.net.malloc_tuning)' if TUNE_MALLOC else 'glibc defaults'}\n"
    )
    print(f"| {'transport':9} | {'path':36} | {'GB/s median':>11} | {'min':>5} | {'max':>5} |")
    print(f"|{'-' * 11}|{'-' * 38}|{'-' * 12}:|{'-' * 6}:|{'-' * 6}:|")
    rows = [(tr, path, v) for (tr, path), v in res.items()]
    rows += [
        ("-", "memcpy 2 MiB (cache-resident)", mem),
        ("-", "memcpy 2 MiB into 16 MiB slab", slab),
    ]
    for tr, path, v in rows:
        runs = "  " + " ".join(f"{x:.2f}" for x in v) if args.runs else ""
        print(
            f"| {tr:9} | {path:36} | {statistics.median(v):11.2f} | {min(v):5.2f} | "
            f"{max(v):5.2f} |{runs}"
        )
    print(
        f"\nframe accounting (last ring run): sent {acct['sent']} = processed "
        f"{acct['processed']} + dropped {acct['dropped']} + rejected {acct['rejected']} "
        "(checked after every run)"
    )


if __name__ == "__main__":
    main()
