"""Single-sideband ptychography as a data-plane analysis: a phase image that grows with the scan.

Two modes, one set of weights (:class:`stemedge.ptycho.SSBPlan`), so both end where the offline
:func:`stemedge.ssb` ends:

- ``"accumulate"`` (default): every frame updates every kept frequency,
  ``F(Q) += Σ_k W(k, Q)·I(k, R)·e^{−2πi Q·R}`` (native; the partial is the complex F of the
  half plane, a few tens of kB). Cost per frame is the number of non-zero weights, so it scales
  as N_R²: fine up to ~256² scans.
- ``"refresh"``: keep the (optionally binned) bright-field cube, N_R × P float32, and run the
  FFT route each time results are read — e.g. every few scan lines while the scan runs. Use it
  with ``binning`` for large scans.

A partial scan already gives an image: positions not yet measured are NaN, measured ones show
the reconstruction from the frames so far (normalised by their mean bright-field intensity).
Unlike the other built-ins, a position measured twice counts twice (SSB sums frames; the mean
would need the coverage before the frames arrive).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from stemedge.analysis.base import (
    Analysis,
    Partial,
    ResultKind,
    Results,
    ResultSpec,
    check_coverage,
    check_partials,
)
from stemedge.calibration import Calibration
from stemedge.geometry import ScanGeometry
from stemedge.ptycho.plan import NORMALIZATIONS, SSBPlan

__all__ = ["SSBAnalysis"]

MODES = ("accumulate", "refresh")


class SSBAnalysis(Analysis):
    """Live SSB (see the module docstring).

    Parameters
    ----------
    calibration : Calibration, optional
        Default: the geometry's calibration (``bind`` refuses a geometry without one).
    aberrations, normalization, cutoff, binning
        As for :func:`stemedge.ssb`.
    mode : {"accumulate", "refresh"}
        Per-frame accumulation, or a bright-field cube with FFT refreshes.
    """

    name = "ssb"

    def __init__(
        self,
        calibration: Calibration | None = None,
        *,
        aberrations: Mapping[str, float] | None = None,
        normalization: str = "flat",
        cutoff: int = 1,
        binning: int = 1,
        mode: str = "accumulate",
        name: str | None = None,
        nthreads: int | None = None,
    ) -> None:
        super().__init__(name=name, nthreads=nthreads)
        if calibration is not None and not isinstance(calibration, Calibration):
            raise TypeError(
                f"calibration must be a Calibration or None, got {type(calibration).__name__}"
            )
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
            )
        self._calibration = calibration
        self._options = {
            "aberrations": aberrations,
            "normalization": normalization,
            "cutoff": cutoff,
            "binning": binning,
        }
        self.mode = mode
        self.plan: SSBPlan | None = None

    def bind(self, geometry: ScanGeometry) -> None:
        super().bind(geometry)
        if self.plan is not None:
            return
        cal = self._calibration or geometry.calibration
        if cal is None:
            raise ValueError(
                "SSBAnalysis needs a calibration: pass calibration= or use a geometry that has one"
            )
        self.plan = SSBPlan(cal, geometry.scan_shape, geometry.frame_shape, **self._options)

    def results(self) -> list[ResultSpec]:
        unit = "rad" if self._options["normalization"] == "flat" else "rad × transfer"
        return [
            ResultSpec("phase_rad", ResultKind.SCAN, units=unit, description="SSB object phase"),
            ResultSpec(
                "amplitude",
                ResultKind.SCAN,
                description="|SSB object wave| / mean bright-field intensity (qualitative)",
            ),
        ]

    def _plan(self) -> SSBPlan:
        if self.plan is None:
            raise RuntimeError(f"{type(self).__name__}: call bind(geometry) first")
        return self.plan

    def new_partial(self) -> Partial:
        plan = self._plan()
        if self.mode == "accumulate":
            return {"F": plan.new_accumulator()}
        return {"cube": np.zeros((self.geometry.n_positions, plan.n_pixels), np.float32)}

    def process(self, partial: Partial, frames: np.ndarray, indices: np.ndarray) -> None:
        where = self.checked_indices(frames, indices)
        if len(where) == 0:
            return
        plan = self._plan()
        if self.mode == "accumulate":
            plan.accumulate(partial["F"], frames, where.flat, nthreads=self.threads)
            return
        cube, _ = plan.gather(frames, center=False, nthreads=self.threads)
        where.add_to(partial["cube"], cube)

    def merge(self, into: Partial, other: Partial) -> None:
        check_partials(into, other)
        for key, acc in into.items():
            acc += other[key]

    def finalize(self, partial: Partial, coverage: np.ndarray) -> Results:
        plan = self._plan()
        cov = check_coverage(self.geometry, coverage)
        n_frames = int(cov.sum())
        if self.mode == "accumulate":
            f = partial["F"]
        else:
            cube = partial["cube"]
            mean = cube.mean(axis=0, dtype=np.float64)
            f = plan.weighted_sums(cube - mean.astype(np.float32), mean, nthreads=self.threads)
        return self.results_from_wave(plan.wave(f, n_frames), cov)

    def results_from_wave(self, wave: np.ndarray, coverage: np.ndarray) -> Results:
        """Phase and amplitude of the object wave, NaN where no frame was seen (shared with the
        GPU streamer, which reconstructs the wave on the device)."""
        phase = np.angle(wave).astype(np.float32)
        amplitude = np.abs(wave).astype(np.float32)
        unseen = (np.asarray(coverage) == 0).reshape(self.geometry.scan_shape)
        phase[unseen] = np.nan
        amplitude[unseen] = np.nan
        return {"phase_rad": phase, "amplitude": amplitude}

    def parameters(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode, **self._options}
        out["aberrations"] = dict(self._options["aberrations"] or {})
        if self.plan is not None:
            out.update(self.plan.parameters())
        return out
