"""stemedge: live 4D-STEM analysis next to the microscope."""

from stemedge.calibration import Calibration, interaction_constant, wavelength_A

__all__ = ["Calibration", "interaction_constant", "wavelength_A"]
