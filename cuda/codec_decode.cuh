// The DENSE payload decoder of the frame codec (docs/codec.md), one step of one lane, written
// once for the device (a warp per chunk: lane j decodes symbol j of each group of 32) and the host
// (the same steps lane by lane: _cuda.codec_decode_host, held to the CPU decoder in the tests).
// Within a group, renormalisation words are read in lane order at a prefix sum of the lanes'
// needs, and raw bits are read top-down at a prefix sum of the lanes' bit counts.
#pragma once

#include <cstdint>

#include "codec_common.cuh"

namespace stemedge::cuda::codec {

// One chunk, as the kernel reads it (built in python/stemedge/gpu_codec.py from
// _native.codec_dense_layout; 8-byte fields only, so numpy and C agree on the layout).
struct DenseChunk {
    std::uint64_t klass;   // const uint8_t*  per pixel: class index
    std::uint64_t base;    // const int64_t*  per pixel
    std::uint64_t sym;     // const uint16_t* classes × 4096
    std::uint64_t fc;      // const uint32_t* classes × 256: freq | cum << 16
    std::uint64_t qmin;    // const int64_t*  per class
    std::uint64_t esc;     // const uint32_t* per class
    std::uint64_t shift;   // const uint32_t* per class
    std::uint64_t words;   // const uint8_t*  u16 little-endian words (any alignment)
    std::uint64_t n_words;
    std::uint64_t bits;    // const uint8_t*  bit stream bytes (8 bytes of padding after)
    std::uint64_t nbits;
    std::uint64_t frames, pixels;
    std::int64_t lo, hi;   // the dtype's range
    std::uint64_t elem_bytes;
    std::uint64_t out;     // uint8_t* frames × pixels elements
    std::uint32_t x[32];   // initial states
};
static_assert(sizeof(DenseChunk) == 17 * 8 + 128, "DenseChunk is mirrored in gpu_codec.py");

enum Status : int { kOk = 0, kWordsEnd = 1, kBitsEnd = 2, kRange = 3, kEnd = 4 };

// Decode lane state x at pixel p: the symbol, its class and the next state before
// renormalisation; `need` says whether a word must be shifted in.
STEMEDGE_HD inline void lane_symbol(const DenseChunk& c, std::uint32_t x, std::uint64_t p,
                                    std::uint32_t& xn, std::uint32_t& s, std::uint32_t& cls,
                                    std::uint32_t& need) {
    cls = ptr<const std::uint8_t>(c.klass)[p];
    const std::uint32_t slot = x & (kScale - 1);
    s = ptr<const std::uint16_t>(c.sym)[cls * kScale + slot];
    const std::uint32_t fc = ptr<const std::uint32_t>(c.fc)[cls * 256 + s];
    xn = (fc & 0xffffu) * (x >> kScaleBits) + slot - (fc >> 16);
    need = xn < kRansL ? 1u : 0u;
}

STEMEDGE_HD inline std::uint32_t word(const DenseChunk& c, std::uint64_t i) {
    const std::uint8_t* w = ptr<const std::uint8_t>(c.words) + 2 * i;
    return static_cast<std::uint32_t>(w[0]) | static_cast<std::uint32_t>(w[1]) << 8;
}

// Raw bits of this value: the escape width or the class's shift.
STEMEDGE_HD inline std::uint32_t lane_nbits(const DenseChunk& c, std::uint32_t cls, std::uint32_t s) {
    return s == ptr<const std::uint32_t>(c.esc)[cls] ? static_cast<std::uint32_t>(8 * c.elem_bytes)
                                               : ptr<const std::uint32_t>(c.shift)[cls];
}

// n ≤ 32 bits at bit position pos, LSB-first.
STEMEDGE_HD inline std::uint64_t read_bits(const DenseChunk& c, std::uint64_t pos, std::uint32_t n) {
    if (n == 0) return 0;
    const std::uint8_t* b = ptr<const std::uint8_t>(c.bits) + (pos >> 3);
    const std::uint32_t off = static_cast<std::uint32_t>(pos & 7);
    std::uint64_t v = 0;
    for (std::uint32_t i = 0; i < (off + n + 7) / 8; ++i) v |= static_cast<std::uint64_t>(b[i]) << (8 * i);
    return (v >> off) & ((std::uint64_t{1} << n) - 1);
}

// The element's bits (low elem_bytes bytes) from the symbol and its raw bits; false when the
// value cannot come from the dtype (a corrupt chunk).
STEMEDGE_HD inline bool lane_value(const DenseChunk& c, std::uint64_t p, std::uint32_t cls,
                                   std::uint32_t s, std::uint64_t raw, std::uint64_t& bits) {
    if (s == ptr<const std::uint32_t>(c.esc)[cls]) {
        bits = raw;  // escapes carry the element's own bits
        return true;
    }
    const std::int64_t b = ptr<const std::int64_t>(c.base)[p];
    if (b < -(std::int64_t{1} << 40) || b > (std::int64_t{1} << 40)) return false;
    const std::int64_t q = ptr<const std::int64_t>(c.qmin)[cls] + static_cast<std::int64_t>(s);
    const std::int64_t v = b + q * (std::int64_t{1} << ptr<const std::uint32_t>(c.shift)[cls]) +
                           static_cast<std::int64_t>(raw);
    if (v < c.lo || v > c.hi) return false;
    bits = static_cast<std::uint64_t>(v);
    return true;
}

STEMEDGE_HD inline void store(const DenseChunk& c, std::uint64_t op, std::uint64_t bits) {
    std::uint8_t* o = reinterpret_cast<std::uint8_t*>(static_cast<std::uintptr_t>(c.out));
    switch (c.elem_bytes) {
        case 1: o[op] = static_cast<std::uint8_t>(bits); break;
        case 2: reinterpret_cast<std::uint16_t*>(o)[op] = static_cast<std::uint16_t>(bits); break;
        default: reinterpret_cast<std::uint32_t*>(o)[op] = static_cast<std::uint32_t>(bits); break;
    }
}

}  // namespace stemedge::cuda::codec
