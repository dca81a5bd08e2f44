"""Control plane (issue 7): the Microscope interface and its implementations.

- :class:`Microscope`: survey, probe, frames and EELS spectra at positions, 4D scans streamed
  into the data plane, spectrum images, results shown to the operator, state, abort;
- :class:`SimulatedMicroscope`: the interface on stemedge's simulator (tests, demo, steering);
- ``stemedge.control.server`` (``stemedge serve``) and ``stemedge.control.remote``
  (:class:`~stemedge.control.remote.RemoteMicroscope`): the interface over Pyro5 with mutual TLS
  and a token (extra ``control``); ``stemedge.control.certs`` makes the certificates.

- ``stemedge.control.swift`` (:class:`~stemedge.control.swift.SwiftMicroscope`): the interface
  on Nion Swift's instrumentation; the plugin ``nionswift_plugin.stemedge_control`` serves it
  from inside Swift.

``RemoteMicroscope`` and ``SwiftMicroscope`` are importable from here; their dependencies
(Pyro5, nionswift-instrumentation) load only when they are first used.
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
    "RemoteMicroscope",
    "SimulatedMicroscope",
    "SurveyImage",
    "SwiftMicroscope",
]


def __getattr__(name: str):
    if name == "RemoteMicroscope":
        from stemedge.control.remote import RemoteMicroscope

        return RemoteMicroscope
    if name == "SwiftMicroscope":
        from stemedge.control.swift import SwiftMicroscope

        return SwiftMicroscope
    raise AttributeError(f"module 'stemedge.control' has no attribute {name!r}")
