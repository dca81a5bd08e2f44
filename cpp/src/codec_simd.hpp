// The AVX-512 DENSE decoder's inputs: the scalar decoder prepares them (per-pixel arrays, one packed
// table) when the chunk fits the fast path, then hands over the coder's state.
#pragma once

#include <cstddef>
#include <cstdint>

#include "codec_rans.hpp"

namespace stemedge::codec {

struct DenseSimd {
    std::uint64_t frames = 0, pixels = 0;  // pixels % 16 == 0
    // Per pixel: class index × kScale (the table row); base + qmin · 2^shift; shift | escape
    // symbol << 8.
    const std::int32_t *cbase = nullptr, *basq = nullptr, *sh_esc = nullptr;
    // Per pixel, the offset of its raw bits in its group, and per 16-pixel group their total,
    // when no value of the group is escaped (then each takes its shift).
    const std::int32_t *soff = nullptr, *gtotal = nullptr;
    // Per class and slot: freq | cum << 13 | symbol << 25 (symbols < 128).
    const std::uint32_t* table = nullptr;
    const std::uint16_t* words = nullptr;
    std::uint64_t n_words = 0;
    const std::uint8_t* bits = nullptr;  // with 8 bytes of padding after nbits
    std::uint64_t nbits = 0;
    int esc_bits = 0;    // raw bits of an escaped value (8 · element size, ≤ 32)
    int quant = 1;       // lossy integers: decoded value = clamp(v · quant, lo, hi)
    int lo = 0, hi = 0;
    int elem_bytes = 0;  // 1, 2 or 4: values are stored truncated to this width
    void* out = nullptr;
    // Coder state, updated: the 32 lane states, the word position, the bit position (read top-down:
    // it starts at nbits and ends at 0).
    std::uint32_t* x = nullptr;
    std::uint64_t *wpos = nullptr, *bpos = nullptr;
};

// The vector DENSE encoder's inputs (lossless 8/16-bit integers and uint32; 16-pixel groups).
struct DenseSimdEnc {
    std::uint64_t frames = 0, pixels = 0;
    const void* src = nullptr;
    int elem_bytes = 0;
    bool is_signed = false;
    // Per pixel: base (int32), class index × 256, shift | escape symbol << 8, qmin, nsym.
    const std::int32_t *base = nullptr, *cls_off = nullptr, *sh_esc = nullptr, *qmin = nullptr,
                       *nsym = nullptr;
    const std::int32_t *soff = nullptr, *gtotal = nullptr;  // as DenseSimd's
    const std::uint32_t* table = nullptr;  // per class, 256 symbols: freq | cum << 16
    RansEncoder* enc = nullptr;
    BitWriter* bits = nullptr;
    std::uint64_t* cursor = nullptr;  // the bit writer's cursor (bits go from 0 up, last pixel first)
};

// The DENSE model's two passes over lossless 8/16-bit integers (the encoder's model, codec.cpp):
// per-pixel sums of v and v² over frames 0, step, 2·step, … (added to s1, s2; every sum is exact
// in double for these types, so the result equals the scalar loop's), and
struct DenseMomentsSimd {
    std::uint64_t frames = 0, pixels = 0, step = 1;
    const void* src = nullptr;
    int elem_bytes = 0;
    bool is_signed = false;
    double *s1 = nullptr, *s2 = nullptr;
};
// each value's histogram bin in one frame row: off[p] + ((v − base[p]) >> shift[p]) + window, or
// off[p] + 2·window + 1 outside [−window, window].
struct DenseBinsSimd {
    std::uint64_t pixels = 0;
    int elem_bytes = 0;
    bool is_signed = false;
    int window = 0;
    const std::int32_t *base = nullptr, *shift = nullptr;
    const std::uint32_t* off = nullptr;
};

bool dense_decode_simd_available();
bool dense_moments_simd(const DenseMomentsSimd& in);
bool dense_bins_simd(const DenseBinsSimd& in, const void* row, std::uint32_t* bins);
// Codes every value (in reverse, like the scalar loop) with bit-identical output.
bool dense_encode_simd(const DenseSimdEnc& in);
// false: the stream or bit stream ended early (the chunk is corrupt); the state is then undefined.
bool dense_decode_simd(const DenseSimd& in);

}  // namespace stemedge::codec
