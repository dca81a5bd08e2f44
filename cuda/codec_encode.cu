// The DENSE encoder's kernels and their host twins (codec_encode.cuh, codec_encode.hpp).
#include "codec_encode.hpp"

#include <stdexcept>

#include "cuda_check.hpp"

namespace stemedge::cuda {
namespace {

using codec::EncodeChunk;
constexpr unsigned kFull = 0xffffffffu;
constexpr int kThreads = 256, kWarpsPerBlock = 4;

// grid.y = chunk, grid.x × threads over its pixels.
__global__ void __launch_bounds__(kThreads) moments_kernel(const EncodeChunk* __restrict__ chunks) {
    const EncodeChunk& c = chunks[blockIdx.y];
    const std::uint64_t p = static_cast<std::uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (p < c.pixels) codec::pixel_moments(c, p);
}

__global__ void __launch_bounds__(kThreads) hist_kernel(const EncodeChunk* __restrict__ chunks) {
    const EncodeChunk& c = chunks[blockIdx.y];
    const std::uint64_t p = static_cast<std::uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (p < c.pixels) codec::pixel_hist(c, p);
}

__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    payload_kernel(EncodeChunk* __restrict__ chunks, long long n_chunks) {
    const long long ci = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    if (ci >= n_chunks) return;  // whole warps leave together
    const unsigned lane = threadIdx.x & 31;
    EncodeChunk& c = chunks[ci];
    const std::uint64_t total = c.frames * c.pixels;
    std::uint16_t* words = codec::ptr<std::uint16_t>(c.words);
    std::uint32_t* bits = codec::ptr<std::uint32_t>(c.bits);
    const std::uint64_t bits_cap = 32 * c.bits_cap;
    std::uint32_t x = codec::kRansL;
    std::uint64_t top = total, cursor = 0;
    int err = codec::kEncOk;
    if (total > 0) {
        std::uint64_t group = (total - 1) / 32 * 32;
        std::uint64_t p = (group + lane) % c.pixels;
        const std::uint64_t back = 32 % c.pixels;  // p of the same lane one group earlier
        for (;;) {
            const std::uint64_t op = group + lane;
            const bool active = op < total;
            std::uint32_t freq = 1, cum = 0, n = 0;
            std::uint64_t raw = 0;
            if (active) codec::lane_code(c, op, p, freq, cum, raw, n);
            if (freq == 0) err = codec::kEncFreq;  // a symbol the tables cannot code
            // Raw bits: lanes above this one write first (the CPU encoder's order).
            std::uint64_t suffix = n;  // inclusive suffix sum
            for (unsigned off = 1; off < 32; off <<= 1) {
                const std::uint64_t t = __shfl_down_sync(kFull, suffix, off);
                if (lane + off < 32) suffix += t;
            }
            const std::uint64_t group_bits = __shfl_sync(kFull, suffix, 0);
            if (cursor + group_bits > bits_cap) {  // uniform across the warp
                err = codec::kEncBits;
                break;
            }
            codec::put_bits(bits, cursor + suffix - n, raw, n);
            cursor += group_bits;
            std::uint16_t w = 0;
            const bool emit = active && freq != 0 && codec::lane_put(x, freq, cum, w);
            const unsigned emits = __ballot_sync(kFull, emit);
            top -= __popc(emits);
            if (emit) words[top + __popc(emits & ((1u << lane) - 1))] = w;
            if (group == 0) break;
            group -= 32;
            p = p >= back ? p - back : p + c.pixels - back;
        }
    }
    int worst = err;
    for (unsigned off = 16; off > 0; off >>= 1) worst = max(worst, __shfl_down_sync(kFull, worst, off));
    c.x[lane] = x;
    if (lane == 0) {
        c.first_word = top;
        c.nbits = cursor;
        c.status = static_cast<std::uint64_t>(worst);
    }
}

// grid.y = chunk; each thread one segment.
__global__ void __launch_bounds__(kThreads) crc_parts_kernel(const EncodeChunk* __restrict__ chunks) {
    __shared__ std::uint32_t t[256];
    for (unsigned i = threadIdx.x; i < 256; i += blockDim.x) t[i] = codec::crc_entry(i);
    __syncthreads();
    const EncodeChunk& c = chunks[blockIdx.y];
    const std::uint64_t i = static_cast<std::uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const std::uint64_t total = c.frames * c.pixels * c.elem_bytes;
    if (i * codec::kCrcSegment < total) codec::ptr<std::uint32_t>(c.crc_parts)[i] = codec::crc_part(c, t, i);
}

__global__ void crc_join_kernel(EncodeChunk* __restrict__ chunks, long long n_chunks) {
    const long long ci = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (ci < n_chunks) chunks[ci].raw_crc = codec::crc_join(chunks[ci]);
}

unsigned grid_x(std::uint64_t n, unsigned threads) {
    const std::uint64_t g = (n + threads - 1) / threads;
    if (g == 0 || g > 0x7fffffffu) throw std::invalid_argument("codec encode: bad launch size");
    return static_cast<unsigned>(g);
}

}  // namespace

void dense_encode_device(EncodeStage stage, EncodeChunk* chunks, long long n_chunks, std::uint64_t max_pixels,
                         std::uint64_t max_raw_bytes, cudaStream_t stream) {
    if (n_chunks < 0 || n_chunks > 65535) throw std::invalid_argument("codec encode: 0..65535 chunks per launch");
    if (n_chunks == 0) return;
    const unsigned nc = static_cast<unsigned>(n_chunks);
    switch (stage) {
        case EncodeStage::kMoments:
            if (max_pixels == 0) return;
            moments_kernel<<<dim3(grid_x(max_pixels, kThreads), nc), kThreads, 0, stream>>>(chunks);
            break;
        case EncodeStage::kHist:
            if (max_pixels == 0) return;
            hist_kernel<<<dim3(grid_x(max_pixels, kThreads), nc), kThreads, 0, stream>>>(chunks);
            break;
        case EncodeStage::kPayload: {
            const unsigned threads = 32 * kWarpsPerBlock;
            payload_kernel<<<grid_x(static_cast<std::uint64_t>(n_chunks) * 32, threads), threads, 0, stream>>>(
                chunks, n_chunks);
            break;
        }
        case EncodeStage::kCrc: {
            if (max_raw_bytes > 0) {
                const std::uint64_t parts = (max_raw_bytes + codec::kCrcSegment - 1) / codec::kCrcSegment;
                crc_parts_kernel<<<dim3(grid_x(parts, kThreads), nc), kThreads, 0, stream>>>(chunks);
                STEMEDGE_CUDA_CHECK(cudaGetLastError());
            }
            crc_join_kernel<<<grid_x(static_cast<std::uint64_t>(n_chunks), 64), 64, 0, stream>>>(chunks, n_chunks);
            break;
        }
    }
    STEMEDGE_CUDA_CHECK(cudaGetLastError());
}

void dense_encode_host(EncodeStage stage, EncodeChunk& c) {
    const std::uint64_t total = c.frames * c.pixels;
    switch (stage) {
        case EncodeStage::kMoments:
            for (std::uint64_t p = 0; p < c.pixels; ++p) codec::pixel_moments(c, p);
            return;
        case EncodeStage::kHist:
            for (std::uint64_t p = 0; p < c.pixels; ++p) codec::pixel_hist(c, p);
            return;
        case EncodeStage::kCrc: {
            std::uint32_t t[256];
            for (std::uint32_t i = 0; i < 256; ++i) t[i] = codec::crc_entry(i);
            const std::uint64_t raw = total * c.elem_bytes;
            for (std::uint64_t i = 0; i * codec::kCrcSegment < raw; ++i)
                codec::ptr<std::uint32_t>(c.crc_parts)[i] = codec::crc_part(c, t, i);
            c.raw_crc = codec::crc_join(c);
            return;
        }
        case EncodeStage::kPayload:
            break;
    }
    // The warp's steps, lane by lane: a group's bits lane 31 first, its words in lane order.
    std::uint16_t* words = codec::ptr<std::uint16_t>(c.words);
    std::uint32_t* bits = codec::ptr<std::uint32_t>(c.bits);
    std::uint32_t x[32];
    for (auto& s : x) s = codec::kRansL;
    std::uint64_t top = total, cursor = 0;
    c.status = codec::kEncOk;
    for (std::uint64_t group = total ? (total - 1) / 32 * 32 : 0; total > 0;) {
        std::uint32_t freq[32], cum[32], n[32];
        std::uint64_t raw[32], need = 0;
        for (unsigned l = 0; l < 32; ++l) {
            freq[l] = 1, cum[l] = 0, n[l] = 0, raw[l] = 0;
            if (group + l < total) codec::lane_code(c, group + l, (group + l) % c.pixels, freq[l], cum[l], raw[l], n[l]);
            if (freq[l] == 0) c.status = codec::kEncFreq;
            need += n[l];
        }
        if (c.status != codec::kEncOk) break;
        if (cursor + need > 32 * c.bits_cap) {
            c.status = codec::kEncBits;
            break;
        }
        for (unsigned l = 32; l-- > 0;) {
            codec::put_bits(bits, cursor, raw[l], n[l]);
            cursor += n[l];
        }
        std::uint16_t w[32];
        bool emit[32];
        unsigned emitted = 0;
        for (unsigned l = 0; l < 32; ++l) {
            emit[l] = group + l < total && codec::lane_put(x[l], freq[l], cum[l], w[l]);
            emitted += emit[l];
        }
        top -= emitted;
        for (unsigned l = 0, k = 0; l < 32; ++l)
            if (emit[l]) words[top + k++] = w[l];
        if (group == 0) break;
        group -= 32;
    }
    for (unsigned l = 0; l < 32; ++l) c.x[l] = x[l];
    c.first_word = top;
    c.nbits = cursor;
}

}  // namespace stemedge::cuda
