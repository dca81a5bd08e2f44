"""The steering loop: survey → candidates → measure → fit → acquire → measure … on any Microscope.

Every step is recorded (positions, values, timings, model state) into an EMD record after it
ends, and a loop given that record resumes where it stopped. A step's decision (fit, predict,
acquire) is timed apart from the measurement, which belongs to the instrument.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from stemedge.control.microscope import Microscope, SurveyImage
from stemedge.steer.acquisition import ACQUISITIONS, scores, select_batch
from stemedge.steer.botorch_acq import BOTORCH_ACQUISITIONS, select_botorch
from stemedge.steer.features import Candidates, candidates_from_survey, candidates_on_grid
from stemedge.steer.models import GPModel, Model
from stemedge.steer.record import Measurements, read_record, write_record
from stemedge.steer.scalarizers import Scalarizer

__all__ = ["SteeringLoop", "SteeringResult", "check_acquisition"]

_log = logging.getLogger("stemedge.steer")


@dataclasses.dataclass
class SteeringResult:
    """What a loop found: the survey, candidates, measurements, the final predicted map and its
    uncertainty (on the candidate grid), why it stopped, and its configuration."""

    survey: SurveyImage
    candidates: Candidates
    measured: Measurements
    prediction: np.ndarray
    uncertainty: np.ndarray
    stop_reason: str
    config: dict[str, Any]

    def best(self) -> tuple[np.ndarray, float]:
        """Position (Å) and value of the best measurement (by the loop's goal)."""
        v = self.measured.values
        sign = 1.0 if self.config["goal"] == "max" else -1.0
        i = int(np.nanargmax(sign * v))
        return self.measured.positions_A[i], float(v[i])

    def step_times(self) -> np.ndarray:
        """Decision time (fit + predict + acquire) of each step, s."""
        return np.array([s["decide_s"] for s in self.measured.steps if "decide_s" in s])

    def plot(self, path: str | Path | None = None, *, title: str | None = None):
        """Survey with the measured points in order, the predicted map and its uncertainty."""
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fov = self.survey.fov_A
        ext = (0, fov[1], fov[0], 0)
        p = self.measured.positions_A
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), constrained_layout=True)
        axes[0].imshow(self.survey.image, cmap="gray", extent=ext)
        sc = axes[0].scatter(p[:, 1], p[:, 0], c=np.arange(len(p)), cmap="plasma", s=14)
        fig.colorbar(sc, ax=axes[0], label="measurement #")
        axes[0].set_title(f"{self.survey.detector} survey and {len(p)} measurements")
        c = self.candidates.positions_A
        gext = (c[:, 1].min(), c[:, 1].max(), c[:, 0].max(), c[:, 0].min())
        units = self.config.get("units", "")
        for ax, img, label in (
            (axes[1], self.prediction, f"predicted {self.config.get('property', '')}"),
            (axes[2], self.uncertainty, "uncertainty (1σ)"),
        ):
            im = ax.imshow(img, extent=gext, cmap="viridis")
            fig.colorbar(im, ax=ax, label=f"{label} ({units})" if units else label)
            ax.scatter(p[:, 1], p[:, 0], c="w", s=6)
            ax.set_title(label)
            ax.set_xlim(0, fov[1])
            ax.set_ylim(fov[0], 0)
        for ax in axes:
            ax.set_xlabel("x (Å)")
            ax.set_ylabel("y (Å)")
        if title:
            fig.suptitle(title)
        if path is not None:
            fig.savefig(path, dpi=110)
            plt.close(fig)
        return fig


def check_acquisition(text: str) -> str:
    """``text`` if it names a known acquisition schedule, else ValueError saying what would."""
    known = ACQUISITIONS + BOTORCH_ACQUISITIONS
    if not all(k in known for phase in text.split(">") for k in phase.split("+")):
        raise ValueError(
            f"acquisition {text!r}: use one of {', '.join(known)}; several joined by '+' take "
            "turns (ucb+ivr), phases joined by '>' follow each other after `patience` steps "
            "without a better value (ucb>ivr)"
        )
    return text


def _phase(acquisition: str, measured: Measurements, sign: float, patience: int) -> str:
    """The phase of a "a>b>…" acquisition that the measurements so far are in: each phase ends
    after ``patience`` steps in a row that did not raise the best value (from the measurements
    alone, so a resumed run continues in the same phase)."""
    phases = acquisition.split(">")
    if len(phases) == 1 or len(measured.values) == 0:
        return phases[0]
    v = np.where(np.isfinite(measured.values), sign * measured.values, -np.inf)
    phase, best, quiet = 0, -np.inf, 0
    for s in np.unique(measured.step):
        top = float(v[measured.step == s].max())
        if top > best:
            best, quiet = top, 0
        else:
            quiet += 1
            if quiet >= patience and phase < len(phases) - 1:
                phase, quiet = phase + 1, 0
    return phases[phase]


class SteeringLoop:
    """Choose where the beam goes next from what has been measured.

    Parameters
    ----------
    microscope : Microscope
        Simulated, Swift or remote: the loop calls ``survey`` once, then ``spectra_at`` or
        ``frames_at`` (as the scalarizer asks) at the chosen positions.
    scalarizer : Scalarizer
        Turns each measurement into the property.
    model : Model, optional
        Default :class:`GPModel` (scikit-learn).
    acquisition : str
        "ucb", "ei", "maxvar", "ivr", "thompson", "qucb", "qlogei", "qlognei", or several
        joined by "+" (taken in turn): how candidates are scored (``beta``: UCB's exploration
        weight). "ucb+ivr" alternates looking for the maximum and improving the map. Phases
        joined by ">" follow each other: "ucb>ivr" looks for the maximum until ``patience``
        steps in a row have not found a better value, then maps. The q-acquisitions are
        BoTorch's, valuing a batch jointly (:mod:`stemedge.steer.botorch_acq`; need torch and
        BoTorch).
    q, exclusion_A : int, float
        Points per step, and how far apart (Å) the points of one step must be.
    n_init : int
        Random candidates measured before the first fit.
    budget : int
        Measurements in all (the main stopping rule).
    stop_std : float, optional
        Stop when the largest predicted uncertainty among unmeasured candidates is below it.
    stagnation : int, optional
        Stop when the best value has not improved for this many steps.
    patience : int
        Steps in a row without a better value that end a phase of a "a>b" acquisition.
    goal : {"max", "min"}
        Look for the largest or the smallest value.
    survey_size, survey_fov_A, patch, stride, n_components, smooth_A
        The survey and its candidates (see :func:`candidates_from_survey`).
    sparse_grid : (gy, gx), optional
        The sparse-scan variant: candidates on a grid, a GP over (y, x), uncertainty-driven
        (use ``acquisition="maxvar"``); the result maps the property with its uncertainty.
    exposure_ms : float
        Exposure of each measurement.
    record : path, optional
        EMD record rewritten after each step; ``run(resume=True)`` continues from it.
    step_budget_s : float
        A decision slower than this is logged as a warning (the loop's time budget).
    seed : int
        Seed of the initial points and of Thompson draws.
    """

    def __init__(
        self,
        microscope: Microscope,
        scalarizer: Scalarizer,
        *,
        model: Model | None = None,
        acquisition: str = "ucb",
        beta: float = 2.0,
        q: int = 1,
        exclusion_A: float = 0.0,
        n_init: int = 5,
        budget: int = 50,
        stop_std: float | None = None,
        stagnation: int | None = None,
        patience: int = 3,
        goal: str = "max",
        survey_size: tuple[int, int] = (128, 128),
        survey_fov_A: float | None = None,
        patch: int = 16,
        stride: int = 1,
        n_components: int = 8,
        smooth_A: float = 2.0,
        sparse_grid: tuple[int, int] | None = None,
        exposure_ms: float = 1.0,
        record: str | Path | None = None,
        step_budget_s: float = 0.2,
        seed: int = 0,
    ) -> None:
        check_acquisition(acquisition)
        if not (isinstance(patience, int) and patience >= 1):
            raise ValueError(f"patience must be a positive integer, got {patience!r}")
        if goal not in ("max", "min"):
            raise ValueError(f"goal must be 'max' or 'min', got {goal!r}")
        if not (isinstance(budget, int) and budget >= 1):
            raise ValueError(f"budget must be a positive integer, got {budget!r}")
        if not (isinstance(n_init, int) and 1 <= n_init <= budget):
            raise ValueError(f"n_init must be an integer in [1, budget={budget}], got {n_init!r}")
        if not (isinstance(q, int) and q >= 1):
            raise ValueError(f"q must be a positive integer, got {q!r}")
        self.microscope = microscope
        self.scalarizer = scalarizer
        self.model = model if model is not None else GPModel(seed=seed)
        self.record = None if record is None else Path(record)
        self.config: dict[str, Any] = {
            "acquisition": acquisition,
            "beta": float(beta),
            "q": q,
            "exclusion_A": float(exclusion_A),
            "n_init": n_init,
            "budget": budget,
            "stop_std": stop_std,
            "stagnation": stagnation,
            "patience": patience,
            "goal": goal,
            "survey_size": list(survey_size),
            "survey_fov_A": survey_fov_A,
            "patch": patch,
            "stride": stride,
            "n_components": n_components,
            "smooth_A": float(smooth_A),
            "sparse_grid": None if sparse_grid is None else list(sparse_grid),
            "exposure_ms": float(exposure_ms),
            "seed": seed,
            "step_budget_s": float(step_budget_s),
            "property": scalarizer.name,
            "units": scalarizer.units,
            "scalarizer": scalarizer.describe(),
            "model": type(self.model).__name__,
        }
        self._axis: Any = None

    # --- pieces ------------------------------------------------------------------------------

    def _candidates(self, survey: SurveyImage) -> Candidates:
        c = self.config
        if c["sparse_grid"] is not None:
            return candidates_on_grid(survey.fov_A, tuple(c["sparse_grid"]))
        return candidates_from_survey(
            survey,
            patch=c["patch"],
            stride=c["stride"],
            n_components=c["n_components"],
            smooth_A=c["smooth_A"],
        )

    def _measure(self, positions_A: np.ndarray, fov_A: tuple[float, float]) -> np.ndarray:
        exposure = self.config["exposure_ms"]
        offsets = self.scalarizer.offsets_A
        where = positions_A
        if offsets is not None:  # a small pattern around each position, kept in the field
            where = (positions_A[:, None, :] + np.asarray(offsets)[None]).reshape(-1, 2)
            where = np.clip(where, 0.0, np.nextafter(np.asarray(fov_A), 0.0))
        if self.scalarizer.measurement == "frames":
            if self._axis is None:
                self._axis = self.microscope.state().camera_mrad_per_px
            data, axis = self.microscope.frames_at(where, exposure_ms=exposure), self._axis
        else:
            data, axis = self.microscope.spectra_at(where, exposure_ms=exposure)
        if offsets is not None:
            data = data.reshape(len(positions_A), len(offsets), *data.shape[1:])
        return self.scalarizer(data, axis)

    # --- the loop ----------------------------------------------------------------------------

    def run(self, *, resume: bool = False, progress: bool = False) -> SteeringResult:
        """Run until the budget or a stopping rule; with ``resume``, continue the record."""
        c = self.config
        if resume:
            if self.record is None or not self.record.exists():
                raise FileNotFoundError(f"no steering record to resume at {self.record}")
            old, survey, measured = read_record(self.record)
            keys = [
                "acquisition",
                "goal",
                "patch",
                "stride",
                "n_components",
                "smooth_A",
                "sparse_grid",
            ]
            if ">" in c["acquisition"]:  # phases: patience decides where the next one starts
                keys.append("patience")
            for key in keys:
                if old.get(key) != c[key]:
                    raise ValueError(
                        f"the record was made with {key}={old.get(key)!r}, not {c[key]!r}"
                    )
            self.microscope.survey((8, 8), fov_A=survey.fov_A[0])  # the same field, little dose
        else:
            survey = self.microscope.survey(
                tuple(c["survey_size"]), fov_A=c["survey_fov_A"], dwell_us=2.0
            )
            measured = Measurements.empty()
        cands = self._candidates(survey)
        m = len(cands)
        sign = 1.0 if c["goal"] == "max" else -1.0
        step = int(measured.step.max()) + 1 if len(measured.step) else 0
        rng = np.random.default_rng([c["seed"], step])
        taken = np.zeros(m, bool)
        taken[measured.candidate] = True
        mean = std = np.full(m, np.nan)
        stop = "budget"
        warned = False
        bar = _progress(progress, c["budget"], len(measured.values))
        if len(measured.values) == 0:
            batch = rng.choice(m, size=min(c["n_init"], m), replace=False)
        else:
            mean, std, batch, _ = self._decide(cands, measured, taken, sign, rng)
        while True:
            t0 = time.perf_counter()
            values = self._measure(cands.positions_A[batch], survey.fov_A)
            t_measure = time.perf_counter() - t0
            measured.add(step, batch, cands.positions_A[batch], values)
            taken[batch] = True
            if bar is not None:
                bar.update(len(batch))
            record: dict[str, Any] = {"step": step, "n": len(measured.values)}
            record["measure_s"] = t_measure
            n_left = c["budget"] - len(measured.values)
            if n_left <= 0 or taken.all():
                stop = "budget" if n_left <= 0 else "candidates exhausted"
                mean, std, _, timing = self._decide(cands, measured, taken, sign, rng, pick=0)
                record.update(timing)
                measured.steps.append(record)
                break
            mean, std, batch, timing = self._decide(
                cands, measured, taken, sign, rng, pick=min(c["q"], n_left)
            )
            record.update(timing)
            measured.steps.append(record)
            reason = self._should_stop(measured, timing["max_std"], taken, sign)
            if reason:
                stop = reason
                break
            if c["step_budget_s"] and timing["decide_s"] > c["step_budget_s"] and not warned:
                warned = True  # once per run; every step's times are in the record
                _log.warning(
                    "steering step %d took %.3f s to decide (budget %.3f s)",
                    step,
                    timing["decide_s"],
                    c["step_budget_s"],
                )
            self._save(survey, cands, measured, mean, std)
            step += 1
        if bar is not None:
            bar.close()
        self._save(survey, cands, measured, mean, std)
        return SteeringResult(
            survey,
            cands,
            measured,
            cands.as_map(mean),
            cands.as_map(std),
            stop,
            {**c, "stop_reason": stop, "microscope": _state(self.microscope)},
        )

    def _decide(self, cands, measured, taken, sign, rng, pick: int | None = None):
        """Fit on what is measured, predict everywhere, choose the next batch."""
        c = self.config
        t0 = time.perf_counter()
        ok = np.isfinite(measured.values)
        if not ok.any():
            raise ValueError(
                f"{self.scalarizer.name}: no finite value in {len(ok)} measurements; check the "
                "scalarizer's window and the microscope's calibration"
            )
        self.model.fit(cands.features[measured.candidate[ok]], sign * measured.values[ok])
        t1 = time.perf_counter()
        mean, std = self.model.predict(cands.features)
        t2 = time.perf_counter()
        batch = np.zeros(0, np.int64)
        n = c["q"] if pick is None else pick
        kind = None
        if n > 0:
            best = float(np.max(sign * measured.values[ok]))  # ok.any(): checked above
            kinds = _phase(c["acquisition"], measured, sign, c["patience"]).split("+")
            kind = kinds[len(measured.steps) % len(kinds)]
            if kind in BOTORCH_ACQUISITIONS:  # (torch is imported only here, on first use)
                batch = select_botorch(
                    kind,
                    self.model,
                    cands.features,
                    mean,
                    std,
                    n,
                    exclude=taken,
                    positions_A=cands.positions_A,
                    measured=cands.features[measured.candidate[ok]],
                    best=best,
                    beta=c["beta"],
                    exclusion_A=c["exclusion_A"],
                    seed=int(rng.integers(2**31)),
                )
            else:
                score = scores(
                    kind,
                    mean,
                    std,
                    best=best,
                    beta=c["beta"],
                    model=self.model,
                    features=cands.features,
                    rng=rng,
                )
                batch = select_batch(
                    score, cands.positions_A, n, exclude=taken, exclusion_A=c["exclusion_A"]
                )
        t3 = time.perf_counter()
        timing = {
            "fit_s": t1 - t0,
            "predict_s": t2 - t1,
            "acquire_s": t3 - t2,
            "decide_s": t3 - t0,
            "acquisition": kind,  # what chose the next batch (None: nothing chosen)
            "model": self.model.state(),
            "max_std": float(np.max(np.where(taken, -np.inf, std))) if not taken.all() else 0.0,
        }
        return sign * mean, std, batch, timing

    def _should_stop(self, measured: Measurements, max_std: float, taken, sign) -> str | None:
        """Why to stop now (None: go on); ``max_std``: the largest uncertainty left unmeasured."""
        c = self.config
        if c["stop_std"] is not None and not taken.all() and max_std < c["stop_std"]:
            return "uncertainty"
        k = c["stagnation"]
        if k and measured.step.max() >= k:
            v = sign * measured.values
            recent = measured.step > measured.step.max() - k
            if np.nanmax(v[recent]) <= np.nanmax(v[~recent]):
                return "stagnation"
        return None

    def _save(self, survey, cands, measured, mean, std) -> None:
        if self.record is None:
            return
        gy, gx = cands.grid_shape
        p = cands.positions_A
        grid_step = (
            float(p[gx, 0] - p[0, 0]) if gy > 1 else 1.0,
            float(p[1, 1] - p[0, 1]) if gx > 1 else 1.0,
        )
        write_record(
            self.record,
            config={**self.config, "microscope": _state(self.microscope)},
            survey=survey,
            measured=measured,
            prediction=None if np.isnan(mean).all() else cands.as_map(mean),
            uncertainty=None if np.isnan(std).all() else cands.as_map(std),
            grid_step_A=grid_step,
        )


def _state(microscope: Microscope) -> dict[str, Any]:
    try:
        return microscope.state().to_dict()
    except Exception as e:  # provenance must not stop the loop
        return {"error": str(e)}


def _progress(enabled: bool, total: int, done: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="meas", desc="steering")
