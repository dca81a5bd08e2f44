// The GPU frame reduction (see reduce.hpp). One block per frame (grid-stride over frames); each
// thread walks the frame's pixels with a stride of the block, keeping its partial sums in
// registers, then a warp-shuffle reduction and one row of `out` per frame. Masks are read
// densely (they stay in L2 across frames); frames are read once.
#include "reduce.hpp"

#include <cmath>
#include <stdexcept>
#include <string>

#include "cuda_check.hpp"

namespace stemedge::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

struct Params {
    int k, nch;
    int chan[kMaxMasks];          // first output column of mask m
    unsigned char moments[kMaxMasks];
    double threshold[kMaxMasks];  // NaN: none
};

template <class T>
__device__ inline bool kept(T raw, double t) {
    // As the CPU reference: floats compare in float, integers in double; NaN never passes.
    if constexpr (std::is_floating_point_v<T>) return raw >= static_cast<float>(t);
    else return static_cast<double>(raw) >= t;
}

template <class T>
__global__ void __launch_bounds__(kThreads) reduce_kernel(const T* __restrict__ frames, long long n,
                                                         int det_y, int det_x,
                                                         const float* __restrict__ masks,
                                                         Params prm, double* __restrict__ out) {
    __shared__ double partial[kWarps][3 * kMaxMasks];
    const long long pixels = static_cast<long long>(det_y) * det_x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (long long f = blockIdx.x; f < n; f += gridDim.x) {
        // per mask: S, Sy, Sx; indexed by unrolled constants only, so they stay in registers
        double s[kMaxMasks], sy[kMaxMasks], sx[kMaxMasks];
#pragma unroll
        for (int m = 0; m < kMaxMasks; ++m) s[m] = sy[m] = sx[m] = 0.0;
        const T* frame = frames + f * pixels;
        for (long long p = threadIdx.x; p < pixels; p += kThreads) {
            const T raw = frame[p];
            const double value = static_cast<double>(raw);
            const double y = static_cast<double>(p / det_x), x = static_cast<double>(p % det_x);
#pragma unroll
            for (int m = 0; m < kMaxMasks; ++m) {
                if (m < prm.k) {
                    const float w = masks[m * pixels + p];
                    if (w != 0.0f) {
                        double v = value;
                        if (!isnan(prm.threshold[m]) && !kept(raw, prm.threshold[m])) v = 0.0;
                        v *= static_cast<double>(w);
                        s[m] += v;
                        if (prm.moments[m]) {
                            sy[m] += y * v;
                            sx[m] += x * v;
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int m = 0; m < kMaxMasks; ++m) {
            double a = s[m], b = sy[m], c = sx[m];
            for (int off = 16; off > 0; off >>= 1) {
                a += __shfl_down_sync(0xffffffffu, a, off);
                b += __shfl_down_sync(0xffffffffu, b, off);
                c += __shfl_down_sync(0xffffffffu, c, off);
            }
            if (lane == 0) {
                partial[warp][3 * m] = a;
                partial[warp][3 * m + 1] = b;
                partial[warp][3 * m + 2] = c;
            }
        }
        __syncthreads();
        const int m = threadIdx.x / 3, t = threadIdx.x % 3;
        if (m < prm.k && (t == 0 || prm.moments[m])) {
            double total = 0.0;
#pragma unroll
            for (int w = 0; w < kWarps; ++w) total += partial[w][threadIdx.x];
            out[f * prm.nch + prm.chan[m] + t] = total;
        }
        __syncthreads();  // partial is reused by the next frame
    }
}

template <class T>
void launch(const void* frames, long long n, int det_y, int det_x, const float* masks,
            const Params& prm, double* out, cudaStream_t stream) {
    const long long blocks = n < 65535 * 8 ? n : 65535 * 8;
    reduce_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        static_cast<const T*>(frames), n, det_y, det_x, masks, prm, out);
    STEMEDGE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

int n_channels(const std::vector<std::uint8_t>& moments) {
    int c = 0;
    for (auto m : moments) c += m ? 3 : 1;
    return c;
}

void reduce_frames_device(const void* frames, FrameType type, long long n, int det_y, int det_x,
                          const float* masks, int k, const std::vector<std::uint8_t>& moments,
                          const std::vector<double>& thresholds, double* out,
                          cudaStream_t stream) {
    if (k < 1 || k > kMaxMasks)
        throw std::invalid_argument("reduce: 1 to " + std::to_string(kMaxMasks) + " masks per call");
    if (static_cast<int>(moments.size()) != k || static_cast<int>(thresholds.size()) != k)
        throw std::invalid_argument("reduce: one moments flag and one threshold per mask");
    if (n < 0 || det_y < 1 || det_x < 1) throw std::invalid_argument("reduce: bad frame shape");
    if (n == 0) return;
    Params prm{};
    prm.k = k;
    prm.nch = n_channels(moments);
    for (int m = 0, c = 0; m < k; ++m) {
        prm.chan[m] = c;
        prm.moments[m] = moments[m] ? 1 : 0;
        prm.threshold[m] = thresholds[m];
        c += moments[m] ? 3 : 1;
    }
    switch (type) {
        case FrameType::kU8: return launch<std::uint8_t>(frames, n, det_y, det_x, masks, prm, out, stream);
        case FrameType::kU16: return launch<std::uint16_t>(frames, n, det_y, det_x, masks, prm, out, stream);
        case FrameType::kU32: return launch<std::uint32_t>(frames, n, det_y, det_x, masks, prm, out, stream);
        case FrameType::kF32: return launch<float>(frames, n, det_y, det_x, masks, prm, out, stream);
    }
    throw std::invalid_argument("reduce: frames must be uint8, uint16, uint32 or float32");
}

}  // namespace stemedge::cuda
