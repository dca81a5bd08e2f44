"""Networking: stemedge's own ZeroMQ frame protocol (SEFP) between detector, edge and HPC.

:class:`FrameSender` pushes frames (a detector simulator, a readout node, or the pipeline's edge →
HPC forwarder sink); :class:`FrameReceiver` is the matching :class:`~stemedge.sources.base.Source`
that receives straight into ring slots. The wire format is in :mod:`stemedge.net.frame_protocol`.
"""

from __future__ import annotations

from stemedge.net.frame_protocol import HEADER_SIZE, Header, MsgType, ProtocolError
from stemedge.net.frame_receiver import FrameReceiver
from stemedge.net.frame_sender import HAND_OFF_MODES, FrameSender

__all__ = [
    "HAND_OFF_MODES",
    "HEADER_SIZE",
    "FrameReceiver",
    "FrameSender",
    "Header",
    "MsgType",
    "ProtocolError",
]
