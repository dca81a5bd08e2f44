// SSB trotter weights W(k, Q) (PHYSICS.md §4.1–4.2), written once for the host and the device.
// The GPU generates each weight where it uses it (nothing is uploaded but the pixel and frequency
// lists); the same functions run on the host through _cuda.ssb_weights_host, which the tests hold
// to the CPU's stemedge._native.SsbTrotters. Every branch and rounding follows cpp/src/ssb.cpp
// (double arithmetic, float weights).
#pragma once

#include <cmath>

#include "hd.cuh"

namespace stemedge::cuda::ssb {

struct Params {
    double k_alpha = 0;     // aperture radius [Å⁻¹]
    double wavelength = 0;  // [Å]
    double ab[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // C10, C12, phi12, C21, phi21, C23, phi23, C30 (Å, rad)
    int aberrated = 0;      // any coefficient != 0 (else the weights are real, ±w)
    unsigned cutoff = 1;    // minimum pixels in each half trotter
    int matched = 0;        // 0: flat, 1: matched normalisation
};

// χ(k) [rad] (PHYSICS.md C6), k in Å⁻¹.
STEMEDGE_HD inline double chi(const Params& p, double ky, double kx) {
    const double lam = p.wavelength;
    const double a2 = lam * lam * (ky * ky + kx * kx);
    if (a2 == 0.0) return 0.0;
    const double a = sqrt(a2), phi = atan2(ky, kx);
    double c = 0.5 * a2 * (p.ab[0] + p.ab[1] * cos(2.0 * (phi - p.ab[2])));
    c += a2 * a / 3.0 * (p.ab[3] * cos(phi - p.ab[4]) + p.ab[5] * cos(3.0 * (phi - p.ab[6])));
    c += 0.25 * a2 * a2 * p.ab[7];
    return 2.0 * 3.14159265358979323846 / lam * c;
}

// +1: k in M+ = D(+Q) ∧ ¬D(−Q); −1: in M−; 0: in neither half trotter.
STEMEDGE_HD inline int half_trotter(double ky, double kx, double qy, double qx, double ka2) {
    const double py = ky - qy, px = kx - qx, my = ky + qy, mx = kx + qx;
    const bool in_p = py * py + px * px <= ka2, in_m = my * my + mx * mx <= ka2;
    return (in_p && !in_m) ? 1 : ((in_m && !in_p) ? -1 : 0);
}

STEMEDGE_HD inline bool is_dc(double qy, double qx) { return qy == 0.0 && qx == 0.0; }

STEMEDGE_HD inline bool in_band(const Params& p, double qy, double qx) {
    return qy * qy + qx * qx < 4.0 * p.k_alpha * p.k_alpha;
}

// Whether the column with half-trotter sizes (np, nm) is kept, its weight magnitudes and transfer.
STEMEDGE_HD inline bool column_scale(const Params& p, unsigned long long n_pix, unsigned long long np,
                                     unsigned long long nm, double& sp, double& sm, double& transfer) {
    if (np == 0 || nm == 0 || np < p.cutoff || nm < p.cutoff) return false;
    if (!p.matched) {
        sp = 0.5 / static_cast<double>(np);
        sm = 0.5 / static_cast<double>(nm);
        transfer = 1.0;
    } else {
        sp = sm = 1.0 / static_cast<double>(n_pix);
        transfer = static_cast<double>(np + nm) / static_cast<double>(n_pix);
    }
    return true;
}

// The weight of pixel k on side `side` (±1) of a kept column: ½Γ*/|M±| (flat) with
// Γ* = e^{−i(χ(k) − χ(k−Q))} on M+ and −e^{+i(χ(k) − χ(k+Q))} on M−; ±w without aberrations.
STEMEDGE_HD inline void weight(const Params& p, double ky, double kx, double qy, double qx, int side,
                               double sp, double sm, float& re, float& im) {
    if (side > 0) {
        if (p.aberrated) {
            const double d = chi(p, ky, kx) - chi(p, ky - qy, kx - qx);
            re = static_cast<float>(sp * cos(d));
            im = static_cast<float>(-sp * sin(d));
        } else {
            re = static_cast<float>(sp);
            im = 0.0f;
        }
    } else {
        if (p.aberrated) {
            const double d = chi(p, ky, kx) - chi(p, ky + qy, kx + qx);
            re = static_cast<float>(-sm * cos(d));
            im = static_cast<float>(-sm * sin(d));
        } else {
            re = static_cast<float>(-sm);
            im = 0.0f;
        }
    }
}

}  // namespace stemedge::cuda::ssb
