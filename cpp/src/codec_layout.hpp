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

// --- the GPU encoder's host steps (cuda/codec_encode.*, python/stemedge/gpu_codec.py) ----------
// The device counts (moments, residual histograms) and codes the payload; the host decides the
// model from those counts with the CPU encoder's own functions, so the chunk is the same bytes.

constexpr std::size_t kDenseHistStride = 256;  // per class: 255 residual buckets, then escapes

// Frames feeding the model passes: every moment_step-th for the moments, hist_step-th for the
// histograms, from frame 0.
struct DenseSampling {
    std::uint64_t moment_step, hist_step;
};
DenseSampling dense_sampling(std::uint64_t frames, std::uint64_t pixels);

// From the moments (count samples per pixel of s1 = sum v, s2 = sum v^2): each pixel's base and
// class slot, each slot's class id and bucket shift (what the histogram pass needs).
struct DenseClassMap {
    std::vector<std::int64_t> base;
    std::vector<std::int32_t> slot;
    std::vector<std::int32_t> classes;  // ascending
    std::vector<std::uint32_t> shift;
};
DenseClassMap dense_class_map(const double* s1, const double* s2, std::uint32_t count, std::uint64_t pixels);

// From the class map and the histograms (n_slots x kDenseHistStride): the body's model part
// (`prefix`) and the tables the payload is coded with (per slot: freq | cum << 16 for 256 symbols,
// qmin, nsym = the escape symbol). `map.shift` is not read: the classes fix the shifts.
struct DenseEncodeModel {
    std::vector<std::uint8_t> prefix;
    std::vector<std::uint32_t> fc;
    std::vector<std::int64_t> qmin;
    std::vector<std::uint32_t> nsym;
};
DenseEncodeModel dense_encode_model(const DenseClassMap& map, const std::uint32_t* hist, std::size_t n_slots,
                                    std::uint64_t hist_step, unsigned elem_bits);

// The chunk (header, body, CRC) from its parts; empty when the body would not be smaller than the
// raw data (the CPU encoder stores such a chunk raw: the caller does so).
std::vector<std::uint8_t> dense_chunk(int dtype, int ndim, const std::uint64_t* shape,
                                      const std::vector<std::uint8_t>& prefix, const std::uint32_t* states,
                                      const std::uint16_t* words, std::uint64_t n_words, const std::uint8_t* bits,
                                      std::uint64_t nbits, std::uint32_t raw_crc);

}  // namespace stemedge::codec
