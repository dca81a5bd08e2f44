"""4D-STEM simulators: a thin-object (any-strength phase) simulator and a fast disk generator.

- :func:`simulate_4dstem`: physically exact frames of a periodic thin phase object
  (PHYSICS.md §5.2) with ground truth, calibration and optional Poisson noise.
- :func:`shifted_disks`: large benchmark sets of shifted bright-field disks with exact CoM
  ground truth.
- :mod:`stemedge.sim.samples`: periodic phase maps (atoms, lattices, vacuum edges, sinusoids,
  ramps).
"""

from stemedge.sim.disks import DiskScan, shifted_disks
from stemedge.sim.samples import (
    Sample,
    clustered_lattice,
    gaussian_atoms,
    lattice,
    phase_from_potential,
    phase_ramp,
    sinusoid,
    vacuum_edge,
)
from stemedge.sim.wpo import SimulatedScan, frames_at, simulate_4dstem

__all__ = [
    "DiskScan",
    "Sample",
    "SimulatedScan",
    "clustered_lattice",
    "frames_at",
    "gaussian_atoms",
    "lattice",
    "phase_from_potential",
    "phase_ramp",
    "shifted_disks",
    "simulate_4dstem",
    "sinusoid",
    "vacuum_edge",
]
