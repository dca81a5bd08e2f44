"""The stemedge frame codec: lossless and bounded-error compression of detector frames.

- :func:`compress`, :func:`decompress`, :func:`info` (``stemedge.codec.core``): arrays to and from
  one self-contained blob.
- ``stemedge.codec.hdf5``: the HDF5 filter (id :data:`~stemedge.codec.hdf5.FILTER_ID`), registered
  with h5py by ``import stemedge``; :func:`~stemedge.codec.hdf5.filter_options` gives the
  ``create_dataset`` keywords. EMD files: ``EMDWriter(..., compression="stemedge")``.
- ``stemedge.codec.numcodecs_codec``: :class:`StemedgeCodec` for numcodecs/zarr (optional; needs
  ``pip install stemedge[zarr]``). Also reachable as ``stemedge.codec.StemedgeCodec``, imported on
  first use so that ``import stemedge`` does not pay for importing numcodecs.
"""

from __future__ import annotations

from typing import Any

from stemedge.codec.core import CodecError, compress, decompress, info

__all__ = ["CodecError", "StemedgeCodec", "compress", "decompress", "info"]


def __getattr__(name: str) -> Any:
    if name == "StemedgeCodec":
        from stemedge.codec.numcodecs_codec import StemedgeCodec

        return StemedgeCodec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
