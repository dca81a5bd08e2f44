"""stemedge: live 4D-STEM analysis next to the microscope.

Native CPU kernels for centre of mass / DPC and virtual imaging, a physical simulator, the DPC
toolkit in physical units, single-sideband ptychography (``stemedge.ssb``), and the `stemedge`
command line (``stemedge demo``).
"""

from __future__ import annotations

from stemedge import dpc, masks, sim
from stemedge._build import build_info
from stemedge.calibration import Calibration, interaction_constant, wavelength_A
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

__all__ = [
    "Calibration",
    "CenterOfMass",
    "ComAndVirtualImages",
    "MaskSet",
    "SSBResult",
    "build_info",
    "center_of_mass",
    "com_and_virtual_images",
    "dpc",
    "interaction_constant",
    "masks",
    "read_pass",
    "sim",
    "ssb",
    "virtual_images",
    "wavelength_A",
]
