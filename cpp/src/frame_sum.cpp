#include "stemedge/frame_sum.hpp"

#include <algorithm>
#include <type_traits>
#include <cstdint>
#include <limits>

#include "stemedge/thread_pool.hpp"

// One build per instruction set, chosen at load time (GCC function multiversioning): the loops
// below are plain and vectorise well; only the vector width differs.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define STEMEDGE_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define STEMEDGE_CLONES
#endif

namespace stemedge {
namespace {

constexpr std::size_t kTile = 4096;  // pixels per tile: the accumulator stays in L1

// Rows [y0, y1) (y1 - y0 rows of at most kTile pixels in all, or one row segment [x0, x0 + w))
// summed over the frames. Integer frames accumulate in Acc (exact while the frame count stays
// below `step`), then the tile is added to the float64 result once.
template <class T, class Acc>
__attribute__((always_inline)) inline void sum_tile(const FrameStackView& v, std::size_t y0,
                                                    std::size_t y1, std::size_t x0, std::size_t w,
                                                    double* acc_out) {
    Acc acc[kTile];
    const std::size_t n = v.n_frames(), rows = y1 - y0;
    const std::size_t step = std::is_floating_point<Acc>::value
                                 ? n
                                 : static_cast<std::size_t>(std::numeric_limits<Acc>::max() /
                                                            std::numeric_limits<T>::max());
    for (std::size_t f0 = 0; f0 < n; f0 += step) {
        const std::size_t f1 = std::min(n, f0 + step);
        std::fill_n(acc, rows * w, Acc(0));
        for (std::size_t i = f0; i < f1; ++i) {
            const std::uint8_t* frame = v.frame(i);
            for (std::size_t r = 0; r < rows; ++r) {
                const T* row = v.row<T>(frame, y0 + r) + x0;
                Acc* a = acc + r * w;
                for (std::size_t j = 0; j < w; ++j) a[j] += static_cast<Acc>(row[j]);
            }
        }
        for (std::size_t r = 0; r < rows; ++r) {
            double* out = acc_out + (y0 + r) * v.det_x + x0;
            const Acc* a = acc + r * w;
            for (std::size_t j = 0; j < w; ++j) out[j] += static_cast<double>(a[j]);
        }
    }
}

// One build per instruction set (target_clones); sum_tile is inlined into each.
template <class T, class Acc>
STEMEDGE_CLONES void sum_rows(const FrameStackView& v, std::size_t y0, std::size_t y1, double* acc) {
    if (v.det_x <= kTile) {
        const std::size_t rows = kTile / v.det_x;
        for (std::size_t y = y0; y < y1; y += rows)
            sum_tile<T, Acc>(v, y, std::min(y1, y + rows), 0, v.det_x, acc);
        return;
    }
    for (std::size_t y = y0; y < y1; ++y)
        for (std::size_t x0 = 0; x0 < v.det_x; x0 += kTile)
            sum_tile<T, Acc>(v, y, y + 1, x0, std::min(kTile, v.det_x - x0), acc);
}

void sum_band(const FrameStackView& v, std::size_t y0, std::size_t y1, double* acc) {
    switch (v.dtype) {
        case DType::kU8: return sum_rows<std::uint8_t, std::uint32_t>(v, y0, y1, acc);
        case DType::kU16: return sum_rows<std::uint16_t, std::uint32_t>(v, y0, y1, acc);
        case DType::kU32: return sum_rows<std::uint32_t, std::uint64_t>(v, y0, y1, acc);
        case DType::kF32: return sum_rows<float, double>(v, y0, y1, acc);
    }
}

}  // namespace

void sum_frames(const FrameStackView& v, double* acc, std::size_t nthreads) {
    if (v.n_frames() == 0) return;
    ThreadPool& pool = ThreadPool::global();
    const std::size_t threads = nthreads == 0 ? pool.size() : std::min(nthreads, pool.size());
    const std::size_t bytes = v.n_frames() * v.det_y * v.det_x * itemsize(v.dtype);
    if (threads <= 1 || v.det_y < 2 || bytes < (std::size_t{1} << 20)) {
        sum_band(v, 0, v.det_y, acc);
        return;
    }
    const std::size_t bands = std::min(v.det_y, threads * 4);
    pool.run(bands, threads, [&](std::size_t b) {
        sum_band(v, b * v.det_y / bands, (b + 1) * v.det_y / bands, acc);
    });
}

}  // namespace stemedge
