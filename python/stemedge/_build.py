"""What the installed native extensions were compiled with, and what they can use here."""

from __future__ import annotations

import importlib
from typing import Any

from stemedge import _native


def cuda_report() -> dict[str, Any]:
    """The CUDA extension's view of this machine: compiled or not, devices, or why none."""
    try:
        cuda = importlib.import_module("stemedge._cuda")
    except ImportError as exc:
        return {"compiled": False, "devices": [], "error": f"CUDA extension not built ({exc})"}
    report = dict(cuda.device_report())
    report["compiled"] = True
    return report


def build_info() -> dict[str, Any]:
    """Compiler, SIMD levels compiled / available / active, threads, and CUDA status.

    Examples
    --------
    >>> info = build_info()
    >>> info["simd_active"] in info["simd_available"]
    True
    """
    info = dict(_native.build_info())
    info["cuda"] = cuda_report()
    return info
