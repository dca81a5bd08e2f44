"""The Source contract: anything that yields frames of one acquisition.

A source knows its :class:`~stemedge.geometry.ScanGeometry`, describes itself for provenance, and
either yields chunks (``chunks``: offline and simple live sources) or fills a
:class:`~stemedge.ring.FrameRing` itself (``feed``: network receivers override it to receive
straight into ring slots). Frames are addressed by flat scan index (``ScanGeometry``).
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from stemedge.geometry import ScanGeometry

__all__ = ["Chunk", "Source", "SourceError"]


class SourceError(RuntimeError):
    """A source could not deliver what it promised (corrupt file, malformed packet, stalled
    sender). Frames delivered before the error stay delivered."""


class Chunk(NamedTuple):
    """``frames`` (k, det_y, det_x) at flat scan ``indices`` (k,) int64."""

    frames: np.ndarray
    indices: np.ndarray


class Source(abc.ABC):
    """Base class of every frame source. Subclasses set ``self.geometry`` in ``__init__``."""

    geometry: ScanGeometry

    @abc.abstractmethod
    def chunks(self, max_frames: int) -> Iterator[Chunk]:
        """Yield the acquisition as chunks of at most ``max_frames`` frames, in arrival order.

        The frames may be views into memory the source reuses: consume a chunk before asking
        for the next one."""

    def describe(self) -> dict[str, Any]:
        """JSON-able description for provenance (kind, path or endpoint, parameters)."""
        return {"kind": type(self).__name__}

    def feed(self, ring, stop: threading.Event) -> None:
        """Push every frame into ``ring`` (a :class:`stemedge.ring.FrameRing`) until done or
        ``stop`` is set. The default copies each chunk into ring slots natively."""
        for chunk in self.chunks(ring.slot_frames):
            if stop.is_set():
                return
            ring.write(chunk.frames, chunk.indices)

    def close(self) -> None:  # noqa: B027 (optional hook: most sources hold nothing to release)
        """Release files, sockets and threads. Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
