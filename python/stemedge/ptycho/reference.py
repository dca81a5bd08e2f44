"""SSB in plain numpy, written from PHYSICS.md §4.1–4.2 without the native code's shortcuts.

Dense weights over the full scan-frequency plane (no half-plane symmetry), the complex FFT of the
whole bright-field cube, no binning, no mean subtraction. It is the yardstick the native routes
are held to in the tests and the baseline of ``benchmarks/bench_ssb.py``; it needs
``N_R·P`` complex values several times over, so keep it to small scans.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from stemedge.aberrations import aberration_phase
from stemedge.calibration import Calibration

__all__ = ["ssb_reference"]


def ssb_reference(
    data: np.ndarray,
    calibration: Calibration,
    *,
    aberrations: Mapping[str, float] | None = None,
    normalization: str = "flat",
    cutoff: int = 1,
    single: bool = False,
) -> np.ndarray:
    """Object wave (scan_y, scan_x) normalised by the mean bright-field intensity.

    ``single=True`` computes in float32/complex64 (the fast numpy route a user would write);
    the default float64 is the accuracy reference.
    """
    real = np.float32 if single else np.float64
    ny, nx, dy, dx = data.shape
    cy, cx = calibration.origin_for((dy, dx))
    r = calibration.bf_radius_px
    yy, xx = np.meshgrid(np.arange(dy) - cy, np.arange(dx) - cx, indexing="ij")
    bf = yy**2 + xx**2 <= r * r
    offsets = np.stack([yy[bf], xx[bf]])  # (2, P) detector frame [px]
    k = calibration.transform @ offsets * calibration.k_per_px  # scan frame [Å⁻¹]
    ky, kx = k[0][None, None, :], k[1][None, None, :]
    cube = data[:, :, bf].astype(real)  # (Ny, Nx, P)
    g = np.fft.fft2(cube, axes=(0, 1))
    del cube
    qy = np.fft.fftfreq(ny, calibration.scan_step_A[0])[:, None, None]
    qx = np.fft.fftfreq(nx, calibration.scan_step_A[1])[None, :, None]
    ka2 = calibration.k_alpha**2
    in_p = (ky - qy) ** 2 + (kx - qx) ** 2 <= ka2  # D(+Q)
    in_m = (ky + qy) ** 2 + (kx + qx) ** 2 <= ka2  # D(−Q)
    plus, minus = in_p & ~in_m, in_m & ~in_p
    n_p, n_m = plus.sum(-1), minus.sum(-1)
    keep = (
        (n_p >= max(cutoff, 1))
        & (n_m >= max(cutoff, 1))
        & (qy[..., 0] ** 2 + qx[..., 0] ** 2 < 4 * ka2)
    )
    n_bf = offsets.shape[1]
    if normalization == "flat":
        wp = 0.5 / np.maximum(n_p, 1)[..., None]
        wm = 0.5 / np.maximum(n_m, 1)[..., None]
    elif normalization == "matched":
        wp = wm = np.full((ny, nx, 1), 1.0 / n_bf)
    else:
        raise ValueError(f"normalization must be 'flat' or 'matched', got {normalization!r}")
    # Γ* = e^{−i(χ(k) − χ(k−Q))} on M+, −e^{+i(χ(k) − χ(k+Q))} on M−.
    lam = calibration.wavelength_A
    chi_k = aberration_phase(ky, kx, lam, aberrations)
    gamma_p = np.exp(-1j * (chi_k - aberration_phase(ky - qy, kx - qx, lam, aberrations)))
    gamma_m = -np.exp(1j * (chi_k - aberration_phase(ky + qy, kx + qx, lam, aberrations)))
    w = (plus * wp * gamma_p + minus * wm * gamma_m) * keep[..., None]
    w[0, 0, :] = 1.0 / n_bf  # Q = 0: the mean over the disk
    f = np.einsum("yxp,yxp->yx", g, w.astype(g.dtype))
    psi = np.fft.ifft2(f)
    level = f[0, 0].real / (ny * nx)
    return psi / level
