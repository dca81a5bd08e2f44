// GPU SSB (the offline route of python/stemedge/ptycho/offline.py on the device): the bright-field
// gather and the weighted sums over the kept half-plane frequencies, with the weights generated
// in the kernel (ssb_weights.cuh). The FFT between them is cuFFT through cupy. All pointers are
// device pointers; every call is asynchronous on `stream`.
#pragma once

#include <cuda_runtime.h>

#include <complex>
#include <cstdint>
#include <vector>

#include "reduce.hpp"  // FrameType
#include "ssb_weights.cuh"

namespace stemedge::cuda {

// out[f, p] = Σ frames[f][pix[ptr[p] .. ptr[p+1])] (float32, summed in float in list order, as the
// CPU's ssb_gather), for n C-contiguous frames of det_y × det_x.
void ssb_gather_device(const void* frames, FrameType type, long long n, int det_y, int det_x,
                       const std::uint32_t* ptr, const std::uint32_t* pix, int n_pix, float* out,
                       cudaStream_t stream);

// For each candidate frequency c (qy[c], qx[c] in Å⁻¹; row cells[c] of g):
// F[c] = Σ_k W(k, Q_c)·g[cells[c], k] (complex128), kept[c] and transfer[c] as SsbTrotters
// would give them (F = 0 where not kept). g is (cells, n_pix) complex64, ky/kx (n_pix) float64.
void ssb_sums_device(const void* g, int n_pix, const long long* cells, const double* qy,
                     const double* qx, const double* ky, const double* kx, long long n_cand,
                     const ssb::Params& params, void* F, std::uint8_t* kept, double* transfer,
                     cudaStream_t stream);

// The same weights evaluated on the host by the device code's functions: kept (n_cand), transfer
// (n_cand) and dense weights (n_cand × n_pix, complex64, 0 outside the half trotters).
void ssb_weights_host(const double* ky, const double* kx, int n_pix, const double* qy,
                      const double* qx, long long n_cand, const ssb::Params& params,
                      std::uint8_t* kept, double* transfer, std::complex<float>* w);

ssb::Params ssb_params(double k_alpha, double wavelength, const std::vector<double>& aberrations,
                       unsigned cutoff, bool matched);

}  // namespace stemedge::cuda
