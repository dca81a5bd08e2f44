// Single-sideband ptychography (PHYSICS.md §4): bright-field pixel selection, trotter weights
// generated natively, the weighted sums of the offline (FFT) route and the per-frame accumulation
// of the live route. Both routes use the same weights, so a finished live scan equals the offline
// result.
#pragma once

#include <complex>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "stemedge/frame_view.hpp"

namespace stemedge::ssb {

// The bright-field pixels SSB reads: pixel p is the sum of detector pixels pix[ptr[p] .. ptr[p+1])
// (one pixel each without binning, a b×b block with binning), flat indices y·det_x + x.
struct BfPixels {
    std::size_t det_y = 0, det_x = 0;
    std::vector<std::uint32_t> ptr;  // size() + 1
    std::vector<std::uint32_t> pix;
    std::size_t size() const { return ptr.empty() ? 0 : ptr.size() - 1; }
};

// Aberration coefficients (PHYSICS.md C6): C10, C12, C21, C23, C30 in Å, phi12, phi21, phi23 in rad.
struct Aberrations {
    double C10 = 0, C12 = 0, phi12 = 0, C21 = 0, phi21 = 0, C23 = 0, phi23 = 0, C30 = 0;
    bool any() const { return C10 != 0 || C12 != 0 || C21 != 0 || C23 != 0 || C30 != 0; }
};

enum class Norm : std::uint8_t {
    kFlat,     // each half trotter to unit weight: transfer 1, phase in rad
    kMatched,  // Γ*/|D0| on both halves: transfer (|M+| + |M−|)/|D0|, better SNR, not in rad
};

struct TrotterParams {
    double k_alpha = 0;     // aperture radius [Å⁻¹]
    double wavelength = 0;  // [Å]
    Aberrations ab;
    std::size_t cutoff = 1;  // minimum pixels in each half trotter
    Norm norm = Norm::kFlat;
};

// Weights W(k, Q) as a sparse matrix with one column per kept Q (CSC): column c holds Q number
// kept[c] of the candidate list, pixels idx[ptr[c] .. ptr[c+1]) with weights w_re (+ i·w_im when
// aberrations make them complex).
struct Trotters {
    std::size_t n_pixels = 0;
    bool is_complex = false;
    std::vector<std::uint32_t> kept;
    std::vector<std::uint64_t> ptr;
    std::vector<std::uint32_t> idx;
    std::vector<float> w_re, w_im;
    std::vector<double> transfer;  // weak-phase transfer of each kept Q (1 for flat)
    std::size_t n_columns() const { return kept.size(); }
    std::size_t nnz() const { return idx.size(); }
};

// Weights for candidate frequencies (qy[i], qx[i]) [Å⁻¹, scan frame] and bright-field pixels at
// (ky[p], kx[p]) [Å⁻¹, scan frame, relative to the unscattered beam]. Q = 0 is the mean over the
// disk; other Q are kept when both half trotters hold at least `cutoff` pixels.
Trotters build_trotters(const double* ky, const double* kx, std::size_t n_pixels, const double* qy,
                        const double* qx, std::size_t n_q, const TrotterParams& params,
                        std::size_t nthreads);

// Offline route: out[c] = Σ_j W_j · G[cell[c], idx_j] for G (n_cells, n_pixels) complex64, the
// scan-axis FFT of the bright-field cube.
void apply(const Trotters& t, const std::complex<float>* g, std::size_t n_cells,
           const std::int64_t* cell, std::complex<double>* out, std::size_t nthreads);

// Bright-field cube of a stack: out[f, p] = Σ frame_f[bf.pix[...]] (float32), mean[p] its mean over
// the stack (float64); with `center` the mean is subtracted from out. Centring keeps the float32
// FFT's rounding relative to the contrast rather than to the bright-field level; the DC term is
// restored from `mean`.
void gather_cube(const FrameStackView& frames, const BfPixels& bf, float* out, double* mean,
                 bool center, std::size_t nthreads);

// Live route: F[c] += Σ_b Σ_j W_j · I_b[idx_j] · exp(−2πi (qy_c·y_b/Ny + qx_c·x_b/Nx)) for the
// frames of one stack at flat scan positions pos[b] = y_b·Nx + x_b, with (qy_c, qx_c) the integer
// frequency indices of column c.
void accumulate(const Trotters& t, const BfPixels& bf, const FrameStackView& frames,
                const std::int64_t* pos, std::size_t scan_y, std::size_t scan_x,
                const std::int32_t* col_qy, const std::int32_t* col_qx, std::complex<double>* F,
                std::size_t nthreads);

}  // namespace stemedge::ssb
