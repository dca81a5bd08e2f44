"""Phase maps of test samples on a periodic object grid.

Every map here is periodic on its box (pixel ``(i, j)`` at ``(i·pixel_A, j·pixel_A)`` Å, axes
(y, x)), so that a scan over the whole box with a periodic simulator has no edges: FFT-based
reference results (CoM, iDPC, SSB) are then exact, not approximate.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from stemedge.calibration import interaction_constant

__all__ = [
    "Sample",
    "gaussian_atoms",
    "lattice",
    "phase_from_potential",
    "phase_ramp",
    "sinusoid",
    "vacuum_edge",
]


# --- argument checks ----------------------------------------------------------------------------
def _shape2(shape: Any, name: str = "shape") -> tuple[int, int]:
    try:
        ny, nx = (int(v) for v in shape)
        ok = ny == shape[0] and nx == shape[1]
    except (TypeError, ValueError):
        ok = False
    if not ok or ny < 1 or nx < 1:
        raise ValueError(f"{name} must be a pair of positive integers (ny, nx), got {shape!r}")
    return ny, nx


def _positive(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _fraction(value: Any, name: str) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return v


def _cycles(cycles: Any) -> tuple[int, int]:
    try:
        cy, cx = cycles
        ok = float(cy).is_integer() and float(cx).is_integer()
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"cycles must be a pair of integers (periods across the box in y, x), got {cycles!r}; "
            "non-integer counts would break periodicity"
        )
    return int(cy), int(cx)


# --- building blocks ----------------------------------------------------------------------------
def gaussian_atoms(
    shape: tuple[int, int],
    pixel_A: float,
    positions_A: Any,
    phase_rad: Any,
    sigma_A: float = 0.35,
) -> np.ndarray:
    """Sum of Gaussian "atoms" on a periodic grid.

    Parameters
    ----------
    shape : (ny, nx)
        Grid shape [px].
    pixel_A : float
        Pixel size [Å] (same in y and x).
    positions_A : array_like, shape (N, 2)
        Atom centres (y, x) [Å]; any real values (wrapped into the box).
    phase_rad : float or array_like, shape (N,)
        Peak phase of each atom [rad].
    sigma_A : float
        Gaussian standard deviation [Å].

    Returns
    -------
    numpy.ndarray
        float64 phase map of ``shape`` [rad].

    Notes
    -----
    Distances use the minimum image along each axis, so atoms near an edge wrap around. The
    Gaussian factorises into a y and an x profile, so the map is a single matrix product
    ``Gy.T @ diag(phase) @ Gx``: O(N·(ny + nx) + ny·nx·N) flops in BLAS, no (N, ny, nx) array.
    """
    ny, nx = _shape2(shape)
    pixel_A = _positive(pixel_A, "pixel_A")
    sigma_A = _positive(sigma_A, "sigma_A")
    pos = np.asarray(positions_A, dtype=np.float64)
    if pos.size == 0:
        return np.zeros((ny, nx))
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"positions_A must have shape (N, 2) as (y, x) in Å, got {pos.shape}")
    amp = np.asarray(phase_rad, dtype=np.float64)
    if amp.ndim == 0:
        amp = np.full(len(pos), float(amp))
    if amp.shape != (len(pos),):
        raise ValueError(
            f"phase_rad must be a scalar or have one value per atom ({len(pos)}), got {amp.shape}"
        )

    def profile(n: int, centres: np.ndarray) -> np.ndarray:
        length = n * pixel_A
        d = np.arange(n) * pixel_A - centres[:, None]
        d -= length * np.round(d / length)  # minimum image
        return np.exp(-0.5 * (d / sigma_A) ** 2)

    gy = profile(ny, pos[:, 0]) * amp[:, None]
    gx = profile(nx, pos[:, 1])
    return gy.T @ gx


@dataclasses.dataclass
class Sample:
    """A sample phase map with the atoms that made it.

    Attributes
    ----------
    phase : numpy.ndarray
        Object phase [rad], float64, periodic on the box.
    pixel_A : float
        Pixel size of ``phase`` [Å].
    positions_A : numpy.ndarray, shape (N, 2)
        Atom centres (y, x) [Å] actually present (vacancies removed).
    kinds : numpy.ndarray of str, shape (N,)
        ``'host'`` or ``'dopant'`` per atom.
    a_A : (float, float)
        Lattice constant actually used in (y, x) [Å]; it differs from the request so that an
        integer number of cells tiles the periodic box.
    sites : int
        Number of lattice sites before vacancies were made (and before a vacuum cut).
    """

    phase: np.ndarray
    pixel_A: float
    positions_A: np.ndarray
    kinds: np.ndarray
    a_A: tuple[float, float] = (float("nan"), float("nan"))
    sites: int = 0


def _render(
    shape: tuple[int, int],
    pixel_A: float,
    positions: np.ndarray,
    kinds: np.ndarray,
    phase_rad: float,
    dopant_phase_rad: float,
    sigma_A: float,
) -> np.ndarray:
    amp = np.where(kinds == "dopant", dopant_phase_rad, phase_rad)
    return gaussian_atoms(shape, pixel_A, positions, amp, sigma_A)


def lattice(
    shape: tuple[int, int],
    pixel_A: float,
    a_A: float = 3.9,
    phase_rad: float = 0.05,
    sigma_A: float = 0.35,
    dopant_fraction: float = 0.0,
    dopant_phase_rad: float = 0.15,
    vacancy_fraction: float = 0.0,
    seed: int = 0,
) -> Sample:
    """Square lattice of Gaussian atoms that tiles the periodic box, with dopants and vacancies.

    Parameters
    ----------
    shape : (ny, nx)
        Grid shape [px].
    pixel_A : float
        Pixel size [Å].
    a_A : float
        Requested lattice constant [Å]. The cell count per axis is ``max(1, round(L / a_A))``
        and the constant actually used (``Sample.a_A``) is ``L / count``.
    phase_rad : float
        Peak phase of a host atom [rad].
    sigma_A : float
        Gaussian width of every atom [Å].
    dopant_fraction, vacancy_fraction : float
        Fractions of the sites that become dopants / are left empty; the counts are
        ``round(fraction · sites)`` exactly, drawn without replacement (disjoint sets).
    dopant_phase_rad : float
        Peak phase of a dopant atom [rad].
    seed : int
        Seed for ``numpy.random.default_rng``.

    Returns
    -------
    Sample
        Atoms sit at ``((i + 1/2)·a_y, (j + 1/2)·a_x)``, i.e. half a cell away from the box edges.
    """
    ny, nx = _shape2(shape)
    pixel_A = _positive(pixel_A, "pixel_A")
    a_A = _positive(a_A, "a_A")
    fd = _fraction(dopant_fraction, "dopant_fraction")
    fv = _fraction(vacancy_fraction, "vacancy_fraction")
    if fd + fv > 1.0:
        raise ValueError(
            f"dopant_fraction + vacancy_fraction must be <= 1, got {fd} + {fv}; lower one of them"
        )
    ly, lx = ny * pixel_A, nx * pixel_A
    cy, cx = max(1, round(ly / a_A)), max(1, round(lx / a_A))
    ay, ax = ly / cy, lx / cx
    iy, ix = np.meshgrid(np.arange(cy), np.arange(cx), indexing="ij")
    pos = np.stack([(iy.ravel() + 0.5) * ay, (ix.ravel() + 0.5) * ax], axis=1)
    n = len(pos)
    n_vac, n_dop = round(fv * n), round(fd * n)
    order = np.random.default_rng(seed).permutation(n)
    kinds = np.full(n, "host", dtype="<U6")
    kinds[order[n_vac : n_vac + n_dop]] = "dopant"
    keep = np.ones(n, dtype=bool)
    keep[order[:n_vac]] = False
    pos, kinds = pos[keep], kinds[keep]
    phase = _render((ny, nx), pixel_A, pos, kinds, phase_rad, dopant_phase_rad, sigma_A)
    return Sample(phase, pixel_A, pos, kinds, (ay, ax), n)


def clustered_lattice(
    shape: tuple[int, int],
    pixel_A: float,
    *,
    clusters: int = 6,
    base_fraction: float = 0.03,
    domain_fraction: float = 0.12,
    a_A: float = 3.9,
    seed: int = 0,
) -> Sample:
    """A square lattice whose dopants gather in Gaussian clusters and in a domain: a specimen
    with structure worth steering to (the scene of the steering benchmark, issue 8).

    Each site is a dopant with probability ``base_fraction`` (``domain_fraction`` beyond a
    straight domain boundary through the box, an edge) plus the clusters': amplitude 0.2–0.8,
    width σ 6–16 Å, centres and the boundary drawn from ``seed``.
    """
    ny, nx = _shape2(shape)
    pixel_A = _positive(pixel_A, "pixel_A")
    _fraction(base_fraction, "base_fraction")
    _fraction(domain_fraction, "domain_fraction")
    if not (isinstance(clusters, int) and 0 <= clusters <= 1000):
        raise ValueError(f"clusters must be an integer in [0, 1000], got {clusters!r}")
    host = lattice(shape, pixel_A, a_A=a_A, seed=seed)
    rng = np.random.default_rng(seed + 1)
    extent = np.array([ny * pixel_A, nx * pixel_A])
    pos = host.positions_A
    p = np.full(len(pos), float(base_fraction))
    # the domain: a line through a random point at a random angle; one side is richer
    centre, angle = rng.uniform(0.3, 0.7, 2) * extent, rng.uniform(0, np.pi)
    normal = np.array([np.cos(angle), np.sin(angle)])
    p[(pos - centre) @ normal > 0] = float(domain_fraction)
    for _ in range(clusters):
        c = rng.uniform(0, 1, 2) * extent
        amp, sigma = rng.uniform(0.2, 0.8), rng.uniform(6.0, 16.0)
        d = pos - c
        d -= np.round(d / extent) * extent  # periodic box
        p += amp * np.exp(-(d**2).sum(1) / (2 * sigma**2))
    kinds = np.where(rng.random(len(pos)) < np.clip(p, 0, 1), "dopant", "host").astype("<U6")
    phase = _render((ny, nx), pixel_A, pos, kinds, 0.05, 0.15, 0.35)
    return Sample(phase, pixel_A, pos, kinds, host.a_A, host.sites)


def vacuum_edge(
    shape: tuple[int, int],
    pixel_A: float,
    vacuum_fraction: float = 0.5,
    **lattice_kwargs: Any,
) -> Sample:
    """A lattice with the atoms removed from the right part of the field (a vacuum region).

    Parameters
    ----------
    shape : (ny, nx)
        Grid shape [px].
    pixel_A : float
        Pixel size [Å].
    vacuum_fraction : float
        Atoms with ``x >= (1 - vacuum_fraction) · width`` are removed.
    **lattice_kwargs
        Passed to :func:`lattice`.

    Returns
    -------
    Sample
        The phase is zero (to ``exp(-d²/2σ²)`` tails of the nearest kept atom, which also wrap in
        from x ≈ 0) in the vacuum part: a reference region for descan correction.
    """
    vf = _fraction(vacuum_fraction, "vacuum_fraction")
    full = lattice(shape, pixel_A, **lattice_kwargs)
    width = full.phase.shape[1] * full.pixel_A
    keep = full.positions_A[:, 1] < (1.0 - vf) * width
    pos, kinds = full.positions_A[keep], full.kinds[keep]
    kw = {"phase_rad": 0.05, "dopant_phase_rad": 0.15, "sigma_A": 0.35, **lattice_kwargs}
    amps = (kw["phase_rad"], kw["dopant_phase_rad"], kw["sigma_A"])
    phase = _render(full.phase.shape, full.pixel_A, pos, kinds, *amps)
    return Sample(phase, full.pixel_A, pos, kinds, full.a_A, full.sites)


def _grid_dot(shape: tuple[int, int], cycles: tuple[int, int]) -> np.ndarray:
    """g·r in cycles for integer ``cycles`` across the box (independent of the pixel size)."""
    ny, nx = shape
    iy = np.arange(ny)[:, None] * (cycles[0] / ny)
    ix = np.arange(nx)[None, :] * (cycles[1] / nx)
    return iy + ix


def sinusoid(
    shape: tuple[int, int],
    pixel_A: float,
    amplitude_rad: float,
    cycles: tuple[int, int] = (0, 4),
) -> tuple[np.ndarray, tuple[float, float]]:
    """Periodic sinusoidal phase ``φ = a·sin(2π Q·r)``.

    Parameters
    ----------
    shape : (ny, nx)
        Grid shape [px].
    pixel_A : float
        Pixel size [Å].
    amplitude_rad : float
        Amplitude a [rad].
    cycles : (int, int)
        Whole periods across the box in (y, x), which keeps the map periodic.

    Returns
    -------
    phase : numpy.ndarray
        float64 map [rad].
    q_A : (float, float)
        Spatial frequency Q = (cycles_y / L_y, cycles_x / L_x) [Å⁻¹]; ``|Q|`` is the one that
        enters the transfer functions (``OTF(|Q|)``).
    """
    ny, nx = _shape2(shape)
    pixel_A = _positive(pixel_A, "pixel_A")
    cyc = _cycles(cycles)
    phase = float(amplitude_rad) * np.sin(2.0 * np.pi * _grid_dot((ny, nx), cyc))
    return phase, (cyc[0] / (ny * pixel_A), cyc[1] / (nx * pixel_A))


def phase_ramp(
    shape: tuple[int, int],
    pixel_A: float,
    cycles: tuple[int, int] = (0, 2),
) -> tuple[np.ndarray, tuple[float, float]]:
    """Linear phase ramp ``φ = 2π g·r``, wrapped into [−π, π).

    A thin object ``exp(iφ)`` with this phase tilts the beam by g, i.e. shifts the whole
    diffraction pattern by ``g / Δk`` detector pixels; on a periodic grid with
    ``g = cycles / L`` and a simulator whose ``Δk = 1 / L_patch`` this is an exact integer shift
    (PHYSICS.md §5.1.2).

    Parameters
    ----------
    shape : (ny, nx)
        Grid shape [px].
    pixel_A : float
        Pixel size [Å].
    cycles : (int, int)
        Whole phase windings across the box in (y, x); integers keep ``exp(iφ)`` periodic.

    Returns
    -------
    phase : numpy.ndarray
        float64 map [rad], wrapped (only ``exp(iφ)`` is meaningful).
    g_A : (float, float)
        The tilt g = (cycles_y / L_y, cycles_x / L_x) [Å⁻¹].
    """
    ny, nx = _shape2(shape)
    pixel_A = _positive(pixel_A, "pixel_A")
    cyc = _cycles(cycles)
    turns = _grid_dot((ny, nx), cyc)
    phase = 2.0 * np.pi * (turns - np.floor(turns + 0.5))
    return phase, (cyc[0] / (ny * pixel_A), cyc[1] / (nx * pixel_A))


def phase_from_potential(v_proj_V_A: Any, voltage_kV: float) -> np.ndarray:
    """Phase of a thin object from its projected potential, ``φ = σ·V_proj``.

    Parameters
    ----------
    v_proj_V_A : array_like
        Projected potential [V·Å].
    voltage_kV : float
        Acceleration voltage [kV].

    Returns
    -------
    numpy.ndarray
        Phase [rad], float64 (σ from :func:`stemedge.calibration.interaction_constant`).
    """
    return interaction_constant(float(voltage_kV)) * np.asarray(v_proj_V_A, dtype=np.float64)
