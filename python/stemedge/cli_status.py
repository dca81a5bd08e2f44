"""``stemedge status``: follow a running job's status channel (:mod:`stemedge.status`).

::

    stemedge status --connect tcp://HOST:PORT [--json] [--until-finished] [--timeout S]

prints one line per event (``12:03:04 progress 1234/4096 frames (30.1 %), 10.2 k frames/s,
0 dropped``) or, with ``--json``, each message as one JSON line. Exit status: 0 after
``finished``, 1 after ``error`` (with ``--until-finished``), 2 when nothing arrived for
``--timeout`` seconds or the address is unusable, 130 when interrupted.

The main ``stemedge`` command calls :func:`register` and dispatches to :func:`run`;
``python -m stemedge.cli_status ARGS`` runs the same command alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from stemedge.cli_types import float_at_least
from stemedge.status import StatusWatcher

__all__ = ["register", "run"]

EXIT_FINISHED = 0
EXIT_ERROR = 1
EXIT_TIMEOUT = 2  # also the CLI's status for user errors (an unusable address)
EXIT_INTERRUPTED = 130
DEFAULT_TIMEOUT_S = 10.0  # ten default heartbeats: long enough to call a publisher gone


# --- arguments ------------------------------------------------------------------------------


def _endpoint(text: str) -> str:
    if "://" not in text:
        raise argparse.ArgumentTypeError(
            f"expected a ZeroMQ address such as tcp://HOST:PORT, got {text!r}"
        )
    return text


_timeout = float_at_least(0, unit=" seconds (0 waits forever)")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--connect",
        required=True,
        type=_endpoint,
        metavar="tcp://HOST:PORT",
        help="the job's status address (printed when the job starts)",
    )
    parser.add_argument("--json", action="store_true", help="print each message as a JSON line")
    parser.add_argument(
        "--until-finished",
        action="store_true",
        help="exit after the job's finished (status 0) or error (status 1) event",
    )
    parser.add_argument(
        "--timeout",
        type=_timeout,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=(
            f"exit with status 2 when nothing, not even a heartbeat, arrived for S seconds "
            f"(default {DEFAULT_TIMEOUT_S:g}; 0 waits forever)"
        ),
    )


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``status`` subcommand to an argparse ``subparsers`` object; returns its parser.
    Dispatch the parsed arguments to :func:`run`."""
    parser = subparsers.add_parser(
        "status",
        help="follow a running job's progress, rates and errors",
        description=(
            "Connect to a job's status channel and print one line per event. Exit status: 0 "
            "after finished, 1 after error (with --until-finished), 2 on timeout."
        ),
    )
    _add_arguments(parser)
    return parser


# --- formatting -----------------------------------------------------------------------------


def _si(value: Any, unit: str, space: str = " ") -> str:
    """``10.2 k frames/s``, ``333 MB/s`` (``space`` goes between prefix and unit)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return f"? {unit}"
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {prefix}{space}{unit}"
    return f"{v:.3g} {unit}"


def _seconds(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "?"
    if v < 1e-3:
        return f"{v * 1e6:.3g} µs"
    if v < 1:
        return f"{v * 1e3:.3g} ms"
    return f"{v:.3g} s"


def _fields(message: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    """``key=value`` for the fields no formatter knows (long values cut short)."""
    parts = []
    for key, value in message.items():
        if key in ("event", "job", "seq", "time", *skip):
            continue
        text = json.dumps(value, separators=(",", ":"), default=str)
        parts.append(f"{key}={text if len(text) <= 60 else text[:57] + '...'}")
    return " ".join(parts)


def _first(m: dict[str, Any], *keys: str, default: Any = None) -> Any:
    """The first of ``keys`` present (and not null) in ``m``: field names differ a little
    between senders (``processed`` or ``frames_processed``), the line should not."""
    for key in keys:
        if m.get(key) is not None:
            return m[key]
    return default


def _latency(m: dict[str, Any]) -> str:
    """``latency p50 1.2 ms, p99 4.5 ms`` from ``latency_s`` (a dict) or ``latency_<stat>_s``."""
    stats = m.get("latency_s") if isinstance(m.get("latency_s"), dict) else {}
    stats = stats or {
        k[len("latency_") : -len("_s")]: v
        for k, v in m.items()
        if k.startswith("latency_") and k.endswith("_s") and v is not None
    }
    if not stats:
        return ""
    return "latency " + ", ".join(f"{k} {_seconds(v)}" for k, v in stats.items())


class _Formatter:
    """One readable line per message; remembers the latest rate for progress lines and which
    events were shown, so a heartbeat is printed only when it says something new."""

    def __init__(self) -> None:
        self.frames_per_s: Any = None
        self.shown_seq: int | None = None

    def _progress(self, m: dict[str, Any]) -> str:
        done = _first(m, "processed", "frames_processed", "frames_in", default="?")
        line = f"{done}/{m.get('total', '?')} frames"
        fraction = m.get("fraction")
        if isinstance(fraction, (int, float)):
            line += f" ({100 * fraction:.1f} %)"
        if self.frames_per_s is not None:
            line += f", {_si(self.frames_per_s, 'frames/s')}"
        return line + f", {_first(m, 'dropped', 'frames_dropped', default=0)} dropped"

    def _rates(self, m: dict[str, Any]) -> str:
        parts = []
        if "frames_per_s" in m:
            parts.append(_si(m["frames_per_s"], "frames/s"))
        if "bytes_per_s" in m:
            parts.append(_si(m["bytes_per_s"], "B/s", space=""))
        latency = _latency(m)
        if latency:
            parts.append(latency)
        rest = _fields(
            m, skip=("frames_per_s", "bytes_per_s", *(k for k in m if k.startswith("latency_")))
        )
        return ", ".join(parts) + (f" {rest}" if rest else "")

    def _started(self, m: dict[str, Any]) -> str:
        parts = [f"job {m['job']}"]
        geometry = m.get("geometry")
        if isinstance(geometry, dict):
            try:
                sy, sx = geometry["scan_shape"]
                dy, dx = geometry["frame_shape"]
                dtype = np.dtype(geometry["dtype"]).name
                parts.append(f"{sy}×{sx} scan of {dy}×{dx} {dtype} frames")
            except (KeyError, TypeError, ValueError):
                parts.append(f"geometry {json.dumps(geometry)}")
        source = m.get("source")
        if isinstance(source, dict):
            source = source.get("kind", source)
        if source is not None:
            parts.append(f"from {source}")
        analyses = m.get("analyses")
        if analyses:
            names = analyses if isinstance(analyses, list) else [analyses]
            names = [a.get("name", a) if isinstance(a, dict) else a for a in names]
            parts.append("analyses " + ", ".join(str(a) for a in names))
        return ", ".join(parts)

    def _finished(self, m: dict[str, Any]) -> str:
        counters = _first(m, "counters", "summary", default={})
        counters = counters if isinstance(counters, dict) else {}
        line = f"job {m['job']}"
        processed = _first(counters, "processed", "frames_processed")
        if processed is not None:
            line += f": {processed} frames processed"
        dropped = _first(counters, "dropped", "frames_dropped")
        if dropped is not None:
            line += f", {dropped} dropped"
        elapsed = _first(m, "elapsed_s", "elapsed", default=counters.get("elapsed_s"))
        if elapsed is not None:
            line += f" in {_seconds(elapsed)}"
        return line

    def _heartbeat(self, m: dict[str, Any]) -> str:
        state = m["state"]
        line = f"job {m['job']} {state.get('phase', '?')}"
        if "total" in state:
            line += ": " + self._progress(state)
        if state.get("phase") == "error":
            line += f": {self._error(state)}"
        if m.get("status_dropped"):
            line += f" ({m['status_dropped']} status messages dropped)"
        return line

    @staticmethod
    def _error(m: dict[str, Any]) -> str:
        message = str(m.get("message", ""))
        return f"{m['type']}: {message}" if m.get("type") else message or "(no message)"

    def line(self, m: dict[str, Any]) -> str | None:
        """The line for ``m``, or None for a heartbeat that tells nothing new."""
        event = m["event"]
        if event == "heartbeat":
            last_seq = m["state"].get("last_seq")
            if self.shown_seq is not None and (last_seq is None or last_seq <= self.shown_seq):
                return None
            self.shown_seq = last_seq if last_seq is not None else -1
        else:
            self.shown_seq = m["seq"]
        rate = _first(m["state"] if event == "heartbeat" else m, "frames_per_s")
        if rate is not None and event != "finished":  # a final average is not the live rate
            self.frames_per_s = rate
        body = {
            "progress": self._progress,
            "rates": self._rates,
            "started": self._started,
            "finished": self._finished,
            "heartbeat": self._heartbeat,
            "error": self._error,
            "drops": lambda m: (
                f"{m.get('dropped', '?')} frames dropped"
                + (f" (+{m['new']})" if "new" in m else "")
                + (f": {m['reason']}" if "reason" in m else "")
            ),
        }.get(event, _fields)(m)
        stamp = time.strftime("%H:%M:%S", time.localtime(m["time"]))
        return f"{stamp} {event} {body}".rstrip()


def _terminal(message: dict[str, Any]) -> str | None:
    """``finished``/``error`` if ``message`` reports the end of the job, else None."""
    event = message["event"]
    if event == "heartbeat":
        event = message["state"].get("last_event")
    return event if event in ("finished", "error") else None


# --- the command ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run ``stemedge status`` with parsed arguments; returns the exit status.

    Returns
    -------
    int
        0 after ``finished``, 1 after ``error`` (both only with ``--until-finished``), 2 when
        nothing arrived for ``--timeout`` seconds.

    Raises
    ------
    ValueError
        The address cannot be used (the main CLI turns it into one line on stderr, status 2).
    """
    until = ("finished", "error") if args.until_finished else ()
    formatter = _Formatter()
    with StatusWatcher(args.connect, timeout_s=args.timeout or None) as watcher:
        last = None
        try:
            for message in watcher.events(until=until):
                last = message
                text = json.dumps(message) if args.json else formatter.line(message)
                if text is not None:
                    print(text, flush=True)
        except TimeoutError as exc:
            print(f"stemedge status: {exc}", file=sys.stderr)
            return EXIT_TIMEOUT
    return EXIT_ERROR if last is not None and _terminal(last) == "error" else EXIT_FINISHED


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stemedge.cli_status``: the ``status`` command alone."""
    parser = argparse.ArgumentParser(prog="stemedge status", description=__doc__.split("\n")[0])
    _add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_TIMEOUT
    try:
        return run(args)
    except ValueError as exc:
        print(f"stemedge status: error: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Piped into `head` and the reader left: point stdout at devnull so the final flush
        # does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
