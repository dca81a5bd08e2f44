"""Files in and out: EMD 1.0 (py4DSTEM/emdfile layout) and Merlin MIB.

Frame *sources* over these files live in :mod:`stemedge.sources.files`.
"""

from __future__ import annotations

from stemedge.io.emd import EMDFile, EMDWriter, read_emd, write_emd
from stemedge.io.mib import MIBFile, MIBHeader, find_hdr, parse_mib_header, read_hdr

__all__ = [
    "EMDFile",
    "EMDWriter",
    "MIBFile",
    "MIBHeader",
    "find_hdr",
    "parse_mib_header",
    "read_emd",
    "read_hdr",
    "write_emd",
]
