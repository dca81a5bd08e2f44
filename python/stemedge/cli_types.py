"""Argument types of the ``stemedge`` command line, and the file-input options the commands
that read frames share.

argparse turns an ArgumentTypeError into ``argument --x: <message>``, so messages say only what
is wrong with the value.
"""

from __future__ import annotations

import argparse
import math

__all__ = [
    "add_file_input_arguments",
    "finite_float",
    "float_at_least",
    "int_at_least",
    "open_file_input",
]


def int_at_least(minimum: int):
    """An integer ≥ ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer ≥ {minimum}, got {value}")
        return value

    parse.__name__ = f"integer ≥ {minimum}"
    return parse


def finite_float(text: str) -> float:
    """Any finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def float_at_least(minimum: float, *, above: bool = False, unit: str = ""):
    """A finite number ≥ ``minimum`` (> with ``above``); ``unit`` completes the message, e.g.
    ``" frames/s (0 = unpaced)"``."""

    def parse(text: str) -> float:
        value = finite_float(text)
        if value < minimum or (above and value == minimum):
            rel = ">" if above else "≥"
            raise argparse.ArgumentTypeError(f"must be {rel} {minimum:g}{unit}, got {text!r}")
        return value

    parse.__name__ = f"number {'>' if above else '≥'} {minimum:g}"
    return parse


def add_file_input_arguments(p: argparse.ArgumentParser) -> None:
    """``--scan-shape``, ``--frame-shape`` and ``--dtype``: what raw files need (and the scan
    shape relabels the others); read back by :func:`open_file_input`."""
    p.add_argument(
        "--scan-shape",
        type=int_at_least(1),
        nargs=2,
        metavar=("Y", "X"),
        help="scan shape (needed for raw files; relabels others)",
    )
    p.add_argument(
        "--frame-shape",
        type=int_at_least(1),
        nargs=2,
        metavar=("Y", "X"),
        help="detector shape (raw files)",
    )
    p.add_argument("--dtype", help="frame dtype (raw files): uint8, uint16, uint32, float32")


def open_file_input(path, args: argparse.Namespace):
    """The file source for ``path`` with the options of :func:`add_file_input_arguments`."""
    import numpy as np

    from stemedge.sources.files import open_source

    try:
        dtype = None if args.dtype is None else np.dtype(args.dtype)
    except TypeError:
        raise ValueError(f"--dtype: not a numpy dtype: {args.dtype!r}") from None
    return open_source(path, scan_shape=args.scan_shape, frame_shape=args.frame_shape, dtype=dtype)
