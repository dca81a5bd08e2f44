"""Edge → HPC fan-out over stemedge's ZeroMQ frame protocol on loopback: the edge streams a scan
through its pipeline into two HPC-side receivers (rows split between them), each runs the
analyses; their partials merge into exactly the single-process result, with status events."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zmq

from stemedge.analysis import (
    CenterOfMassAnalysis,
    MeanPattern,
    VirtualDetectorAnalysis,
    run_offline,
)
from stemedge.fanout import FanOut, FanOutError, _pack, serve_partials
from stemedge.masks import annulus, disk
from stemedge.pipeline import Pipeline
from stemedge.sim import lattice, simulate_4dstem
from stemedge.sources.sim import SimSource

DET = (24, 24)


def _analyses():
    return [
        CenterOfMassAnalysis(virtual={"bf": disk(DET, 5)}, nthreads=1),
        VirtualDetectorAnalysis({"adf": annulus(DET, 7, 11)}, nthreads=1),
        MeanPattern(),
    ]


@pytest.fixture(scope="module")
def scan():
    return simulate_4dstem(
        lattice((32, 32), 0.26, dopant_fraction=0.1).phase,
        scan_step_A=0.26,
        det_shape=DET,
        dose=500.0,
        seed=2,
    )


def _free_endpoint() -> str:
    sock = zmq.Context.instance().socket(zmq.PULL)
    sock.bind("tcp://127.0.0.1:*")
    ep = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    sock.close(linger=0)
    return ep


@pytest.mark.parametrize("rows_per_block", [1, 5])
def test_two_nodes_give_the_single_process_result(scan, rows_per_block):
    from stemedge.status import StatusPublisher

    results_ep = _free_endpoint()
    done: dict[int, int] = {}
    errors: list[BaseException] = []
    bound: dict[int, str] = {}
    up = threading.Barrier(3)

    def node(i: int) -> None:
        def ready(ep: str) -> None:
            bound[i] = ep
            up.wait(timeout=30)

        try:
            done[i] = serve_partials(
                "tcp://127.0.0.1:*", _analyses(), results_ep, timeout_s=30, ready=ready
            )
        except BaseException as e:  # reported by the test, not lost in a thread
            errors.append(e)

    threads = [threading.Thread(target=node, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    up.wait(timeout=30)
    nodes = [bound[0], bound[1]]
    status = StatusPublisher("tcp://127.0.0.1:*", job="fanout-test")
    with FanOut(
        nodes,
        _analyses(),
        results_endpoint=results_ep,
        rows_per_block=rows_per_block,
        status=status,
    ) as fan:
        fan.begin(SimSource(scan).geometry)
        # the edge's own pipeline runs nothing here but forwards every stack
        Pipeline(SimSource(scan), [MeanPattern()], sinks=[fan], workers=2).run()
        fan.end()
        results, coverage = fan.collect(timeout_s=30)
    for t in threads:
        t.join(timeout=30)
    status.close()
    assert not errors, errors
    ny, nx = scan.data.shape[:2]
    assert sorted(done.values()) == sorted(fan.frames_sent) and sum(fan.frames_sent) == ny * nx
    assert all(n > 0 for n in fan.frames_sent)
    np.testing.assert_array_equal(coverage, np.ones((ny, nx), np.int64))
    reference = run_offline(scan.data, _analyses())
    for name, arrays in reference.items():
        for key, value in arrays.items():
            np.testing.assert_allclose(results[name][key], value, rtol=1e-6, err_msg=key)
    stages = [h.get("stage") for h in status.history if h["event"] == "fanout"]
    assert stages[0] == "started" and stages[-1] == "finished" and stages.count("merged") == 2


def test_malformed_or_missing_partials_are_refused(scan):
    fan = FanOut(
        ["tcp://127.0.0.1:9"],
        [MeanPattern()],
        results_endpoint="tcp://127.0.0.1:*",
        sender_options={"linger_s": 0.0},
    )  # (nothing listens on the node: its frames never leave, which is all this test needs)
    try:
        fan.begin(SimSource(scan).geometry)
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.connect(fan.results_endpoint)
        push.send_multipart([b'{"kind": "something else"}', b""])
        with pytest.raises(FanOutError, match="malformed"):
            fan.collect(timeout_s=5)
        counts = np.zeros(scan.data.shape[:2], np.int64)
        bad = _pack("n1", ["mean_pattern"], [{"sum": np.zeros(3)}], counts)
        push.send_multipart(bad[:2])  # arrays announced but missing
        with pytest.raises(FanOutError, match="wrong number of parts"):
            fan.collect(timeout_s=5)
        push.close(linger=0)
        with pytest.raises(FanOutError, match="0 of 1 nodes"):
            fan.collect(timeout_s=0.2)
    finally:
        fan.close()
