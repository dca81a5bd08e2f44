"""The steering record: an EMD 1.0 file rewritten after every step, from which a loop resumes.

Layout (``[...]`` attributes)::

    /                        [emd_group_type='file', version 1.0, authoring_program]
    /stemedge_root           [emd_group_type='root']
      metadatabundle/steering   the loop's configuration, the microscope state, provenance
      survey                 [array] (ny, nx) float32, dims in Å
      prediction             [array] (gy, gx) predicted property on the candidate grid
      uncertainty            [array] (gy, gx) its standard deviation
    /stemedge/steering       (no EMD tags) the measurements, in order:
      candidate (n,) int64, positions_A (n, 2), values (n,), step (n,) int32,
      steps: one JSON string per step (timings, model state, stop checks)

Each write goes to a temporary file that then replaces the record, so an interrupted loop
leaves the previous complete record, never a torn one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stemedge.control.microscope import SurveyImage
from stemedge.io.emd import _create_array_group, _emd_root, _write_dims, _write_metadata
from stemedge.io.provenance import environment, jsonable

__all__ = ["Measurements", "read_record", "write_record"]


@dataclasses.dataclass
class Measurements:
    """What a loop has measured so far."""

    candidate: np.ndarray  # (n,) int64 candidate indices
    positions_A: np.ndarray  # (n, 2)
    values: np.ndarray  # (n,) float64 (NaN: the scalarizer found nothing)
    step: np.ndarray  # (n,) int32 the step that measured it
    steps: list[dict[str, Any]]

    @classmethod
    def empty(cls) -> Measurements:
        return cls(np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros(0), np.zeros(0, np.int32), [])

    def add(self, step: int, candidate, positions_A, values) -> None:
        self.candidate = np.concatenate([self.candidate, np.asarray(candidate, np.int64)])
        self.positions_A = np.concatenate([self.positions_A, np.asarray(positions_A)])
        self.values = np.concatenate([self.values, np.asarray(values, np.float64)])
        self.step = np.concatenate([self.step, np.full(len(candidate), step, np.int32)])


def _array(parent: h5py.Group, name: str, data: np.ndarray, step_A, units: str) -> None:
    grp = _create_array_group(parent, name, "Array")
    grp.create_dataset("data", data=data)
    _write_dims(
        grp,
        [
            (np.array([0.0, step_A[0]]), "y", units),
            (np.array([0.0, step_A[1]]), "x", units),
        ],
    )


def write_record(
    path: str | Path,
    *,
    config: dict[str, Any],
    survey: SurveyImage,
    measured: Measurements,
    prediction: np.ndarray | None,
    uncertainty: np.ndarray | None,
    grid_step_A: tuple[float, float],
) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    env = environment()
    try:
        with h5py.File(tmp, "w") as f:
            root, bundle = _emd_root(f, env["stemedge_version"])
            _write_metadata(bundle, "steering", jsonable({**config, "environment": env}))
            _array(root, "survey", np.asarray(survey.image, np.float32), survey.pixel_A, "A")
            root["survey"].attrs["stemedge_detector"] = survey.detector
            root["survey"].attrs["stemedge_dwell_us"] = survey.dwell_us
            if prediction is not None and uncertainty is not None:
                _array(root, "prediction", prediction.astype(np.float32), grid_step_A, "A")
                _array(root, "uncertainty", uncertainty.astype(np.float32), grid_step_A, "A")
            g = f.create_group("stemedge/steering")
            g.attrs["config"] = json.dumps(jsonable(config))
            g.create_dataset("candidate", data=measured.candidate)
            g.create_dataset("positions_A", data=measured.positions_A.reshape(-1, 2))
            g.create_dataset("values", data=measured.values)
            g.create_dataset("step", data=measured.step)
            g.create_dataset(
                "steps",
                data=np.array([json.dumps(jsonable(s)) for s in measured.steps], dtype=object),
                dtype=h5py.string_dtype(),
            )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_record(path: str | Path) -> tuple[dict[str, Any], SurveyImage, Measurements]:
    """The configuration, survey and measurements of a steering record (to resume a loop)."""
    with h5py.File(path, "r") as f:
        if "stemedge/steering" not in f or "stemedge_root/survey" not in f:
            raise ValueError(f"{path} is not a stemedge steering record")
        g = f["stemedge/steering"]
        config = json.loads(g.attrs["config"])
        s = f["stemedge_root/survey"]
        dims = [float(s[f"dim{i}"][1] - s[f"dim{i}"][0]) for i in (0, 1)]
        survey = SurveyImage(
            np.asarray(s["data"][()], np.float32),
            (dims[0], dims[1]),
            str(s.attrs["stemedge_detector"]),
            float(s.attrs["stemedge_dwell_us"]),
        )
        steps = [json.loads(t) for t in g["steps"].asstr()[()]]
        measured = Measurements(
            np.asarray(g["candidate"][()], np.int64),
            np.asarray(g["positions_A"][()], np.float64).reshape(-1, 2),
            np.asarray(g["values"][()], np.float64),
            np.asarray(g["step"][()], np.int32),
            steps,
        )
    return config, survey, measured
