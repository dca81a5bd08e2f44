"""stemedge: live 4D-STEM analysis next to the microscope.

Native CPU kernels for centre of mass / DPC and virtual imaging, a physical simulator, the DPC
toolkit in physical units, single-sideband ptychography (``stemedge.ssb``), arithmetic-coding
compression of detector frames (``stemedge.compress``), and the `stemedge` command line
(``stemedge demo``).
"""

from __future__ import annotations

from stemedge import codec, dpc, masks, sim
from stemedge._build import build_info
from stemedge.calibration import Calibration, interaction_constant, wavelength_A
from stemedge.codec import compress, decompress
from stemedge.kernels import (
    CenterOfMass,
    ComAndVirtualImages,
    center_of_mass,
    com_and_virtual_images,
    read_pass,
    virtual_images,
)
from stemedge.masks import MaskSet
from stemedge.ptycho import SSBResult, ssb

__version__ = "0.1.0"


def _register_hdf5_filter() -> None:
    """Make h5py read and write stemedge-compressed datasets in this process. A missing or
    unloadable plugin must not break ``import stemedge``: it is reported as a warning, and only
    compressed HDF5 data are then out of reach."""
    try:
        from stemedge.codec.hdf5 import register

        register()
    except Exception as exc:  # any failure: report it, do not break the import
        import warnings

        warnings.warn(
            f"stemedge: HDF5 filter not registered, stemedge-compressed HDF5 data cannot be "
            f"read or written in this process ({type(exc).__name__}: {exc})",
            RuntimeWarning,
            stacklevel=2,
        )


_register_hdf5_filter()

__all__ = [
    "Calibration",
    "CenterOfMass",
    "ComAndVirtualImages",
    "MaskSet",
    "SSBResult",
    "build_info",
    "center_of_mass",
    "codec",
    "com_and_virtual_images",
    "compress",
    "decompress",
    "dpc",
    "interaction_constant",
    "masks",
    "read_pass",
    "sim",
    "ssb",
    "virtual_images",
    "wavelength_A",
]
