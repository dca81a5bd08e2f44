"""Ptychography: single-sideband (SSB) reconstruction, offline and live (PHYSICS.md §4).

- :func:`ssb`: the whole scan at once (FFT route);
- :class:`SSBPlan`: pixels, frequencies and natively generated weights, shared by both routes;
- :class:`stemedge.analysis.SSBAnalysis`: the live route, frame by frame on the data plane;
- :func:`ssb_reference`: a plain numpy implementation, the yardstick in tests and benchmarks.
"""

from stemedge.ptycho.offline import SSBResult, ssb
from stemedge.ptycho.plan import NORMALIZATIONS, SSBPlan
from stemedge.ptycho.reference import ssb_reference

__all__ = ["NORMALIZATIONS", "SSBPlan", "SSBResult", "ssb", "ssb_reference"]
