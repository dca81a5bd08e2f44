// The warp decoder and its host twin (see codec_decode.hpp). Both walk the payload in groups of
// 32 values; every lane's word and bit offsets come from prefix sums over the lanes before it,
// which is exactly the order the CPU decoder reads them in (docs/codec.md).
#include "codec_decode.hpp"

#include <stdexcept>

#include "cuda_check.hpp"

namespace stemedge::cuda {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kWarpsPerBlock = 4;

__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    dense_kernel(const codec::DenseChunk* __restrict__ chunks, long long n_chunks, int* status) {
    const long long ci = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    if (ci >= n_chunks) return;  // whole warps leave together
    const unsigned lane = threadIdx.x & 31;
    const codec::DenseChunk c = chunks[ci];
    const std::uint64_t total = c.frames * c.pixels;
    std::uint32_t x = c.x[lane];
    std::uint64_t wpos = 0, bpos = c.nbits;
    std::uint64_t p = c.pixels ? lane % c.pixels : 0;
    int err = codec::kOk;
    for (std::uint64_t group = 0; group < total; group += 32) {
        const std::uint64_t op = group + lane;
        const bool active = op < total;
        std::uint32_t xn = 0, s = 0, cls = 0, need = 0;
        if (active) codec::lane_symbol(c, x, p, xn, s, cls, need);
        const unsigned needs = __ballot_sync(kFull, need);
        if (need) {
            const std::uint64_t i = wpos + __popc(needs & ((1u << lane) - 1));
            if (i < c.n_words) xn = (xn << 16) | codec::word(c, i);
            else err = codec::kWordsEnd;
        }
        wpos += __popc(needs);
        if (active) x = xn;
        const std::uint32_t nb = active ? codec::lane_nbits(c, cls, s) : 0;
        std::uint64_t incl = nb;  // inclusive prefix sum of the bit counts
        for (unsigned off = 1; off < 32; off <<= 1) {
            const std::uint64_t t = __shfl_up_sync(kFull, incl, off);
            if (lane >= off) incl += t;
        }
        const std::uint64_t group_bits = __shfl_sync(kFull, incl, 31);
        if (group_bits > bpos) {  // uniform across the warp
            err = codec::kBitsEnd;
            break;
        }
        const std::uint64_t raw = codec::read_bits(c, bpos - incl, nb);
        bpos -= group_bits;
        if (active) {
            std::uint64_t bits;
            if (codec::lane_value(c, p, cls, s, raw, bits)) codec::store(c, op, bits);
            else err = codec::kRange;
        }
        p += 32;
        while (p >= c.pixels) p -= c.pixels;
    }
    if (err == codec::kOk && (x != codec::kRansL || wpos != c.n_words || bpos != 0)) err = codec::kEnd;
    // Any lane's error is the chunk's (the lowest code wins, for a stable report).
    int worst = err;
    for (unsigned off = 16; off > 0; off >>= 1) {
        const int o = __shfl_down_sync(kFull, worst, off);
        worst = (worst == 0 || (o != 0 && o < worst)) ? o : worst;
    }
    if (lane == 0) status[ci] = worst;
}

}  // namespace

void dense_decode_device(const codec::DenseChunk* chunks, long long n_chunks, int* status,
                         cudaStream_t stream) {
    if (n_chunks < 0) throw std::invalid_argument("codec: negative chunk count");
    if (n_chunks == 0) return;
    const long long threads = 32LL * kWarpsPerBlock;
    const long long blocks = (n_chunks * 32 + threads - 1) / threads;
    dense_kernel<<<static_cast<unsigned>(blocks), static_cast<unsigned>(threads), 0, stream>>>(
        chunks, n_chunks, status);
    STEMEDGE_CUDA_CHECK(cudaGetLastError());
}

int dense_decode_host(const codec::DenseChunk& c) {
    const std::uint64_t total = c.frames * c.pixels;
    std::uint32_t x[32];
    for (int l = 0; l < 32; ++l) x[l] = c.x[l];
    std::uint64_t wpos = 0, bpos = c.nbits;
    std::uint64_t p0 = 0;  // pixel of lane 0
    for (std::uint64_t group = 0; group < total; group += 32) {
        std::uint32_t xn[32], s[32], cls[32], need[32], nb[32];
        std::uint64_t p[32];
        for (unsigned l = 0; l < 32; ++l) {
            p[l] = (p0 + l) % c.pixels;
            xn[l] = s[l] = cls[l] = need[l] = nb[l] = 0;
            if (group + l < total) codec::lane_symbol(c, x[l], p[l], xn[l], s[l], cls[l], need[l]);
        }
        for (unsigned l = 0; l < 32; ++l) {  // words in lane order
            if (!need[l]) continue;
            if (wpos >= c.n_words) return codec::kWordsEnd;
            xn[l] = (xn[l] << 16) | codec::word(c, wpos++);
        }
        std::uint64_t incl[32], sum = 0;
        for (unsigned l = 0; l < 32; ++l) {
            if (group + l < total) {
                x[l] = xn[l];
                nb[l] = codec::lane_nbits(c, cls[l], s[l]);
            }
            sum += nb[l];
            incl[l] = sum;
        }
        if (sum > bpos) return codec::kBitsEnd;
        for (unsigned l = 0; l < 32 && group + l < total; ++l) {
            std::uint64_t bits;
            if (!codec::lane_value(c, p[l], cls[l], s[l], codec::read_bits(c, bpos - incl[l], nb[l]), bits))
                return codec::kRange;
            codec::store(c, group + l, bits);
        }
        bpos -= sum;
        p0 = (p0 + 32) % c.pixels;
    }
    for (unsigned l = 0; l < 32; ++l)
        if (x[l] != codec::kRansL) return codec::kEnd;
    return (wpos != c.n_words || bpos != 0) ? codec::kEnd : codec::kOk;
}

}  // namespace stemedge::cuda
