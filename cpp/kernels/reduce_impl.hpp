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

// Horizontal sum into float64 without overflow: uint32 lanes are widened to uint64 first (each
// lane may be near 2^32, their sum is not). Used wherever lane vectors become scalars.
template <std::size_t L>
struct WidenU32 {  // vector typedefs must live in a class template for GCC to honour vector_size
    typedef std::uint32_t Half __attribute__((vector_size(L * 2)));
    typedef std::uint64_t Wide __attribute__((vector_size(L * 4)));
};

template <class A, class V>
inline double hsum_wide(V v) {
    if constexpr (std::is_same_v<A, std::uint32_t>) {
        constexpr std::size_t L = sizeof(V) / sizeof(A);
        using H = typename WidenU32<L>::Half;
        using H64 = typename WidenU32<L>::Wide;
        H lo, hi;
        if constexpr (L == 16) {
            lo = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
            hi = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
        } else if constexpr (L == 8) {
            lo = __builtin_shufflevector(v, v, 0, 1, 2, 3);
            hi = __builtin_shufflevector(v, v, 4, 5, 6, 7);
        } else {
            static_assert(L == 4);
            lo = __builtin_shufflevector(v, v, 0, 1);
            hi = __builtin_shufflevector(v, v, 2, 3);
        }
        return static_cast<double>(hsum<std::uint64_t>(__builtin_convertvector(lo, H64) +
                                                       __builtin_convertvector(hi, H64)));
    } else {
        return static_cast<double>(hsum<A>(v));
    }
}

// The largest value one integer lane may reach: all of uint32 (hsum_wide widens), 1/16 of uint64
// (so that the sum of the lanes still fits).
template <class A>
constexpr double lane_limit() {
    if constexpr (std::is_same_v<A, std::uint64_t>) return 18446744073709551615.0 / 16.0;
    return static_cast<double>(std::numeric_limits<A>::max());
}

// Σ v over one span of one row (v = pixel, or weight·pixel; zeroed below the threshold t), as a
// lane vector. `before` is how many pixels of the same row precede r: the tail is one vector that
// ends at the span's end and masks off the lanes already counted, so there is no scalar remainder
// loop and no read outside the row.
template <class T, class A, bool kWeighted, bool kThr>
inline typename Lanes<T, A>::VA span_sum(const T* __restrict r, const float* __restrict w,
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
    }
    const std::size_t rem = n - i;
    if (rem) {
        const std::size_t back = L - rem;  // start the last vector this many pixels early
        if (n >= L || before >= back) {
            // j may be negative (n < L): it then points into the same row before the span, which
            // exists; weights are padded in front by the MaskPlan for the same reason.
            const std::ptrdiff_t j = static_cast<std::ptrdiff_t>(i) - static_cast<std::ptrdiff_t>(back);
            VA v = Ln::load(r + j);
            if constexpr (kThr) v = v >= t ? v : VA{};
            if constexpr (kWeighted) v *= Ln::load_w(w + j);
            acc += Ln::iota() >= static_cast<A>(back) ? v : VA{};
        } else {
            // A span shorter than a vector at the very start of a narrow row: scalar.
            for (std::size_t j = i; j < n; ++j) {
                A v = static_cast<A>(r[j]);
                if constexpr (kThr) v = v >= t ? v : A(0);
                if constexpr (kWeighted) v *= static_cast<A>(w[j]);
                acc[0] += v;
            }
        }
    }
    return acc;
}

// Σ v and Σ x·v over one span of one row, without a multiply or a store per pixel. With chunks
// v_j (j = 0..J-1) of L lanes at x = x0 + jL + lane, accumulate acc = Σ_j v_j and
// accP = Σ_j (v_0 + … + v_j); then Σ_j j·v_j = J·acc − accP, so
//     Σ x·v = Σ_lane [(x0 + L·J + lane)·acc − L·accP]_lane.
// A tail that cannot be a masked chunk after the span (end of row) is returned as scalars.
// accP is bounded by J(J+1)/2 times the largest pixel: callers keep that inside the lanes.
template <class T, class A>
struct SpanMoments {
    typename Lanes<T, A>::VA acc, accp;
    std::size_t chunks;  // J, including a masked tail chunk
    double tail_s, tail_x;
};

template <class T, class A, bool kWeighted, bool kThr>
inline SpanMoments<T, A> span_moments(const T* __restrict r, const float* __restrict w, std::size_t n,
                                      std::size_t x0, std::size_t row_len, A t) {
    using Ln = Lanes<T, A>;
    using VA = typename Ln::VA;
    constexpr std::size_t L = Ln::L;
    VA acc = {}, accp = {};
    std::size_t J = n / L;
    for (std::size_t j = 0; j < J; ++j) {
        VA v = Ln::load(r + j * L);
        if constexpr (kThr) v = v >= t ? v : VA{};
        if constexpr (kWeighted) v *= Ln::load_w(w + j * L);
        acc += v;
        accp += acc;
    }
    const std::size_t rem = n - J * L;
    double tail_s = 0.0, tail_x = 0.0;
    if (rem) {
        if (x0 + J * L + L <= row_len) {
            // Room in the row after the span: one more chunk with the lanes past the end masked.
            VA v = Ln::load(r + J * L);
            if constexpr (kThr) v = v >= t ? v : VA{};
            if constexpr (kWeighted) v *= Ln::load_w(w + J * L);
            acc += Ln::iota() < static_cast<A>(rem) ? v : VA{};
            accp += acc;
            ++J;
        } else if (n >= L || x0 >= L - rem) {
            // At the row's end: a chunk ending at the span's end, lanes already counted masked.
            const std::size_t back = L - rem;
            const std::ptrdiff_t j = static_cast<std::ptrdiff_t>(J * L) - static_cast<std::ptrdiff_t>(back);
            VA v = Ln::load(r + j);
            if constexpr (kThr) v = v >= t ? v : VA{};
            if constexpr (kWeighted) v *= Ln::load_w(w + j);
            v = Ln::iota() >= static_cast<A>(back) ? v : VA{};
            tail_s = hsum_wide<A>(v);
            tail_x = static_cast<double>(static_cast<std::ptrdiff_t>(x0) + j) * tail_s +
                     hsum_wide<A>(v * Ln::iota());
        } else {
            for (std::size_t j = J * L; j < n; ++j) {
                A v = static_cast<A>(r[j]);
                if constexpr (kThr) v = v >= t ? v : A(0);
                if constexpr (kWeighted) v *= static_cast<A>(w[j]);
                tail_s += static_cast<double>(v);
                tail_x += static_cast<double>(x0 + j) * static_cast<double>(v);
            }
        }
    }
    return {acc, accp, J, tail_s, tail_x};
}

// The lane vector whose sum is Σ x·v of a span (see span_moments).
template <class T, class A>
inline typename Lanes<T, A>::VA x_moment_lanes(const SpanMoments<T, A>& m, std::size_t x0) {
    using Ln = Lanes<T, A>;
    const A base = static_cast<A>(x0 + Ln::L * m.chunks);
    return (Ln::iota() + base) * m.acc - static_cast<A>(Ln::L) * m.accp;
}

// Per-row first moments of a span of any length, reduced to scalars: the path for float32 lanes
// (weighted masks on 8/16-bit data) and very wide rows. Integer lanes hold the prefix sums of at
// most kMaxChunks chunks without overflow, so longer spans go in pieces.
template <class T, class A, bool kWeighted, bool kThr>
inline void moments(const T* r, const float* w, std::size_t n, std::size_t x0, std::size_t row_len,
                    A t, double& s_out, double& x_out) {
    constexpr std::size_t L = Lanes<T, A>::L;
    std::size_t max_n = std::numeric_limits<std::size_t>::max();
    if constexpr (!std::is_floating_point_v<A>) {
        // J(J+1)/2 · max pixel < max lane value, J = chunks (+1 for a tail chunk); and the x
        // moment lanes (x ≤ row_len) must not wrap either.
        const double limit = lane_limit<A>() / static_cast<double>(std::numeric_limits<T>::max());
        const std::size_t by_prefix = static_cast<std::size_t>(std::sqrt(2.0 * limit)) - 2;
        const std::size_t by_x = static_cast<std::size_t>(limit / static_cast<double>(row_len + L)) - 1;
        max_n = std::max<std::size_t>(1, std::min(by_prefix, by_x)) * L;
    }
    s_out = x_out = 0.0;
    for (std::size_t off = 0; off < n; off += max_n) {
        const std::size_t len = std::min(max_n, n - off);
        const auto m = span_moments<T, A, kWeighted, kThr>(r + off, w + off, len, x0 + off, row_len, t);
        s_out += hsum_wide<A>(m.acc) + m.tail_s;
        x_out += hsum_wide<A>(x_moment_lanes(m, x0 + off)) + m.tail_x;
    }
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

    std::vector<std::size_t> channel(k);
    std::vector<std::uint8_t> code(k);  // bit0 threshold, bit1 moments, bit2 weighted
    std::vector<Bin> thr_b(k);
    std::vector<Wt> thr_w(k);
    for (std::size_t m = 0, c = 0; m < k; ++m) {
        channel[m] = c;
        const bool mom = o.moments[m] != 0, has_thr = !std::isnan(o.thresholds[m]);
        c += mom ? 3 : 1;
        thr_b[m] = has_thr ? threshold_value<Bin>(o.thresholds[m]) : Bin(0);
        thr_w[m] = has_thr ? threshold_value<Wt>(o.thresholds[m]) : Wt(0);
        code[m] = static_cast<std::uint8_t>(has_thr | (mom << 1) | ((!p.binary(m)) << 2));
    }
    std::vector<double> S(k), Sy(k), Sx(k);

    // Masks without moments need no per-row sums: their lane vectors are summed over the whole
    // frame and reduced once (no horizontal sum per span). Integer lanes are flushed to float64
    // before they could overflow; float32 lanes (weighted masks on 8/16-bit data) are reduced per
    // span to keep float64 accuracy.
    std::vector<VB> frame_b(k);
    std::vector<VW> frame_w(k);
    constexpr bool kFrameW = std::is_same_v<Wt, double>;
    std::size_t flush_rows = std::numeric_limits<std::size_t>::max();
    if constexpr (!std::is_floating_point_v<Bin>) {
        const double lane_max = lane_limit<Bin>();
        const double per_row = static_cast<double>(std::numeric_limits<T>::max()) *
                               (static_cast<double>(W) / Lanes<T, Bin>::L + 2.0);
        flush_rows = static_cast<std::size_t>(std::max(1.0, std::floor(lane_max / per_row)));
    }
    auto flush = [&] {
        for (std::size_t m = 0; m < k; ++m) {
            S[m] += hsum_wide<Bin>(frame_b[m]);
            frame_b[m] = VB{};
            if constexpr (kFrameW) {
                S[m] += static_cast<double>(hsum<Wt>(frame_w[m]));
                frame_w[m] = VW{};
            }
        }
    };

    // Masks with moments: lane vectors of Σv, Σ(y − y_base)·v and Σx·v summed over up to
    // defer_rows rows, then reduced (horizontal sums per row cost more than the pixels of a
    // 128-px row). For integer lanes defer_rows keeps every lane's true value below the lane
    // maximum (unsigned wrap-around inside the x-moment expression then cancels exactly); 0 means
    // "reduce every row" (float32 lanes: weighted masks on 8/16-bit data, or very wide rows).
    auto defer_rows_for = [&](auto lane_tag) -> std::size_t {
        using A = decltype(lane_tag);
        constexpr std::size_t LA = Lanes<T, A>::L;
        if constexpr (std::is_same_v<A, float>) {
            return 0;
        } else if constexpr (std::is_floating_point_v<A>) {
            return std::numeric_limits<std::size_t>::max();
        } else {
            const double limit = lane_limit<A>() / static_cast<double>(std::numeric_limits<T>::max());
            const double chunks = std::ceil(static_cast<double>(W) / LA) + 1.0;
            const double rows = std::floor(limit / (chunks * static_cast<double>(W + LA)));
            return static_cast<std::size_t>(std::min(rows, static_cast<double>(W + LA)));
        }
    };
    const std::size_t defer_b = defer_rows_for(Bin{}), defer_w = defer_rows_for(Wt{});
    std::vector<VB> mb_s(k), mb_y(k), mb_x(k);
    std::vector<VW> mw_s(k), mw_y(k), mw_x(k);
    std::vector<std::size_t> base_row(k, 0);
    auto flush_moments = [&](std::size_t m) {
        const double s = hsum_wide<Bin>(mb_s[m]) + hsum_wide<Wt>(mw_s[m]);
        S[m] += s;
        Sy[m] += static_cast<double>(base_row[m]) * s + hsum_wide<Bin>(mb_y[m]) + hsum_wide<Wt>(mw_y[m]);
        Sx[m] += hsum_wide<Bin>(mb_x[m]) + hsum_wide<Wt>(mw_x[m]);
        mb_s[m] = mb_y[m] = mb_x[m] = VB{};
        mw_s[m] = mw_y[m] = mw_x[m] = VW{};
    };
    // Adds one span's moments to mask m's lane vectors (the deferred path).
    auto add_deferred = [&](std::size_t m, std::size_t row, std::size_t x0, std::size_t defer,
                            const auto& mo, auto& vs, auto& vy, auto& vx) {
        using A = std::remove_reference_t<decltype(vs[0][0])>;
        if (row - base_row[m] >= defer) {
            flush_moments(m);
            base_row[m] = row;
        }
        vs[m] += mo.acc;
        vy[m] += static_cast<A>(row - base_row[m]) * mo.acc;
        vx[m] += x_moment_lanes(mo, x0);
        S[m] += mo.tail_s;
        Sy[m] += static_cast<double>(row) * mo.tail_s;
        Sx[m] += mo.tail_x;
    };

    const Span* spans = p.spans().data();
    const std::size_t nspans = p.spans().size();
    const float* weights = p.weights().data();

    for (std::size_t i = begin; i < end; ++i) {
        const std::uint8_t* fp = f.frame(i);
        std::fill(S.begin(), S.end(), 0.0);
        std::fill(Sy.begin(), Sy.end(), 0.0);
        std::fill(Sx.begin(), Sx.end(), 0.0);
        std::fill(frame_b.begin(), frame_b.end(), VB{});
        std::fill(frame_w.begin(), frame_w.end(), VW{});
        std::fill(base_row.begin(), base_row.end(), std::size_t(0));
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
            const float* w = weights + (sp.weight_offset == kNoWeights ? 0 : sp.weight_offset);
            // One span through the path its mask's flags select, as compile-time booleans. Forced
            // inline: GCC otherwise kept some of the 8 instances as calls (-20 % on AVX2 CoM).
            auto one_span = [&](auto weighted, auto thresholded, auto with_moments)
                                __attribute__((always_inline)) {
                constexpr bool kW = decltype(weighted)::value, kT = decltype(thresholded)::value;
                using A = std::conditional_t<kW, Wt, Bin>;
                A t;
                if constexpr (kW) t = thr_w[m]; else t = thr_b[m];
                if constexpr (!decltype(with_moments)::value) {
                    const auto v = span_sum<T, A, kW, kT>(r, w, n, x0, t);
                    if constexpr (!kW) frame_b[m] += v;
                    else if constexpr (kFrameW) frame_w[m] += v;
                    else S[m] += static_cast<double>(hsum<A>(v));  // float32 lanes: per span
                } else if (const std::size_t defer = kW ? defer_w : defer_b; defer != 0) {
                    const auto mo = span_moments<T, A, kW, kT>(r, w, n, x0, W, t);
                    if constexpr (kW) add_deferred(m, sp.row, x0, defer, mo, mw_s, mw_y, mw_x);
                    else add_deferred(m, sp.row, x0, defer, mo, mb_s, mb_y, mb_x);
                } else {
                    double a, ax;
                    moments<T, A, kW, kT>(r, w, n, x0, W, t, a, ax);
                    S[m] += a;
                    Sy[m] += a * static_cast<double>(sp.row);
                    Sx[m] += ax;
                }
            };
            using No = std::false_type;
            using Yes = std::true_type;
            switch (code[m]) {  // bit0 threshold, bit1 moments, bit2 weighted
                case 0: one_span(No{}, No{}, No{}); break;
                case 1: one_span(No{}, Yes{}, No{}); break;
                case 2: one_span(No{}, No{}, Yes{}); break;
                case 3: one_span(No{}, Yes{}, Yes{}); break;
                case 4: one_span(Yes{}, No{}, No{}); break;
                case 5: one_span(Yes{}, Yes{}, No{}); break;
                case 6: one_span(Yes{}, No{}, Yes{}); break;
                default: one_span(Yes{}, Yes{}, Yes{}); break;
            }
        }
        flush();
        for (std::size_t m = 0; m < k; ++m)
            if (o.moments[m]) flush_moments(m);
        double* o_i = out + i * nch;
        for (std::size_t m = 0; m < k; ++m) {
            double* oc = o_i + channel[m];
            oc[0] = S[m];
            if (!o.moments[m]) continue;
            oc[1] = Sy[m];
            oc[2] = Sx[m];
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
