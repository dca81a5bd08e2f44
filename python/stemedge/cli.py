"""The ``stemedge`` command line: ``info``, ``demo``, ``status``, ``process``, ``stream``,
``compress``, ``decompress``, ``serve`` and ``steer``.

Errors the user can fix (bad arguments, an unwritable output folder) end with one line on stderr
and exit status 2, never a traceback; a traceback means a bug in stemedge.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from stemedge.cli_types import finite_float, float_at_least, int_at_least
from stemedge.sources.base import SourceError

DOSE = float_at_least(0, unit=" electrons per frame")
RATE = float_at_least(0, unit=" frames/s (0 = unpaced)")

__all__ = ["main"]

EXIT_USAGE = 2  # argparse's own status for usage errors; we use it for every user error
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line (no usage block) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --- the parser -------------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    from stemedge import __version__
    from stemedge.demo import DEFAULT_RATE, MIN_DET, MIN_SCAN

    parser = _Parser(
        prog="stemedge",
        description="Live 4D-STEM analysis next to the microscope.",
    )
    parser.add_argument("--version", action="version", version=f"stemedge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    info = sub.add_parser("info", help="show how the native kernels were built and what runs here")
    info.add_argument("--json", action="store_true", help="print the raw build_info() as JSON")

    demo = sub.add_parser(
        "demo",
        help="stream a simulated scan through the live pipeline (CoM, virtual BF/ADF, DPC, "
        "iDPC) and compare with the truth",
        description=(
            "Simulate a doped lattice (80 kV, α = 25 mrad, 0.26 Å steps), stream it like a "
            "detector through the frame ring into live workers (fused CoM + virtual-detector "
            "pass, mean pattern) while the frames go to an EMD file, recover the scan rotation, "
            "compute DPC and iDPC, and write the EMD file (frames, results, provenance), maps "
            "(.npy), summary.json and summary.png."
        ),
    )
    demo.add_argument(
        "--out",
        default="stemedge-demo",
        metavar="DIR",
        help="output folder (default: ./stemedge-demo)",
    )
    demo.add_argument(
        "--scan",
        type=int_at_least(MIN_SCAN),
        default=64,
        metavar="N",
        help=f"scan positions per side (≥ {MIN_SCAN}; default 64; use ≥ 24 with noise)",
    )
    demo.add_argument(
        "--det",
        type=int_at_least(MIN_DET),
        default=64,
        metavar="N",
        help=f"detector pixels per side (≥ {MIN_DET}; default 64)",
    )
    demo.add_argument(
        "--dose",
        type=DOSE,
        default=2e4,
        metavar="E_PER_FRAME",
        help="electrons per frame, Poisson noise (default 2e4; 0 = noise-free)",
    )
    demo.add_argument(
        "--seed",
        type=int_at_least(0),
        default=0,
        metavar="S",
        help="seed of the sample's dopants/vacancies and of the noise (default 0)",
    )
    demo.add_argument(
        "--rotation",
        type=finite_float,
        default=0.0,
        metavar="DEG",
        help="detector rotation given to the simulator, to be recovered (default 0)",
    )
    demo.add_argument(
        "--flip",
        action="store_true",
        help="mirror the simulated detector's y axis (to be recovered)",
    )
    demo.add_argument(
        "--rate",
        type=RATE,
        default=DEFAULT_RATE,
        metavar="FPS",
        help=f"frames/s the simulated detector streams at (default {DEFAULT_RATE:g}; "
        "0 = as fast as the pipeline takes them)",
    )
    demo.add_argument(
        "--workers",
        type=int_at_least(1),
        default=2,
        metavar="N",
        help="pipeline worker threads (default 2)",
    )
    demo.add_argument(
        "--gpu",
        choices=("off", "auto", "on"),
        default="off",
        help="live CoM + virtual detectors on the GPU (auto: when one is here; default off)",
    )
    demo.add_argument(
        "--status",
        metavar="ENDPOINT",
        help="publish status events there (e.g. tcp://127.0.0.1:5556; watch with "
        "`stemedge status --connect ...`)",
    )
    demo.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar and no summary (errors still go to stderr)",
    )
    from stemedge import cli_codec, cli_jobs, cli_serve, cli_status, cli_steer  # (pyzmq: here)

    cli_jobs.register(sub)
    cli_codec.register(sub)
    cli_status.register(sub)
    cli_serve.register(sub)
    cli_steer.register(sub)
    return parser


# --- commands ---------------------------------------------------------------------------------


def _format_info(info: dict[str, Any]) -> str:
    """build_info() as aligned 'key  value' lines."""
    lines = [f"stemedge {info.get('version', '?')}"]

    def row(key: str, value: Any) -> None:
        lines.append(f"  {key:<15} {value}")

    flags = info.get("cxx_flags")
    row("compiler", f"{info.get('compiler', '?')}" + (f" ({flags})" if flags else ""))
    row("SIMD active", f"{info.get('simd_active', '?')} (mode {info.get('simd_mode', '?')})")
    row("SIMD available", ", ".join(info.get("simd_available", [])) or "none")
    compiled = info.get("simd_compiled", {})
    for i, (level, what) in enumerate(compiled.items()):
        row("SIMD compiled" if i == 0 else "", f"{level}: {what}")
    cpus = info.get("cpus_available", "?")
    row("threads", f"{info.get('threads', '?')} (CPUs available: {cpus})")
    cuda = info.get("cuda", {})
    if not cuda.get("compiled"):
        row("CUDA", f"not compiled ({cuda.get('error', 'no reason given')})")
        return "\n".join(lines)
    extras = [
        f"nvcc {cuda['nvcc_version']}" if cuda.get("nvcc_version") else "",
        f"archs {cuda['architectures']}" if cuda.get("architectures") else "",
    ]
    row("CUDA", "compiled (" + ", ".join(e for e in extras if e) + ")")
    devices = cuda.get("devices") or []
    for i, dev in enumerate(devices):
        row("CUDA devices" if i == 0 else "", dev if isinstance(dev, str) else json.dumps(dev))
    if not devices:
        row("CUDA devices", f"none: {cuda.get('error') or 'no CUDA device found'}")
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace) -> int:
    from stemedge import build_info

    info = build_info()
    print(json.dumps(info, indent=2, default=str) if args.json else _format_info(info))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from stemedge.demo import run_demo

    result = run_demo(
        args.out,
        scan=args.scan,
        det=args.det,
        dose=args.dose,
        seed=args.seed,
        rotation_deg=args.rotation,
        flip_y=args.flip,
        rate=args.rate,
        workers=args.workers,
        gpu={"off": False, "on": True, "auto": "auto"}[args.gpu],
        status=args.status,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(result.report())
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from stemedge import cli_status

    return cli_status.run(args)


def _cmd_process(args: argparse.Namespace) -> int:
    from stemedge import cli_jobs

    return cli_jobs.run_process(args)


def _cmd_stream(args: argparse.Namespace) -> int:
    from stemedge import cli_jobs

    return cli_jobs.run_stream(args)


def _cmd_compress(args: argparse.Namespace) -> int:
    from stemedge import cli_codec

    return cli_codec.run_compress(args)


def _cmd_decompress(args: argparse.Namespace) -> int:
    from stemedge import cli_codec

    return cli_codec.run_decompress(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from stemedge import cli_serve

    return cli_serve.run(args)


def _cmd_steer(args: argparse.Namespace) -> int:
    from stemedge import cli_steer

    return cli_steer.run(args)


_COMMANDS = {
    "info": _cmd_info,
    "demo": _cmd_demo,
    "status": _cmd_status,
    "process": _cmd_process,
    "stream": _cmd_stream,
    "compress": _cmd_compress,
    "decompress": _cmd_decompress,
    "serve": _cmd_serve,
    "steer": _cmd_steer,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``stemedge`` command line; returns the exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 2 for a user error (one line on stderr), 130 when interrupted.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return _COMMANDS[args.command](args)
    except BrokenPipeError:
        # Output piped into `head` and the reader left: not an error worth a message. Point
        # stdout at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, OSError, SourceError) as exc:
        # Argument values argparse cannot judge alone (e.g. a dose that overflows the counts),
        # unusable output folders and corrupt or incomplete input files: the message is for the
        # user, the traceback is not.
        print(f"stemedge {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print(
            f"stemedge {args.command}: error: out of memory; use a smaller --scan or --det",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"stemedge {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
