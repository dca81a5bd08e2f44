// Bitshuffle-LZ4 decoding (DECTRIS SIMPLON streams, the bitshuffle HDF5 filter 32008).
//
// A payload is framed as the bitshuffle HDF5 filter and the DECTRIS detectors write it
// (bitshuffle src/bshuf_h5filter.c, src/bitshuffle.c, src/bitshuffle_core.c):
//
//   [uint64 BE: uncompressed bytes][uint32 BE: block size in BYTES (0: the default)]
//   then, for each block of `bs` elements: [uint32 BE: compressed bytes c][c bytes of LZ4 block]
//   then the (n % 8) trailing elements, uncompressed.
//
// n = total / elem_size elements; bs = block bytes / elem_size (a multiple of 8; 0 means
// bitshuffle's default: max(8192 / elem_size rounded down to a multiple of 8, 128)). There are
// n / bs full blocks, then one partial block of (n % bs) rounded down to a multiple of 8 elements
// (if any), then the n % 8 leftover elements raw. Each LZ4 block decodes to the block's elements
// bit-transposed: 8 * elem_size rows of bs / 8 bytes, row 8 * j + k holding bit k of byte j of
// every element, element 8 * t + c at bit c of the row's byte t.
//
// Every length is checked against the buffers (header total against the output size, each block
// size against what is left of the input, each LZ4 block with LZ4_decompress_safe against its
// exact decoded size, no bytes left over): corrupt or hostile input throws CorruptPayload, never
// reads or writes out of bounds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace stemedge::bslz4 {

// The payload is malformed (mapped to ValueError in Python).
class CorruptPayload : public std::invalid_argument {
  public:
    using std::invalid_argument::invalid_argument;
};

constexpr std::size_t kHeaderBytes = 12;

// bitshuffle's bshuf_default_block_size (elements).
std::size_t default_block_size(std::size_t elem_size);

// Decode one payload of `src_len` bytes into `dst_len` bytes of elements of `elem_size` bytes.
// Throws std::invalid_argument for bad arguments, CorruptPayload for a bad payload.
void decode(const std::uint8_t* src, std::size_t src_len, std::uint8_t* dst, std::size_t dst_len,
            std::size_t elem_size);

// One failed frame of decode_stack.
struct FrameError {
    std::size_t frame;
    std::string message;
};

// Decode n_frames payloads stored one per frame_bytes stride (payload i at raw + i * frame_bytes,
// nbytes[i] bytes, nbytes[i] <= frame_bytes) into out + i * frame_bytes. Frames are independent:
// a corrupt one is zero-filled and reported, the others are decoded. nthreads <= 1 decodes on
// the calling thread; more spreads the frames over ThreadPool::global() (0: all its threads).
std::vector<FrameError> decode_stack(const std::uint8_t* raw, const std::uint32_t* nbytes,
                                     std::size_t n_frames, std::size_t frame_bytes,
                                     std::uint8_t* out, std::size_t elem_size,
                                     std::size_t nthreads);

// Plain LZ4 block ("lz4<" DECTRIS images): exactly dst_len bytes or CorruptPayload.
void lz4_decode(const std::uint8_t* src, std::size_t src_len, std::uint8_t* dst,
                std::size_t dst_len);

// Compress into a plain LZ4 block (for simulators and tests): dst needs lz4_bound(src_len) bytes;
// returns the compressed size.
std::size_t lz4_bound(std::size_t src_len);
std::size_t lz4_compress(const std::uint8_t* src, std::size_t src_len, std::uint8_t* dst,
                         std::size_t dst_capacity);

// Bit-untranspose one block of n elements (n % 8 == 0) from `in` (8 * elem_size rows of n / 8
// bytes) to `out` with the active backend. Exposed for tests and benchmarks.
void untranspose_block(const std::uint8_t* in, std::uint8_t* out, std::size_t n,
                       std::size_t elem_size);

// Backends of the untranspose: "scalar" (portable 8x8 bit-matrix transposes in 64-bit words,
// the reference), "avx2" (byte transposes + the same 8x8 transposes in AVX2 lanes), "avx512"
// (AVX-512BW byte transposes + GFNI affine bit-matrix transposes). Chosen at run time from what
// the CPU supports; STEMEDGE_BSLZ4_BACKEND or set_backend overrides.
std::vector<std::string> compiled_backends();
std::vector<std::string> available_backends();
std::string active_backend();
void set_backend(const std::string& name);  // "auto" or a name; std::invalid_argument otherwise

std::string lz4_version();

}  // namespace stemedge::bslz4
