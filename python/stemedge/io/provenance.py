"""Provenance helpers shared by the file writers: timestamps, environment, JSON-able values.

Everything a writer records about *how* a file came to be goes through :func:`jsonable`, so a
numpy scalar, a tuple or a ``Path`` in a caller's parameters never breaks a file at ``close()``.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["environment", "jsonable", "utc_now"]


def utc_now() -> str:
    """The current time as an ISO-8601 string in UTC (``2024-05-01T12:00:00.123456+00:00``)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def environment() -> dict[str, Any]:
    """Versions of the software that wrote a file, and the host it ran on."""
    import h5py  # local: only the writers need it, and it is a heavy import

    import stemedge  # at call time: stemedge/__init__ may import io while it is half-built

    return {
        "stemedge_version": stemedge.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "host": platform.node(),
        "pid": os.getpid(),
    }


def jsonable(value: Any) -> Any:
    """``value`` turned into plain JSON types (dict with str keys, list, str, int, float, bool,
    None). numpy scalars and arrays become numbers and lists, tuples and sets become lists, other
    objects (paths, dtypes, enums) their ``str``. Non-finite floats become strings ("nan", "inf")
    because JSON has no spelling for them."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()] if value.ndim else jsonable(value.item())
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return str(value)
