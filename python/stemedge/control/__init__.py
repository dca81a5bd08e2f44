"""Control plane (issue 7): the Microscope interface and its implementations.

- :class:`Microscope`: survey, probe, frames at positions, 4D scans into the data plane, state,
  abort;
- :class:`SimulatedMicroscope`: the interface on stemedge's simulator (tests, demo, steering).

The Nion Swift implementation, the Pyro5 server and the remote proxy come next (issue 7).
"""

from stemedge.control.microscope import (
    DETECTORS,
    Microscope,
    MicroscopeError,
    MicroscopeState,
    SurveyImage,
)
from stemedge.control.simulated import SimulatedMicroscope

__all__ = [
    "DETECTORS",
    "Microscope",
    "MicroscopeError",
    "MicroscopeState",
    "SimulatedMicroscope",
    "SurveyImage",
]
