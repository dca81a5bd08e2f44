"""Live edge → HPC fan-out (issue 9): frame-aligned stacks to several receivers, each running
the analyses; their partial results come back and merge into one result.

Edge side: :class:`FanOut` is a Pipeline sink (or is fed directly). It owns one
:class:`~stemedge.net.FrameSender` per HPC node and routes whole frames by scan row (row ``y``
goes to node ``(y // rows_per_block) % n``), so every node receives complete frames of its own
rows. ``collect()`` then receives each node's partials and coverage on a PULL socket, merges
them, checks that the coverage adds up and finalises.

HPC side: :func:`serve_partials` receives one scan with a
:class:`~stemedge.net.FrameReceiver`, runs the analyses in a live Pipeline, and sends its
partials back (a JSON header and the raw array bytes as message parts; no pickle). Both sides
report through the status channel when given one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq

from stemedge.analysis.base import Analysis, Results
from stemedge.analysis.runner import Coverage
from stemedge.geometry import ScanGeometry
from stemedge.net.frame_sender import FrameSender

__all__ = ["FanOut", "FanOutError", "serve_partials"]

_KIND = "stemedge-partials-v1"


class FanOutError(RuntimeError):
    """A node's partials did not arrive, did not parse, or the merged coverage is wrong."""


def _pack(node: str, names: list[str], partials: list[dict[str, np.ndarray]], counts) -> list:
    arrays: list[np.ndarray] = []
    index = []
    for name, partial in zip(names, partials, strict=True):
        for key, value in partial.items():
            a = np.ascontiguousarray(value)
            index.append({"analysis": name, "key": key, "dtype": a.dtype.str, "shape": a.shape})
            arrays.append(a)
    c = np.ascontiguousarray(counts, np.int64)
    head = {"kind": _KIND, "node": node, "arrays": index, "coverage_shape": c.shape}
    return [json.dumps(head).encode(), c, *arrays]


def _unpack(parts: list[bytes], names: list[str]) -> tuple[str, dict[str, dict], np.ndarray]:
    try:
        head = json.loads(parts[0])
        if head.get("kind") != _KIND:
            raise ValueError(f"not a stemedge partials message ({head.get('kind')!r})")
        counts = np.frombuffer(parts[1], np.int64).reshape(head["coverage_shape"])
        partials: dict[str, dict[str, np.ndarray]] = {n: {} for n in names}
        if len(parts) != 2 + len(head["arrays"]):
            raise ValueError("the message has the wrong number of parts")
        for spec, buf in zip(head["arrays"], parts[2:], strict=True):
            if spec["analysis"] not in partials:
                raise ValueError(f"unknown analysis {spec['analysis']!r}")
            dt = np.dtype(spec["dtype"])
            if dt.kind not in "biuf" and dt.kind != "c":
                raise ValueError(f"dtype {dt} is not allowed")
            a = np.frombuffer(buf, dt).reshape(spec["shape"]).copy()
            partials[spec["analysis"]][spec["key"]] = a
        return str(head["node"]), partials, counts
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise FanOutError(f"malformed partials message: {e}") from e


class FanOut:
    """Edge side: send a scan's frames to ``endpoints`` by rows, collect and merge results.

    Parameters
    ----------
    endpoints : sequence of str
        One FrameReceiver endpoint per HPC node (e.g. ``tcp://hpc1:6000``).
    analyses : sequence of Analysis
        The same analyses the nodes run (same names and parameters): used here to merge and
        finalise the nodes' partials.
    results_endpoint : str
        Where this side binds its PULL socket for the nodes' partials (``tcp://*:6100``); the
        nodes connect to it (see :func:`serve_partials`).
    rows_per_block : int
        Scan rows sent to one node before moving to the next.
    status : stemedge.status publisher, optional
        Gets ``fanout`` progress events.
    sender_options : dict, optional
        Passed to each :class:`FrameSender`.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        analyses: Sequence[Analysis],
        *,
        results_endpoint: str,
        rows_per_block: int = 1,
        status: Any = None,
        sender_options: dict[str, Any] | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        if not self.endpoints:
            raise ValueError("give at least one node endpoint")
        if not (isinstance(rows_per_block, int) and rows_per_block >= 1):
            raise ValueError(f"rows_per_block must be a positive integer, got {rows_per_block!r}")
        self.analyses = list(analyses)
        names = [a.name for a in self.analyses]
        if len(set(names)) != len(names):
            raise ValueError(f"analysis names must be unique, got {names}")
        self.rows_per_block = rows_per_block
        self.status = status
        self._ctx = zmq.Context.instance()
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.bind(results_endpoint)
        self.results_endpoint = self._pull.getsockopt_string(zmq.LAST_ENDPOINT)
        opts = dict(sender_options or {})
        self._senders = [FrameSender(ep, **opts) for ep in self.endpoints]
        self._geometry: ScanGeometry | None = None
        self.frames_sent = [0] * len(self.endpoints)

    def begin(self, geometry: ScanGeometry, metadata: dict[str, Any] | None = None) -> int:
        """Start the scan on every node (one scan id for all)."""
        self._geometry = geometry
        sid = self._senders[0].begin(geometry, metadata=metadata)
        for s in self._senders[1:]:
            s.begin(geometry, scan_id=sid, metadata=metadata)
        self._emit("started", nodes=len(self._senders), scan_id=sid)
        return sid

    def write_frames(self, frames: np.ndarray, indices: np.ndarray) -> None:
        """Pipeline sink entry: each frame goes to the node that owns its scan row."""
        if self._geometry is None:
            raise RuntimeError("call begin(geometry) before sending frames")
        idx = np.asarray(indices, np.int64)
        nodes = (idx // self._geometry.scan_shape[1] // self.rows_per_block) % len(self._senders)
        for n in np.unique(nodes):
            sel = np.flatnonzero(nodes == n)
            # contiguous runs stay views; scattered ones are gathered once
            block = frames[sel[0] : sel[-1] + 1] if np.all(np.diff(sel) == 1) else frames[sel]
            self._senders[int(n)].send(block, idx[sel])
            self.frames_sent[int(n)] += len(sel)

    def end(self) -> None:
        """End the scan on every node."""
        for s in self._senders:
            s.end()
        self._emit("sent", frames=self.frames_sent)

    def collect(self, timeout_s: float = 60.0) -> tuple[dict[str, Results], np.ndarray]:
        """Receive every node's partials, merge, check the coverage, finalise."""
        if self._geometry is None:
            raise RuntimeError("no scan: call begin() first")
        geometry = self._geometry
        for a in self.analyses:
            if not a.bound:
                a.bind(geometry)
        merged = [a.new_partial() for a in self.analyses]
        coverage = Coverage(geometry)
        names = [a.name for a in self.analyses]
        seen: set[str] = set()
        deadline = time.monotonic() + timeout_s
        while len(seen) < len(self._senders):
            left = deadline - time.monotonic()
            if left <= 0 or not self._pull.poll(int(left * 1000)):
                raise FanOutError(
                    f"partials from {len(seen)} of {len(self._senders)} nodes after {timeout_s} s"
                )
            node, partials, counts = _unpack(self._pull.recv_multipart(), names)
            if node in seen:
                raise FanOutError(f"node {node} sent its partials twice")
            if counts.shape != geometry.scan_shape:
                raise FanOutError(f"node {node}: coverage of shape {counts.shape}")
            seen.add(node)
            for a, into, name in zip(self.analyses, merged, names, strict=True):
                a.merge(into, partials[name])
            coverage.counts += counts
            self._emit("merged", node=node, nodes_done=len(seen))
        sent = sum(self.frames_sent)
        if coverage.n_frames != sent:
            raise FanOutError(f"the nodes processed {coverage.n_frames} of {sent} frames sent")
        results = {
            a.name: a.finalize(p, coverage.counts)
            for a, p in zip(self.analyses, merged, strict=True)
        }
        self._emit("finished", frames=int(coverage.n_frames))
        return results, coverage.counts

    def close(self) -> None:
        for s in self._senders:
            s.close()
        self._pull.close(linger=0)

    def __enter__(self) -> FanOut:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _emit(self, what: str, **fields: Any) -> None:
        if self.status is not None:
            self.status.publish("fanout", stage=what, **fields)


def serve_partials(
    endpoint: str,
    analyses: Sequence[Analysis],
    results_endpoint: str,
    *,
    node: str | None = None,
    workers: int = 1,
    timeout_s: float = 60.0,
    status: Any = None,
    ready: Any = None,
) -> int:
    """HPC side: receive one scan at ``endpoint``, run ``analyses`` live, push the partials to
    ``results_endpoint``. ``ready(endpoint)`` is called with the address really bound (e.g.
    for ``tcp://127.0.0.1:*``) once frames can arrive. Returns the frames processed."""
    from stemedge.net.frame_receiver import FrameReceiver
    from stemedge.pipeline import Pipeline

    receiver = FrameReceiver(endpoint, begin_timeout_s=timeout_s, stall_timeout_s=timeout_s)
    bound = receiver.endpoints[0]
    if ready is not None:
        ready(bound)
    try:
        pipe = Pipeline(receiver, list(analyses), workers=workers, status=status)
        result = pipe.run()
        partials, counts = pipe.partials()
    finally:
        receiver.close()
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, int(timeout_s * 1000))
    push.connect(results_endpoint)
    try:
        names = [a.name for a in analyses]
        push.send_multipart(_pack(node or bound, names, partials, counts), copy=True)
    finally:
        push.close()
    return int(result.counters.frames_processed)
