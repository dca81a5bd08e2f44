"""Control plane (issue 7): the Microscope interface and its implementations.

- :class:`Microscope`: survey, probe, frames at positions, 4D scans into the data plane, state,
  abort;
- :class:`SimulatedMicroscope`: the interface on stemedge's simulator (tests, demo, steering);
- ``stemedge.control.server`` (``stemedge serve``) and ``stemedge.control.remote``
  (:class:`~stemedge.control.remote.RemoteMicroscope`): the interface over Pyro5 with mutual TLS
  and a token (extra ``control``); ``stemedge.control.certs`` makes the certificates.

The Nion Swift implementation and plugin come next (issue 7).
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
