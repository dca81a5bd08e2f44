// The reduction kernels, written once as plain loops that the compiler vectorises. This header is
// compiled once per instruction set (reduce_isa.cpp with different -march flags, namespace
// STEMEDGE_ISA) and the dispatcher picks the best one the CPU supports at run time.
//
// Accuracy: integer frames are summed in integer accumulators (exact); float32 frames in float64.
// Weighted (non-binary) masks multiply in float32 for 8/16-bit data and float64 otherwise, with
// the per-row partial sums carried into float64.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "backend.hpp"
#include "stemedge/frame_view.hpp"
#include "stemedge/mask_plan.hpp"
#include "stemedge/reduce.hpp"

namespace stemedge::STEMEDGE_ISA {

// Vector width of this build (explicit GCC vector extensions: one source, lowered to whatever the
// -march flags of this translation unit allow).
#if defined(__AVX512F__) && defined(__AVX512BW__)
inline constexpr std::size_t kVecBytes = 64;
#elif defined(__AVX2__)
inline constexpr std::size_t kVecBytes = 32;
#else
inline constexpr std::size_t kVecBytes = 16;
#endif

template <class T>
struct Acc {
    // Binary masks: exact integer sums for integer pixels, float64 for float32 pixels.
    using bin = std::conditional_t<std::is_floating_point_v<T>, double,
                                   std::conditional_t<(sizeof(T) < 4), std::uint32_t, std::uint64_t>>;
    // Weighted masks: float32 products for 8/16-bit pixels (exact pixel values), float64 otherwise.
    using wt = std::conditional_t<(sizeof(T) < 4 && !std::is_floating_point_v<T>), float, double>;
};

// L lanes of accumulator type A, and the matching vector of L input pixels.
template <class T, class A>
struct Lanes {
    static constexpr std::size_t L = kVecBytes / sizeof(A);
    typedef A VA __attribute__((vector_size(kVecBytes)));
    typedef T VT __attribute__((vector_size(L * sizeof(T))));
    typedef float VF __attribute__((vector_size(L * sizeof(float))));

    static VA load(const T* p) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
        // GCC splits a generic 16-lane widening into halves; the one-instruction forms:
        if constexpr (std::is_same_v<T, std::uint16_t> && std::is_same_v<A, std::uint32_t>)
            return (VA)_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
        if constexpr (std::is_same_v<T, std::uint8_t> && std::is_same_v<A, std::uint32_t>)
            return (VA)_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        if constexpr (std::is_same_v<T, std::uint32_t> && std::is_same_v<A, std::uint64_t>)
            return (VA)_mm512_cvtepu32_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
        if constexpr (std::is_same_v<T, float> && std::is_same_v<A, double>)
            return (VA)_mm512_cvtps_pd(_mm256_loadu_ps(p));
#elif defined(__AVX2__)
        if constexpr (std::is_same_v<T, std::uint16_t> && std::is_same_v<A, std::uint32_t>)
            return (VA)_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        if constexpr (std::is_same_v<T, std::uint32_t> && std::is_same_v<A, std::uint64_t>)
            return (VA)_mm256_cvtepu32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        if constexpr (std::is_same_v<T, float> && std::is_same_v<A, double>)
            return (VA)_mm256_cvtps_pd(_mm_loadu_ps(p));
#endif
        VT raw;
        std::memcpy(&raw, p, sizeof(raw));
        return __builtin_convertvector(raw, VA);
    }
    static VA load_w(const float* p) {
        VF raw;
        std::memcpy(&raw, p, sizeof(raw));
        return __builtin_convertvector(raw, VA);
    }
    static VA load_acc(const A* p) {
        VA v;
        std::memcpy(&v, p, sizeof(v));
        return v;
    }
    static void store_acc(A* p, VA v) { std::memcpy(p, &v, sizeof(v)); }
    static VA iota() {
        VA v;
        for (std::size_t i = 0; i < L; ++i) v[i] = static_cast<A>(i);
        return v;
    }
};

// Horizontal sum by halving with __builtin_shufflevector (a shuffle tree rather than L scalar
// extracts; going through memory instead made GCC keep the accumulator on the stack).
template <class A, class V>
inline A hsum(V v) {
    constexpr std::size_t L = sizeof(V) / sizeof(A);
    if constexpr (L == 16) {
        auto h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
        return hsum<A>(h);
    } else if constexpr (L == 8) {
        auto h = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
        return hsum<A>(h);
    } else if constexpr (L == 4) {
        auto h = __builtin_shufflevector(v, v, 0, 1) + __builtin_shufflevector(v, v, 2, 3);
        return hsum<A>(h);
    } else {
        static_assert(L == 2);
        return v[0] + v[1];
    }
}

// One span of one row: the lane vector whose sum is Σ v (and col[x] += v) over n pixels starting at r, where v is the pixel
// (binary) or weight·pixel (weighted), zeroed below the threshold t. `before` is how many pixels
// of the same row precede r: the tail is handled by one vector that ends at the span's end and
// masks off the lanes already counted, so no scalar remainder loop and no read past the row.
template <class T, class A, bool kWeighted, bool kThr, bool kMom>
inline typename Lanes<T, A>::VA span_sum(const T* __restrict r, const float* __restrict w, A* __restrict col,
                  std::size_t n, std::size_t before, A t) {
    using Ln = Lanes<T, A>;
    using VA = typename Ln::VA;
    constexpr std::size_t L = Ln::L;
    VA acc = {};  // a register: nothing may take its address (that spilled it to the stack)
    std::size_t i = 0;
    for (; i + L <= n; i += L) {
        VA v = Ln::load(r + i);
        if constexpr (kThr) v = v >= t ? v : VA{};
        if constexpr (kWeighted) v *= Ln::load_w(w + i);
        acc += v;
        if constexpr (kMom) Ln::store_acc(col + i, Ln::load_acc(col + i) + v);
    }
    const std::size_t rem = n - i;
    if (rem) {
        const std::size_t back = L - rem;  // start the last vector this many pixels early
        if (n >= L || before >= back) {
            const std::ptrdiff_t j = static_cast<std::ptrdiff_t>(i) - static_cast<std::ptrdiff_t>(back);
            // j may be negative (n < L): it then points into the same row before the span, which
            // exists; weights are padded in front by the MaskPlan for the same reason.
            VA v = Ln::load(r + j);
            if constexpr (kThr) v = v >= t ? v : VA{};
            if constexpr (kWeighted) v *= Ln::load_w(w + j);
            v = Ln::iota() >= static_cast<A>(back) ? v : VA{};
            acc += v;
            if constexpr (kMom) Ln::store_acc(col + j, Ln::load_acc(col + j) + v);
        } else {
            // Span shorter than a vector at the very start of a narrow row: scalar.
            A s = 0;
            for (std::size_t j = i; j < n; ++j) {
                A v = static_cast<A>(r[j]);
                if constexpr (kThr) v = v >= t ? v : A(0);
                if constexpr (kWeighted) v *= static_cast<A>(w[j]);
                s += v;
                if constexpr (kMom) col[j] += v;
            }
            acc[0] += s;
        }
    }
    return acc;
}

template <class A>
A threshold_value(double t) {
    if constexpr (std::is_floating_point_v<A>) {
        // Compare as float32, as numpy compares a float32 array with a Python float; the float32
        // threshold and pixels convert exactly to the accumulator type.
        return static_cast<A>(static_cast<float>(t));
    } else {
        // For integer pixels, v >= t  <=>  v >= ceil(t); clip into the accumulator's range.
        if (!(t > 0)) return A(0);
        const double c = std::ceil(t);
        const double hi = static_cast<double>(std::numeric_limits<A>::max());
        return c >= hi ? std::numeric_limits<A>::max() : static_cast<A>(c);
    }
}

template <class T>
void reduce_range_t(const FrameStackView& f, const MaskPlan& p, const ReduceOptions& o, double* out,
                    std::size_t begin, std::size_t end) {
    using Bin = typename Acc<T>::bin;
    using Wt = typename Acc<T>::wt;
    using VB = typename Lanes<T, Bin>::VA;
    using VW = typename Lanes<T, Wt>::VA;
    const std::size_t k = p.n_masks(), W = p.det_x();
    const std::size_t nch = n_channels(o, k);

    std::vector<std::size_t> channel(k), colslot(k, 0);
    std::vector<std::uint8_t> code(k);  // bit0 threshold, bit1 moments, bit2 weighted
    std::vector<Bin> thr_b(k);
    std::vector<Wt> thr_w(k);
    std::size_t nmom = 0;
    for (std::size_t m = 0, c = 0; m < k; ++m) {
        channel[m] = c;
        const bool mom = o.moments[m] != 0, has_thr = !std::isnan(o.thresholds[m]);
        c += mom ? 3 : 1;
        if (mom) colslot[m] = nmom++;
        thr_b[m] = has_thr ? threshold_value<Bin>(o.thresholds[m]) : Bin(0);
        thr_w[m] = has_thr ? threshold_value<Wt>(o.thresholds[m]) : Wt(0);
        code[m] = static_cast<std::uint8_t>(has_thr | (mom << 1) | ((!p.binary(m)) << 2));
    }
    // Column sums for the x moment: Σx·M·I = Σ_x x·col[x], one add per pixel instead of a
    // multiply. 64-byte aligned (a vector store that straddles cache lines costs double) and
    // padded so vector tails that start before x = 0 stay inside the buffer.
    constexpr std::size_t kPad = 64;
    auto aligned = [](auto& buf) {
        using E = std::remove_reference_t<decltype(buf[0])>;
        const auto addr = reinterpret_cast<std::uintptr_t>(buf.data() + kPad);
        return reinterpret_cast<E*>((addr + 63) & ~std::uintptr_t(63));
    };
    std::vector<Bin> colb_buf(nmom * W + 2 * kPad + 64);
    std::vector<Wt> colw_buf(nmom * W + 2 * kPad + 64);
    Bin* colb = aligned(colb_buf);
    Wt* colw = aligned(colw_buf);
    std::vector<double> S(k), Sy(k);

    // Masks without moments need no per-row sums: their lane vectors are summed over the whole
    // frame and reduced once (no horizontal sum per span). Integer lanes are flushed to float64
    // before they could overflow; float32 lanes (weighted masks on 8/16-bit data) are reduced per
    // span to keep float64 accuracy.
    std::vector<VB> frame_b(k);
    std::vector<VW> frame_w(k);
    constexpr bool kFrameW = std::is_same_v<Wt, double>;
    std::size_t flush_rows = std::numeric_limits<std::size_t>::max();
    if constexpr (!std::is_floating_point_v<Bin>) {
        const double lane_max = static_cast<double>(std::numeric_limits<Bin>::max());
        const double per_row = static_cast<double>(std::numeric_limits<T>::max()) *
                               (static_cast<double>(W) / Lanes<T, Bin>::L + 2.0);
        flush_rows = static_cast<std::size_t>(std::max(1.0, std::floor(lane_max / per_row)));
    }
    auto flush = [&] {
        for (std::size_t m = 0; m < k; ++m) {
            S[m] += static_cast<double>(hsum<Bin>(frame_b[m]));
            frame_b[m] = VB{};
            if constexpr (kFrameW) {
                S[m] += static_cast<double>(hsum<Wt>(frame_w[m]));
                frame_w[m] = VW{};
            }
        }
    };

    const Span* spans = p.spans().data();
    const std::size_t nspans = p.spans().size();
    const float* weights = p.weights().data();

    for (std::size_t i = begin; i < end; ++i) {
        const std::uint8_t* fp = f.frame(i);
        std::fill(S.begin(), S.end(), 0.0);
        std::fill(Sy.begin(), Sy.end(), 0.0);
        std::fill(frame_b.begin(), frame_b.end(), VB{});
        std::fill(frame_w.begin(), frame_w.end(), VW{});
        std::fill(colb_buf.begin(), colb_buf.end(), Bin(0));
        std::fill(colw_buf.begin(), colw_buf.end(), Wt(0));
        std::size_t row_of_last_flush = 0;
        for (std::size_t s = 0; s < nspans; ++s) {
            const Span& sp = spans[s];
            if (sp.row - row_of_last_flush >= flush_rows) {
                flush();
                row_of_last_flush = sp.row;
            }
            const std::size_t m = sp.mask;
            const std::size_t x0 = sp.x0, n = sp.x1 - sp.x0;
            const T* r = f.row<T>(fp, sp.row) + x0;
            Bin* cb = colb + colslot[m] * W + x0;
            Wt* cw = colw + colslot[m] * W + x0;
            const float* w = weights + (sp.weight_offset == kNoWeights ? 0 : sp.weight_offset);
            double a;
            switch (code[m]) {
                case 0: frame_b[m] += span_sum<T, Bin, false, false, false>(r, w, cb, n, x0, thr_b[m]); continue;
                case 1: frame_b[m] += span_sum<T, Bin, false, true, false>(r, w, cb, n, x0, thr_b[m]); continue;
                case 2: a = static_cast<double>(hsum<Bin>(span_sum<T, Bin, false, false, true>(r, w, cb, n, x0, thr_b[m]))); break;
                case 3: a = static_cast<double>(hsum<Bin>(span_sum<T, Bin, false, true, true>(r, w, cb, n, x0, thr_b[m]))); break;
                case 4:
                    if constexpr (kFrameW) {
                        frame_w[m] += span_sum<T, Wt, true, false, false>(r, w, cw, n, x0, thr_w[m]);
                        continue;
                    } else {
                        a = static_cast<double>(hsum<Wt>(span_sum<T, Wt, true, false, false>(r, w, cw, n, x0, thr_w[m])));
                        break;
                    }
                case 5:
                    if constexpr (kFrameW) {
                        frame_w[m] += span_sum<T, Wt, true, true, false>(r, w, cw, n, x0, thr_w[m]);
                        continue;
                    } else {
                        a = static_cast<double>(hsum<Wt>(span_sum<T, Wt, true, true, false>(r, w, cw, n, x0, thr_w[m])));
                        break;
                    }
                case 6: a = static_cast<double>(hsum<Wt>(span_sum<T, Wt, true, false, true>(r, w, cw, n, x0, thr_w[m]))); break;
                default: a = static_cast<double>(hsum<Wt>(span_sum<T, Wt, true, true, true>(r, w, cw, n, x0, thr_w[m]))); break;
            }
            S[m] += a;
            Sy[m] += a * static_cast<double>(sp.row);
        }
        flush();
        double* o_i = out + i * nch;
        for (std::size_t m = 0; m < k; ++m) {
            double* oc = o_i + channel[m];
            oc[0] = S[m];
            if (!o.moments[m]) continue;
            double sx = 0.0;
            if (p.binary(m)) {
                const Bin* cb = colb + colslot[m] * W;
                for (std::size_t x = 0; x < W; ++x) sx += static_cast<double>(x) * static_cast<double>(cb[x]);
            } else {
                const Wt* cw = colw + colslot[m] * W;
                for (std::size_t x = 0; x < W; ++x) sx += static_cast<double>(x) * static_cast<double>(cw[x]);
            }
            oc[1] = Sy[m];
            oc[2] = sx;
        }
    }
}

inline void reduce_range(const FrameStackView& f, const MaskPlan& p, const ReduceOptions& o,
                         double* out, std::size_t begin, std::size_t end) {
    switch (f.dtype) {
        case DType::kU8: return reduce_range_t<std::uint8_t>(f, p, o, out, begin, end);
        case DType::kU16: return reduce_range_t<std::uint16_t>(f, p, o, out, begin, end);
        case DType::kU32: return reduce_range_t<std::uint32_t>(f, p, o, out, begin, end);
        case DType::kF32: return reduce_range_t<float>(f, p, o, out, begin, end);
    }
}

inline std::uint64_t read_range(const FrameStackView& f, std::size_t begin, std::size_t end) {
    const std::size_t row_bytes = f.det_x * itemsize(f.dtype);
    const std::size_t words = row_bytes / 8;
    std::uint64_t total = 0;
    for (std::size_t i = begin; i < end; ++i) {
        const std::uint8_t* fp = f.frame(i);
        for (std::size_t y = 0; y < f.det_y; ++y) {
            const std::uint8_t* r = fp + static_cast<std::ptrdiff_t>(y) * f.row_stride;
            std::uint64_t acc = 0;
#pragma omp simd reduction(+ : acc)
            for (std::size_t j = 0; j < words; ++j) {
                std::uint64_t v;
                std::memcpy(&v, r + 8 * j, 8);
                acc += v;
            }
            for (std::size_t b = 8 * words; b < row_bytes; ++b) acc += r[b];
            total += acc;
        }
    }
    return total;
}

}  // namespace stemedge::STEMEDGE_ISA
