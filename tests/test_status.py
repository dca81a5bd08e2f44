"""The status channel: real ZeroMQ sockets on loopback, publishers in other processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from _helpers import PACKAGE_PARENT
from stemedge.cli_status import main as status_main
from stemedge.cli_status import run as status_run
from stemedge.geometry import ScanGeometry
from stemedge.status import StatusPublisher, StatusWatcher

PYTHON_DIR = PACKAGE_PARENT

# A publisher in its own process, driven over stdin: one JSON command per line, acknowledged
# with "ok" on stdout. {"event": …, **fields} publishes; "wait_subscribed" returns once a
# watcher's subscription has arrived (heartbeat_s None: only the welcome heartbeat is sent).
PUBLISHER_SCRIPT = r"""
import json, sys, time
from stemedge.status import StatusPublisher
opts = json.loads(sys.argv[1])
with StatusPublisher(job=opts["job"], heartbeat_s=opts["heartbeat_s"]) as pub:
    print(pub.endpoint, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd == "wait_subscribed":
            while pub.sent == 0:
                time.sleep(0.005)
        else:
            pub.publish(cmd.pop("event"), **cmd)
        print("ok", flush=True)
"""


class PublisherProcess:
    """A StatusPublisher running in a child process."""

    def __init__(self, job: str = "job-test", heartbeat_s: float | None = 0.1):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PYTHON_DIR), env.get("PYTHONPATH")]))
        opts = json.dumps({"job": job, "heartbeat_s": heartbeat_s})
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PUBLISHER_SCRIPT, opts],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.endpoint = self._line()
        assert self.endpoint.startswith("tcp://127.0.0.1:")

    def _line(self) -> str:
        line = self.proc.stdout.readline().strip()
        if not line:
            raise RuntimeError(f"publisher process exited with {self.proc.wait(5)}")
        return line

    def command(self, cmd) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        assert self._line() == "ok"

    def publish(self, event: str, **fields) -> None:
        self.command({"event": event, **fields})

    def close(self) -> None:
        """End the child (closing its publisher) and reap it."""
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def publisher_process():
    started: list[PublisherProcess] = []

    def start(**kwargs) -> PublisherProcess:
        started.append(PublisherProcess(**kwargs))
        return started[-1]

    yield start
    for p in started:
        p.close()
        assert p.proc.returncode == 0


def free_endpoint() -> str:
    """A loopback address with nobody bound to it (a publisher's, after it closed)."""
    with StatusPublisher(heartbeat_s=None, linger_s=0) as pub:
        return pub.endpoint


def non_heartbeats(events):
    return [e for e in events if e["event"] != "heartbeat"]


# --- publisher basics -----------------------------------------------------------------------


def test_port_zero_is_resolved_to_the_real_port():
    with StatusPublisher(heartbeat_s=None) as pub:
        host, port = pub.endpoint.rsplit(":", 1)
        assert host == "tcp://127.0.0.1" and int(port) > 0


def test_bind_failure_names_the_endpoint():
    with StatusPublisher(heartbeat_s=None) as pub:
        with pytest.raises(OSError, match=pub.endpoint):
            StatusPublisher(pub.endpoint)


def test_envelope_fields_and_encoding():
    geometry = ScanGeometry((8, 16), (32, 32), np.uint16)
    with StatusPublisher(job="j1", heartbeat_s=None) as pub, StatusWatcher(pub.endpoint) as w:
        hello = w.next_event(5)  # the welcome heartbeat: the subscription is in place
        assert hello["event"] == "heartbeat" and hello["state"]["phase"] == "starting"
        t0 = time.time()
        pub.publish("started", geometry=geometry, source={"kind": "sim"}, analyses=["com"])
        pub.publish("rates", frames_per_s=np.float32(2.5), latency_s={"p50": math.nan})
        pub.publish("progress", processed=np.int64(3), total=128, dropped=0, fraction=3 / 128)
        started, rates, progress = (w.next_event(5) for _ in range(3))
    assert [e["event"] for e in (started, rates, progress)] == ["started", "rates", "progress"]
    assert {e["job"] for e in (started, rates, progress)} == {"j1"}
    assert [e["seq"] for e in (hello, started, rates, progress)] == [0, 1, 2, 3]
    assert abs(started["time"] - t0) < 5
    assert ScanGeometry.from_dict(started["geometry"]) == geometry
    assert rates["frames_per_s"] == 2.5 and rates["latency_s"] == {"p50": None}  # strict JSON
    assert progress["processed"] == 3 and type(progress["processed"]) is int


def test_state_history_and_argument_errors():
    with StatusPublisher(job="j2", heartbeat_s=None, history=2) as pub:
        pub.publish("started", source={"kind": "folder"})
        pub.publish("progress", processed=5, total=10)
        pub.publish("progress", processed=7, total=10)
        state = pub.state
        assert state["phase"] == "running" and state["processed"] == 7
        assert state["source"] == {"kind": "folder"} and state["last_event"] == "progress"
        assert [e["processed"] for e in pub.history] == [5, 7]  # bounded: oldest left
        pub.publish("finished", elapsed_s=1.0)
        assert pub.state["phase"] == "finished"
        with pytest.raises(ValueError, match="heartbeat"):
            pub.publish("heartbeat")
        with pytest.raises(ValueError, match="reserved"):
            pub.publish("progress", seq=3)
        with pytest.raises(TypeError, match="object"):
            pub.publish("progress", thing=object())
    pub.close()  # idempotent
    assert pub.closed
    with pytest.raises(RuntimeError, match="closed"):
        pub.publish("progress", processed=8)


def test_context_manager_reports_an_exception_as_error_event():
    with StatusWatcher(free_endpoint()) as w:
        pass  # (only to show closing twice is fine)
    w.close()
    with pytest.raises(ZeroDivisionError):
        with StatusPublisher(heartbeat_s=None) as pub:
            watcher = StatusWatcher(pub.endpoint)
            assert watcher.next_event(5)["event"] == "heartbeat"
            pub.publish("started")
            1 / 0  # noqa: B018
    with watcher:
        events = list(watcher.events(timeout_s=5))
    assert [e["event"] for e in events] == ["started", "error"]
    assert events[-1]["type"] == "ZeroDivisionError" and "division" in events[-1]["message"]


# --- across processes -----------------------------------------------------------------------


def test_events_from_another_process_arrive_in_order(publisher_process):
    pub = publisher_process(heartbeat_s=0.1)
    with StatusWatcher(pub.endpoint, timeout_s=5) as w:
        assert w.next_event()["event"] == "heartbeat"  # subscribed: nothing below can be lost
        pub.publish("started", analyses=["com"])
        for i in range(5):
            pub.publish("progress", processed=i, total=5, dropped=0, fraction=i / 5)
        pub.publish("finished", counters={"processed": 5}, elapsed_s=0.1)
        events = non_heartbeats(w.events())
        assert w.malformed == 0 and w.missed == 0
    assert [e["event"] for e in events] == ["started"] + ["progress"] * 5 + ["finished"]
    assert [e["processed"] for e in events[1:-1]] == list(range(5))
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and {e["job"] for e in events} == {"job-test"}


def test_late_joiner_learns_the_state_from_a_heartbeat(publisher_process):
    pub = publisher_process(heartbeat_s=0.2)
    pub.publish("started", analyses=["com", "virtual"])
    pub.publish("progress", processed=50, total=100, dropped=1, fraction=0.5)
    # The watcher joins after both events were sent: PUB/SUB never delivers them to it.
    t0 = time.monotonic()
    with StatusWatcher(pub.endpoint, timeout_s=5) as w:
        first = w.next_event()
        joined_s = time.monotonic() - t0
        second = w.next_event()
        beat_s = time.monotonic() - t0 - joined_s
    assert first["event"] == "heartbeat"
    state = first["state"]
    assert state["phase"] == "running" and state["last_event"] == "progress"
    assert state["processed"] == 50 and state["analyses"] == ["com", "virtual"]
    assert joined_s < 1.0  # welcomed on subscription, not only at the next beat
    assert second["event"] == "heartbeat" and beat_s < 1.5  # then every heartbeat_s


def test_late_joiner_after_the_job_finished_stops(publisher_process):
    pub = publisher_process(heartbeat_s=0.2)
    pub.publish("started")
    pub.publish("finished", counters={"processed": 4}, elapsed_s=0.5)
    with StatusWatcher(pub.endpoint, timeout_s=5) as w:
        events = list(w.events())
    assert len(events) == 1 and events[0]["state"]["last_event"] == "finished"


def test_heartbeats_keep_a_quiet_job_alive_and_silence_times_out(publisher_process):
    pub = publisher_process(heartbeat_s=0.05)
    with StatusWatcher(pub.endpoint) as w:
        beats = 0
        t0 = time.monotonic()
        for event in w.events(until=(), timeout_s=0.5):  # would raise after 0.5 s of silence
            beats += event["event"] == "heartbeat"
            if time.monotonic() - t0 > 1.0:
                break
        assert beats >= 5
        pub.close()  # the job goes away: heartbeats stop
        t1 = time.monotonic()
        with pytest.raises(TimeoutError, match=r"no status message from tcp://.* not even a heart"):
            for _ in w.events(until=(), timeout_s=0.5):
                t1 = time.monotonic()
        assert 0.4 < time.monotonic() - t1 < 2.0


def test_next_event_returns_none_on_timeout():
    with StatusWatcher(free_endpoint(), timeout_s=0.2) as w:
        t0 = time.monotonic()
        assert w.next_event() is None
        assert 0.15 < time.monotonic() - t0 < 1.0
        with pytest.raises(TimeoutError, match=r"for 0\.1 s"):
            next(w.events(timeout_s=0.1))


def test_bad_endpoint_is_a_clear_value_error():
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        StatusWatcher("no-transport-here")


# --- robustness -----------------------------------------------------------------------------


def test_malformed_messages_are_counted_and_skipped():
    ctx = zmq.Context()
    raw = ctx.socket(zmq.PUB)
    try:
        port = raw.bind_to_random_port("tcp://127.0.0.1")
        good = {"event": "progress", "job": "raw", "seq": 0, "time": 1.0}
        garbage = [
            [b"not json at all"],
            [b"\xff\xfe\x00 not utf-8"],
            [b"[1, 2, 3]"],
            [b'{"event": "progress", "job": "raw"}'],  # no seq, no time
            [b'{"event": 7, "job": "raw", "seq": 1, "time": 1.0}'],
            [b'{"event": "x", "job": "raw", "seq": "1", "time": 1.0}'],
            [b'{"event": "heartbeat", "job": "raw", "seq": 1, "time": 1.0}'],  # no state
            [b"{}", b"{}"],  # two parts
            [b""],
        ]
        with StatusWatcher(f"tcp://127.0.0.1:{port}") as w:
            # Slow joiner: repeat a valid message until one gets through.
            deadline = time.monotonic() + 5
            while w.next_event(0.02) is None:
                assert time.monotonic() < deadline, "subscription never arrived"
                raw.send(json.dumps(good).encode())
            while w.next_event(0.1) is not None:  # drain the extra copies
                pass
            for parts in garbage:
                raw.send_multipart(parts)
            raw.send(json.dumps({**good, "seq": 99, "marker": True}).encode())
            event = w.next_event(5)
            assert event is not None and event["marker"] is True
            assert w.malformed == len(garbage)
            assert w.last_malformed == "not UTF-8 JSON (Expecting value: line 1 column 1 (char 0))"
    finally:
        raw.close(linger=0)
        ctx.term()


def test_many_threads_publishing_corrupt_nothing():
    n_threads, per_thread = 8, 1250  # 10 000 events
    with (
        StatusPublisher(heartbeat_s=0.01, sndhwm=0, history=100_000) as pub,
        StatusWatcher(pub.endpoint, rcvhwm=0, timeout_s=20) as w,
    ):
        assert w.next_event()["event"] == "heartbeat"
        go = threading.Barrier(n_threads)

        def worker(t: int) -> None:
            go.wait()
            for i in range(per_thread):
                pub.publish("progress", thread=t, i=i, check=f"{t}:{i}:" * 10)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        received = []
        seqs = []
        while len(received) < n_threads * per_thread:
            event = w.next_event()
            assert event is not None, f"only {len(received)} events arrived"
            seqs.append(event["seq"])
            if event["event"] == "progress":
                received.append(event)
        for th in threads:
            th.join()
        assert w.malformed == 0 and w.missed == 0 and pub.dropped == 0
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # wire order == seq order
    pairs = {(e["thread"], e["i"]) for e in received}
    assert len(pairs) == n_threads * per_thread
    assert all(e["check"] == f"{e['thread']}:{e['i']}:" * 10 for e in received)
    # Each thread's own events stay in its order.
    for t in range(n_threads):
        assert [e["i"] for e in received if e["thread"] == t] == list(range(per_thread))
    assert len(pub.history) == n_threads * per_thread


def test_a_stuck_watcher_never_blocks_publish_and_drops_are_counted():
    blob = "x" * 65536
    with (
        StatusPublisher(heartbeat_s=0.05, sndhwm=4) as pub,
        StatusWatcher(pub.endpoint, rcvhwm=4) as w,
    ):
        assert w.next_event(5)["event"] == "heartbeat"
        t0 = time.monotonic()
        results = [pub.publish("progress", i=i, blob=blob) for i in range(2000)]  # 128 MiB
        elapsed = time.monotonic() - t0
        assert elapsed < 5.0
        assert pub.dropped > 0 and results.count(False) <= pub.dropped
        assert results.count(True) > 0
        # The watcher catches up: the next heartbeat reports the drops, seq gaps are counted.
        deadline = time.monotonic() + 5
        while True:
            event = w.next_event(1)
            assert event is not None and time.monotonic() < deadline
            if event["event"] == "heartbeat" and event["status_dropped"] > 0:
                break
        assert w.missed > 0
        assert pub.state["i"] == 1999  # the in-process record has everything


# --- the command line -----------------------------------------------------------------------


def cli_args(endpoint: str, *extra: str):
    import argparse

    from stemedge.cli_status import register

    parser = argparse.ArgumentParser(prog="stemedge")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["status", "--connect", endpoint, *extra])


def test_cli_prints_events_until_finished(publisher_process, capsys):
    pub = publisher_process(heartbeat_s=None)
    result = {}
    args = cli_args(pub.endpoint, "--until-finished", "--timeout", "5")
    cli = threading.Thread(target=lambda: result.setdefault("rc", status_run(args)))
    cli.start()
    pub.command("wait_subscribed")
    pub.publish("started", geometry=ScanGeometry((64, 64), (128, 128), "u2").to_dict())
    pub.publish("rates", frames_per_s=10_234.0, bytes_per_s=3.35e8, latency_s={"p99": 0.0042})
    pub.publish("progress", frames_in=1300, processed=1234, dropped=0, total=4096,
                fraction=1234 / 4096)  # fmt: skip
    pub.publish("finished", counters={"processed": 4096, "dropped": 0}, elapsed_s=0.4)
    cli.join(10)
    assert result["rc"] == 0
    lines = capsys.readouterr().out.splitlines()
    bodies = [line.split(" ", 1)[1] for line in lines]  # without the HH:MM:SS stamp
    assert bodies[0].startswith("heartbeat job job-test starting")
    assert bodies[1] == "started job job-test, 64×64 scan of 128×128 uint16 frames"
    assert bodies[2] == "rates 10.2 k frames/s, 335 MB/s, latency p99 4.2 ms"
    assert bodies[3] == "progress 1234/4096 frames (30.1 %), 10.2 k frames/s, 0 dropped"
    assert bodies[4] == "finished job job-test: 4096 frames processed, 0 dropped in 400 ms"


def test_cli_reads_the_pipelines_field_names(publisher_process, capsys):
    """stemedge.pipeline sends frames_processed/frames_dropped, the rate inside progress,
    analyses as dicts, a summary in finished and no error type: the lines read the same."""
    pub = publisher_process(heartbeat_s=None)
    result = {}
    args = cli_args(pub.endpoint, "--until-finished", "--timeout", "5")
    cli = threading.Thread(target=lambda: result.setdefault("rc", status_run(args)))
    cli.start()
    pub.command("wait_subscribed")
    pub.publish("started", analyses=[{"name": "com", "radius": 3}, {"name": "virtual"}])
    pub.publish("progress", frames_in=60, frames_processed=50, frames_dropped=2, total=100,
                fraction=0.5, frames_per_s=2500.0, latency_p99_s=0.001)  # fmt: skip
    pub.publish("error", message="SourceError: stalled", frames_processed=50, total=100)
    cli.join(10)
    assert result["rc"] == 1
    bodies = [line.split(" ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert bodies[1:] == [
        "started job job-test, analyses com, virtual",
        "progress 50/100 frames (50.0 %), 2.5 k frames/s, 2 dropped",
        "error SourceError: stalled",
    ]


def test_cli_exit_status_for_error_and_json_lines(publisher_process, capsys):
    pub = publisher_process(heartbeat_s=0.1)
    pub.publish("started")
    pub.publish("error", message="ring overflow", type="SourceError")
    rc = status_run(cli_args(pub.endpoint, "--until-finished", "--json", "--timeout", "5"))
    assert rc == 1
    lines = capsys.readouterr().out.splitlines()
    last = json.loads(lines[-1])
    assert last["state"]["phase"] == "error" and last["state"]["message"] == "ring overflow"


def test_cli_times_out_with_status_2(capsys):
    t0 = time.monotonic()
    assert status_run(cli_args(free_endpoint(), "--timeout", "0.3")) == 2
    assert time.monotonic() - t0 < 2.0
    assert "no status message" in capsys.readouterr().err


def test_cli_as_a_module_in_its_own_process():
    """``python -m stemedge.cli_status`` against a publisher in this process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PYTHON_DIR), env.get("PYTHONPATH")]))
    with StatusPublisher(heartbeat_s=None, job="mod") as pub:
        cli = subprocess.Popen(
            [sys.executable, "-m", "stemedge.cli_status", "--connect", pub.endpoint,
             "--until-finished", "--timeout", "10"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while pub.sent == 0:  # the welcome heartbeat went out: the CLI has subscribed
                assert time.monotonic() < deadline and cli.poll() is None
                time.sleep(0.01)
            pub.publish("progress", processed=2, total=4, dropped=0, fraction=0.5)
            pub.publish("finished", counters={"processed": 4, "dropped": 0}, elapsed_s=2)
            out, err = cli.communicate(timeout=20)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.communicate()
    assert cli.returncode == 0, err
    assert out.splitlines()[-2].endswith("progress 2/4 frames (50.0 %), 0 dropped")
    assert out.splitlines()[-1].endswith("finished job mod: 4 frames processed, 0 dropped in 2 s")


def test_cli_usage_error_is_status_2(capsys):
    assert status_main(["--connect", "localhost:5600"]) == 2
    assert "tcp://HOST:PORT" in capsys.readouterr().err
