// What a GPU needs to decode a DENSE chunk (cuda/codec_decode.*): the chunk's model parsed on the
// host (maps, class tables) and where its rANS words and raw bits lie in the blob. The payload
// itself, all but a few kB of the chunk, is decoded on the device (docs/codec.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace stemedge::codec {

struct DenseLayout {
    int dtype = 0;                      // se_dtype
    std::uint64_t frames = 0, pixels = 0;
    unsigned elem_bytes = 0;
    std::int64_t lo = 0, hi = 0;        // the dtype's range: decoded values outside are corrupt
    std::vector<std::uint8_t> klass;    // per pixel: its class (index into the tables)
    std::vector<std::int64_t> base;     // per pixel
    std::vector<std::uint16_t> sym;     // classes × 4096: slot → symbol
    std::vector<std::uint32_t> fc;      // classes × 256: freq | cum << 16 per symbol
    std::vector<std::int64_t> qmin;     // per class
    std::vector<std::uint32_t> esc, shift;
    std::uint32_t x[32] = {};           // initial rANS states, lane order
    std::uint64_t words_offset = 0, n_words = 0;  // u16 words at blob + words_offset
    std::uint64_t bits_offset = 0, nbits = 0;     // bit stream bytes at blob + bits_offset
    std::uint32_t raw_crc = 0;          // CRC-32C of the decoded bytes
};

// Parses a chunk (its CRC verified). Returns false, leaving `out` unspecified, for a chunk that is
// not lossless-integer DENSE (those decode on the host). Throws on a corrupt chunk.
bool dense_layout(const void* blob, std::size_t size, DenseLayout& out);

}  // namespace stemedge::codec
