"""Keep freed message buffers in the process: glibc malloc thresholds for streaming receivers.

ZeroMQ allocates every received message. With glibc's defaults, large messages churn: a buffer
above the mmap threshold is mapped and unmapped per message, and freed heap memory above the
trim threshold goes back to the kernel, so each new message is faulted in page by page again.
On the 2-core VM of docs/performance.md, raising both thresholds cut the receiving process's CPU
time per GB of 2 MiB messages by a third (a VM's first touches are dear), and SEFP over TCP
loopback went from 2.7 to 3.6-3.8 GB/s (benchmarks/bench_frame_protocol.py).

The settings are process-wide (``mallopt``): blocks up to ``mmap_threshold`` come from the heap,
and up to ``trim_threshold`` of freed heap is kept for reuse instead of being returned.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
_lock = threading.Lock()
_applied: tuple[int, int] | None = None


def keep_freed_memory(mmap_threshold: int = 64 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Set glibc's mmap and trim thresholds (once per process; later calls only raise them).
    Returns whether they are in effect (False off glibc, e.g. musl or macOS)."""
    global _applied
    with _lock:
        if _applied is not None and _applied >= (mmap_threshold, trim_threshold):
            return True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        m = max(mmap_threshold, _applied[0] if _applied else 0)
        t = max(trim_threshold, _applied[1] if _applied else 0)
        if not (mallopt(_M_MMAP_THRESHOLD, m) and mallopt(_M_TRIM_THRESHOLD, t)):
            return False
        _applied = (m, t)
        return True
