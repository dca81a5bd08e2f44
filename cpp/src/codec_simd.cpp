// AVX-512 decoding of DENSE chunks: 16 lanes of the 32-lane rANS stream per step (docs/codec.md).
// The same format as the scalar decoder, so the same output; used when the CPU has AVX-512 and the
// chunk fits the fast path's assumptions (see codec_simd.hpp), else the scalar loop runs.
#include "codec_simd.hpp"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define STEMEDGE_HAVE_AVX512_PATH 1
#endif

namespace stemedge::codec {

#if defined(STEMEDGE_HAVE_AVX512_PATH)
namespace {

#define SE_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,popcnt")))

// Exclusive prefix sum of 16 int32 lanes (lane order), and the total.
SE_AVX512 inline __m512i exclusive_prefix(__m512i v, int& total) {
    const __m512i zero = _mm512_setzero_si512();
    __m512i s = v;
    s = _mm512_add_epi32(s, _mm512_alignr_epi32(s, zero, 16 - 1));
    s = _mm512_add_epi32(s, _mm512_alignr_epi32(s, zero, 16 - 2));
    s = _mm512_add_epi32(s, _mm512_alignr_epi32(s, zero, 16 - 4));
    s = _mm512_add_epi32(s, _mm512_alignr_epi32(s, zero, 16 - 8));
    total = _mm_extract_epi32(_mm512_extracti32x4_epi32(s, 3), 3);  // the inclusive sum's last lane
    return _mm512_sub_epi32(s, v);
}

// Lane k's raw bits (nb[k] of them at offset off[k] from bit `pos` of the stream) when the group
// holds more than 32: one 64-bit load if they fit in it, else per-lane 64-bit gathers.
SE_AVX512 inline __m512i read_bits_wide(const std::uint8_t* bits, std::uint64_t pos, int total, __m512i off,
                                        __m512i nb) {
    const __m512i one = _mm512_set1_epi64(1);
    const __m512i m_lo = _mm512_sub_epi64(_mm512_sllv_epi64(one, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(nb))), one);
    const __m512i m_hi = _mm512_sub_epi64(_mm512_sllv_epi64(one, _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(nb, 1))), one);
    __m512i v_lo, v_hi;
    if (total <= 56) {
        std::uint64_t word;
        std::memcpy(&word, bits + (pos >> 3), 8);
        const __m512i wv = _mm512_set1_epi64(static_cast<long long>(word >> (pos & 7)));
        v_lo = _mm512_and_si512(_mm512_srlv_epi64(wv, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(off))), m_lo);
        v_hi = _mm512_and_si512(_mm512_srlv_epi64(wv, _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(off, 1))), m_hi);
    } else {
        // 64-bit loads at byte offset (pos + off) / 8, shifted by (pos + off) % 8.
        const __m512i boff = _mm512_add_epi32(off, _mm512_set1_epi32(static_cast<int>(pos & 7)));
        const __m512i byte = _mm512_srli_epi32(boff, 3);
        const __m512i bit = _mm512_and_si512(boff, _mm512_set1_epi32(7));
        const std::uint8_t* base_ptr = bits + (pos >> 3);
        const __m512i lo8 = _mm512_i32gather_epi64(_mm512_castsi512_si256(byte), base_ptr, 1);
        const __m512i hi8 = _mm512_i32gather_epi64(_mm512_extracti64x4_epi64(byte, 1), base_ptr, 1);
        v_lo = _mm512_and_si512(_mm512_srlv_epi64(lo8, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(bit))), m_lo);
        v_hi = _mm512_and_si512(_mm512_srlv_epi64(hi8, _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(bit, 1))), m_hi);
    }
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(v_lo)), _mm512_cvtepi64_epi32(v_hi), 1);
}

SE_AVX512 bool run(const DenseSimd& in) {
    const std::uint64_t P = in.pixels, n_ops = in.frames * in.pixels;
    const __m512i mask12 = _mm512_set1_epi32(0xfff), mask13 = _mm512_set1_epi32(0x1fff);
    const __m512i L = _mm512_set1_epi32(static_cast<int>(kRansL));
    // The group's lanes in `x`, the next group's in `xo`, swapped each step (named registers:
    // indexing an array of two kept the states in memory, a store and reload on the state chain).
    __m512i x = _mm512_loadu_si512(in.x), xo = _mm512_loadu_si512(in.x + 16);
    std::uint64_t wpos = *in.wpos, bpos = *in.bpos;
    const std::uint64_t n_words = in.n_words;
    std::uint16_t tail[32] = {};
    std::uint64_t p = 0;
    for (std::uint64_t i = 0; i < n_ops; i += 16, p = p + 16 == P ? 0 : p + 16) {
        const __m512i slot = _mm512_and_si512(x, mask12);
        const __m512i idx = _mm512_add_epi32(_mm512_loadu_si512(in.cbase + p), slot);
        const __m512i e = _mm512_i32gather_epi32(idx, in.table, 4);
        const __m512i freq = _mm512_and_si512(e, mask13);
        const __m512i cum = _mm512_and_si512(_mm512_srli_epi32(e, 13), mask12);
        const __m512i sym = _mm512_srli_epi32(e, 25);
        __m512i xn = _mm512_add_epi32(_mm512_mullo_epi32(freq, _mm512_srli_epi32(x, 12)),
                                      _mm512_sub_epi32(slot, cum));
        // Renormalise: lanes below L take the next words of the stream, in lane order.
        const __mmask16 need = _mm512_cmplt_epu32_mask(xn, L);
        const unsigned n_need = static_cast<unsigned>(__builtin_popcount(need));
        const std::uint16_t* w16;
        if (wpos + 16 <= n_words) {
            w16 = in.words + wpos;
        } else {  // near the end: a zero-padded copy (reading past the stream shows below)
            std::memset(tail, 0, sizeof tail);
            if (wpos < n_words) std::memcpy(tail, in.words + wpos, 2 * (n_words - wpos));
            w16 = tail;
        }
        const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w16)));
        const __m512i wx = _mm512_maskz_expand_epi32(need, w);
        xn = _mm512_mask_or_epi32(xn, need, _mm512_slli_epi32(xn, 16), wx);
        wpos += n_need;
        if (wpos > n_words) return false;  // the stream ended early: let the scalar path report it
        x = xn;
        // Raw bits: escapes take esc_bits, other values their class's shift.
        const __m512i sh_esc = _mm512_loadu_si512(in.sh_esc + p);
        const __m512i shift = _mm512_and_si512(sh_esc, _mm512_set1_epi32(0xff));
        const __mmask16 is_esc = _mm512_cmpeq_epi32_mask(sym, _mm512_srli_epi32(sh_esc, 8));
        // The bits are read from the top down: this group's are [bpos − total, bpos), lane k's at
        // offset total − (its inclusive prefix) from the group's start. Without escapes (nearly
        // always) the offsets and total were tabulated per group: they do not wait on the gather.
        int total;
        __m512i nb, off;
        if (__builtin_expect(is_esc == 0, 1)) {
            nb = shift;
            total = in.gtotal[p >> 4];
            off = _mm512_loadu_si512(in.soff + p);
        } else {
            nb = _mm512_mask_blend_epi32(is_esc, shift, _mm512_set1_epi32(in.esc_bits));
            const __m512i excl = exclusive_prefix(nb, total);
            off = _mm512_sub_epi32(_mm512_set1_epi32(total), _mm512_add_epi32(excl, nb));
        }
        __m512i low = _mm512_setzero_si512();
        if (total) {
            if (static_cast<std::uint64_t>(total) > bpos) return false;
            bpos -= static_cast<std::uint64_t>(total);
            if (total <= 32) {
                // The common case (a bit or two per value): one 32-bit word, shifted per lane in
                // 32-bit lanes (a shift by 32 gives 0, and 2^32 − 1 the mask of a 32-bit value).
                std::uint64_t word;
                std::memcpy(&word, in.bits + (bpos >> 3), 8);
                const __m512i wv = _mm512_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(word >> (bpos & 7))));
                const __m512i one32 = _mm512_set1_epi32(1);
                low = _mm512_and_si512(_mm512_srlv_epi32(wv, off), _mm512_sub_epi32(_mm512_sllv_epi32(one32, nb), one32));
            } else {
                low = read_bits_wide(in.bits, bpos, total, off, nb);
            }
        }
        // value = (base + qmin << shift) + sym << shift + low; escapes: the raw bits themselves.
        const __m512i v = _mm512_add_epi32(_mm512_add_epi32(_mm512_loadu_si512(in.basq + p),
                                                            _mm512_sllv_epi32(sym, shift)), low);
        __m512i val = v;
        if (in.quant != 1)
            val = _mm512_min_epi32(_mm512_max_epi32(_mm512_mullo_epi32(v, _mm512_set1_epi32(in.quant)),
                                                    _mm512_set1_epi32(in.lo)),
                                   _mm512_set1_epi32(in.hi));
        const __m512i out = _mm512_mask_blend_epi32(is_esc, val, low);
        if (in.elem_bytes == 1) {
            _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<std::uint8_t*>(in.out) + i),
                             _mm512_cvtepi32_epi8(out));
        } else if (in.elem_bytes == 2) {
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<std::uint16_t*>(in.out) + i),
                                _mm512_cvtepi32_epi16(out));
        } else {
            _mm512_storeu_si512(static_cast<std::uint32_t*>(in.out) + i, out);
        }
        const __m512i t = x;
        x = xo;
        xo = t;
    }
    const bool even = (n_ops / 16) % 2 == 0;  // x now holds the lanes of group n_ops / 16
    _mm512_storeu_si512(in.x, even ? x : xo);
    _mm512_storeu_si512(in.x + 16, even ? xo : x);
    *in.wpos = wpos;
    *in.bpos = bpos;
    return true;
}

// The first n (≤ 16) of 16 lanes.
inline __mmask16 first_lanes(unsigned n) { return static_cast<__mmask16>(n >= 16 ? 0xffff : (1u << n) - 1); }

// Values i … i + n − 1 (n ≤ 16) as int32 lanes, the lanes from n on zero (masked loads: nothing
// beyond the n values is read).
SE_AVX512 inline __m512i load_values(const void* src, std::uint64_t i, int elem_bytes, bool is_signed,
                                     unsigned n = 16) {
    const __mmask16 m = first_lanes(n);
    if (elem_bytes == 1) {
        const __m128i v = _mm_maskz_loadu_epi8(m, static_cast<const std::uint8_t*>(src) + i);
        return is_signed ? _mm512_cvtepi8_epi32(v) : _mm512_cvtepu8_epi32(v);
    }
    if (elem_bytes == 2) {
        const __m256i v = _mm256_maskz_loadu_epi16(m, static_cast<const std::uint16_t*>(src) + i);
        return is_signed ? _mm512_cvtepi16_epi32(v) : _mm512_cvtepu16_epi32(v);
    }
    return _mm512_maskz_loadu_epi32(m, static_cast<const std::uint32_t*>(src) + i);
}

SE_AVX512 bool run_encode(const DenseSimdEnc& in) {
    RansEncoder& enc = *in.enc;
    const std::uint64_t P = in.pixels, n_ops = in.frames * in.pixels;
    if (enc.j_ != n_ops || enc.x_.size() != 32) return false;
    const int esc_bits = in.elem_bytes * 8;
    const __m512i ff = _mm512_set1_epi32(0xff), ffff = _mm512_set1_epi32(0xffff);
    if (enc.n_words_ != 0) return false;
    // Group g codes lanes 16·(g mod 2)…: its states are `x`, the next group's `xo` (named
    // registers swapped each step: indexing an array of two would go through memory).
    __m512i x = _mm512_loadu_si512(enc.x_.data() + 16 * ((n_ops / 16 - 1) & 1));
    __m512i xo = _mm512_loadu_si512(enc.x_.data() + 16 * ((n_ops / 16) & 1));
    std::uint16_t* words = enc.words_;
    const std::uint64_t end = n_ops + 32;  // the buffer's size (RansEncoder)
    std::uint64_t top = end;
    std::uint64_t cursor = *in.cursor;
    std::uint64_t p = (n_ops - 16) % P;
    alignas(64) std::int32_t nbv[16], offv[16], valv[16];
    for (std::uint64_t g = n_ops / 16; g-- > 0;) {
        const std::uint64_t i = g * 16;
        const __m512i v = load_values(in.src, i, in.elem_bytes, in.is_signed);
        const __m512i sh_esc = _mm512_loadu_si512(in.sh_esc + p);
        const __m512i shift = _mm512_and_si512(sh_esc, ff);
        const __m512i esc = _mm512_srli_epi32(sh_esc, 8);
        const __m512i r = _mm512_sub_epi32(v, _mm512_loadu_si512(in.base + p));
        const __m512i q = _mm512_srav_epi32(r, shift);
        const __m512i sym = _mm512_sub_epi32(q, _mm512_loadu_si512(in.qmin + p));
        __mmask16 ok = _mm512_cmplt_epu32_mask(sym, _mm512_loadu_si512(in.nsym + p));  // 0 ≤ sym < nsym
        if (in.elem_bytes == 4 && !in.is_signed)  // uint32 values ≥ 2^31 do not fit the int32 lanes
            ok &= _mm512_cmpge_epi32_mask(v, _mm512_setzero_si512());
        const __m512i symx = _mm512_mask_blend_epi32(ok, esc, sym);
        const __m512i low = _mm512_sub_epi32(r, _mm512_sllv_epi32(q, shift));
        const __m512i raw = in.elem_bytes == 4 ? v : _mm512_and_si512(v, _mm512_set1_epi32((1 << esc_bits) - 1));
        const __m512i bv = _mm512_mask_blend_epi32(ok, raw, low);
        const __m512i nb = _mm512_mask_blend_epi32(ok, _mm512_set1_epi32(esc_bits), shift);
        const __m512i e = _mm512_i32gather_epi32(_mm512_add_epi32(_mm512_loadu_si512(in.cls_off + p), symx), in.table, 4);
        const __m512i freq = _mm512_and_si512(e, ffff);
        const __m512i cum = _mm512_srli_epi32(e, 16);
        // Renormalise: lanes at or above x_max = freq · 2^20 (never for freq = 4096) emit their
        // low 16 bits. The decoder reads a group's words in lane order, and groups in the reverse
        // of the order they are coded here: the words are stored from the top of the buffer down,
        // each group's in lane order, so they end up in decoding order (no reversal, no permute).
        // (x ≥ freq · 2^20 as x > freq · 2^20 − 1 in 32 bits: for freq = 4096 that wraps to
        // 2^32 − 1, which no state exceeds.)
        const __mmask16 emit = _mm512_cmpgt_epu32_mask(x, _mm512_sub_epi32(_mm512_slli_epi32(freq, 20), _mm512_set1_epi32(1)));
        {  // no branch: whether a group emits is data, not predictable
            const unsigned n = static_cast<unsigned>(__builtin_popcount(emit));
            const __m512i packed = _mm512_maskz_compress_epi32(emit, x);
            top -= n;
            _mm256_mask_storeu_epi16(words + top, static_cast<__mmask16>((1u << n) - 1),
                                     _mm512_cvtepi32_epi16(packed));
            x = _mm512_mask_srli_epi32(x, emit, x, 16);
        }
        // x = (x / freq) · 2^12 + x mod freq + cum. The quotient (< 2^20: x < freq · 2^20 after
        // renormalising) from a float division with every rounding toward zero, so it is never
        // above x / freq and at most one below (relative error < 2^-22), then made exact by the
        // remainder. (vdivpd on two halves, exact in double precision, was a third of the time
        // on Zen 4; rcp14 and a Newton step needed a two-sided correction.)
        constexpr int kRz = _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC;
        __m512i qd = _mm512_cvttps_epu32(_mm512_div_round_ps(_mm512_cvt_roundepu32_ps(x, kRz),
                                                             _mm512_cvtepi32_ps(freq), kRz));
        __m512i rem = _mm512_sub_epi32(x, _mm512_mullo_epi32(qd, freq));  // in [0, 2·freq)
        const __mmask16 over = _mm512_cmpge_epu32_mask(rem, freq);
        qd = _mm512_mask_add_epi32(qd, over, qd, _mm512_set1_epi32(1));
        rem = _mm512_mask_sub_epi32(rem, over, rem, freq);
        x = _mm512_add_epi32(_mm512_add_epi32(_mm512_slli_epi32(qd, kScaleBits), rem), cum);
        // Raw bits: this group's go at [cursor − total, cursor), written from bit 0 up, last pixel
        // first: lane 15's bits at the group's start, lane k's at offset total − (its inclusive
        // prefix); tabulated per group when nothing is escaped (nearly always).
        int total;
        __m512i off;
        if (__builtin_expect(ok == 0xffff, 1)) {
            total = in.gtotal[p >> 4];
            off = _mm512_loadu_si512(in.soff + p);
        } else {
            const __m512i excl = exclusive_prefix(nb, total);
            off = _mm512_sub_epi32(_mm512_set1_epi32(total), _mm512_add_epi32(excl, nb));
        }
        if (total) {
            if (total <= 56) {
                // One word holds the group's bits: each lane's value shifted to its offset, OR-ed.
                // (No masks: every value already fits its nb bits, low bits being below the
                // shift and escapes masked to the element above.)
                const __m512i v_lo = _mm512_cvtepu32_epi64(_mm512_castsi512_si256(bv));
                const __m512i v_hi = _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(bv, 1));
                const __m512i w = _mm512_or_si512(
                    _mm512_sllv_epi64(v_lo, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(off))),
                    _mm512_sllv_epi64(v_hi, _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(off, 1))));
                in.bits->put_grow(cursor, static_cast<std::uint64_t>(_mm512_reduce_or_epi64(w)),
                                  static_cast<unsigned>(total));
            } else {
                _mm512_store_si512(nbv, nb);
                _mm512_store_si512(offv, off);
                _mm512_store_si512(valv, bv);
                for (int k = 0; k < 16; ++k)
                    if (nbv[k]) in.bits->put_grow(cursor + static_cast<std::uint64_t>(offv[k]),
                                                  static_cast<std::uint32_t>(valv[k]), static_cast<unsigned>(nbv[k]));
            }
            cursor += static_cast<std::uint64_t>(total);
        }
        p = p == 0 ? P - 16 : p - 16;
        const __m512i t = x;
        x = xo;
        xo = t;
    }
    _mm512_storeu_si512(enc.x_.data(), xo);  // after group 0: xo holds lanes 0–15
    _mm512_storeu_si512(enc.x_.data() + 16, x);
    enc.n_words_ = end - top;
    enc.first_ = top;
    enc.in_order_ = true;
    enc.j_ = 0;
    *in.cursor = cursor;
    return true;
}

SE_AVX512 void run_moments(const DenseMomentsSimd& in) {
    // Blocks of pixels whose sums stay in L1 while the sampled frames go by; each pixel still adds
    // its frames in order.
    constexpr std::uint64_t kBlock = 1024;
    const std::uint64_t P = in.pixels;
    for (std::uint64_t p0 = 0; p0 < P; p0 += kBlock) {
        const std::uint64_t n = std::min(kBlock, P - p0);
        for (std::uint64_t f = 0; f < in.frames; f += in.step) {
            const void* row = static_cast<const std::uint8_t*>(in.src) + (f * P + p0) * static_cast<std::uint64_t>(in.elem_bytes);
            for (std::uint64_t j = 0; j < n; j += 16) {
                const unsigned k = static_cast<unsigned>(std::min<std::uint64_t>(16, n - j));
                const __m512i v = load_values(row, j, in.elem_bytes, in.is_signed, k);
                const __mmask8 mlo = static_cast<__mmask8>(first_lanes(k)), mhi = static_cast<__mmask8>(first_lanes(k) >> 8);
                const __m512d dlo = _mm512_cvtepi32_pd(_mm512_castsi512_si256(v));
                const __m512d dhi = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(v, 1));
                double* a1 = in.s1 + p0 + j;
                double* a2 = in.s2 + p0 + j;
                _mm512_mask_storeu_pd(a1, mlo, _mm512_add_pd(_mm512_maskz_loadu_pd(mlo, a1), dlo));
                _mm512_mask_storeu_pd(a1 + 8, mhi, _mm512_add_pd(_mm512_maskz_loadu_pd(mhi, a1 + 8), dhi));
                _mm512_mask_storeu_pd(a2, mlo, _mm512_add_pd(_mm512_maskz_loadu_pd(mlo, a2), _mm512_mul_pd(dlo, dlo)));
                _mm512_mask_storeu_pd(a2 + 8, mhi,
                                      _mm512_add_pd(_mm512_maskz_loadu_pd(mhi, a2 + 8), _mm512_mul_pd(dhi, dhi)));
            }
        }
    }
}

SE_AVX512 void run_bins(const DenseBinsSimd& in, const void* row, std::uint32_t* bins) {
    const __m512i window = _mm512_set1_epi32(in.window), top = _mm512_set1_epi32(2 * in.window);
    const __m512i overflow = _mm512_set1_epi32(2 * in.window + 1);
    for (std::uint64_t j = 0; j < in.pixels; j += 16) {
        const unsigned k = static_cast<unsigned>(std::min<std::uint64_t>(16, in.pixels - j));
        const __mmask16 m = first_lanes(k);
        const __m512i v = load_values(row, j, in.elem_bytes, in.is_signed, k);
        const __m512i q = _mm512_srav_epi32(_mm512_sub_epi32(v, _mm512_maskz_loadu_epi32(m, in.base + j)),
                                            _mm512_maskz_loadu_epi32(m, in.shift + j));
        const __m512i i = _mm512_add_epi32(q, window);
        const __m512i b = _mm512_mask_blend_epi32(_mm512_cmple_epu32_mask(i, top), overflow, i);
        _mm512_mask_storeu_epi32(bins + j, m, _mm512_add_epi32(b, _mm512_maskz_loadu_epi32(m, in.off + j)));
    }
}

}  // namespace

bool dense_encode_simd(const DenseSimdEnc& in) { return dense_decode_simd_available() && run_encode(in); }

bool dense_moments_simd(const DenseMomentsSimd& in) {
    if (!dense_decode_simd_available() || (in.elem_bytes != 1 && in.elem_bytes != 2) || in.step == 0) return false;
    run_moments(in);
    return true;
}

bool dense_bins_simd(const DenseBinsSimd& in, const void* row, std::uint32_t* bins) {
    if (!dense_decode_simd_available() || (in.elem_bytes != 1 && in.elem_bytes != 2)) return false;
    run_bins(in, row, bins);
    return true;
}

bool dense_decode_simd_available() {
    static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    return ok;
}

bool dense_decode_simd(const DenseSimd& in) { return dense_decode_simd_available() && run(in); }

#else

bool dense_decode_simd_available() { return false; }
bool dense_encode_simd(const DenseSimdEnc&) { return false; }
bool dense_moments_simd(const DenseMomentsSimd&) { return false; }
bool dense_bins_simd(const DenseBinsSimd&, const void*, std::uint32_t*) { return false; }
bool dense_decode_simd(const DenseSimd&) { return false; }

#endif

}  // namespace stemedge::codec
