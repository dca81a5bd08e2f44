// stemedge frame codec: chunk format, context models and the C API (docs/codec.md).
//
// Modes (one per chunk):
// - DENSE: two-pass per-pixel model. Pass 1: each pixel position's mean and variance over the
//   chunk's frames. A pixel's value is coded as the residual from its rounded mean, with a
//   static table shared by all pixels of its variance class (4 classes per octave), the residual
//   optionally bucketed (high part modelled, low bits raw) for wide distributions. The class and
//   base maps travel with the chunk (DPCM + bit-length coding). Escapes carry raw values.
// - EVENTS: sparse counted data as electron events: gaps between non-zero pixels (bit-length
//   buckets with two modelled mantissa bits) and values, each with a static table.
// - BYTES: byte planes, one static order-0 table per plane (lossless fallback: floats, 64-bit).
// - STORED: raw bytes when nothing else is smaller.
#include "stemedge/codec.h"

#include <algorithm>
#include <atomic>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

#include "codec_layout.hpp"
#include "codec_rans.hpp"
#include "codec_simd.hpp"

namespace stemedge::codec {
namespace {

constexpr std::uint8_t kVersion = 1;
constexpr std::uint8_t kModeStored = 4;
constexpr unsigned kLog2Lanes = 5;  // 32 interleaved states: one GPU warp
constexpr int kClassesPerOctave = 4;
constexpr int kMaxClass = 254;
constexpr std::int64_t kWindow = 127;  // residual buckets modelled per class: [-W, W]; beyond: escapes (> 15σ)
constexpr std::size_t kHistStride = 2 * kWindow + 2;  // a class's histogram: 2W + 1 buckets, then escapes
static_assert(kHistStride == kDenseHistStride, "codec_layout.hpp mirrors the histogram layout");
constexpr std::uint8_t kFlagQuant = 1, kFlagThreshold = 2;

struct DT {
    std::size_t size = 0;
    bool is_int = false, is_signed = false, is_float = false;
};

DT dtype_info(int code) {
    switch (code) {
        case SE_U8: return {1, true, false, false};
        case SE_U16: return {2, true, false, false};
        case SE_U32: return {4, true, false, false};
        case SE_U64: return {8, true, false, false};
        case SE_I8: return {1, true, true, false};
        case SE_I16: return {2, true, true, false};
        case SE_I32: return {4, true, true, false};
        case SE_I64: return {8, true, true, false};
        case SE_F32: return {4, false, true, true};
        case SE_F64: return {8, false, true, true};
        case SE_BOOL: return {1, false, false, false};
        default: return {};
    }
}

// --- value mapping (quantisation) ------------------------------------------------------------

// Element → int64 value v (the coded quantity) and back. Identity for lossless integers; uniform
// quantisation with |x − x̂| ≤ e for lossy; `threshold` zeroes small counts first.
template <class T>
struct Mapper {
    int kind = 0;  // 0 identity, 1 integer quantiser (q = 2e + 1), 2 float quantiser (step 2e)
    std::int64_t q = 1, half = 0;
    double step = 0, err = 0;
    std::int64_t threshold = 0;

    static constexpr std::int64_t lo() {
        return std::is_floating_point<T>::value ? 0 : static_cast<std::int64_t>(std::numeric_limits<T>::lowest());
    }
    static constexpr std::int64_t hi() {
        return std::is_floating_point<T>::value ? 0 : static_cast<std::int64_t>(std::numeric_limits<T>::max());
    }

    // false: not representable (float non-finite or outside the bound): escape with raw bits.
    bool value(T x, std::int64_t& v) const {
        if constexpr (std::is_floating_point<T>::value) {
            const double d = static_cast<double>(x);
            if (!std::isfinite(d)) return false;
            const double r = std::nearbyint(d / step);
            if (!(std::fabs(r) < 4.0e15)) return false;
            if (!(std::fabs(r * step) <= static_cast<double>(std::numeric_limits<T>::max()))) return false;
            const T back = static_cast<T>(r * step);
            if (!(std::fabs(static_cast<double>(back) - d) <= err)) return false;
            v = static_cast<std::int64_t>(r);
            return true;
        } else {
            std::int64_t xi = static_cast<std::int64_t>(x);
            if (threshold > 0 && xi < threshold) xi = 0;
            if (kind == 0) {
                v = xi;
            } else {
                const std::int64_t a = xi + half;  // floor((x + e) / q)
                v = a >= 0 ? a / q : -((-a + q - 1) / q);
            }
            return true;
        }
    }

    // Decoded element of value v; false if v cannot come from this dtype (corrupt chunk).
    bool element(std::int64_t v, T& x) const {
        if constexpr (std::is_floating_point<T>::value) {
            const double d = static_cast<double>(v) * step;
            if (!(std::fabs(d) <= static_cast<double>(std::numeric_limits<T>::max()))) return false;
            x = static_cast<T>(d);
            return true;
        } else {
            if (kind == 0) {
                if (v < lo() || v > hi()) return false;
                x = static_cast<T>(v);
                return true;
            }
            if (v > hi() / q + 1 || v < lo() / q - 1) return false;
            const std::int64_t y = std::clamp(v * q, lo(), hi());
            x = static_cast<T>(y);
            return true;
        }
    }
};

template <class T>
std::uint64_t raw_bits(T x) {
    std::uint64_t b = 0;
    std::memcpy(&b, &x, sizeof(T));
    return b;
}

template <class T>
T from_bits(std::uint64_t b) {
    T x;
    std::memcpy(&x, &b, sizeof(T));
    return x;
}

inline unsigned bit_length(std::uint64_t v) { return v ? 64u - static_cast<unsigned>(__builtin_clzll(v)) : 0u; }
inline std::uint64_t zigzag(std::int64_t v) {
    return (static_cast<std::uint64_t>(v) << 1) ^ static_cast<std::uint64_t>(v >> 63);
}
inline std::int64_t unzigzag(std::uint64_t z) {
    return static_cast<std::int64_t>(z >> 1) ^ -static_cast<std::int64_t>(z & 1);
}

// --- integer lists (the model maps): DPCM, zig-zag, bit-length symbol + raw mantissa ---------

// rANS lanes of a map's stream (its header records them): with one lane every step waited on the
// previous one's division, and the two maps cost ~4 % of a dense encode; four lanes interleave.
constexpr unsigned kMapLog2Lanes = 2;

void encode_ints(const std::vector<std::int64_t>& values, std::vector<std::uint8_t>& out) {
    std::vector<std::uint64_t> counts(65, 0);
    std::vector<std::uint64_t> z(values.size());
    std::int64_t prev = 0;
    for (std::size_t i = 0; i < values.size(); ++i) {
        z[i] = zigzag(static_cast<std::int64_t>(static_cast<std::uint64_t>(values[i]) -
                                                static_cast<std::uint64_t>(prev)));
        prev = values[i];
        ++counts[bit_length(z[i])];
    }
    put<std::uint64_t>(out, values.size());
    if (values.empty()) return;
    const Table t = Table::from_counts(counts);
    t.write(out);
    std::vector<Op> ops;
    ops.reserve(values.size());
    std::uint64_t nbits = 0;
    for (std::uint64_t v : z) {
        const unsigned b = bit_length(v);
        ops.push_back(t.op(b));
        nbits += b > 1 ? b - 1 : 0;
    }
    BitWriter bits(nbits);
    std::uint64_t pos = 0;
    for (std::uint64_t v : z) {
        const unsigned b = bit_length(v);
        if (b > 1) {
            bits.put(pos, v, b - 1);  // the bits below the leading one
            pos += b - 1;
        }
    }
    rans_encode(ops, kMapLog2Lanes, out);
    bits.write(out);
}

std::vector<std::int64_t> decode_ints(Reader& r, std::uint64_t expected) {
    const std::uint64_t n = r.get<std::uint64_t>();
    if (n != expected) throw CodecError(SE_ERR_CORRUPT, "model map has the wrong size");
    std::vector<std::int64_t> out(n);
    if (n == 0) return out;
    const Table t = Table::read(r.p, r.end, 65);
    std::size_t used = 0, used_bits = 0;
    RansDecoder d(r.p, static_cast<std::size_t>(r.end - r.p), used);
    BitReader bits(r.p + used, static_cast<std::size_t>(r.end - r.p) - used, used_bits);
    std::int64_t prev = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
        const std::uint32_t b = t.sym_of_slot[d.slot()];
        d.advance(t.freq[b], t.cum[b]);
        if (b > 64) throw CodecError(SE_ERR_CORRUPT, "model map: bad symbol");
        std::uint64_t z = 0;
        if (b == 1) z = 1;
        else if (b > 1) z = (std::uint64_t{1} << (b - 1)) | bits.get(b - 1);
        prev = static_cast<std::int64_t>(static_cast<std::uint64_t>(prev) +
                                         static_cast<std::uint64_t>(unzigzag(z)));
        out[i] = prev;
    }
    d.finish();
    bits.finish();
    r.p += used + used_bits;
    return out;
}

// --- DENSE ---------------------------------------------------------------------------------

struct ClassModel {
    unsigned shift = 0;
    std::int64_t qmin = 0;
    std::size_t nsym = 0;  // buckets qmin .. qmin + nsym − 1, then the escape symbol
    Table table;
    std::vector<EncSym> enc;  // per symbol, for the encoder
    std::size_t esc() const { return nsym; }
};

// The vector coders' and the GPU's table layout: per class 256 entries freq | cum << 16 (a
// class's residual histogram has kHistStride <= 256 symbols; the rest stay 0).
std::vector<std::uint32_t> packed_fc(const std::vector<ClassModel>& models) {
    std::vector<std::uint32_t> fc(models.size() * 256, 0);
    for (std::size_t k = 0; k < models.size(); ++k) {
        const Table& t = models[k].table;
        for (std::size_t sy = 0; sy < t.size(); ++sy)
            fc[k * 256 + sy] = t.freq[sy] | static_cast<std::uint32_t>(t.cum[sy]) << 16;
    }
    return fc;
}

// Pixel classes. The variance class vc = floor(4·log2(1 + var)) (4 per octave) sets the residual
// table; below vc = 17 (σ < 4) a residual's shape also depends on where the mean falls between
// two integers, so those classes are split by the mean's fractional part (4 bins) and the base
// is floor(mean): pixels of one class then share one residual distribution.
constexpr int kSmallVc = 17, kSplitClasses = 4 * kSmallVc;

int variance_class_of(int c) { return c < kSplitClasses ? c / 4 : c - kSplitClasses + kSmallVc; }

int class_of(double var, double mean) {
    const int vc = static_cast<int>(std::clamp(std::floor(kClassesPerOctave * std::log2(1.0 + var)), 0.0, 1e6));
    if (vc < kSmallVc) {
        const double frac = mean - std::floor(mean);
        return 4 * vc + std::min(3, static_cast<int>(frac * 4.0));
    }
    return std::min(kMaxClass, vc - kSmallVc + kSplitClasses);
}

unsigned class_shift(int c) {
    // Variance class vc holds variances in [2^(vc/4) − 1, 2^((vc+1)/4) − 1): buckets of ≤ σ/4 lose
    // < 0.005 bit per value.
    const int vc = variance_class_of(c);
    const double sigma = std::sqrt(std::max(0.0, std::exp2(vc / static_cast<double>(kClassesPerOctave)) - 1.0));
    const double w = sigma / 4.0;
    return w >= 2.0 ? static_cast<unsigned>(std::floor(std::log2(w))) : 0u;
}

struct DenseModel {
    std::vector<std::int64_t> base;   // per pixel
    std::vector<std::uint8_t> cls;    // per pixel
    std::vector<int> used;            // classes in use, ascending
    std::vector<int> slot_of_class;   // class → index into models (−1: unused)
    std::vector<ClassModel> models;
    std::vector<std::uint8_t> maps;   // the encoded class and base maps
    double bits = 0;                  // estimated size: payload + maps
};

// Pass 1's result: each pixel's base and class from its moments (n[p] samples, s1 = sum v,
// s2 = sum v^2), and the classes in use.
void dense_classes(const double* s1, const double* s2, const std::uint32_t* n, std::uint64_t pixels,
                   DenseModel& dm) {
    dm.base.resize(pixels);
    dm.cls.resize(pixels);
    dm.slot_of_class.assign(kMaxClass + 1, -1);
    for (std::uint64_t p = 0; p < pixels; ++p) {
        const double cnt = n[p] ? n[p] : 1.0;
        const double mean = s1[p] / cnt;
        const double var = std::max(0.0, s2[p] / cnt - mean * mean);
        dm.base[p] = static_cast<std::int64_t>(std::floor(mean));
        dm.cls[p] = static_cast<std::uint8_t>(class_of(var, mean));
        dm.slot_of_class[dm.cls[p]] = 0;
    }
    for (int c = 0; c <= kMaxClass; ++c)
        if (dm.slot_of_class[c] == 0) {
            dm.slot_of_class[c] = static_cast<int>(dm.used.size());
            dm.used.push_back(c);
        }
}

// Pass 2's result: the class tables from the residual histograms (hist[k], kHistStride bins of
// class slot k, counted on every k_frames-th frame), the encoded maps and the size estimate.
void dense_tables(std::vector<std::vector<std::uint64_t>>& hist, std::uint64_t k_frames, unsigned elem_bits,
                  DenseModel& dm) {
    constexpr std::size_t nb = 2 * kWindow + 1;
    for (std::size_t k = 0; k < dm.used.size(); ++k) {
        auto& h = hist[k];
        std::size_t lo = 0, hi = nb;
        while (lo < nb && h[lo] == 0) ++lo;
        while (hi > lo && h[hi - 1] == 0) --hi;
        // Unsampled frames may hold values the sample did not see: every bucket in the seen range
        // keeps a non-zero frequency, and values beyond it (rare: the sample spans the tails)
        // are escapes, which always keep one too.
        if (k_frames > 1) {  // scale the sample up; every bucket in range stays codable
            for (std::size_t i = lo; i < hi; ++i) h[i] = h[i] * k_frames + 1;
            h[nb] = h[nb] * k_frames + 1;
        }
        ClassModel cm;
        cm.shift = class_shift(dm.used[k]);
        if (lo == hi) {  // escapes only
            cm.qmin = 0;
            cm.nsym = 0;
        } else {
            cm.qmin = static_cast<std::int64_t>(lo) - kWindow;
            cm.nsym = hi - lo;
        }
        std::vector<std::uint64_t> counts(cm.nsym + 1, 0);
        for (std::size_t s = 0; s < cm.nsym; ++s) counts[s] = h[lo + s];
        counts[cm.nsym] = h[nb];
        if (counts.size() > kScale) {  // too many distinct buckets for 12-bit tables
            throw CodecError(SE_ERR_ARG, "dense model: residual range too wide");
        }
        // An escape symbol that never occurs gets frequency 0: it costs nothing.
        cm.table = Table::from_counts(counts);
        for (std::size_t s = 0; s < counts.size(); ++s)
            cm.enc.push_back(enc_sym(cm.table.freq[s], cm.table.cum[s]));
        std::uint64_t total = 0;
        for (std::size_t s = 0; s < cm.nsym; ++s) total += counts[s];
        dm.bits += cm.table.cost_bits(counts) + static_cast<double>(total) * cm.shift +
                   static_cast<double>(counts[cm.nsym]) * elem_bits;
        dm.models.push_back(std::move(cm));
    }
    std::vector<std::int64_t> cls64(dm.cls.begin(), dm.cls.end());
    encode_ints(cls64, dm.maps);
    encode_ints(dm.base, dm.maps);
    dm.bits += 8.0 * static_cast<double>(dm.maps.size());
}

template <class T>
DenseModel dense_model(const T* x, std::uint64_t frames, std::uint64_t pixels, const Mapper<T>& m) {
    DenseModel dm;
    std::vector<double> s1(pixels, 0.0), s2(pixels, 0.0);
    std::vector<std::uint32_t> n(pixels, 0);
    const DenseSampling sampling = dense_sampling(frames, pixels);
    const std::uint64_t k1 = sampling.moment_step;
    const bool lossless_int = std::is_integral<T>::value && m.kind == 0 && m.threshold == 0;
    // 8/16-bit lossless integers take the AVX-512 passes where the CPU has them (same sums, same
    // bins); the loops below are their reference.
    bool simd = false;
    if (lossless_int) {
        if (sizeof(T) <= 2 && g_simd.load()) {
            DenseMomentsSimd mom;
            mom.frames = frames;
            mom.pixels = pixels;
            mom.step = k1;
            mom.src = x;
            mom.elem_bytes = static_cast<int>(sizeof(T));
            mom.is_signed = std::is_signed<T>::value;
            mom.s1 = s1.data();
            mom.s2 = s2.data();
            simd = dense_moments_simd(mom);  // false: no AVX-512 here
        }
        if (!simd) {  // every value is itself; plain loops that vectorise
            for (std::uint64_t f = 0; f < frames; f += k1) {
                const T* row = x + f * pixels;
                for (std::uint64_t p = 0; p < pixels; ++p) {
                    const double d = static_cast<double>(row[p]);
                    s1[p] += d;
                    s2[p] += d * d;
                }
            }
        }
        std::fill(n.begin(), n.end(), static_cast<std::uint32_t>((frames + k1 - 1) / k1));
    } else {
        for (std::uint64_t f = 0; f < frames; f += k1) {
            const T* row = x + f * pixels;
            for (std::uint64_t p = 0; p < pixels; ++p) {
                std::int64_t v;
                if (!m.value(row[p], v)) continue;
                const double d = static_cast<double>(v);
                s1[p] += d;
                s2[p] += d * d;
                ++n[p];
            }
        }
    }
    dense_classes(s1.data(), s2.data(), n.data(), pixels, dm);
    // Pass 2: residual-bucket histograms per class.
    const std::size_t nb = 2 * kWindow + 1, stride = kHistStride;
    const std::size_t n_used = dm.used.size();
    // Four copies, pixel p counting into copy p % 4: runs of equal residuals (most of them) then
    // do not wait on each other's store.
    std::vector<std::uint32_t> hist4(4 * n_used * stride, 0);
    std::vector<unsigned> shift(n_used);
    for (std::size_t k = 0; k < n_used; ++k) shift[k] = class_shift(dm.used[k]);
    std::vector<std::uint32_t> off(pixels);  // per pixel: its histogram + window centre
    std::vector<std::int32_t> psh(pixels);  // per pixel: its class's shift
    for (std::uint64_t p = 0; p < pixels; ++p) {
        const std::size_t k = static_cast<std::size_t>(dm.slot_of_class[dm.cls[p]]);
        off[p] = static_cast<std::uint32_t>(((p & 3) * n_used + k) * stride);
        psh[p] = static_cast<std::int32_t>(shift[k]);
    }
    const std::uint64_t k_frames = sampling.hist_step;
    if (simd) {  // each row's bins computed 16 at a time, then counted
        std::vector<std::int32_t> base32(dm.base.begin(), dm.base.end());  // 8/16-bit: fits
        DenseBinsSimd bins_in;
        bins_in.pixels = pixels;
        bins_in.elem_bytes = static_cast<int>(sizeof(T));
        bins_in.is_signed = std::is_signed<T>::value;
        bins_in.window = static_cast<int>(kWindow);
        bins_in.base = base32.data();
        bins_in.shift = psh.data();
        bins_in.off = off.data();
        std::vector<std::uint32_t> bins(pixels);
        std::uint32_t* h = hist4.data();
        for (std::uint64_t f = 0; f < frames; f += k_frames) {
            dense_bins_simd(bins_in, x + f * pixels, bins.data());
            for (std::uint32_t b : bins) ++h[b];
        }
    } else {
        for (std::uint64_t f = 0; f < frames; f += k_frames) {
            const T* row = x + f * pixels;
            for (std::uint64_t p = 0; p < pixels; ++p) {
                std::uint32_t* h = hist4.data() + off[p];
                std::int64_t v;
                if (!m.value(row[p], v)) {
                    ++h[nb];
                    continue;
                }
                const std::int64_t q = (v - dm.base[p]) >> psh[p];
                const std::uint64_t i = static_cast<std::uint64_t>(q + kWindow);
                ++h[i <= 2 * static_cast<std::uint64_t>(kWindow) ? i : nb];
            }
        }
    }
    std::vector<std::vector<std::uint64_t>> hist(n_used, std::vector<std::uint64_t>(stride, 0));
    for (std::size_t c = 0; c < 4; ++c)
        for (std::size_t k = 0; k < n_used; ++k)
            for (std::size_t i = 0; i < stride; ++i) hist[k][i] += hist4[(c * n_used + k) * stride + i];
    dense_tables(hist, k_frames, static_cast<unsigned>(sizeof(T) * 8), dm);
    return dm;
}

// Whether the vector encoder applies: lossless 8/16-bit integers or uint32, whole 16-pixel groups,
// tables of ≤ 256 symbols, bases inside int32 (uint32 values ≥ 2^31 are escaped by the kernel).
template <class T>
bool dense_encode_fits(const Mapper<T>& m, std::uint64_t pixels, const DenseModel& dm) {
    if constexpr (std::is_floating_point<T>::value || sizeof(T) > 4 ||
                  (sizeof(T) == 4 && std::is_signed<T>::value)) {
        return false;
    } else {
        if (m.kind != 0 || m.threshold != 0 || pixels % 16 != 0) return false;
        for (const ClassModel& cm : dm.models)
            if (cm.nsym + 1 > 256 || cm.shift > 24) return false;
        for (std::int64_t b : dm.base)
            if (b < INT32_MIN || b > INT32_MAX) return false;
        return true;
    }
}

// The model part of a DENSE body (read back by read_dense_model): maps, then the class tables.
void write_dense_model(const DenseModel& dm, std::vector<std::uint8_t>& body) {
    body.insert(body.end(), dm.maps.begin(), dm.maps.end());
    put<std::uint16_t>(body, static_cast<std::uint16_t>(dm.used.size()));
    for (std::size_t k = 0; k < dm.used.size(); ++k) {
        const ClassModel& cm = dm.models[k];
        put<std::uint8_t>(body, static_cast<std::uint8_t>(dm.used[k]));
        put<std::uint8_t>(body, static_cast<std::uint8_t>(cm.shift));
        put<std::int64_t>(body, cm.qmin);
        cm.table.write(body);
    }
}

// For the vector coders: a 16-pixel group without escapes takes its pixels' shifts as raw bits,
// so where each lane's go (total − its inclusive prefix) and how many in all are known per group
// before coding. sh_esc: per pixel, shift | escape symbol << 8 (pixels % 16 == 0).
void group_bit_offsets(const std::vector<std::int32_t>& sh_esc, std::vector<std::int32_t>& soff,
                       std::vector<std::int32_t>& gtotal) {
    const std::size_t pixels = sh_esc.size();
    soff.assign(pixels, 0);
    gtotal.assign(pixels / 16, 0);
    for (std::size_t g = 0; g < pixels / 16; ++g) {
        std::int32_t total = 0;
        for (std::size_t k = 0; k < 16; ++k) total += sh_esc[16 * g + k] & 0xff;
        std::int32_t before = 0;
        for (std::size_t k = 0; k < 16; ++k) {
            before += sh_esc[16 * g + k] & 0xff;
            soff[16 * g + k] = total - before;
        }
        gtotal[g] = total;
    }
}

template <class T>
void dense_encode(const T* x, std::uint64_t frames, std::uint64_t pixels, const Mapper<T>& m,
                  const DenseModel& dm, std::vector<std::uint8_t>& body, T* recon) {
    write_dense_model(dm, body);
    // Coded in reverse (rANS is last-in first-out), straight from the data: no op list.
    std::vector<const ClassModel*> model_of(pixels);
    for (std::uint64_t p = 0; p < pixels; ++p) model_of[p] = &dm.models[dm.slot_of_class[dm.cls[p]]];
    RansEncoder enc(kLog2Lanes, frames * pixels);  // one rANS step per pixel
    // The raw bits are written as the pixels are coded, last pixel first, from bit 0 up; the
    // decoder reads them from the top down (its first pixel's bits are the last ones written).
    BitWriter bits;
    std::uint64_t cursor = 0;
    if (!recon && dense_encode_fits<T>(m, pixels, dm) && g_simd.load() && dense_decode_simd_available()) {
        // The AVX-512 path (codec_simd.cpp): 16 values per step, the same bytes as the loop below.
        const std::vector<std::uint32_t> table = packed_fc(dm.models);
        std::vector<std::int32_t> base(pixels), cls_off(pixels), sh_esc(pixels), qmin(pixels), nsym(pixels);
        for (std::uint64_t p = 0; p < pixels; ++p) {
            const int k = dm.slot_of_class[dm.cls[p]];
            const ClassModel& cm = dm.models[k];
            base[p] = static_cast<std::int32_t>(dm.base[p]);
            cls_off[p] = k * 256;
            sh_esc[p] = static_cast<std::int32_t>(cm.shift | cm.esc() << 8);
            qmin[p] = static_cast<std::int32_t>(cm.qmin);
            nsym[p] = static_cast<std::int32_t>(cm.nsym);
        }
        DenseSimdEnc in;
        in.frames = frames;
        in.pixels = pixels;
        in.src = x;
        in.elem_bytes = static_cast<int>(sizeof(T));
        in.is_signed = std::is_signed<T>::value;
        in.base = base.data();
        in.cls_off = cls_off.data();
        in.sh_esc = sh_esc.data();
        in.qmin = qmin.data();
        in.nsym = nsym.data();
        std::vector<std::int32_t> soff, gtotal;
        group_bit_offsets(sh_esc, soff, gtotal);
        in.soff = soff.data();
        in.gtotal = gtotal.data();
        in.table = table.data();
        in.enc = &enc;
        in.bits = &bits;
        in.cursor = &cursor;
        if (dense_encode_simd(in)) {
            bits.set_nbits(cursor);
            enc.finish(body);
            bits.write(body);
            return;
        }
    }
    for (std::uint64_t f = frames; f-- > 0;) {
        const T* row = x + f * pixels;
        for (std::uint64_t p = pixels; p-- > 0;) {
            const ClassModel& cm = *model_of[p];
            std::int64_t v;
            bool ok = m.value(row[p], v);
            std::int64_t r = 0, q = 0;
            if (ok) {
                r = v - dm.base[p];
                q = r >> cm.shift;
                ok = q >= cm.qmin && q < cm.qmin + static_cast<std::int64_t>(cm.nsym);
            }
            if (!ok) {
                bits.put_grow(cursor, raw_bits(row[p]), sizeof(T) * 8);
                cursor += sizeof(T) * 8;
                enc.put(cm.enc[cm.esc()]);
                if (recon) recon[f * pixels + p] = row[p];  // an escape decodes to x itself
                continue;
            }
            if (recon && !m.element(v, recon[f * pixels + p])) recon[f * pixels + p] = row[p];
            bits.put_grow(cursor, static_cast<std::uint64_t>(r - q * (std::int64_t{1} << cm.shift)), cm.shift);
            cursor += cm.shift;
            enc.put(cm.enc[static_cast<std::size_t>(q - cm.qmin)]);
        }
    }
    bits.set_nbits(cursor);
    enc.finish(body);
    bits.write(body);
}


// Whether a chunk fits the AVX-512 path: lossless 8–32-bit integers, whole 16-pixel groups per
// frame, small tables (symbols < 128), and every value any symbol can decode to inside the dtype
// (so the vector code needs no range checks).
template <class T>
bool dense_simd_fits(const Mapper<T>& m, std::uint64_t pixels, const std::vector<ClassModel>& models,
                     const std::vector<std::uint8_t>& klass, const std::vector<std::int64_t>& base) {
    if constexpr (std::is_floating_point<T>::value || sizeof(T) > 4) {
        return false;
    } else {
        if (m.kind == 2 || pixels % 16 != 0) return false;
        std::vector<std::int64_t> lo(models.size()), hi(models.size());
        for (std::size_t k = 0; k < models.size(); ++k) {
            const ClassModel& cm = models[k];
            if (cm.table.size() > 127 || cm.shift > 24) return false;
            lo[k] = cm.qmin * (std::int64_t{1} << cm.shift);
            hi[k] = (cm.qmin + static_cast<std::int64_t>(cm.nsym)) * (std::int64_t{1} << cm.shift) - 1;
        }
        // Lossless: every decodable value inside the dtype. Lossy (v · q, clamped to the dtype): the
        // products inside int32.
        const std::int64_t vlo = m.kind == 0 ? Mapper<T>::lo() : -(std::int64_t{1} << 31) / m.q + 1;
        const std::int64_t vhi = m.kind == 0 ? Mapper<T>::hi() : ((std::int64_t{1} << 31) - 1) / m.q;
        for (std::uint64_t p = 0; p < pixels; ++p) {
            const std::int64_t b = base[p];
            if (b < INT32_MIN || b > INT32_MAX) return false;
            if (b + lo[klass[p]] < vlo || b + hi[klass[p]] > vhi) return false;
        }
        return true;
    }
}

// The model part of a DENSE body: class and base maps, then the class tables; klass[p] is the
// index into `models` of pixel p's class. Shared by the decoder and dense_layout (the GPU's).
struct DenseRead {
    std::vector<std::int64_t> base;
    std::vector<ClassModel> models;
    std::vector<std::uint8_t> klass;
};

DenseRead read_dense_model(Reader& r, std::uint64_t pixels) {
    DenseRead out;
    std::vector<std::int64_t> cls64 = decode_ints(r, pixels);
    out.base = decode_ints(r, pixels);
    const std::size_t n_used = r.get<std::uint16_t>();
    if (n_used == 0 || n_used > kMaxClass + 1) throw CodecError(SE_ERR_CORRUPT, "dense: bad class count");
    std::vector<int> slot_of_class(kMaxClass + 1, -1);
    out.models.resize(n_used);
    for (std::size_t k = 0; k < n_used; ++k) {
        const int c = r.get<std::uint8_t>();
        if (c > kMaxClass || slot_of_class[c] != -1) throw CodecError(SE_ERR_CORRUPT, "dense: bad class id");
        slot_of_class[c] = static_cast<int>(k);
        ClassModel& cm = out.models[k];
        cm.shift = r.get<std::uint8_t>();
        if (cm.shift > 32) throw CodecError(SE_ERR_CORRUPT, "dense: bad shift");
        cm.qmin = r.get<std::int64_t>();
        if (cm.qmin < -kWindow || cm.qmin > kWindow) throw CodecError(SE_ERR_CORRUPT, "dense: bad table range");
        cm.table = Table::read(r.p, r.end, 2 * kWindow + 2);
        cm.nsym = cm.table.size() - 1;
    }
    out.klass.resize(pixels);
    for (std::uint64_t p = 0; p < pixels; ++p) {
        const std::int64_t c = cls64[p];
        if (c < 0 || c > kMaxClass || slot_of_class[c] < 0) throw CodecError(SE_ERR_CORRUPT, "dense: pixel class not in the model");
        out.klass[p] = static_cast<std::uint8_t>(slot_of_class[c]);
    }
    return out;
}

template <class T>
void dense_decode(Reader& r, std::uint64_t frames, std::uint64_t pixels, const Mapper<T>& m, T* out) {
    DenseRead model = read_dense_model(r, pixels);
    const std::vector<std::int64_t>& base = model.base;
    const std::vector<ClassModel>& models = model.models;
    const std::vector<std::uint8_t>& klass = model.klass;
    const std::size_t n_used = models.size();
    // Per class, the few numbers the inner loop needs, in one small array (L1-resident); per
    // pixel, its class index.
    struct Dec {
        const std::uint16_t* sym;
        const std::uint32_t* fc;  // freq | cum << 16, per symbol
        std::int64_t qmin;
        std::uint32_t esc, shift;
    };
    const std::vector<std::uint32_t> fcs = packed_fc(models);
    std::vector<Dec> dec(n_used);
    for (std::size_t k = 0; k < n_used; ++k) {
        const ClassModel& cm = models[k];
        dec[k] = {cm.table.sym_of_slot.data(), fcs.data() + k * 256, cm.qmin,
                  static_cast<std::uint32_t>(cm.esc()), cm.shift};
    }
    std::size_t used = 0, used_bits = 0;
    RansDecoder d(r.p, static_cast<std::size_t>(r.end - r.p), used);
    BitReader bits(r.p + used, static_cast<std::size_t>(r.end - r.p) - used, used_bits);
    // The loop keeps the coder's state in locals: as members of d and bits they would make every
    // pixel wait on the previous pixel's stores (lane, word and bit positions).
    std::uint32_t x[32];
    std::memcpy(x, d.x_, sizeof x);
    static const std::uint8_t kNoWords[2] = {0, 0};
    const std::uint64_t n_words = d.n_words_;
    const std::uint8_t* const words = n_words ? d.words_ : kNoWords;
    std::uint64_t wpos = 0;
    const std::uint8_t* const bp = bits.p_;
    const std::uint64_t nbits = bits.nbits_;
    std::uint64_t bpos = nbits;  // read from the top down (docs/codec.md)
    auto get_bits_32 = [&](unsigned n) -> std::uint64_t {  // n ≤ 32
        if (n > bpos) throw CodecError(SE_ERR_CORRUPT, "bit stream ends early");
        bpos -= n;
        std::uint64_t w;
        std::memcpy(&w, bp + (bpos >> 3), 8);
        return (w >> (bpos & 7)) & ((std::uint64_t{1} << n) - 1);
    };
    auto get_bits = [&](unsigned n) -> std::uint64_t {  // escapes of 64-bit floats: two reads
        if (n <= 32) return get_bits_32(n);
        // The value sits at [bpos − n, bpos), low 32 bits first: read its top part, then the low.
        const std::uint64_t hi = get_bits_32(n - 32);
        const std::uint64_t lo = get_bits_32(32);
        return lo | hi << 32;
    };
    // Both decoders end here: every word and bit read, every state back at L.
    auto finish = [&] {
        std::memcpy(d.x_, x, sizeof x);
        d.pos_ = wpos;
        bits.pos_ = bits.nbits_ - bpos;  // read top-down: done when bpos is 0
        d.finish();
        bits.finish();
        r.p += used + used_bits;
    };
    if (dense_simd_fits<T>(m, pixels, models, klass, base) && g_simd.load()) {
        // The AVX-512 path (codec_simd.cpp): same format, same output, 16 lanes at a time.
        const std::size_t nc = models.size();
        std::vector<std::uint32_t> table(nc * kScale);
        for (std::size_t k = 0; k < nc; ++k) {
            const Table& t = models[k].table;
            for (std::uint32_t slot = 0; slot < kScale; ++slot) {
                const std::uint32_t s = t.sym_of_slot[slot];
                table[k * kScale + slot] = t.freq[s] | static_cast<std::uint32_t>(t.cum[s]) << 13 | s << 25;
            }
        }
        std::vector<std::int32_t> cbase(pixels), basq(pixels), sh_esc(pixels);
        for (std::uint64_t p = 0; p < pixels; ++p) {
            const ClassModel& cm = models[klass[p]];
            cbase[p] = static_cast<std::int32_t>(klass[p] * kScale);
            basq[p] = static_cast<std::int32_t>(base[p] + cm.qmin * (std::int64_t{1} << cm.shift));
            sh_esc[p] = static_cast<std::int32_t>(cm.shift | cm.esc() << 8);
        }
        std::vector<std::int32_t> soff, gtotal;
        group_bit_offsets(sh_esc, soff, gtotal);
        DenseSimd in;
        in.frames = frames;
        in.pixels = pixels;
        in.cbase = cbase.data();
        in.basq = basq.data();
        in.sh_esc = sh_esc.data();
        in.soff = soff.data();
        in.gtotal = gtotal.data();
        in.table = table.data();
        in.words = reinterpret_cast<const std::uint16_t*>(words);
        in.n_words = n_words;
        in.bits = bp;
        in.nbits = nbits;
        in.esc_bits = static_cast<int>(sizeof(T) * 8);
        if constexpr (!std::is_floating_point<T>::value) {
            in.quant = static_cast<int>(m.kind == 1 ? m.q : 1);
            in.lo = static_cast<int>(std::max<std::int64_t>(Mapper<T>::lo(), INT32_MIN));
            in.hi = static_cast<int>(std::min<std::int64_t>(Mapper<T>::hi(), INT32_MAX));
        }
        in.elem_bytes = static_cast<int>(sizeof(T));
        in.out = out;
        in.x = x;
        in.wpos = &wpos;
        in.bpos = &bpos;
        if (dense_decode_simd_available()) {
            if (!dense_decode_simd(in)) throw CodecError(SE_ERR_CORRUPT, "dense: stream ends early");
            return finish();
        }
    }
    std::uint64_t op = 0;
    for (std::uint64_t f = 0; f < frames; ++f) {
        T* row = out + f * pixels;
        for (std::uint64_t p = 0; p < pixels; ++p, ++op) {
            const Dec& cd = dec[klass[p]];
            std::uint32_t& xs = x[op & 31];
            const std::uint32_t slot = xs & (kScale - 1);
            const std::uint32_t s = cd.sym[slot];
            const std::uint32_t fc = cd.fc[s];
            std::uint32_t xn = (fc & 0xffff) * (xs >> kScaleBits) + slot - (fc >> 16);
            // Renormalise without a branch (whether a lane needs a word is unpredictable): the
            // word is always loaded, from a clamped index; reading past the stream shows at the
            // end as a word count that does not match.
            const std::uint32_t need = xn < kRansL;
            std::uint16_t w;
            std::memcpy(&w, words + 2 * (wpos < n_words ? wpos : 0), 2);
            xn = (xn << (need << 4)) | (w & (0u - need));
            wpos += need;
            xs = xn;
            if (s == cd.esc) {
                row[p] = from_bits<T>(get_bits(sizeof(T) * 8));
                continue;
            }
            const std::int64_t q = cd.qmin + static_cast<std::int64_t>(s);
            // |q| ≤ 2047, shift ≤ 40 (checked when read): no overflow; get_bits(0) is 0
            const std::int64_t rr = q * (std::int64_t{1} << cd.shift) + static_cast<std::int64_t>(get_bits_32(cd.shift));
            std::int64_t v;
            if (__builtin_add_overflow(base[p], rr, &v) || !m.element(v, row[p]))
                throw CodecError(SE_ERR_CORRUPT, "dense: value outside the dtype");
        }
    }
    finish();
}

// --- EVENTS ----------------------------------------------------------------------------------

constexpr std::size_t kGapSymbols = 3 + 61 * 4 + 4;  // bit lengths 0..64 with 2 modelled bits
constexpr std::size_t kValueEsc = 255;

inline std::size_t gap_symbol(std::uint64_t g, unsigned& raw_n) {
    const unsigned b = bit_length(g);
    if (b <= 2) {
        raw_n = b == 2 ? 1 : 0;
        return b;
    }
    raw_n = b - 3;
    return 3 + (b - 3) * 4 + ((g >> (b - 3)) & 3);
}

template <class T>
struct Events {
    std::vector<std::uint64_t> gap_counts, value_counts;
    std::uint64_t n = 0;
    bool eligible = true;  // every value non-negative
    double bits = 0;
    std::uint64_t raw_bits = 0;
    std::vector<std::uint64_t> pos;  // the events, collected once for the encoder
    std::vector<std::int64_t> val;
    Table gaps, values;
};

// Bit j set when x[j] != 0, for n ≤ 64 values (SSE2 compare + movemask for 8- and 16-bit data).
template <class T>
inline std::uint64_t nonzero_mask(const T* x, std::uint64_t n) {
#if defined(__SSE2__)
    if (n == 64 && (sizeof(T) == 1 || sizeof(T) == 2)) {
        const __m128i zero = _mm_setzero_si128();
        std::uint64_t m = 0;
        if constexpr (sizeof(T) == 1) {
            for (int k = 0; k < 4; ++k) {
                const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x) + k);
                m |= static_cast<std::uint64_t>(~_mm_movemask_epi8(_mm_cmpeq_epi8(v, zero)) & 0xffff) << (16 * k);
            }
        } else {
            for (int k = 0; k < 4; ++k) {
                const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x) + 2 * k);
                const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x) + 2 * k + 1);
                const __m128i eq = _mm_packs_epi16(_mm_cmpeq_epi16(a, zero), _mm_cmpeq_epi16(b, zero));
                m |= static_cast<std::uint64_t>(~_mm_movemask_epi8(eq) & 0xffff) << (16 * k);
            }
        }
        return m;
    }
#endif
    std::uint64_t m = 0;
    for (std::uint64_t j = 0; j < n; ++j) m |= static_cast<std::uint64_t>(x[j] != T(0)) << j;
    return m;
}

template <class T>
Events<T> events_model(const T* x, std::uint64_t total, const Mapper<T>& m, std::uint64_t max_events) {
    Events<T> ev;
    ev.gap_counts.assign(kGapSymbols, 0);
    ev.value_counts.assign(kValueEsc + 1, 0);
    std::uint64_t prev = ~std::uint64_t{0};
    double raw = 0;
    // Scan 64 values at a time: a mask of the non-zero ones (a loop that vectorises), then only
    // its set bits are visited.
    for (std::uint64_t b0 = 0; b0 < total; b0 += 64) {
        const std::uint64_t nb = std::min<std::uint64_t>(64, total - b0);
        std::uint64_t mask = nonzero_mask(x + b0, nb);
        for (; mask; mask &= mask - 1) {
            const std::uint64_t i = b0 + static_cast<unsigned>(__builtin_ctzll(mask));
            std::int64_t v;
            if (!m.value(x[i], v) || v < 0) {
                ev.eligible = false;
                return ev;
            }
            if (v == 0) continue;
            ev.pos.push_back(i);
            ev.val.push_back(v);
            unsigned rn;
            ++ev.gap_counts[gap_symbol(i - prev - 1, rn)];
            raw += rn;
            const std::uint64_t vs = static_cast<std::uint64_t>(v - 1);
            if (vs < kValueEsc) ++ev.value_counts[vs];
            else {
                ++ev.value_counts[kValueEsc];
                raw += sizeof(T) * 8;
            }
            prev = i;
            if (++ev.n > max_events) {  // not sparse: dense coding wins, stop counting
                ev.eligible = false;
                return ev;
            }
        }
    }
    if (ev.n == 0) {
        ev.bits = 0;
        return ev;
    }
    ev.gaps = Table::from_counts(ev.gap_counts);
    ev.values = Table::from_counts(ev.value_counts);
    ev.bits = ev.gaps.cost_bits(ev.gap_counts) + ev.values.cost_bits(ev.value_counts) + raw;
    ev.raw_bits = static_cast<std::uint64_t>(raw);
    return ev;
}

template <class T>
void events_encode(const T* x, std::uint64_t total, const Mapper<T>& m, const Events<T>& ev,
                   std::vector<std::uint8_t>& body) {
    put<std::uint64_t>(body, ev.n);
    if (ev.n == 0) return;
    ev.gaps.write(body);
    ev.values.write(body);
    std::vector<Op> ops;
    ops.reserve(ev.n * 2);
    BitWriter bits(ev.raw_bits);
    std::uint64_t cursor = 0;
    std::uint64_t prev = ~std::uint64_t{0};
    (void)x;
    (void)total;
    (void)m;
    for (std::size_t e = 0; e < ev.pos.size(); ++e) {
        const std::uint64_t i = ev.pos[e];
        const std::int64_t v = ev.val[e];
        const std::uint64_t g = i - prev - 1;
        unsigned rn;
        ops.push_back(ev.gaps.op(gap_symbol(g, rn)));
        bits.put(cursor, g, rn);  // the mantissa bits below the modelled ones
        cursor += rn;
        const std::uint64_t vs = static_cast<std::uint64_t>(v - 1);
        if (vs < kValueEsc) {
            ops.push_back(ev.values.op(vs));
        } else {
            ops.push_back(ev.values.op(kValueEsc));
            bits.put(cursor, static_cast<std::uint64_t>(v), sizeof(T) * 8);
            cursor += sizeof(T) * 8;
        }
        prev = i;
    }
    if (cursor != ev.raw_bits) throw CodecError(SE_ERR_ARG, "events: raw bit count mismatch");
    rans_encode(ops, kLog2Lanes, body);
    bits.write(body);
}

template <class T>
void events_decode(Reader& r, std::uint64_t total, const Mapper<T>& m, T* out) {
    const std::uint64_t n = r.get<std::uint64_t>();
    if (n > total) throw CodecError(SE_ERR_CORRUPT, "events: more events than pixels");
    std::memset(static_cast<void*>(out), 0, total * sizeof(T));
    if (n == 0) return;
    const Table gaps = Table::read(r.p, r.end, kGapSymbols);
    const Table values = Table::read(r.p, r.end, kValueEsc + 1);
    std::size_t used = 0, used_bits = 0;
    RansDecoder d(r.p, static_cast<std::size_t>(r.end - r.p), used);
    BitReader bits(r.p + used, static_cast<std::size_t>(r.end - r.p) - used, used_bits);
    std::uint64_t pos = ~std::uint64_t{0};
    for (std::uint64_t e = 0; e < n; ++e) {
        const std::uint32_t s = gaps.sym_of_slot[d.slot()];
        d.advance(gaps.freq[s], gaps.cum[s]);
        std::uint64_t g;
        if (s <= 2) {
            g = s == 2 ? 2 + bits.get(1) : s;
        } else {
            const unsigned b = (s - 3) / 4 + 3, top = (s - 3) % 4;
            if (b > 64) throw CodecError(SE_ERR_CORRUPT, "events: bad gap");
            g = (static_cast<std::uint64_t>(4 + top) << (b - 3)) | bits.get(b - 3);
        }
        if (g >= total - (pos + 1)) throw CodecError(SE_ERR_CORRUPT, "events: position outside the chunk");
        pos += g + 1;
        const std::uint32_t vs = values.sym_of_slot[d.slot()];
        d.advance(values.freq[vs], values.cum[vs]);
        const std::int64_t v = vs < kValueEsc ? static_cast<std::int64_t>(vs) + 1
                                              : static_cast<std::int64_t>(bits.get(sizeof(T) * 8));
        if (v <= 0 || !m.element(v, out[pos])) throw CodecError(SE_ERR_CORRUPT, "events: bad value");
    }
    d.finish();
    bits.finish();
    r.p += used + used_bits;
}

// --- BYTES -----------------------------------------------------------------------------------

void bytes_encode(const std::uint8_t* x, std::uint64_t n, std::size_t k, std::vector<std::uint8_t>& body) {
    std::vector<Table> tables(k);
    for (std::size_t b = 0; b < k; ++b) {
        std::vector<std::uint64_t> counts(256, 0);
        for (std::uint64_t i = 0; i < n; ++i) ++counts[x[i * k + b]];
        tables[b] = Table::from_counts(counts);
        tables[b].write(body);
    }
    std::vector<Op> ops;
    ops.reserve(n * k);
    for (std::size_t b = 0; b < k; ++b)
        for (std::uint64_t i = 0; i < n; ++i) ops.push_back(tables[b].op(x[i * k + b]));
    rans_encode(ops, kLog2Lanes, body);
}

void bytes_decode(Reader& r, std::uint64_t n, std::size_t k, std::uint8_t* out, bool is_bool) {
    std::vector<Table> tables;
    for (std::size_t b = 0; b < k; ++b) tables.push_back(Table::read(r.p, r.end, 256));
    std::size_t used = 0;
    RansDecoder d(r.p, static_cast<std::size_t>(r.end - r.p), used);
    for (std::size_t b = 0; b < k; ++b) {
        const Table& t = tables[b];
        for (std::uint64_t i = 0; i < n; ++i) {
            const std::uint32_t s = t.sym_of_slot[d.slot()];
            d.advance(t.freq[s], t.cum[s]);
            if (is_bool && s > 1) throw CodecError(SE_ERR_CORRUPT, "bytes: not a bool");
            out[i * k + b] = static_cast<std::uint8_t>(s);
        }
    }
    d.finish();
    r.p += used;
}

// --- chunk -----------------------------------------------------------------------------------

struct Header {
    int dtype = 0, mode = 0, flags = 0, ndim = 0;
    std::uint64_t shape[SE_MAX_DIMS] = {};
    double err = 0;
    std::uint64_t threshold = 0, body_nbytes = 0, header_nbytes = 0;
    std::uint32_t raw_crc = 0;
    std::uint64_t frames = 1, pixels = 1, elements = 1, raw_nbytes = 0;
};

bool geometry(Header& h) {
    const DT dt = dtype_info(h.dtype);
    if (!dt.size || h.ndim < 0 || h.ndim > SE_MAX_DIMS) return false;
    unsigned __int128 total = 1;
    for (int i = 0; i < h.ndim; ++i) {
        total *= h.shape[i];
        if (total > (static_cast<unsigned __int128>(1) << 56)) return false;
    }
    h.elements = static_cast<std::uint64_t>(total);
    h.pixels = h.ndim >= 2 ? h.shape[h.ndim - 1] * h.shape[h.ndim - 2] : (h.ndim == 1 ? h.shape[0] : 1);
    h.frames = h.pixels ? h.elements / h.pixels : 0;
    h.raw_nbytes = h.elements * dt.size;
    return true;
}

std::size_t header_size(int ndim) { return 16 + 8 * static_cast<std::size_t>(ndim) + 8 + 8 + 8 + 4; }

void write_header(const Header& h, std::vector<std::uint8_t>& out) {
    out.insert(out.end(), {'S', 'E', 'A', 'C'});
    put<std::uint8_t>(out, kVersion);
    put<std::uint8_t>(out, static_cast<std::uint8_t>(h.dtype));
    put<std::uint8_t>(out, static_cast<std::uint8_t>(h.mode));
    put<std::uint8_t>(out, static_cast<std::uint8_t>(h.flags));
    put<std::uint8_t>(out, static_cast<std::uint8_t>(h.ndim));
    out.insert(out.end(), {0, 0, 0});
    put<std::uint32_t>(out, static_cast<std::uint32_t>(header_size(h.ndim)));
    for (int i = 0; i < h.ndim; ++i) put<std::uint64_t>(out, h.shape[i]);
    put<double>(out, h.err);
    put<std::uint64_t>(out, h.threshold);
    put<std::uint64_t>(out, h.body_nbytes);
    put<std::uint32_t>(out, h.raw_crc);
}

Header read_header(const std::uint8_t* blob, std::size_t size) {
    Reader r{blob, blob + size};
    r.need(4);
    if (std::memcmp(blob, "SEAC", 4) != 0) throw CodecError(SE_ERR_MAGIC, "not a stemedge chunk");
    r.p += 4;
    const int version = r.get<std::uint8_t>();
    if (version != kVersion) throw CodecError(SE_ERR_VERSION, "unsupported chunk version");
    Header h;
    h.dtype = r.get<std::uint8_t>();
    h.mode = r.get<std::uint8_t>();
    h.flags = r.get<std::uint8_t>();
    h.ndim = r.get<std::uint8_t>();
    r.p += 3;
    h.header_nbytes = r.get<std::uint32_t>();
    if (h.ndim > SE_MAX_DIMS || h.header_nbytes != header_size(h.ndim))
        throw CodecError(SE_ERR_CORRUPT, "bad chunk header");
    for (int i = 0; i < h.ndim; ++i) h.shape[i] = r.get<std::uint64_t>();
    h.err = r.get<double>();
    h.threshold = r.get<std::uint64_t>();
    h.body_nbytes = r.get<std::uint64_t>();
    h.raw_crc = r.get<std::uint32_t>();
    if (!geometry(h) || h.mode < 1 || h.mode > kModeStored || !(h.err >= 0) || !std::isfinite(h.err))
        throw CodecError(SE_ERR_CORRUPT, "bad chunk header");
    if (h.body_nbytes > size - h.header_nbytes || size - h.header_nbytes - h.body_nbytes < 4)
        throw CodecError(SE_ERR_TRUNCATED, "chunk ends early");
    return h;
}

// The chunk CRC (header + body, stored after them) matches: read_header has checked the sizes.
bool chunk_crc_ok(const std::uint8_t* b, const Header& h) {
    const std::size_t covered = h.header_nbytes + h.body_nbytes;
    std::uint32_t crc;
    std::memcpy(&crc, b + covered, 4);
    return crc32c(b, covered) == crc;
}

template <class T>
Mapper<T> make_mapper(const Header& h) {
    Mapper<T> m;
    m.threshold = static_cast<std::int64_t>(std::min<std::uint64_t>(h.threshold, INT64_MAX));
    if (h.flags & kFlagQuant) {
        if constexpr (std::is_floating_point<T>::value) {
            m.kind = 2;
            m.err = h.err;
            m.step = 2.0 * h.err;
        } else {
            m.kind = 1;
            m.half = static_cast<std::int64_t>(std::floor(h.err));
            m.q = 2 * m.half + 1;
        }
    }
    return m;
}

template <class T>
void compress_typed(const T* x, Header& h, int requested, std::vector<std::uint8_t>& body,
                    std::vector<std::uint8_t>& recon) {
    const Mapper<T> m = make_mapper<T>(h);
    const bool lossy = (h.flags & (kFlagQuant | kFlagThreshold)) != 0;
    const bool lossless_float = std::is_floating_point<T>::value && !(h.flags & kFlagQuant);
    if (requested == SE_MODE_BYTES || (requested == SE_MODE_AUTO && lossless_float)) {
        if (lossy) throw CodecError(SE_ERR_LOSSY, "bytes mode is lossless only");
        h.mode = SE_MODE_BYTES;
        bytes_encode(reinterpret_cast<const std::uint8_t*>(x), h.elements, sizeof(T), body);
        return;
    }
    if (std::is_floating_point<T>::value && !(h.flags & kFlagQuant))
        throw CodecError(SE_ERR_ARG, "dense/events modes need integers (or max_abs_error > 0 for floats)");
    // AUTO: sparse integer data (≤ 1/16 non-zero) goes to EVENTS, the rest to DENSE; the size
    // estimates decide only when the data is neither clearly sparse nor clearly dense.
    const bool auto_mode = requested == SE_MODE_AUTO;
    const bool try_events = requested == SE_MODE_EVENTS || (auto_mode && std::is_integral<T>::value);
    std::unique_ptr<DenseModel> dm;
    if (requested == SE_MODE_DENSE) dm = std::make_unique<DenseModel>(dense_model<T>(x, h.frames, h.pixels, m));
    if (try_events) {
        if constexpr (!std::is_floating_point<T>::value) {
            // AUTO collects events until they pass 1/4 of the values (then: dense); at most 1/16
            // they win outright, in between the size estimates decide.
            // A strided look first: clearly dense data. ≥ ~8 k samples at a prime stride (no
            // aliasing with the frame's rows); every 61st value of a large chunk touched half
            // its cache lines, 2 % of a dense encode.
            std::uint64_t stride = 61;
            for (std::uint64_t prime : {127, 251, 509, 1021, 2039, 4093})
                if (h.elements / 8192 >= prime) stride = prime;
            std::uint64_t sample_nonzero = 0, sampled = 0;
            for (std::uint64_t i = 0; i < h.elements; i += stride, ++sampled) sample_nonzero += x[i] != T(0);
            const bool dense_data = auto_mode && sample_nonzero * 3 > sampled;
            Events<T> ev = dense_data ? Events<T>{}
                                      : events_model<T>(x, h.elements, m, auto_mode ? h.elements / 4 : h.elements);
            if (dense_data) ev.eligible = false;
            if (auto_mode && ev.eligible && ev.n > h.elements / 16)
                dm = std::make_unique<DenseModel>(dense_model<T>(x, h.frames, h.pixels, m));
            if (!ev.eligible && requested == SE_MODE_EVENTS)
                throw CodecError(SE_ERR_ARG, "events mode needs non-negative integers");
            if (!ev.eligible && !dm)  // e.g. negative values: dense after all
                dm = std::make_unique<DenseModel>(dense_model<T>(x, h.frames, h.pixels, m));
            const double dense_bits = dm ? dm->bits : 1e300;
            if (ev.eligible && (requested == SE_MODE_EVENTS || ev.bits < dense_bits)) {
                h.mode = SE_MODE_EVENTS;
                events_encode<T>(x, h.elements, m, ev, body);
            }
        } else if (requested == SE_MODE_EVENTS) {
            throw CodecError(SE_ERR_ARG, "events mode needs an integer dtype");
        }
    }
    if (h.mode != SE_MODE_EVENTS) {
        if (!dm) dm = std::make_unique<DenseModel>(dense_model<T>(x, h.frames, h.pixels, m));
        h.mode = SE_MODE_DENSE;
        if (lossy) recon.resize(h.raw_nbytes);
        dense_encode<T>(x, h.frames, h.pixels, m, *dm, body,
                        lossy ? reinterpret_cast<T*>(recon.data()) : nullptr);
    }
    if (lossy && h.mode == SE_MODE_EVENTS) {  // the checksum is of what the decoder will produce
        recon.resize(h.raw_nbytes);
        T* y = reinterpret_cast<T*>(recon.data());
        for (std::uint64_t i = 0; i < h.elements; ++i) {
            std::int64_t v;
            if (!m.value(x[i], v) || !m.element(v, y[i])) y[i] = x[i];  // escapes keep x
        }
    }
}

template <class T>
void decompress_typed(Reader& r, const Header& h, T* out) {
    const Mapper<T> m = make_mapper<T>(h);
    switch (h.mode) {
        case SE_MODE_DENSE: return dense_decode<T>(r, h.frames, h.pixels, m, out);
        case SE_MODE_EVENTS: return events_decode<T>(r, h.elements, m, out);
        default: throw CodecError(SE_ERR_CORRUPT, "bad mode for this dtype");
    }
}

template <class F>
void dispatch(int dtype, F&& f) {
    switch (dtype) {
        case SE_U8: return f(std::uint8_t{});
        case SE_U16: return f(std::uint16_t{});
        case SE_U32: return f(std::uint32_t{});
        case SE_I8: return f(std::int8_t{});
        case SE_I16: return f(std::int16_t{});
        case SE_I32: return f(std::int32_t{});
        case SE_F32: return f(float{});
        case SE_F64: return f(double{});
        default: throw CodecError(SE_ERR_ARG, "dtype needs bytes mode");
    }
}

int64_t compress_impl(const void* src, const se_params* p, void* dst, size_t cap) {
    if (!p || (!src && p->ndim > 0)) return SE_ERR_ARG;
    Header h;
    h.dtype = p->dtype;
    h.ndim = p->ndim;
    for (int i = 0; i < p->ndim && i < SE_MAX_DIMS; ++i) h.shape[i] = p->shape[i];
    if (!geometry(h) || p->mode < SE_MODE_AUTO || p->mode > SE_MODE_BYTES) return SE_ERR_ARG;
    if (!(p->max_abs_error >= 0) || !std::isfinite(p->max_abs_error)) return SE_ERR_ARG;
    const DT dt = dtype_info(h.dtype);
    h.err = p->max_abs_error;
    h.threshold = p->threshold;
    if (p->max_abs_error > 0 && (dt.is_float || (dt.is_int && p->max_abs_error >= 1)))
        h.flags |= kFlagQuant;
    if (p->threshold > 0) {
        if (!dt.is_int) return SE_ERR_LOSSY;
        h.flags |= kFlagThreshold;
    }
    if ((h.flags & (kFlagQuant | kFlagThreshold)) && dt.size == 8 && dt.is_int) return SE_ERR_LOSSY;
    if (!(h.flags & kFlagQuant)) h.err = 0;  // integers: a bound < 1 is lossless
    if (!(h.flags & kFlagThreshold)) h.threshold = 0;
    ThreadScratch<std::vector<std::uint8_t>, ChunkBody> body_scratch;  // reused per thread
    std::vector<std::uint8_t>& body = *body_scratch;
    body.clear();
    std::vector<std::uint8_t> recon;
    const auto* bytes = static_cast<const std::uint8_t*>(src);
    if (h.elements > 0) {
        const bool generic = dt.size == 8 && dt.is_int;
        if (h.dtype == SE_BOOL || generic || p->mode == SE_MODE_BYTES) {
            if (h.flags) return SE_ERR_LOSSY;
            h.mode = SE_MODE_BYTES;
            bytes_encode(bytes, h.elements, dt.size, body);
        } else {
            dispatch(h.dtype, [&](auto tag) {
                using T = decltype(tag);
                compress_typed<T>(reinterpret_cast<const T*>(src), h, p->mode, body, recon);
            });
        }
    } else {
        h.mode = kModeStored;
    }
    if (body.size() >= h.raw_nbytes) {  // nothing gained: keep the (decoded) bytes
        h.mode = kModeStored;
        const std::uint8_t* keep = recon.empty() ? bytes : recon.data();
        body.assign(keep, keep + h.raw_nbytes);
    }
    h.raw_crc = crc32c(recon.empty() ? bytes : recon.data(), h.raw_nbytes);
    h.body_nbytes = body.size();
    std::vector<std::uint8_t> head;
    write_header(h, head);
    const std::size_t total = head.size() + body.size() + 4;
    if (total > cap) return SE_ERR_SPACE;
    auto* out = static_cast<std::uint8_t*>(dst);
    std::memcpy(out, head.data(), head.size());
    if (!body.empty()) std::memcpy(out + head.size(), body.data(), body.size());
    const std::uint32_t crc = crc32c(out, head.size() + body.size());
    std::memcpy(out + head.size() + body.size(), &crc, 4);
    return static_cast<int64_t>(total);
}

int64_t decompress_impl(const void* blob, size_t size, void* dst, size_t cap) {
    if (!blob) return SE_ERR_ARG;
    const auto* b = static_cast<const std::uint8_t*>(blob);
    const Header h = read_header(b, size);
    if (!chunk_crc_ok(b, h)) return SE_ERR_CHECKSUM;
    const std::size_t covered = h.header_nbytes + h.body_nbytes;
    if (h.raw_nbytes > cap) return SE_ERR_SPACE;
    if (h.raw_nbytes > 0 && !dst) return SE_ERR_ARG;
    Reader r{b + h.header_nbytes, b + covered};
    const DT dt = dtype_info(h.dtype);
    if (h.mode == kModeStored) {
        if (h.body_nbytes != h.raw_nbytes) return SE_ERR_CORRUPT;
        if (h.raw_nbytes) std::memcpy(dst, r.p, h.raw_nbytes);
        r.p += h.raw_nbytes;
    } else if (h.mode == SE_MODE_BYTES) {
        bytes_decode(r, h.elements, dt.size, static_cast<std::uint8_t*>(dst), h.dtype == SE_BOOL);
    } else {
        if (h.dtype == SE_BOOL || (dt.size == 8 && dt.is_int)) return SE_ERR_CORRUPT;
        dispatch(h.dtype, [&](auto tag) {
            using T = decltype(tag);
            decompress_typed<T>(r, h, static_cast<T*>(dst));
        });
    }
    if (r.p != r.end) return SE_ERR_CORRUPT;
    if (crc32c(dst, h.raw_nbytes) != h.raw_crc) return SE_ERR_CHECKSUM;
    return static_cast<int64_t>(h.raw_nbytes);
}

}  // namespace

bool dense_layout(const void* blob, std::size_t size, DenseLayout& out) {
    if (!blob) throw CodecError(SE_ERR_ARG, "no chunk");
    const auto* b = static_cast<const std::uint8_t*>(blob);
    const Header h = read_header(b, size);
    if (!chunk_crc_ok(b, h)) throw CodecError(SE_ERR_CHECKSUM, "chunk checksum mismatch");
    const std::size_t covered = h.header_nbytes + h.body_nbytes;
    const DT dt = dtype_info(h.dtype);
    if (h.mode != SE_MODE_DENSE || !dt.is_int || dt.size > 4 || h.dtype == SE_BOOL) return false;
    if (h.flags & kFlagQuant) return false;  // lossy integers decode on the host
    dispatch(h.dtype, [&](auto tag) {
        using T = decltype(tag);
        if constexpr (!std::is_floating_point<T>::value && sizeof(T) <= 4) {
            out.lo = Mapper<T>::lo();
            out.hi = Mapper<T>::hi();
        }
    });
    Reader r{b + h.header_nbytes, b + covered};
    DenseRead model = read_dense_model(r, h.pixels);
    const std::size_t nc = model.models.size();
    out.dtype = h.dtype;
    out.frames = h.frames;
    out.pixels = h.pixels;
    out.raw_crc = h.raw_crc;
    out.klass = std::move(model.klass);
    out.base = std::move(model.base);
    out.sym.assign(nc * kScale, 0);
    out.fc = packed_fc(model.models);
    out.qmin.resize(nc);
    out.esc.resize(nc);
    out.shift.resize(nc);
    for (std::size_t k = 0; k < nc; ++k) {
        const ClassModel& cm = model.models[k];
        const Table& t = cm.table;
        std::copy(t.sym_of_slot.begin(), t.sym_of_slot.end(), out.sym.begin() + k * kScale);
        out.qmin[k] = cm.qmin;
        out.esc[k] = static_cast<std::uint32_t>(cm.esc());
        out.shift[k] = cm.shift;
    }
    std::size_t used = 0, used_bits = 0;
    RansDecoder d(r.p, static_cast<std::size_t>(r.end - r.p), used);
    if (d.mask_ != 31) throw CodecError(SE_ERR_CORRUPT, "dense: the payload must have 32 lanes");
    BitReader bits(r.p + used, static_cast<std::size_t>(r.end - r.p) - used, used_bits);
    std::memcpy(out.x, d.x_, sizeof out.x);
    out.words_offset = static_cast<std::uint64_t>(d.words_ - b);
    out.n_words = d.n_words_;
    out.bits_offset = static_cast<std::uint64_t>(bits.p_ - b);
    out.nbits = bits.nbits_;
    if (r.p + used + used_bits != r.end) throw CodecError(SE_ERR_CORRUPT, "dense: trailing bytes");
    return true;
}

// Which frames feed the two model passes (shared with the GPU encoder, which must sample alike):
// moments from every moment_step-th frame (>= 128 frames), residual histograms from every
// hist_step-th (>= 32 frames and >= 2^19 values: the tables need the distribution's shape, not
// every count; 32 rather than 64 frames: 6 % faster encoding of set B, 0.01 % larger).
DenseSampling dense_sampling(std::uint64_t frames, std::uint64_t pixels) {
    const std::uint64_t hist_frames = std::max<std::uint64_t>(32, ((1u << 19) + pixels - 1) / std::max<std::uint64_t>(1, pixels));
    return {std::max<std::uint64_t>(1, frames / 128), std::max<std::uint64_t>(1, frames / hist_frames)};
}

DenseClassMap dense_class_map(const double* s1, const double* s2, std::uint32_t count, std::uint64_t pixels) {
    DenseModel dm;
    const std::vector<std::uint32_t> n(pixels, count);
    dense_classes(s1, s2, n.data(), pixels, dm);
    DenseClassMap out;
    out.base = std::move(dm.base);
    out.slot.resize(pixels);
    for (std::uint64_t p = 0; p < pixels; ++p) out.slot[p] = dm.slot_of_class[dm.cls[p]];
    for (int c : dm.used) {
        out.classes.push_back(c);
        out.shift.push_back(class_shift(c));
    }
    return out;
}

DenseEncodeModel dense_encode_model(const DenseClassMap& map, const std::uint32_t* hist, std::size_t n_slots,
                                    std::uint64_t hist_step, unsigned elem_bits) {
    // The class map as dense_classes left it (checked: it may come from outside).
    DenseModel dm;
    const std::size_t n_used = map.classes.size();
    if (n_slots != n_used) throw CodecError(SE_ERR_ARG, "dense model: histograms do not match the classes");
    if (map.base.size() != map.slot.size()) throw CodecError(SE_ERR_ARG, "dense model: base and slot differ in length");
    dm.slot_of_class.assign(kMaxClass + 1, -1);
    for (std::size_t k = 0; k < n_used; ++k) {
        const int c = map.classes[k];
        if (c < 0 || c > kMaxClass || (k > 0 && c <= map.classes[k - 1]))
            throw CodecError(SE_ERR_ARG, "dense model: classes must be ascending ids in 0..254");
        dm.slot_of_class[c] = static_cast<int>(k);
        dm.used.push_back(c);
    }
    dm.base = map.base;
    dm.cls.resize(map.slot.size());
    for (std::size_t p = 0; p < map.slot.size(); ++p) {
        const std::int32_t k = map.slot[p];
        if (k < 0 || static_cast<std::size_t>(k) >= n_used) throw CodecError(SE_ERR_ARG, "dense model: slot out of range");
        dm.cls[p] = static_cast<std::uint8_t>(map.classes[k]);
    }
    std::vector<std::vector<std::uint64_t>> h(n_slots, std::vector<std::uint64_t>(kHistStride));
    for (std::size_t k = 0; k < n_slots; ++k)
        for (std::size_t i = 0; i < kHistStride; ++i) h[k][i] = hist[k * kHistStride + i];
    dense_tables(h, hist_step, elem_bits, dm);
    DenseEncodeModel out;
    write_dense_model(dm, out.prefix);
    out.fc = packed_fc(dm.models);
    for (const ClassModel& cm : dm.models) {
        out.qmin.push_back(cm.qmin);
        out.nsym.push_back(static_cast<std::uint32_t>(cm.nsym));
    }
    return out;
}

std::vector<std::uint8_t> dense_chunk(int dtype, int ndim, const std::uint64_t* shape,
                                      const std::vector<std::uint8_t>& prefix, const std::uint32_t* states,
                                      const std::uint16_t* words, std::uint64_t n_words, const std::uint8_t* bits,
                                      std::uint64_t nbits, std::uint32_t raw_crc) {
    Header h;
    h.dtype = dtype;
    h.ndim = ndim;
    for (int i = 0; i < ndim && i < SE_MAX_DIMS; ++i) h.shape[i] = shape[i];
    const DT dt = dtype_info(dtype);
    if (ndim < 0 || ndim > SE_MAX_DIMS || !geometry(h) || !dt.is_int || dt.size > 4 || dtype == SE_BOOL)
        throw CodecError(SE_ERR_ARG, "dense chunk: lossless 8-32-bit integers only");
    h.mode = SE_MODE_DENSE;
    h.raw_crc = raw_crc;
    const std::size_t nbytes = static_cast<std::size_t>((nbits + 7) / 8);
    // body: the model, the rANS stream (32 lanes), the raw bits with 8 bytes of padding
    h.body_nbytes = prefix.size() + 1 + 8 + 4 * 32 + 2 * n_words + 8 + nbytes + 8;
    if (h.body_nbytes >= h.raw_nbytes) return {};  // the CPU encoder stores such a chunk
    std::vector<std::uint8_t> out;
    write_header(h, out);
    out.reserve(out.size() + h.body_nbytes + 4);
    out.insert(out.end(), prefix.begin(), prefix.end());
    put_rans_stream(out, kLog2Lanes, states, words, n_words);
    put<std::uint64_t>(out, nbits);
    out.insert(out.end(), bits, bits + nbytes);
    out.insert(out.end(), 8, 0);
    const std::uint32_t crc = crc32c(out.data(), out.size());
    put<std::uint32_t>(out, crc);
    return out;
}

}  // namespace stemedge::codec

using stemedge::codec::CodecError;

extern "C" {

size_t se_compress_bound(uint64_t raw_nbytes) {
    return static_cast<size_t>(raw_nbytes) + stemedge::codec::header_size(SE_MAX_DIMS) + 64;
}

int64_t se_compress(const void* src, const se_params* p, void* dst, size_t dst_capacity) {
    try {
        return stemedge::codec::compress_impl(src, p, dst, dst_capacity);
    } catch (const CodecError& e) {
        return e.code;
    } catch (const std::bad_alloc&) {
        return SE_ERR_NOMEM;
    } catch (...) {
        return SE_ERR_CORRUPT;
    }
}

static int info_get(const void* blob, size_t blob_nbytes, se_info* out, bool verify) {
    if (!blob || !out) return SE_ERR_ARG;
    try {
        const auto* b = static_cast<const std::uint8_t*>(blob);
        const auto h = stemedge::codec::read_header(b, blob_nbytes);
        if (verify && !stemedge::codec::chunk_crc_ok(b, h)) return SE_ERR_CHECKSUM;
        out->dtype = h.dtype;
        out->ndim = h.ndim;
        out->mode = h.mode;
        out->version = 1;
        for (int i = 0; i < SE_MAX_DIMS; ++i) out->shape[i] = i < h.ndim ? h.shape[i] : 0;
        out->raw_nbytes = h.raw_nbytes;
        out->chunk_nbytes = h.header_nbytes + h.body_nbytes + 4;
        out->max_abs_error = h.err;
        out->threshold = h.threshold;
        return SE_OK;
    } catch (const CodecError& e) {
        return e.code;
    } catch (...) {
        return SE_ERR_CORRUPT;
    }
}

int se_info_get(const void* blob, size_t blob_nbytes, se_info* out) {
    // Verified: callers allocate raw_nbytes on the strength of this header.
    return info_get(blob, blob_nbytes, out, true);
}

int se_info_peek(const void* blob, size_t blob_nbytes, se_info* out) {
    return info_get(blob, blob_nbytes, out, false);
}

int64_t se_decompress(const void* blob, size_t blob_nbytes, void* dst, size_t dst_capacity) {
    try {
        return stemedge::codec::decompress_impl(blob, blob_nbytes, dst, dst_capacity);
    } catch (const CodecError& e) {
        if (std::getenv("STEMEDGE_CODEC_DEBUG")) std::fprintf(stderr, "se_decompress: %s\n", e.what());
        return e.code;
    } catch (const std::bad_alloc&) {
        return SE_ERR_NOMEM;
    } catch (...) {
        return SE_ERR_CORRUPT;
    }
}

void se_set_simd(int enabled) { stemedge::codec::g_simd.store(enabled != 0); }

uint32_t se_crc32c(const void* data, size_t nbytes) {
    return stemedge::codec::crc32c(data, nbytes);
}

const char* se_error_string(int code) {
    switch (code) {
        case SE_OK: return "ok";
        case SE_ERR_ARG: return "bad argument (dtype, shape, mode or error bound)";
        case SE_ERR_TRUNCATED: return "truncated chunk";
        case SE_ERR_MAGIC: return "not a stemedge chunk (bad magic)";
        case SE_ERR_VERSION: return "unsupported chunk format version";
        case SE_ERR_CORRUPT: return "corrupt chunk (inconsistent header, model or stream)";
        case SE_ERR_CHECKSUM: return "checksum mismatch (corrupt data)";
        case SE_ERR_SPACE: return "output buffer too small";
        case SE_ERR_NOMEM: return "out of memory";
        case SE_ERR_LOSSY: return "lossy options not supported for this dtype or mode";
        default: return "unknown error";
    }
}

}  // extern "C"
