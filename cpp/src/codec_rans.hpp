// Interleaved rANS (32-bit states, 16-bit renormalisation, 12-bit probabilities), the entropy coder
// of the stemedge codec. Layout chosen so a GPU can decode it bit-identically: `lanes` states
// share ONE word stream; symbol j uses state j % lanes, and within a group of `lanes` symbols the
// renormalisation words are read in lane order (a warp finds its read offsets by a prefix sum of
// its renormalisation flags).
#pragma once

#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <atomic>
#include <memory>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "thread_scratch.hpp"

namespace stemedge::codec {

constexpr unsigned kScaleBits = 12;
constexpr std::uint32_t kScale = 1u << kScaleBits;
constexpr std::uint32_t kRansL = 1u << 16;  // states live in [L, L << 16)

// A coding step: a symbol of frequency `freq` (> 0) starting at `cum` (freq + cum <= kScale).
struct Op {
    std::uint16_t freq, cum;
};

// Error thrown inside the codec for malformed input; mapped to an se_error at the C boundary.
struct CodecError : std::runtime_error {
    int code;
    CodecError(int c, const char* what) : std::runtime_error(what), code(c) {}
};

// Tags of the encoder's per-thread buffers (thread_scratch.hpp): rANS words, raw bits, the body.
struct RansWords;
struct RawBitStream;
struct ChunkBody;

// Encodes ops[0..n) (in decoding order) into: log2(lanes) u8, n_words u64, states u32 × lanes,
// words u16 × n_words. The ops are coded in reverse, so the decoder runs forward.
void rans_encode(const std::vector<Op>& ops, unsigned log2_lanes, std::vector<std::uint8_t>& out);
// A rANS stream as every coder writes it: u8 log2(lanes), u64 word count, the 2^log2_lanes final
// states (u32), then the words (u16) in decoding order.
void put_rans_stream(std::vector<std::uint8_t>& out, unsigned log2_lanes, const std::uint32_t* states,
                     const std::uint16_t* words, std::uint64_t n_words);

// A modelled symbol prepared for encoding. (ryg_rans' reciprocal trick is exact only for states
// below 2^31; ours reach 2^32, so the encoder divides: 32-bit division is cheap enough here.)
struct EncSym {
    std::uint64_t x_max;
    std::uint32_t freq, cum;
};

inline EncSym enc_sym(std::uint32_t freq, std::uint32_t cum) {
    return {(static_cast<std::uint64_t>(kRansL >> kScaleBits) << 16) * freq, freq, cum};
}

// Encoder that is fed the ops of a stream in REVERSE order (last op first), without building an
// op list; produces the same bytes as rans_encode on the forward list of `n_ops` ops.
class RansEncoder {
  public:
    // Every op emits at most one word: the buffer is sized once and written without branches.
    RansEncoder(unsigned log2_lanes, std::uint64_t n_ops)
        : x_(std::size_t{1} << log2_lanes, kRansL),
          words_(reinterpret_cast<std::uint16_t*>(words_buf_->ensure(2 * (n_ops + 32)))),
          mask_((1u << log2_lanes) - 1),
          log2_lanes_(log2_lanes), j_(n_ops), n_ops_(n_ops) {}

    void put(const EncSym& s) {
        std::uint32_t& x = next();
        const std::uint32_t emit = x >= s.x_max;
        words_[n_words_] = static_cast<std::uint16_t>(x & 0xffff);
        n_words_ += emit;
        x >>= emit << 4;  // arithmetic, not a branch: emitting is unpredictable
        x = ((x / s.freq) << kScaleBits) + (x % s.freq) + s.cum;
    }

    void finish(std::vector<std::uint8_t>& out);

    // The vector encoder (codec_simd.cpp) works on these directly: it takes the ops from the top
    // (j_ down) in whole groups of 16.
    std::uint32_t& next() {
        if (j_ == 0) throw CodecError(-1, "rANS encoder: more ops than announced");
        --j_;
        return x_[j_ & mask_];
    }
    std::vector<std::uint32_t> x_;
    ThreadScratch<RawBytes, RansWords> words_buf_;  // reused per thread (thread_scratch.hpp)
    std::uint16_t* words_;  // n_ops + 32 words, not zeroed: only the emitted words are read
    std::uint64_t n_words_ = 0;
    // put() appends words in emission order, reversed by finish(). The vector encoder instead
    // fills words_ from the end down, already in decoding order: words_[first_, first_ + n_words_).
    bool in_order_ = false;
    std::uint64_t first_ = 0;
    std::uint32_t mask_;
    unsigned log2_lanes_;
    std::uint64_t j_, n_ops_;
};

// Forward reader of one stream (bounds-checked). Usage: for each symbol, `slot(j)` gives the
// 12-bit slot of lane j % lanes; the caller maps it to (freq, cum) and calls `advance`.
class RansDecoder {
  public:
    // Parses the stream header at data[0..size); `consumed` is set to the stream's total size.
    RansDecoder(const std::uint8_t* data, std::size_t size, std::size_t& consumed);

    std::uint32_t slot() const { return x_[lane_] & (kScale - 1); }

    void advance(std::uint32_t freq, std::uint32_t cum) {
        std::uint32_t& x = x_[lane_];
        x = freq * (x >> kScaleBits) + (x & (kScale - 1)) - cum;
        // Branch-free renormalisation (whether a lane needs a word is data, not predictable);
        // the only branch left, the end of the stream, is.
        const std::uint32_t need = x < kRansL;
        std::uint16_t w = 0;
        if (pos_ < n_words_) std::memcpy(&w, words_ + 2 * pos_, 2);
        else if (need) throw CodecError(-5, "rANS stream ends early");
        x = need ? (x << 16) | w : x;
        pos_ += need;
        lane_ = (lane_ + 1) & mask_;
    }

    // Every word read and every state back at L: the stream was decoded exactly as encoded.
    void finish() const;

    // Hot loops copy these into locals (kept in registers) and write them back before finish().
    std::uint32_t x_[32];
    const std::uint8_t* words_ = nullptr;
    std::uint64_t n_words_ = 0, pos_ = 0;
    std::uint32_t lane_ = 0, mask_ = 0;
};

// A static model over symbols 0..n-1: normalised frequencies (sum kScale, every present symbol
// >= 1) and the decoding table slot -> symbol.
struct Table {
    std::vector<std::uint16_t> freq, cum;
    std::vector<std::uint16_t> sym_of_slot;  // kScale entries (built for decoding)

    std::size_t size() const { return freq.size(); }
    Op op(std::size_t s) const { return {freq[s], cum[s]}; }
    // From counts (at least one non-zero); symbols with count 0 get frequency 0 (uncodable).
    static Table from_counts(const std::vector<std::uint64_t>& counts);
    // Serialised: n u16, then freq u16 × n. read() validates (sum == kScale).
    void write(std::vector<std::uint8_t>& out) const;
    static Table read(const std::uint8_t*& p, const std::uint8_t* end, std::size_t max_symbols);
    void build_decode();
    // Cost in bits of coding `counts` with this table (counts with freq 0 must be 0).
    double cost_bits(const std::vector<std::uint64_t>& counts) const;
};

// Raw bits (mantissas, low residual bits, escaped values) travel in a plain bit stream beside the
// rANS stream: every modelled value is exactly one rANS step, and a decoder finds any value's raw
// bits by a prefix sum of the per-value bit counts (GPU-friendly). Bits are LSB-first; the stream
// is u64 nbits, then ceil(nbits / 8) + 8 bytes (8 zero bytes of padding: 64-bit loads stay inside).
class BitWriter {
  public:
    explicit BitWriter(std::uint64_t nbits) : nbits_(nbits) { buf_.assign((nbits + 7) / 8 + 8, 0); }
    // A growing stream (its length known only at the end): put_grow, then set_nbits.
    BitWriter() : nbits_(0) { buf_.assign(1 << 16, 0); }
    BitWriter(const BitWriter&) = delete;
    BitWriter& operator=(const BitWriter&) = delete;
    void put_grow(std::uint64_t pos, std::uint64_t v, unsigned n) {
        const std::size_t need = static_cast<std::size_t>((pos + n + 7) / 8 + 8);
        if (need > buf_.size()) buf_.resize(std::max(need, 2 * buf_.size()), 0);
        put(pos, v, n);
    }
    void set_nbits(std::uint64_t nbits) {
        nbits_ = nbits;
        buf_.resize(static_cast<std::size_t>((nbits + 7) / 8 + 8), 0);
    }
    // value's low n bits (n <= 64) at bit position pos (ranges must not overlap).
    void put(std::uint64_t pos, std::uint64_t v, unsigned n) {
        while (n > 0) {
            const unsigned k = n > 32 ? 32 : n;
            const std::uint64_t part = k == 64 ? v : (v & ((std::uint64_t{1} << k) - 1));
            std::uint64_t w;
            std::memcpy(&w, buf_.data() + (pos >> 3), 8);
            w |= part << (pos & 7);
            std::memcpy(buf_.data() + (pos >> 3), &w, 8);
            pos += k;
            v >>= k;
            n -= k;
        }
    }
    void write(std::vector<std::uint8_t>& out) const;
    std::uint8_t* data() { return buf_.data(); }

  private:
    std::uint64_t nbits_;
    ThreadScratch<std::vector<std::uint8_t>, RawBitStream> scratch_;  // reused per thread
    std::vector<std::uint8_t>& buf_ = *scratch_;
};

class BitReader {
  public:
    BitReader() = default;
    BitReader(const std::uint8_t* data, std::size_t size, std::size_t& consumed);
    std::uint64_t get(unsigned n) {  // n <= 64
        if (n > nbits_ - pos_) throw CodecError(-5, "bit stream ends early");
        std::uint64_t v = 0;
        unsigned done = 0;
        while (n > 0) {
            const unsigned k = n > 32 ? 32 : n;
            std::uint64_t w;
            std::memcpy(&w, p_ + (pos_ >> 3), 8);
            v |= ((w >> (pos_ & 7)) & ((std::uint64_t{1} << k) - 1)) << done;
            pos_ += k;
            done += k;
            n -= k;
        }
        return v;
    }
    void finish() const {
        if (pos_ != nbits_) throw CodecError(-5, "bit stream has unread bits");
    }

    const std::uint8_t* p_ = nullptr;
    std::uint64_t nbits_ = 0, pos_ = 0;
};

// Bounds-checked little-endian reader.
struct Reader {
    const std::uint8_t* p;
    const std::uint8_t* end;
    void need(std::size_t n) const {
        if (static_cast<std::size_t>(end - p) < n) throw CodecError(-2, "chunk ends early");
    }
    template <class T>
    T get() {
        need(sizeof(T));
        T v;
        std::memcpy(&v, p, sizeof(T));
        p += sizeof(T);
        return v;
    }
};

template <class T>
inline void put(std::vector<std::uint8_t>& out, T v) {
    const std::size_t n = out.size();
    out.resize(n + sizeof(T));
    std::memcpy(out.data() + n, &v, sizeof(T));
}

// CRC-32C (Castagnoli): carry-less folding where the CPU has AVX-512 VPCLMULQDQ, else three
// chains of the SSE4.2 instruction, else tables.
std::uint32_t crc32c(const void* data, std::size_t n, std::uint32_t crc = 0);

// The vector paths (AVX-512 coders and model passes, VPCLMULQDQ checksum) are on unless switched
// off (se_set_simd, for tests and comparisons: every path gives the same bytes).
extern std::atomic<bool> g_simd;

}  // namespace stemedge::codec
