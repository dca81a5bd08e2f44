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
    // Coder state, updated: the 32 lane states, the word and bit positions.
    std::uint32_t* x = nullptr;
    std::uint64_t *wpos = nullptr, *bpos = nullptr;
};

bool dense_decode_simd_available();
// false: the stream or bit stream ended early (the chunk is corrupt); the state is then undefined.
bool dense_decode_simd(const DenseSimd& in);

}  // namespace stemedge::codec
