"""Argument checks shared by the simulator modules."""

from __future__ import annotations

from typing import Any

import numpy as np

# Detector dtypes the simulator writes (the kernels' four plus float64 for references).
DTYPES = (np.uint8, np.uint16, np.uint32, np.float32, np.float64)


def check_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a numpy dtype, or a TypeError naming the supported ones."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a numpy dtype, got {dtype!r}") from None
    if dt.type not in DTYPES:
        names = ", ".join(np.dtype(t).name for t in DTYPES)
        raise TypeError(f"dtype must be one of {names}; got {dt.name}")
    return dt
