"""Shared test helpers: where this stemedge lives (for subprocesses), the real data files, small
random SSB scans and the codec's integer test frames."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import stemedge
from stemedge.calibration import Calibration

# The directory this stemedge was imported from: the source tree's python/ in development, the
# virtual environment's site-packages in CI. Subprocesses must import the same (built) package.
PACKAGE_PARENT = Path(stemedge.__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """os.environ with PYTHONPATH leading to this stemedge."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), env.get("PYTHONPATH")]))
    return env


def _realdata() -> Path:
    """The real Merlin files: ../shared/realdata beside the checkout, or the workplace's copy."""
    here = Path(__file__).resolve().parents[1]
    candidates = [here.parent / "shared" / "realdata", Path("/work/shared/realdata")]
    if os.environ.get("STEMEDGE_REALDATA"):
        candidates.insert(0, Path(os.environ["STEMEDGE_REALDATA"]))
    for c in candidates:
        if (c / "rosettasciio_merlin").is_dir():
            return c / "rosettasciio_merlin"
    return candidates[-1] / "rosettasciio_merlin"


MERLIN = _realdata()


def ssb_scan(scan=(15, 17), det=(23, 21), seed=0, dtype=np.float32, **cal):
    """Random non-negative 4D data and a calibration whose bright-field disk fits the detector."""
    rng = np.random.default_rng(seed)
    data = rng.random((*scan, *det)) * 50
    data = data.astype(dtype) if np.dtype(dtype).kind == "f" else np.round(data).astype(dtype)
    c = dict(scan_step_A=(0.3, 0.25), det_mrad_per_px=2.0, voltage_kV=200.0, convergence_mrad=14.0)
    c.update(cal)
    return data, Calibration(**c)


#: The integer dtypes the codec's DENSE coders (CPU and GPU) take.
CODEC_INT_DTYPES = [np.uint8, np.uint16, np.uint32, np.int8, np.int16, np.int32]


def codec_frames(dtype, shape, rate_max, seed=0, outliers=1e-3):
    """Poisson frames (rates up to ``rate_max`` per pixel) with a share ``outliers`` of values at
    the dtype's extremes (escapes for the coders)."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    rates = rng.uniform(0, rate_max, shape[-2:] if len(shape) > 1 else shape)
    f = rng.poisson(rates, shape).clip(info.min, info.max)
    f.reshape(-1)[rng.random(f.size) < outliers] = info.max  # escapes
    if info.min < 0:
        f.reshape(-1)[rng.random(f.size) < outliers] = info.min
    return f.astype(dtype)
