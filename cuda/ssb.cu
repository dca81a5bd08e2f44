// GPU SSB kernels (see ssb.hpp). The gather reads each frame's bright-field pixels once (thread per
// output value, consecutive threads on consecutive pixels of a disk row: coalesced). The sums run
// one block per candidate frequency: a first pass counts the half trotters (for the flat
// normalisation and the cutoff), a second generates each weight and accumulates W·G in double;
// G's row for that frequency is contiguous, so each pass reads it coalesced.
#include "ssb.hpp"

#include <stdexcept>
#include <string>

#include "cuda_check.hpp"

namespace stemedge::cuda {
namespace {

constexpr int kThreads = 256;

template <class T>
__global__ void __launch_bounds__(kThreads)
    gather_kernel(const T* __restrict__ frames, long long n, long long pixels,
                  const std::uint32_t* __restrict__ ptr, const std::uint32_t* __restrict__ pix,
                  int n_pix, float* __restrict__ out) {
    const long long total = n * n_pix;
    for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        const long long f = i / n_pix;
        const int p = static_cast<int>(i - f * n_pix);
        const T* frame = frames + f * pixels;
        float s = 0.0f;
        for (std::uint32_t j = ptr[p]; j < ptr[p + 1]; ++j) s += static_cast<float>(frame[pix[j]]);
        out[i] = s;
    }
}

// Sum of `v` over the block (every thread gets it); `scratch` holds one value per warp.
template <class V>
__device__ V block_sum(V v, V* scratch) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    V total = 0;
    for (int w = 0; w < kThreads / 32; ++w) total += scratch[w];
    return total;
}

__global__ void __launch_bounds__(kThreads)
    sums_kernel(const float2* __restrict__ g, int n_pix, const long long* __restrict__ cells,
                const double* __restrict__ qys, const double* __restrict__ qxs,
                const double* __restrict__ ky, const double* __restrict__ kx, long long n_cand,
                ssb::Params prm, double2* __restrict__ F, std::uint8_t* __restrict__ kept,
                double* __restrict__ transfer) {
    __shared__ double dscratch[kThreads / 32];
    __shared__ unsigned long long uscratch[kThreads / 32];
    const double ka2 = prm.k_alpha * prm.k_alpha;
    for (long long c = blockIdx.x; c < n_cand; c += gridDim.x) {
        const double qy = qys[c], qx = qxs[c];
        const float2* row = g + cells[c] * n_pix;
        const bool dc = ssb::is_dc(qy, qx);
        double sp = 0, sm = 0, tr = 0;
        bool keep;
        if (dc) {
            keep = n_pix > 0;
            sp = 1.0 / static_cast<double>(n_pix);
            tr = 1.0;
        } else if (!ssb::in_band(prm, qy, qx)) {
            keep = false;
        } else {
            unsigned long long np = 0, nm = 0;
            for (int i = threadIdx.x; i < n_pix; i += kThreads) {
                const int side = ssb::half_trotter(ky[i], kx[i], qy, qx, ka2);
                np += side > 0;
                nm += side < 0;
            }
            np = block_sum(np, uscratch);
            nm = block_sum(nm, uscratch);
            keep = ssb::column_scale(prm, static_cast<unsigned long long>(n_pix), np, nm, sp, sm, tr);
        }
        double sr = 0, si = 0;
        if (keep) {
            const float w_dc = static_cast<float>(sp);
            for (int i = threadIdx.x; i < n_pix; i += kThreads) {
                float re, im;
                if (dc) {
                    re = w_dc;
                    im = 0.0f;
                } else {
                    const int side = ssb::half_trotter(ky[i], kx[i], qy, qx, ka2);
                    if (side == 0) continue;
                    ssb::weight(prm, ky[i], kx[i], qy, qx, side, sp, sm, re, im);
                }
                const float2 v = row[i];
                sr += static_cast<double>(v.x) * re - static_cast<double>(v.y) * im;
                si += static_cast<double>(v.x) * im + static_cast<double>(v.y) * re;
            }
        }
        sr = block_sum(sr, dscratch);
        si = block_sum(si, dscratch);
        if (threadIdx.x == 0) {
            F[c] = make_double2(keep ? sr : 0.0, keep ? si : 0.0);
            kept[c] = keep ? 1 : 0;
            transfer[c] = keep ? tr : 0.0;
        }
    }
}

unsigned grid_for(long long work) {
    const long long blocks = (work + kThreads - 1) / kThreads;
    return static_cast<unsigned>(blocks < 65535LL * 16 ? (blocks > 0 ? blocks : 1) : 65535LL * 16);
}

template <class T>
void launch_gather(const void* frames, long long n, int det_y, int det_x, const std::uint32_t* ptr,
                   const std::uint32_t* pix, int n_pix, float* out, cudaStream_t stream) {
    gather_kernel<T><<<grid_for(n * n_pix), kThreads, 0, stream>>>(
        static_cast<const T*>(frames), n, static_cast<long long>(det_y) * det_x, ptr, pix, n_pix, out);
    STEMEDGE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

ssb::Params ssb_params(double k_alpha, double wavelength, const std::vector<double>& aberrations,
                       unsigned cutoff, bool matched) {
    if (aberrations.size() != 8)
        throw std::invalid_argument(
            "aberrations: pass 8 values (C10, C12, phi12, C21, phi21, C23, phi23, C30)");
    ssb::Params p;
    p.k_alpha = k_alpha;
    p.wavelength = wavelength;
    for (int i = 0; i < 8; ++i) p.ab[i] = aberrations[i];
    // As ssb::Aberrations::any(): the angles alone do not make the weights complex.
    p.aberrated = p.ab[0] != 0 || p.ab[1] != 0 || p.ab[3] != 0 || p.ab[5] != 0 || p.ab[7] != 0;
    p.cutoff = cutoff;
    p.matched = matched ? 1 : 0;
    return p;
}

void ssb_gather_device(const void* frames, FrameType type, long long n, int det_y, int det_x,
                       const std::uint32_t* ptr, const std::uint32_t* pix, int n_pix, float* out,
                       cudaStream_t stream) {
    if (n < 0 || det_y < 1 || det_x < 1 || n_pix < 0)
        throw std::invalid_argument("ssb_gather: bad frame or pixel count");
    if (n == 0 || n_pix == 0) return;
    switch (type) {
        case FrameType::kU8: return launch_gather<std::uint8_t>(frames, n, det_y, det_x, ptr, pix, n_pix, out, stream);
        case FrameType::kU16: return launch_gather<std::uint16_t>(frames, n, det_y, det_x, ptr, pix, n_pix, out, stream);
        case FrameType::kU32: return launch_gather<std::uint32_t>(frames, n, det_y, det_x, ptr, pix, n_pix, out, stream);
        case FrameType::kF32: return launch_gather<float>(frames, n, det_y, det_x, ptr, pix, n_pix, out, stream);
    }
    throw std::invalid_argument("ssb_gather: frames must be uint8, uint16, uint32 or float32");
}

void ssb_sums_device(const void* g, int n_pix, const long long* cells, const double* qy,
                     const double* qx, const double* ky, const double* kx, long long n_cand,
                     const ssb::Params& params, void* F, std::uint8_t* kept, double* transfer,
                     cudaStream_t stream) {
    if (n_pix < 1 || n_cand < 0) throw std::invalid_argument("ssb_sums: bad pixel or frequency count");
    if (n_cand == 0) return;
    const unsigned blocks = static_cast<unsigned>(n_cand < 65535LL * 16 ? n_cand : 65535LL * 16);
    sums_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<const float2*>(g), n_pix, cells, qy, qx,
                                                 ky, kx, n_cand, params, static_cast<double2*>(F),
                                                 kept, transfer);
    STEMEDGE_CUDA_CHECK(cudaGetLastError());
}

void ssb_weights_host(const double* ky, const double* kx, int n_pix, const double* qy,
                      const double* qx, long long n_cand, const ssb::Params& p, std::uint8_t* kept,
                      double* transfer, std::complex<float>* w) {
    const double ka2 = p.k_alpha * p.k_alpha;
    for (long long c = 0; c < n_cand; ++c) {
        std::complex<float>* col = w + c * n_pix;
        for (int i = 0; i < n_pix; ++i) col[i] = {0.0f, 0.0f};
        double sp = 0, sm = 0, tr = 0;
        bool keep;
        if (ssb::is_dc(qy[c], qx[c])) {
            keep = n_pix > 0;
            for (int i = 0; i < n_pix; ++i) col[i] = {static_cast<float>(1.0 / n_pix), 0.0f};
            tr = 1.0;
        } else if (!ssb::in_band(p, qy[c], qx[c])) {
            keep = false;
        } else {
            unsigned long long np = 0, nm = 0;
            for (int i = 0; i < n_pix; ++i) {
                const int side = ssb::half_trotter(ky[i], kx[i], qy[c], qx[c], ka2);
                np += side > 0;
                nm += side < 0;
            }
            keep = ssb::column_scale(p, static_cast<unsigned long long>(n_pix), np, nm, sp, sm, tr);
            if (keep) {
                for (int i = 0; i < n_pix; ++i) {
                    const int side = ssb::half_trotter(ky[i], kx[i], qy[c], qx[c], ka2);
                    if (side == 0) continue;
                    float re, im;
                    ssb::weight(p, ky[i], kx[i], qy[c], qx[c], side, sp, sm, re, im);
                    col[i] = {re, im};
                }
            }
        }
        kept[c] = keep ? 1 : 0;
        transfer[c] = keep ? tr : 0.0;
    }
}

}  // namespace stemedge::cuda
