// Bitshuffle-LZ4 decoding: header and block walk with every length checked, LZ4 blocks through
// the vendored LZ4_decompress_safe, and the bit-untranspose in three backends chosen at run time:
//
//   scalar  the reference: for each group of 8 elements and each byte j of an element, gather
//           the 8 bit-rows' bytes into a 64-bit word and transpose it as an 8x8 bit matrix
//           (bitshuffle's TRANS_BIT_8X8: three shift/mask/xor swaps).
//   avx2    the same in AVX2 lanes: byte-transpose 8 rows x 32 groups with unpack{lo,hi}
//           (epi8, epi16, epi32), then the 8x8 bit transpose of four 64-bit words at once;
//           whole 32-group chunks, the tail with the scalar code.
//   avx512  AVX-512BW byte transposes of 8 rows x 64 groups, and the 8x8 bit transpose as one
//           GFNI affine instruction per 64 bytes (gf2p8affineqb with the identity bytes as x and
//           the data as the matrix: rows are loaded in reverse order so the matrix comes out
//           transposed, not mirrored).
//
// The SIMD backends are compiled with __attribute__((target(...))) so the library itself keeps
// the x86-64 baseline; each decodes byte j of every element of a chunk into a plane, and
// multi-byte elements are then interleaved from the planes. Tests hold every backend to the
// scalar one and to the bitshuffle library.
#include "stemedge/bslz4.hpp"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "lz4.h"
#include "stemedge/thread_pool.hpp"
#include "thread_scratch.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define STEMEDGE_BSLZ4_X86 1
#include <immintrin.h>
#define STEMEDGE_TARGET_AVX2 __attribute__((target("avx2")))
#define STEMEDGE_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,gfni")))
#else
#define STEMEDGE_BSLZ4_X86 0
#endif

namespace stemedge::bslz4 {
namespace {

// in: 8 * elem_size rows of n / 8 bytes; out: n elements; scratch: at least n * elem_size bytes.
using UntransposeFn = void (*)(const std::uint8_t* in, std::uint8_t* out, std::size_t n,
                               std::size_t elem_size, std::uint8_t* scratch);

std::uint64_t read_be64(const std::uint8_t* p) {
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
    return v;
}

std::uint32_t read_be32(const std::uint8_t* p) {
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
           std::uint32_t{p[3]};
}

// ---- scalar (reference) ------------------------------------------------------------------------

// Transpose the 8x8 bit matrix in x: bit c of byte k moves to bit k of byte c.
inline std::uint64_t trans_bit_8x8(std::uint64_t x) {
    std::uint64_t t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAULL;
    x = x ^ t ^ (t << 7);
    t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCULL;
    x = x ^ t ^ (t << 14);
    t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ULL;
    x = x ^ t ^ (t << 28);
    return x;
}

// Groups of 8 elements [t_begin, n / 8), straight into the output.
void untranspose_groups_scalar(const std::uint8_t* in, std::uint8_t* out, std::size_t n,
                               std::size_t elem_size, std::size_t t_begin) {
    const std::size_t nrow = n / 8;
    for (std::size_t j = 0; j < elem_size; ++j) {
        const std::uint8_t* rows = in + 8 * j * nrow;  // bits 0..7 of byte j
        for (std::size_t t = t_begin; t < nrow; ++t) {
            std::uint64_t x = 0;
            for (std::size_t k = 0; k < 8; ++k) x |= std::uint64_t{rows[k * nrow + t]} << (8 * k);
            x = trans_bit_8x8(x);  // byte c: byte j of element 8t + c
            std::uint8_t* o = out + 8 * t * elem_size + j;
            for (std::size_t c = 0; c < 8; ++c)
                o[c * elem_size] = static_cast<std::uint8_t>(x >> (8 * c));
        }
    }
}

void untranspose_scalar(const std::uint8_t* in, std::uint8_t* out, std::size_t n,
                        std::size_t elem_size, std::uint8_t*) {
    untranspose_groups_scalar(in, out, n, elem_size, 0);
}

bool always() { return true; }

#if STEMEDGE_BSLZ4_X86
// ---- AVX2 --------------------------------------------------------------------------------------

// r[k]: 32 bytes of row k (groups g .. g+31). Returns c[m] whose 128-bit lane L holds the 64-bit
// words [r0..r7 at group 16L + 2m] and [.. at group 16L + 2m + 1] (byte k = row k).
STEMEDGE_TARGET_AVX2 inline void byte_transpose_8x32(const __m256i r[8], __m256i c[8]) {
    __m256i a[8], b[8];
    for (int p = 0; p < 4; ++p) {
        a[2 * p] = _mm256_unpacklo_epi8(r[2 * p], r[2 * p + 1]);      // s 0..7 of each lane
        a[2 * p + 1] = _mm256_unpackhi_epi8(r[2 * p], r[2 * p + 1]);  // s 8..15
    }
    // rows 0-3 then rows 4-7, for s 0-3, 4-7, 8-11, 12-15
    b[0] = _mm256_unpacklo_epi16(a[0], a[2]);
    b[1] = _mm256_unpackhi_epi16(a[0], a[2]);
    b[2] = _mm256_unpacklo_epi16(a[1], a[3]);
    b[3] = _mm256_unpackhi_epi16(a[1], a[3]);
    b[4] = _mm256_unpacklo_epi16(a[4], a[6]);
    b[5] = _mm256_unpackhi_epi16(a[4], a[6]);
    b[6] = _mm256_unpacklo_epi16(a[5], a[7]);
    b[7] = _mm256_unpackhi_epi16(a[5], a[7]);
    for (int q = 0; q < 4; ++q) {
        c[2 * q] = _mm256_unpacklo_epi32(b[q], b[q + 4]);      // s 4q, 4q+1
        c[2 * q + 1] = _mm256_unpackhi_epi32(b[q], b[q + 4]);  // s 4q+2, 4q+3
    }
}

STEMEDGE_TARGET_AVX2 inline __m256i trans_bit_8x8_avx2(__m256i x) {
    const __m256i m1 = _mm256_set1_epi64x(0x00AA00AA00AA00AALL);
    const __m256i m2 = _mm256_set1_epi64x(0x0000CCCC0000CCCCLL);
    const __m256i m3 = _mm256_set1_epi64x(0x00000000F0F0F0F0LL);
    __m256i t = _mm256_and_si256(_mm256_xor_si256(x, _mm256_srli_epi64(x, 7)), m1);
    x = _mm256_xor_si256(x, _mm256_xor_si256(t, _mm256_slli_epi64(t, 7)));
    t = _mm256_and_si256(_mm256_xor_si256(x, _mm256_srli_epi64(x, 14)), m2);
    x = _mm256_xor_si256(x, _mm256_xor_si256(t, _mm256_slli_epi64(t, 14)));
    t = _mm256_and_si256(_mm256_xor_si256(x, _mm256_srli_epi64(x, 28)), m3);
    x = _mm256_xor_si256(x, _mm256_xor_si256(t, _mm256_slli_epi64(t, 28)));
    return x;
}

// Plane j (byte j of every element) of the first n_chunks * 256 elements, at planes + j * stride.
STEMEDGE_TARGET_AVX2 void planes_avx2(const std::uint8_t* in, std::uint8_t* planes, std::size_t n,
                                      std::size_t elem_size, std::size_t n_chunks,
                                      std::size_t stride) {
    const std::size_t nrow = n / 8;
    for (std::size_t j = 0; j < elem_size; ++j) {
        const std::uint8_t* rows = in + 8 * j * nrow;
        std::uint8_t* plane = planes + j * stride;
        for (std::size_t ch = 0; ch < n_chunks; ++ch) {
            __m256i r[8], c[8];
            for (int k = 0; k < 8; ++k)
                r[k] =
                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + k * nrow + 32 * ch));
            byte_transpose_8x32(r, c);
            for (int m = 0; m < 8; ++m) c[m] = trans_bit_8x8_avx2(c[m]);
            std::uint8_t* o = plane + 256 * ch;
            for (int m = 0; m < 8; m += 2) {  // groups 2m .. 2m+3 of each lane are contiguous
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 16 * m),
                                    _mm256_permute2x128_si256(c[m], c[m + 1], 0x20));
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 128 + 16 * m),
                                    _mm256_permute2x128_si256(c[m], c[m + 1], 0x31));
            }
        }
    }
}

// out[e * elem_size + j] = planes[j * stride + e] for e < n_elems (a multiple of 32).
STEMEDGE_TARGET_AVX2 void interleave_avx2(const std::uint8_t* planes, std::uint8_t* out,
                                          std::size_t n_elems, std::size_t elem_size,
                                          std::size_t stride) {
    if (elem_size == 2) {
        for (std::size_t e = 0; e < n_elems; e += 32) {
            const __m256i p0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(planes + e));
            const __m256i p1 =
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(planes + stride + e));
            const __m256i lo = _mm256_unpacklo_epi8(p0, p1);  // lanes: elements 0-7, 16-23
            const __m256i hi = _mm256_unpackhi_epi8(p0, p1);  // 8-15, 24-31
            auto* o = reinterpret_cast<__m256i*>(out + 2 * e);
            _mm256_storeu_si256(o, _mm256_permute2x128_si256(lo, hi, 0x20));
            _mm256_storeu_si256(o + 1, _mm256_permute2x128_si256(lo, hi, 0x31));
        }
    } else {  // 4
        for (std::size_t e = 0; e < n_elems; e += 32) {
            __m256i p[4];
            for (int j = 0; j < 4; ++j)
                p[j] =
                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(planes + j * stride + e));
            const __m256i u01l = _mm256_unpacklo_epi8(p[0], p[1]);
            const __m256i u01h = _mm256_unpackhi_epi8(p[0], p[1]);
            const __m256i u23l = _mm256_unpacklo_epi8(p[2], p[3]);
            const __m256i u23h = _mm256_unpackhi_epi8(p[2], p[3]);
            const __m256i w0 = _mm256_unpacklo_epi16(u01l, u23l);  // elements 0-3, 16-19
            const __m256i w1 = _mm256_unpackhi_epi16(u01l, u23l);  // 4-7, 20-23
            const __m256i w2 = _mm256_unpacklo_epi16(u01h, u23h);  // 8-11, 24-27
            const __m256i w3 = _mm256_unpackhi_epi16(u01h, u23h);  // 12-15, 28-31
            auto* o = reinterpret_cast<__m256i*>(out + 4 * e);
            _mm256_storeu_si256(o, _mm256_permute2x128_si256(w0, w1, 0x20));
            _mm256_storeu_si256(o + 1, _mm256_permute2x128_si256(w2, w3, 0x20));
            _mm256_storeu_si256(o + 2, _mm256_permute2x128_si256(w0, w1, 0x31));
            _mm256_storeu_si256(o + 3, _mm256_permute2x128_si256(w2, w3, 0x31));
        }
    }
}

STEMEDGE_TARGET_AVX2 void untranspose_avx2(const std::uint8_t* in, std::uint8_t* out, std::size_t n,
                                           std::size_t elem_size, std::uint8_t* scratch) {
    const std::size_t n_chunks = (n / 8) / 32;
    const std::size_t m = 256 * n_chunks;  // elements done with SIMD
    if (elem_size == 1) {
        planes_avx2(in, out, n, 1, n_chunks, 0);
    } else if (elem_size == 2 || elem_size == 4) {
        planes_avx2(in, scratch, n, elem_size, n_chunks, m);
        interleave_avx2(scratch, out, m, elem_size, m);
    } else {
        untranspose_groups_scalar(in, out, n, elem_size, 0);
        return;
    }
    untranspose_groups_scalar(in, out, n, elem_size, 32 * n_chunks);
}

bool has_avx2() { return __builtin_cpu_supports("avx2"); }

// ---- AVX-512BW + GFNI --------------------------------------------------------------------------

// Same as byte_transpose_8x32 on 64 groups: c[m] lane L = words at groups 16L + 2m, 16L + 2m + 1.
STEMEDGE_TARGET_AVX512 inline void byte_transpose_8x64(const __m512i r[8], __m512i c[8]) {
    __m512i a[8], b[8];
    for (int p = 0; p < 4; ++p) {
        a[2 * p] = _mm512_unpacklo_epi8(r[2 * p], r[2 * p + 1]);
        a[2 * p + 1] = _mm512_unpackhi_epi8(r[2 * p], r[2 * p + 1]);
    }
    b[0] = _mm512_unpacklo_epi16(a[0], a[2]);
    b[1] = _mm512_unpackhi_epi16(a[0], a[2]);
    b[2] = _mm512_unpacklo_epi16(a[1], a[3]);
    b[3] = _mm512_unpackhi_epi16(a[1], a[3]);
    b[4] = _mm512_unpacklo_epi16(a[4], a[6]);
    b[5] = _mm512_unpackhi_epi16(a[4], a[6]);
    b[6] = _mm512_unpacklo_epi16(a[5], a[7]);
    b[7] = _mm512_unpackhi_epi16(a[5], a[7]);
    for (int q = 0; q < 4; ++q) {
        c[2 * q] = _mm512_unpacklo_epi32(b[q], b[q + 4]);
        c[2 * q + 1] = _mm512_unpackhi_epi32(b[q], b[q + 4]);
    }
}

// 4x4 transpose of 128-bit lanes: o[L] = [v0.L, v1.L, v2.L, v3.L].
STEMEDGE_TARGET_AVX512 inline void lane_transpose_4x4(const __m512i v[4], __m512i o[4]) {
    const __m512i u0 = _mm512_shuffle_i64x2(v[0], v[1], 0x44);  // v0.0 v0.1 v1.0 v1.1
    const __m512i u1 = _mm512_shuffle_i64x2(v[0], v[1], 0xEE);  // v0.2 v0.3 v1.2 v1.3
    const __m512i u2 = _mm512_shuffle_i64x2(v[2], v[3], 0x44);
    const __m512i u3 = _mm512_shuffle_i64x2(v[2], v[3], 0xEE);
    o[0] = _mm512_shuffle_i64x2(u0, u2, 0x88);
    o[1] = _mm512_shuffle_i64x2(u0, u2, 0xDD);
    o[2] = _mm512_shuffle_i64x2(u1, u3, 0x88);
    o[3] = _mm512_shuffle_i64x2(u1, u3, 0xDD);
}

STEMEDGE_TARGET_AVX512 void planes_avx512(const std::uint8_t* in, std::uint8_t* planes,
                                          std::size_t n, std::size_t elem_size,
                                          std::size_t n_chunks, std::size_t stride) {
    const std::size_t nrow = n / 8;
    // x bytes 1 << c: result byte c bit i = parity(A.byte[7 - i] & (1 << c)) = A.byte[7 - i] bit c.
    const __m512i unit = _mm512_set1_epi64(static_cast<long long>(0x8040201008040201ULL));
    for (std::size_t j = 0; j < elem_size; ++j) {
        const std::uint8_t* rows = in + 8 * j * nrow;
        std::uint8_t* plane = planes + j * stride;
        for (std::size_t ch = 0; ch < n_chunks; ++ch) {
            __m512i r[8], c[8];
            for (int k = 0; k < 8; ++k)  // reversed: the word's byte 7 - i holds bit row i
                r[k] = _mm512_loadu_si512(rows + (7 - k) * nrow + 64 * ch);
            byte_transpose_8x64(r, c);
            for (int m = 0; m < 8; ++m) c[m] = _mm512_gf2p8affine_epi64_epi8(unit, c[m], 0);
            __m512i o[4];
            std::uint8_t* dst = plane + 512 * ch;
            lane_transpose_4x4(c, o);  // o[L]: groups 16L .. 16L + 7
            for (int L = 0; L < 4; ++L) _mm512_storeu_si512(dst + 128 * L, o[L]);
            lane_transpose_4x4(c + 4, o);  // groups 16L + 8 .. 16L + 15
            for (int L = 0; L < 4; ++L) _mm512_storeu_si512(dst + 128 * L + 64, o[L]);
        }
    }
}

STEMEDGE_TARGET_AVX512 void interleave_avx512(const std::uint8_t* planes, std::uint8_t* out,
                                              std::size_t n_elems, std::size_t elem_size,
                                              std::size_t stride) {
    if (elem_size == 2) {
        const __m512i idx0 = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
        const __m512i idx1 = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
        for (std::size_t e = 0; e < n_elems; e += 64) {
            const __m512i p0 = _mm512_loadu_si512(planes + e);
            const __m512i p1 = _mm512_loadu_si512(planes + stride + e);
            const __m512i lo = _mm512_unpacklo_epi8(p0, p1);  // lane L: elements 16L + 0..7
            const __m512i hi = _mm512_unpackhi_epi8(p0, p1);  // 16L + 8..15
            _mm512_storeu_si512(out + 2 * e, _mm512_permutex2var_epi64(lo, idx0, hi));
            _mm512_storeu_si512(out + 2 * e + 64, _mm512_permutex2var_epi64(lo, idx1, hi));
        }
    } else {  // 4
        for (std::size_t e = 0; e < n_elems; e += 64) {
            __m512i p[4];
            for (int j = 0; j < 4; ++j) p[j] = _mm512_loadu_si512(planes + j * stride + e);
            const __m512i u01l = _mm512_unpacklo_epi8(p[0], p[1]);
            const __m512i u01h = _mm512_unpackhi_epi8(p[0], p[1]);
            const __m512i u23l = _mm512_unpacklo_epi8(p[2], p[3]);
            const __m512i u23h = _mm512_unpackhi_epi8(p[2], p[3]);
            __m512i w[4], o[4];
            w[0] = _mm512_unpacklo_epi16(u01l, u23l);  // lane L: elements 16L + 0..3
            w[1] = _mm512_unpackhi_epi16(u01l, u23l);  // 16L + 4..7
            w[2] = _mm512_unpacklo_epi16(u01h, u23h);  // 16L + 8..11
            w[3] = _mm512_unpackhi_epi16(u01h, u23h);  // 16L + 12..15
            lane_transpose_4x4(w, o);
            for (int L = 0; L < 4; ++L) _mm512_storeu_si512(out + 4 * e + 64 * L, o[L]);
        }
    }
}

STEMEDGE_TARGET_AVX512 void untranspose_avx512(const std::uint8_t* in, std::uint8_t* out,
                                               std::size_t n, std::size_t elem_size,
                                               std::uint8_t* scratch) {
    const std::size_t n_chunks = (n / 8) / 64;
    const std::size_t m = 512 * n_chunks;
    if (elem_size == 1) {
        planes_avx512(in, out, n, 1, n_chunks, 0);
    } else if (elem_size == 2 || elem_size == 4) {
        planes_avx512(in, scratch, n, elem_size, n_chunks, m);
        interleave_avx512(scratch, out, m, elem_size, m);
    } else {
        untranspose_groups_scalar(in, out, n, elem_size, 0);
        return;
    }
    // The tail (fewer than 64 groups, only in blocks of unusual sizes): scalar.
    untranspose_groups_scalar(in, out, n, elem_size, 64 * n_chunks);
}

bool has_avx512() {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("gfni");
}
#endif  // STEMEDGE_BSLZ4_X86

struct Backend {
    const char* name;
    const char* description;
    bool (*supported)();
    UntransposeFn fn;
};

// Fastest first.
const Backend kBackends[] = {
#if STEMEDGE_BSLZ4_X86
    {"avx512", "AVX-512BW + GFNI", &has_avx512, &untranspose_avx512},
    {"avx2", "AVX2", &has_avx2, &untranspose_avx2},
#endif
    {"scalar", "portable 64-bit words", &always, &untranspose_scalar},
};

const Backend* best_backend() {
    for (const Backend& b : kBackends)
        if (b.supported()) return &b;
    return &kBackends[std::size(kBackends) - 1];
}

const Backend* backend_by_name(const std::string& name) {
    if (name == "auto") return best_backend();
    for (const Backend& b : kBackends)
        if (name == b.name) {
            if (!b.supported())
                throw std::invalid_argument("bslz4 backend '" + name +
                                            "' is compiled but this CPU lacks " + b.description);
            return &b;
        }
    std::string known;
    for (const Backend& b : kBackends) known += std::string(", ") + b.name;
    throw std::invalid_argument("unknown bslz4 backend '" + name + "'; compiled: auto" + known);
}

std::atomic<const Backend*>& current_backend() {
    static std::atomic<const Backend*> cur{[] {
        const char* env = std::getenv("STEMEDGE_BSLZ4_BACKEND");
        return env && *env ? backend_by_name(env) : best_backend();
    }()};
    return cur;
}

std::string str(std::size_t v) { return std::to_string(v); }

// The per-thread buffers (thread_scratch.hpp): one block's LZ4 output, and the bit planes of an
// untranspose (shared by decode and untranspose_block).
struct LZ4Block;
struct UntransposePlanes;

}  // namespace

std::size_t default_block_size(std::size_t elem_size) {
    if (elem_size == 0) throw std::invalid_argument("elem_size must be positive");
    std::size_t bs = 8192 / elem_size;      // BSHUF_TARGET_BLOCK_SIZE_B
    bs = (bs / 8) * 8;                      // BSHUF_BLOCKED_MULT
    return std::max<std::size_t>(bs, 128);  // BSHUF_MIN_RECOMMEND_BLOCK
}

void untranspose_block(const std::uint8_t* in, std::uint8_t* out, std::size_t n,
                       std::size_t elem_size) {
    if (elem_size == 0 || n % 8 != 0)
        throw std::invalid_argument(
            "untranspose_block: n must be a multiple of 8 and elem_size positive");
    ThreadScratch<std::vector<std::uint8_t>, UntransposePlanes> planes_buf;
    std::uint8_t* planes = grow(*planes_buf, n * elem_size);
    current_backend().load(std::memory_order_relaxed)->fn(in, out, n, elem_size, planes);
}

void decode(const std::uint8_t* src, std::size_t src_len, std::uint8_t* dst, std::size_t dst_len,
            std::size_t elem_size) {
    if (elem_size == 0) throw std::invalid_argument("elem_size must be positive");
    if (dst_len % elem_size != 0)
        throw std::invalid_argument("output of " + str(dst_len) +
                                    " bytes is not a whole number of " + str(elem_size) +
                                    "-byte elements");
    if (src_len < kHeaderBytes)
        throw CorruptPayload("bitshuffle-LZ4 payload of " + str(src_len) +
                             " bytes is shorter than its 12-byte header");
    const std::uint64_t total = read_be64(src);
    if (total != dst_len)
        throw CorruptPayload("bitshuffle-LZ4 header says " + std::to_string(total) +
                             " uncompressed bytes but the frame has " + str(dst_len) +
                             " (wrong shape or dtype, or not a bitshuffle-LZ4 payload)");
    const std::uint32_t block_bytes = read_be32(src + 8);
    std::size_t bs = 0;  // elements per block
    if (block_bytes == 0) {
        bs = default_block_size(elem_size);  // what bitshuffle does with a 0 block size
    } else {
        if (block_bytes % elem_size != 0)
            throw CorruptPayload("bitshuffle-LZ4 block size of " + std::to_string(block_bytes) +
                                 " bytes is not a whole number of " + str(elem_size) +
                                 "-byte elements");
        bs = block_bytes / elem_size;
    }
    if (bs % 8 != 0)
        throw CorruptPayload("bitshuffle-LZ4 block size of " + str(bs) +
                             " elements is not a multiple of 8");

    const std::size_t n = dst_len / elem_size;
    const std::size_t n_full = n / bs;
    const std::size_t last = (n % bs) - (n % bs) % 8;
    const std::size_t leftover_bytes = (n % 8) * elem_size;
    const std::size_t max_block = (n_full ? bs : last) * elem_size;  // <= dst_len
    if (max_block > static_cast<std::size_t>(INT_MAX))
        throw CorruptPayload("bitshuffle-LZ4 block of " + str(max_block) +
                             " bytes is too large for LZ4");

    ThreadScratch<std::vector<std::uint8_t>, LZ4Block> block_buf;
    ThreadScratch<std::vector<std::uint8_t>, UntransposePlanes> planes_buf;
    std::uint8_t* block = grow(*block_buf, max_block);
    std::uint8_t* planes = grow(*planes_buf, max_block);
    const UntransposeFn untranspose = current_backend().load(std::memory_order_relaxed)->fn;

    std::size_t pos = kHeaderBytes, out_pos = 0, index = 0;
    auto one_block = [&](std::size_t m) {
        const std::size_t bytes = m * elem_size;
        if (src_len - pos < 4)
            throw CorruptPayload("bitshuffle-LZ4 payload truncated at byte " + str(src_len) +
                                 ": block " + str(index) + " has no size");
        const std::uint32_t c = read_be32(src + pos);
        pos += 4;
        if (c > src_len - pos)
            throw CorruptPayload("bitshuffle-LZ4 block " + str(index) + " claims " +
                                 std::to_string(c) + " compressed bytes but only " +
                                 str(src_len - pos) + " remain");
        if (c > static_cast<std::uint32_t>(INT_MAX))
            throw CorruptPayload("bitshuffle-LZ4 block " + str(index) + " is too large for LZ4");
        const int got = LZ4_decompress_safe(reinterpret_cast<const char*>(src + pos),
                                            reinterpret_cast<char*>(block), static_cast<int>(c),
                                            static_cast<int>(bytes));
        if (got < 0)
            throw CorruptPayload("bitshuffle-LZ4 block " + str(index) + " (at byte " +
                                 str(pos - 4) + "): corrupt LZ4 data");
        if (static_cast<std::size_t>(got) != bytes)
            throw CorruptPayload("bitshuffle-LZ4 block " + str(index) + " decoded to " +
                                 std::to_string(got) + " bytes, expected " + str(bytes));
        pos += c;
        untranspose(block, dst + out_pos, m, elem_size, planes);
        out_pos += bytes;
        ++index;
    };
    for (std::size_t b = 0; b < n_full; ++b) one_block(bs);
    if (last) one_block(last);
    const std::size_t rest = src_len - pos;
    if (rest < leftover_bytes)
        throw CorruptPayload("bitshuffle-LZ4 payload truncated: " + str(rest) + " of the " +
                             str(leftover_bytes) + " trailing uncompressed bytes");
    if (rest > leftover_bytes)
        throw CorruptPayload("bitshuffle-LZ4 payload has " + str(rest - leftover_bytes) +
                             " unexpected bytes after its last block");
    if (leftover_bytes) std::memcpy(dst + out_pos, src + pos, leftover_bytes);
}

std::vector<FrameError> decode_stack(const std::uint8_t* raw, const std::uint32_t* nbytes,
                                     std::size_t n_frames, std::size_t frame_bytes,
                                     std::uint8_t* out, std::size_t elem_size,
                                     std::size_t nthreads) {
    std::vector<std::string> messages(n_frames);
    std::vector<char> failed(n_frames, 0);
    auto one = [&](std::size_t i) {
        std::uint8_t* dst = out + i * frame_bytes;
        try {
            if (nbytes[i] > frame_bytes)
                throw CorruptPayload("payload of " + std::to_string(nbytes[i]) +
                                     " bytes is larger than a frame (" + str(frame_bytes) +
                                     " bytes)");
            decode(raw + i * frame_bytes, nbytes[i], dst, frame_bytes, elem_size);
        } catch (const std::exception& e) {
            failed[i] = 1;
            messages[i] = e.what();
            std::memset(dst, 0, frame_bytes);
        }
    };
    if (nthreads == 1 || n_frames <= 1) {
        for (std::size_t i = 0; i < n_frames; ++i) one(i);
    } else {
        ThreadPool::global().run(n_frames, nthreads, one);
    }
    std::vector<FrameError> errors;
    for (std::size_t i = 0; i < n_frames; ++i)
        if (failed[i]) errors.push_back({i, std::move(messages[i])});
    return errors;
}

void lz4_decode(const std::uint8_t* src, std::size_t src_len, std::uint8_t* dst,
                std::size_t dst_len) {
    if (src_len > static_cast<std::size_t>(INT_MAX) || dst_len > static_cast<std::size_t>(INT_MAX))
        throw std::invalid_argument(
            "lz4_decode: buffers larger than 2 GiB are not supported by LZ4");
    const int got =
        LZ4_decompress_safe(reinterpret_cast<const char*>(src), reinterpret_cast<char*>(dst),
                            static_cast<int>(src_len), static_cast<int>(dst_len));
    if (got < 0) throw CorruptPayload("LZ4 payload of " + str(src_len) + " bytes is corrupt");
    if (static_cast<std::size_t>(got) != dst_len)
        throw CorruptPayload("LZ4 payload decoded to " + std::to_string(got) + " bytes, expected " +
                             str(dst_len));
}

std::size_t lz4_bound(std::size_t src_len) {
    if (src_len > static_cast<std::size_t>(LZ4_MAX_INPUT_SIZE))
        throw std::invalid_argument("lz4: input of " + str(src_len) + " bytes exceeds LZ4's limit");
    return static_cast<std::size_t>(LZ4_compressBound(static_cast<int>(src_len)));
}

std::size_t lz4_compress(const std::uint8_t* src, std::size_t src_len, std::uint8_t* dst,
                         std::size_t dst_capacity) {
    if (dst_capacity < lz4_bound(src_len))
        throw std::invalid_argument("lz4_compress: output needs lz4_bound(src_len) bytes");
    const int n =
        LZ4_compress_default(reinterpret_cast<const char*>(src), reinterpret_cast<char*>(dst),
                             static_cast<int>(src_len), static_cast<int>(lz4_bound(src_len)));
    if (n <= 0) throw std::runtime_error("lz4_compress failed");
    return static_cast<std::size_t>(n);
}

std::vector<std::string> compiled_backends() {
    std::vector<std::string> names;
    for (const Backend& b : kBackends) names.emplace_back(b.name);
    return names;
}

std::vector<std::string> available_backends() {
    std::vector<std::string> names;
    for (const Backend& b : kBackends)
        if (b.supported()) names.emplace_back(b.name);
    return names;
}

std::string active_backend() { return current_backend().load()->name; }

void set_backend(const std::string& name) { current_backend().store(backend_by_name(name)); }

std::string lz4_version() { return LZ4_versionString(); }

}  // namespace stemedge::bslz4
