"""The stemedge codec for numcodecs (and so zarr): ``StemedgeCodec``, codec id ``"stemedge"``.

Needs numcodecs (``pip install stemedge[zarr]``). Importing this module registers the codec with
``numcodecs.register_codec``; an installed stemedge is also found through the
``numcodecs.codecs`` entry point, so a zarr reader needs no ``import stemedge`` first::

    import zarr
    from stemedge.codec.numcodecs_codec import StemedgeCodec

    z = zarr.create_array(store, shape=data.shape, chunks=(1, 16, 256, 256), dtype=data.dtype,
                          compressors=StemedgeCodec(max_abs_error=0.5), zarr_format=2)

Each chunk becomes one stemedge chunk that knows its dtype and shape, so :meth:`decode` needs no
options. Chunks in non-native byte order are refused (the decoded array is native-endian, and a
reader would reinterpret its bytes in the stored order).
"""

from __future__ import annotations

from typing import Any

import numcodecs
import numpy as np
from numcodecs.abc import Codec
from numcodecs.compat import ensure_contiguous_ndarray, ensure_ndarray_like, ndarray_copy

from stemedge import _native
from stemedge.codec.hdf5 import check_options

__all__ = ["StemedgeCodec"]


class StemedgeCodec(Codec):
    """numcodecs codec of the stemedge frame codec.

    Parameters
    ----------
    mode : {"auto", "dense", "events", "bytes"}
        Codec mode (see ``stemedge.codec.compress``).
    max_abs_error : float
        0 for lossless; > 0 bounds ``|x − decoded|`` everywhere.
    threshold : int
        Counted data: values below it decode as 0 (0: off).
    """

    codec_id = "stemedge"

    def __init__(self, mode: str = "auto", max_abs_error: float = 0.0, threshold: int = 0):
        self.max_abs_error, self.threshold = check_options(mode, max_abs_error, threshold)
        self.mode = mode

    def encode(self, buf: Any) -> bytes:
        """One chunk (an ndarray, or any buffer: then its bytes as uint8) → one stemedge chunk."""
        arr = ensure_ndarray_like(buf)
        if not isinstance(arr, np.ndarray):
            arr = np.asarray(arr)  # other array-likes numcodecs lets through
        if not arr.dtype.isnative:
            raise TypeError(
                f"StemedgeCodec: chunks must be in native byte order, got dtype {arr.dtype.str}"
            )
        # zarr hands over C-contiguous chunks; anything else is copied once here.
        arr = np.ascontiguousarray(arr)
        return _native.codec_compress(
            arr, mode=self.mode, max_abs_error=self.max_abs_error, threshold=self.threshold
        )

    def decode(self, buf: Any, out: Any = None) -> np.ndarray:
        """One stemedge chunk → the array (dtype and shape from the chunk), or into ``out``."""
        blob = ensure_contiguous_ndarray(buf)
        if out is None:
            return _native.codec_decompress(blob)
        if isinstance(out, np.ndarray) and out.flags.c_contiguous and out.flags.writeable:
            head = _native.codec_info(blob)
            if out.dtype == np.dtype(head["dtype"]) and out.nbytes == head["raw_nbytes"]:
                _native.codec_decompress(blob, out=out)  # straight into the caller's buffer
                return out
        return ndarray_copy(_native.codec_decompress(blob), out)

    def get_config(self) -> dict[str, Any]:
        return {
            "id": self.codec_id,
            "mode": self.mode,
            "max_abs_error": self.max_abs_error,
            "threshold": self.threshold,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> StemedgeCodec:
        config = {k: v for k, v in config.items() if k != "id"}
        return cls(**config)

    def __repr__(self) -> str:
        return (
            f"StemedgeCodec(mode={self.mode!r}, max_abs_error={self.max_abs_error!r}, "
            f"threshold={self.threshold!r})"
        )


numcodecs.register_codec(StemedgeCodec)
