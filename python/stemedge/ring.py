"""FrameRing: the zero-copy hand-off between frame sources and analysis workers.

A slab of fixed slots, each holding up to ``slot_frames`` frames, allocated once (page-aligned,
huge pages where the kernel gives them, pinned for CUDA when a GPU and cupy are present).
One producer fills slots in place and commits them; several consumers take filled stacks in
commit order as numpy views of the slot memory and release them when done::

    ring = FrameRing((256, 256), np.uint16, slots=32, slot_frames=16)

    # producer: fill in place (e.g. socket.recv_into(slot.raw)) ...
    with ring.acquire() as slot:
        slot.frames[:k] = ...
        slot.indices[:k] = ...
        slot.commit(k)              # or slot.lend(frames): frames held elsewhere, not copied
    # ... or copy natively from an array
    ring.write(frames, first_index)
    ring.close()

    # consumers (any number of threads)
    for stack in ring:                    # ends when the ring is closed and drained
        process(stack.frames, stack.indices)   # views: valid until the stack is released

When full, the producer blocks (``policy="block"``, backpressure) or gets ``None`` from
``acquire`` (``policy="drop"``) and reports what it discards with :meth:`FrameRing.count_dropped`;
:meth:`FrameRing.write` counts its own drops. Every frame is accounted for in
:meth:`FrameRing.counters`: ``frames_in == frames_processed + pending + frames_discarded``.
"""

from __future__ import annotations

import dataclasses
import enum
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np

from stemedge import _native
from stemedge.geometry import FRAME_DTYPES

__all__ = ["Encoding", "FilledStack", "FrameRing", "RingClosed", "RingCounters", "WriteSlot"]


class RingClosed(RuntimeError):
    """The ring was closed (no more writes) or aborted."""


class Encoding(enum.IntEnum):
    """How a committed slot holds its frames."""

    RAW = 0  # frames as (slot_frames, det_y, det_x) of the ring's dtype
    BSLZ4 = (
        1  # per-frame bitshuffle-LZ4 payloads (DECTRIS), frame i at raw[i*frame_bytes:], nbytes[i]
    )


@dataclasses.dataclass(frozen=True)
class RingCounters:
    """A consistent snapshot of the ring's counters (see the module docstring)."""

    frames_in: int
    frames_processed: int
    frames_dropped: int
    frames_discarded: int
    stacks_in: int
    stacks_processed: int
    full_events: int
    filled: int
    reading: int
    high_water: int
    producer_wait_s: float
    consumer_wait_s: float
    latency_count: int
    latency_mean_s: float
    latency_max_s: float
    latency_p50_s: float
    latency_p99_s: float

    @property
    def pending(self) -> int:
        """Frames accepted but not yet released by a consumer."""
        return self.frames_in - self.frames_processed - self.frames_discarded

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["pending"] = self.pending
        return d


def _percentile_from_log2_hist(hist: list[int], q: float) -> float:
    """Upper edge (s) of the log2-µs bin holding quantile q: bin b spans [2^(b-1), 2^b) µs."""
    total = sum(hist)
    if total == 0:
        return 0.0
    target = q * total
    run = 0
    for b, n in enumerate(hist):
        run += n
        if run >= target:
            return (2.0**b) * 1e-6
    return (2.0 ** (len(hist) - 1)) * 1e-6


class WriteSlot:
    """A slot the producer is filling: write frames/indices in place, then commit or cancel."""

    __slots__ = ("_done", "_ring", "frames", "indices", "nbytes", "raw", "slot")

    def __init__(self, ring: FrameRing, slot: int) -> None:
        self._ring = ring
        self.slot = slot
        self.frames, self.indices, self.nbytes, self.raw = ring._views[slot]
        self._done = False

    def commit(self, n_frames: int, encoding: Encoding | int = Encoding.RAW) -> None:
        """Publish the first ``n_frames`` frames (0 cancels)."""
        if self._done:
            raise RuntimeError("this slot was already committed or cancelled")
        self._done = True
        self._ring._native.commit(self.slot, int(n_frames), int(encoding))

    def lend(self, frames: np.ndarray) -> None:
        """Commit ``frames`` (n, *frame_shape, the ring's dtype, n ≤ slot_frames) where they
        are, instead of copying them into the slot: consumers get ``frames`` itself, e.g. a
        view of a received ZeroMQ message (zero copies). The slot still carries the indices
        (fill ``indices[:n]`` first) and the ring's order, accounting and backpressure; the
        array is referenced until its stack is released. Not for a ring pinned for CUDA, whose
        point is that frames sit in page-locked memory."""
        if self._done:
            raise RuntimeError("this slot was already committed or cancelled")
        ring = self._ring
        if not isinstance(frames, np.ndarray) or frames.dtype != ring.dtype:
            raise TypeError(f"lend needs a numpy array of {ring.dtype}")
        if frames.shape[1:] != ring.frame_shape or not 1 <= len(frames) <= ring.slot_frames:
            raise ValueError(
                f"lend needs (1..{ring.slot_frames}, {ring.frame_shape[0]}, "
                f"{ring.frame_shape[1]}) frames, got {frames.shape}"
            )
        if not frames.flags.c_contiguous:
            raise ValueError("lend needs C-contiguous frames")
        ring._lent[self.slot] = frames
        try:
            self.commit(len(frames))
        except BaseException:
            ring._lent.pop(self.slot, None)
            raise

    def cancel(self) -> None:
        if not self._done:
            self._done = True
            self._ring._native.cancel(self.slot)

    def __enter__(self) -> WriteSlot:
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()


class FilledStack:
    """A committed stack handed to one consumer: views of the slot, valid until ``release()``."""

    __slots__ = (
        "_released",
        "_ring",
        "encoding",
        "frames",
        "indices",
        "nbytes",
        "raw",
        "sequence",
        "slot",
    )

    def __init__(self, ring: FrameRing, slot: int) -> None:
        self._ring = ring
        self.slot = slot
        n, encoding, self.sequence = ring._native.slot_info(slot)
        self.encoding = Encoding(encoding)
        frames, indices, nbytes, raw = ring._views[slot]
        lent = ring._lent.pop(slot, None)  # WriteSlot.lend: the frames are elsewhere
        self.frames = frames[:n] if lent is None else lent
        self.indices = indices[:n]
        self.nbytes = nbytes[:n]
        self.raw = raw
        self._released = False

    def __len__(self) -> int:
        return len(self.indices)

    def release(self) -> None:
        """Give the slot back to the producer. The views must not be used afterwards."""
        if not self._released:
            self._released = True
            self._ring._native.release(self.slot)

    def __enter__(self) -> FilledStack:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _pin(address: int, nbytes: int) -> tuple[bool, str]:
    """Page-lock the slab for fast, asynchronous host→GPU copies (cudaHostRegister via cupy)."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False, "no CUDA device"
        cupy.cuda.runtime.hostRegister(address, nbytes, 0)
        return True, "pinned with cudaHostRegister"
    except Exception as exc:  # ImportError, CUDARuntimeError: the ring works unpinned
        return False, f"not pinned: {type(exc).__name__}: {exc}"


def _unpin(address: int) -> None:
    try:
        import cupy

        cupy.cuda.runtime.hostUnregister(address)
    except Exception:  # best effort at teardown: the memory is freed right after
        pass


class FrameRing:
    """Slots of frame stacks between one producer and several consumers (module docstring).

    Parameters
    ----------
    frame_shape : (det_y, det_x)
    dtype : uint8, uint16, uint32 or float32
    slots : int
        Number of slots; the ring holds ``slots * slot_frames`` frames.
    slot_frames : int
        Frames per slot: the unit of hand-off (bigger → less overhead, more latency).
    policy : {'block', 'drop'}
        What a producer does when every slot is taken.
    huge_pages : bool
        Ask the kernel for transparent huge pages (fewer TLB misses on large slabs).
    pinned : {'auto', True, False}
        Page-lock the slab for CUDA. 'auto' pins when cupy sees a GPU; True raises if it cannot.
    """

    def __init__(
        self,
        frame_shape: tuple[int, int],
        dtype,
        *,
        slots: int = 16,
        slot_frames: int = 16,
        policy: str = "block",
        huge_pages: bool = True,
        pinned: bool | str = "auto",
    ) -> None:
        dt = np.dtype(dtype)
        if dt not in FRAME_DTYPES:
            raise TypeError(f"dtype must be one of {', '.join(map(str, FRAME_DTYPES))}, got {dt}")
        for name, v in (("slots", slots), ("slot_frames", slot_frames)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if pinned not in ("auto", True, False):
            raise ValueError(f"pinned must be 'auto', True or False, got {pinned!r}")
        fy, fx = (int(v) for v in frame_shape)
        self._native = _native.FrameRing(
            int(slots), int(slot_frames), (fy, fx), dt, policy, bool(huge_pages)
        )
        n = self._native
        self._lent: dict[int, np.ndarray] = {}  # slot → frames committed by WriteSlot.lend
        self._views = [
            (n.frames_view(i), n.indices_view(i), n.nbytes_view(i), n.bytes_view(i))
            for i in range(int(slots))
        ]
        self.pinned, self.pin_note = False, "not requested"
        if pinned:
            self.pinned, self.pin_note = _pin(n.data_address, n.slab_bytes)
            if pinned is True and not self.pinned:
                raise RuntimeError(
                    f"pinned=True but the ring could not be pinned ({self.pin_note})"
                )
        if self.pinned:
            # Unregister before the slab can be freed (views keep the native ring alive after).
            self._finalizer = weakref.finalize(self, _unpin, n.data_address)

    # -- description ------------------------------------------------------------------------------
    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self._native.frame_shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._native.dtype)

    @property
    def slots(self) -> int:
        return self._native.n_slots

    @property
    def slot_frames(self) -> int:
        return self._native.slot_frames

    @property
    def frame_bytes(self) -> int:
        return self._native.frame_bytes

    @property
    def policy(self) -> str:
        return self._native.policy

    @property
    def nbytes(self) -> int:
        return self._native.slab_bytes

    def describe(self) -> dict[str, Any]:
        return {
            "slots": self.slots,
            "slot_frames": self.slot_frames,
            "frame_shape": list(self.frame_shape),
            "dtype": str(self.dtype),
            "policy": self.policy,
            "slab_bytes": self.nbytes,
            "huge_pages_advised": self._native.huge_pages_advised,
            "pinned": self.pinned,
            "pin_note": self.pin_note,
        }

    # -- producer ---------------------------------------------------------------------------------
    def acquire(self, timeout: float | None = None) -> WriteSlot | None:
        """A free slot to fill in place. Blocks while the ring is full (block policy; TimeoutError
        after ``timeout`` s); returns None when full under the drop policy. RingClosed once the
        ring is closed or aborted."""
        slot = self._native.acquire_write(timeout)
        if slot >= 0:
            return WriteSlot(self, slot)
        if slot == _native.RING_FULL:
            return None
        if slot == _native.RING_TIMEOUT:
            raise TimeoutError(f"no free ring slot within {timeout} s (consumers too slow?)")
        raise RingClosed("the ring is closed")

    def write(self, frames: np.ndarray, indices, timeout: float | None = None) -> int:
        """Copy a stack (k, det_y, det_x) into slots natively (GIL released).

        ``indices`` are the flat scan indices (k,) or the first index of a consecutive run.
        Returns k; under the drop policy frames that found no slot are counted as dropped.
        Raises TimeoutError (block policy) or RingClosed with the number of frames written."""
        frames = np.asarray(frames)
        if frames.ndim == 2:
            frames = frames[np.newaxis]
        if np.ndim(indices) == 0:
            idx = np.arange(int(indices), int(indices) + len(frames), dtype=np.int64)
        else:
            idx = np.ascontiguousarray(indices, dtype=np.int64)
        done = self._native.push(frames, idx, timeout)
        if done < len(frames):
            if self._native.closed:
                raise RingClosed(f"the ring was closed after {done} of {len(frames)} frames")
            raise TimeoutError(
                f"ring full: wrote {done} of {len(frames)} frames within {timeout} s"
            )
        return done

    def count_dropped(self, n: int) -> None:
        """Record ``n`` frames the producer discarded because the ring was full."""
        self._native.count_dropped(int(n))

    def close(self) -> None:
        """End of stream: consumers drain the filled slots, then stop."""
        self._native.close()

    def abort(self) -> None:
        """Stop now: wake every waiter, discard (and count) the filled slots."""
        self._native.abort()

    @property
    def closed(self) -> bool:
        return self._native.closed

    # -- consumers --------------------------------------------------------------------------------
    def read(self, timeout: float | None = None) -> FilledStack | None:
        """The next filled stack, or None once the ring is closed and drained (or aborted).
        TimeoutError if nothing arrives within ``timeout`` s."""
        slot = self._native.acquire_read(timeout)
        if slot >= 0:
            return FilledStack(self, slot)
        if slot == _native.RING_TIMEOUT:
            raise TimeoutError(f"no frames within {timeout} s")
        return None

    def __iter__(self) -> Iterator[FilledStack]:
        """Filled stacks until the ring is closed and drained; each released after its turn."""
        while (stack := self.read()) is not None:
            try:
                yield stack
            finally:
                stack.release()

    # -- counters ---------------------------------------------------------------------------------
    def counters(self) -> RingCounters:
        c = self._native.counters()
        hist = c.pop("latency_hist_log2_us")
        n = c["latency_count"]
        return RingCounters(
            frames_in=c["frames_in"],
            frames_processed=c["frames_processed"],
            frames_dropped=c["frames_dropped"],
            frames_discarded=c["frames_discarded"],
            stacks_in=c["stacks_in"],
            stacks_processed=c["stacks_processed"],
            full_events=c["full_events"],
            filled=c["filled"],
            reading=c["reading"],
            high_water=c["high_water"],
            producer_wait_s=c["producer_wait_s"],
            consumer_wait_s=c["consumer_wait_s"],
            latency_count=n,
            latency_mean_s=c["latency_sum_s"] / n if n else 0.0,
            latency_max_s=c["latency_max_s"],
            latency_p50_s=_percentile_from_log2_hist(hist, 0.5),
            latency_p99_s=_percentile_from_log2_hist(hist, 0.99),
        )
