"""Argument types of the ``stemedge`` command line.

argparse turns an ArgumentTypeError into ``argument --x: <message>``, so messages say only what
is wrong with the value.
"""

from __future__ import annotations

import argparse
import math

__all__ = ["finite_float", "float_at_least", "int_at_least"]


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
