"""Active-learning steering (issue 8): choose the next probe positions from what was measured.

A survey image is cut into candidate positions described by their local structure
(:mod:`~stemedge.steer.features`); a scalarizer turns each measurement into the property
(:mod:`~stemedge.steer.scalarizers`); a surrogate model predicts it everywhere with its
uncertainty (:mod:`~stemedge.steer.models`); an acquisition function picks the next batch
(:mod:`~stemedge.steer.acquisition`); :class:`SteeringLoop` runs it against any Microscope and
records every step. Needs scikit-learn (``pip install 'stemedge[steer]'``); the optional deep
kernel model :class:`stemedge.steer.dkl.DKLModel` needs torch and gpytorch (extra ``dkl``).
"""

from stemedge.steer.acquisition import ACQUISITIONS, scores, select_batch
from stemedge.steer.features import Candidates, candidates_from_survey, candidates_on_grid
from stemedge.steer.loop import SteeringLoop, SteeringResult
from stemedge.steer.models import GPModel, Model
from stemedge.steer.record import read_record
from stemedge.steer.scalarizers import (
    ComDivergence,
    ComShift,
    FunctionScalarizer,
    PeakEnergy,
    PeakRatio,
    Scalarizer,
)

__all__ = [
    "ACQUISITIONS",
    "Candidates",
    "ComDivergence",
    "ComShift",
    "FunctionScalarizer",
    "GPModel",
    "Model",
    "PeakEnergy",
    "PeakRatio",
    "Scalarizer",
    "SteeringLoop",
    "SteeringResult",
    "candidates_from_survey",
    "candidates_on_grid",
    "read_record",
    "scores",
    "select_batch",
]
