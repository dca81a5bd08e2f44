// The DENSE encoder of the frame codec, per pixel and per lane, written once for the device and
// the host (the host twins in codec_encode.cu run these functions in the CPU encoder's order, and
// the tests hold their chunks to stemedge.compress(mode="dense") byte for byte).
//
// The device does the work that reads the frames: the model's two counting passes (moments,
// residual histograms), the rANS payload and the CRC-32C of the raw data. The host decides the
// model from the counts with the CPU encoder's own code (_native.codec_dense_class_map,
// codec_dense_encode_model) and assembles the chunk (_native.codec_dense_chunk).
//
// Payload: one warp per chunk walks the 32-value groups from the last to the first, as the CPU
// encoder does (rANS is last-in first-out). Lane j owns state j. A group's renormalisation words
// go below those of the groups after it, in lane order (ballot + popcount), so the buffer ends up
// in decoding order; its raw bits go above those of the groups after it, lane 31's first (a
// suffix sum of the bit counts).
#pragma once

#include <cstdint>

#include "codec_common.cuh"

namespace stemedge::cuda::codec {

constexpr std::uint32_t kHistStride = 256;
constexpr std::int64_t kWindow = 127;
constexpr std::uint64_t kCrcSegment = 4096;  // bytes per thread in the raw-data CRC

// One chunk, as the encoding kernels see it (built in python/stemedge/gpu_codec.py; 8-byte
// fields only, so numpy and C agree on the layout). Inputs first, then what the kernels return.
struct EncodeChunk {
    std::uint64_t src;         // const element bytes: frames × pixels
    std::uint64_t frames, pixels, elem_bytes, is_signed;
    std::uint64_t step;        // moments / histogram pass: every step-th frame from frame 0
    std::uint64_t s1, s2;      // double* per pixel (moments pass output)
    std::uint64_t base;        // const int64_t* per pixel
    std::uint64_t slot;        // const int32_t* per pixel: class slot
    std::uint64_t shift;       // const uint32_t* per slot
    std::uint64_t hist;        // uint32_t* slots × 256 (histogram pass output, zeroed)
    std::uint64_t fc;          // const uint32_t* slots × 256: freq | cum << 16
    std::uint64_t qmin;        // const int64_t* per slot
    std::uint64_t nsym;        // const uint32_t* per slot: the escape symbol
    std::uint64_t words;       // uint16_t* frames × pixels (one word per value at most)
    std::uint64_t bits;        // uint32_t* bits_cap words, zeroed
    std::uint64_t bits_cap;
    std::uint64_t crc_parts;   // uint32_t* ceil(raw bytes / kCrcSegment), scratch
    // outputs
    std::uint64_t first_word;  // the words are words[first_word, frames × pixels)
    std::uint64_t nbits;
    std::uint64_t status;      // EncodeStatus
    std::uint64_t raw_crc;     // CRC-32C of the raw bytes
    std::uint32_t x[32];       // final states
};
static_assert(sizeof(EncodeChunk) == 23 * 8 + 128, "EncodeChunk is mirrored in gpu_codec.py");

enum EncodeStatus : int { kEncOk = 0, kEncFreq = 1, kEncBits = 2 };

// Element i: its raw bits (the low elem_bytes bytes) and its value.
STEMEDGE_HD inline std::int64_t element(const EncodeChunk& c, std::uint64_t i, std::uint64_t& raw) {
    const std::uint8_t* s = ptr<const std::uint8_t>(c.src);
    switch (c.elem_bytes) {
        case 1: raw = s[i]; return c.is_signed ? static_cast<std::int8_t>(raw) : static_cast<std::int64_t>(raw);
        case 2:
            raw = ptr<const std::uint16_t>(c.src)[i];
            return c.is_signed ? static_cast<std::int16_t>(raw) : static_cast<std::int64_t>(raw);
        default:
            raw = ptr<const std::uint32_t>(c.src)[i];
            return c.is_signed ? static_cast<std::int32_t>(raw) : static_cast<std::int64_t>(raw);
    }
}

// Pass 1: pixel p's moments over the sampled frames, in frame order, rounded like the CPU's
// (no fused multiply-add: the model decisions must be the CPU's to the last bit).
STEMEDGE_HD inline void pixel_moments(const EncodeChunk& c, std::uint64_t p) {
    double s1 = 0.0, s2 = 0.0;
    std::uint64_t raw;
    for (std::uint64_t f = 0; f < c.frames; f += c.step) {
        const double d = static_cast<double>(element(c, f * c.pixels + p, raw));
#ifdef __CUDA_ARCH__
        s1 = __dadd_rn(s1, d);
        s2 = __dadd_rn(s2, __dmul_rn(d, d));
#else
        s1 += d;
        s2 += d * d;
#endif
    }
    ptr<double>(c.s1)[p] = s1;
    ptr<double>(c.s2)[p] = s2;
}

STEMEDGE_HD inline void count(std::uint32_t* h) {
#ifdef __CUDA_ARCH__
    atomicAdd(h, 1u);
#else
    ++*h;
#endif
}

// Pass 2: pixel p's residual buckets over the sampled frames, into its class's histogram.
STEMEDGE_HD inline void pixel_hist(const EncodeChunk& c, std::uint64_t p) {
    const std::int32_t k = ptr<const std::int32_t>(c.slot)[p];
    const std::uint32_t sh = ptr<const std::uint32_t>(c.shift)[k];
    const std::int64_t b = ptr<const std::int64_t>(c.base)[p];
    std::uint32_t* h = ptr<std::uint32_t>(c.hist) + static_cast<std::uint64_t>(k) * kHistStride;
    std::uint64_t raw;
    for (std::uint64_t f = 0; f < c.frames; f += c.step) {
        const std::int64_t q = (element(c, f * c.pixels + p, raw) - b) >> sh;
        const std::uint64_t i = static_cast<std::uint64_t>(q + kWindow);
        count(h + (i <= 2 * static_cast<std::uint64_t>(kWindow) ? i : kHistStride - 1));
    }
}

// A value's coding: its symbol's freq and cum, and its raw bits (n of them).
STEMEDGE_HD inline void lane_code(const EncodeChunk& c, std::uint64_t op, std::uint64_t p, std::uint32_t& freq,
                                  std::uint32_t& cum, std::uint64_t& raw, std::uint32_t& n) {
    const std::int32_t k = ptr<const std::int32_t>(c.slot)[p];
    const std::uint32_t sh = ptr<const std::uint32_t>(c.shift)[k];
    const std::int64_t qmin = ptr<const std::int64_t>(c.qmin)[k];
    const std::uint32_t nsym = ptr<const std::uint32_t>(c.nsym)[k];
    std::uint64_t bits;
    const std::int64_t r = element(c, op, bits) - ptr<const std::int64_t>(c.base)[p];
    const std::int64_t q = r >> sh;
    std::uint32_t s;
    if (q >= qmin && q < qmin + static_cast<std::int64_t>(nsym)) {
        s = static_cast<std::uint32_t>(q - qmin);
        raw = static_cast<std::uint64_t>(r - q * (std::int64_t{1} << sh));
        n = sh;
    } else {  // an escape carries the element's own bits
        s = nsym;
        raw = bits;
        n = static_cast<std::uint32_t>(8 * c.elem_bytes);
    }
    const std::uint32_t fcv = ptr<const std::uint32_t>(c.fc)[static_cast<std::uint64_t>(k) * 256 + s];
    freq = fcv & 0xffffu;
    cum = fcv >> 16;
}

// One rANS step on state x (freq > 0); returns whether the word (x's low 16 bits before the step)
// is emitted.
STEMEDGE_HD inline bool lane_put(std::uint32_t& x, std::uint32_t freq, std::uint32_t cum, std::uint16_t& word) {
    const std::uint64_t x_max = (static_cast<std::uint64_t>(kRansL >> kScaleBits) << 16) * freq;
    const bool emit = x >= x_max;
    word = static_cast<std::uint16_t>(x & 0xffffu);
    if (emit) x >>= 16;
    x = ((x / freq) << kScaleBits) + (x % freq) + cum;
    return emit;
}

// n ≤ 32 bits of v at bit position pos of a zeroed little-endian stream (other lanes write the
// neighbouring bits at the same time on the device).
STEMEDGE_HD inline void put_bits(std::uint32_t* buf, std::uint64_t pos, std::uint64_t v, std::uint32_t n) {
    if (n == 0) return;
    const std::uint64_t w = (v & ((std::uint64_t{1} << n) - 1)) << (pos & 31);
    std::uint32_t* at = buf + (pos >> 5);
    const std::uint32_t lo = static_cast<std::uint32_t>(w), hi = static_cast<std::uint32_t>(w >> 32);
#ifdef __CUDA_ARCH__
    if (lo) atomicOr(at, lo);
    if (hi) atomicOr(at + 1, hi);
#else
    at[0] |= lo;
    at[1] |= hi;
#endif
}

// --- CRC-32C of the raw data: a register per segment, joined by "append n zero bytes" ----------

STEMEDGE_HD inline std::uint32_t crc_entry(std::uint32_t i) {  // the byte-wise table's entry i
    for (int k = 0; k < 8; ++k) i = (i >> 1) ^ (0x82F63B78u & (0u - (i & 1u)));
    return i;
}

// The raw register (no inversions) advanced over n bytes.
STEMEDGE_HD inline std::uint32_t crc_bytes(const std::uint32_t* t, std::uint32_t r, const std::uint8_t* p,
                                           std::uint64_t n) {
    for (std::uint64_t i = 0; i < n; ++i) r = t[(r ^ p[i]) & 0xffu] ^ (r >> 8);
    return r;
}

// a·b mod P, both reflected (bit i <-> x^(31 - i)): the CPU's gf2_mulmod (codec_rans.cpp).
STEMEDGE_HD inline std::uint32_t crc_mulmod(std::uint32_t a, std::uint32_t b) {
    std::uint32_t r = 0;
    for (int i = 0; i < 32; ++i) {
        if (b & (0x80000000u >> i)) r ^= a;
        a = (a >> 1) ^ (0x82F63B78u & (0u - (a & 1u)));  // a·x
    }
    return r;
}

// x^e mod P, reflected: square-and-multiply from x.
STEMEDGE_HD inline std::uint32_t crc_xpow(std::uint64_t e) {
    std::uint32_t r = 0x80000000u, p = 0x40000000u;  // 1, x
    for (; e; e >>= 1) {
        if (e & 1u) r = crc_mulmod(r, p);
        p = crc_mulmod(p, p);
    }
    return r;
}

// Segment i's register: from ~0 for the first (the CRC's initial value), from 0 for the others.
STEMEDGE_HD inline std::uint32_t crc_part(const EncodeChunk& c, const std::uint32_t* t, std::uint64_t i) {
    const std::uint64_t total = c.frames * c.pixels * c.elem_bytes, at = i * kCrcSegment;
    const std::uint64_t n = total - at < kCrcSegment ? total - at : kCrcSegment;
    return crc_bytes(t, i == 0 ? 0xffffffffu : 0u, ptr<const std::uint8_t>(c.src) + at, n);
}

// The chunk's CRC from its segments' registers: r ← r·x^(8·len) ⊕ part (a register stands for
// itself times x^32, so appending len bytes multiplies it by x^(8·len) mod P, as crc_shift does).
STEMEDGE_HD inline std::uint32_t crc_join(const EncodeChunk& c) {
    const std::uint64_t total = c.frames * c.pixels * c.elem_bytes;
    const std::uint32_t* parts = ptr<const std::uint32_t>(c.crc_parts);
    if (total == 0) return 0;
    const std::uint32_t segment = crc_xpow(8 * kCrcSegment);
    const std::uint64_t n = (total + kCrcSegment - 1) / kCrcSegment;
    std::uint32_t r = parts[0];
    for (std::uint64_t i = 1; i < n; ++i) {
        const std::uint64_t len = total - i * kCrcSegment < kCrcSegment ? total - i * kCrcSegment : kCrcSegment;
        r = crc_mulmod(r, len == kCrcSegment ? segment : crc_xpow(8 * len)) ^ parts[i];
    }
    return ~r;
}

}  // namespace stemedge::cuda::codec
