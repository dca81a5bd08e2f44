#include "codec_rans.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <queue>

namespace stemedge::codec {

void rans_encode(const std::vector<Op>& ops, unsigned log2_lanes, std::vector<std::uint8_t>& out) {
    const std::uint32_t lanes = 1u << log2_lanes, mask = lanes - 1;
    std::vector<std::uint32_t> x(lanes, kRansL);
    std::vector<std::uint16_t> words;
    words.reserve(ops.size() / 2 + 16);
    for (std::size_t j = ops.size(); j-- > 0;) {
        std::uint32_t& s = x[j & mask];
        const std::uint32_t f = ops[j].freq;
        // 64-bit: a symbol of probability 1 (f = kScale) gives 2^32, "never renormalise".
        const std::uint64_t x_max = (static_cast<std::uint64_t>(kRansL >> kScaleBits) << 16) * f;
        if (s >= x_max) {
            words.push_back(static_cast<std::uint16_t>(s & 0xffff));
            s >>= 16;
        }
        s = ((s / f) << kScaleBits) + (s % f) + ops[j].cum;
    }
    std::reverse(words.begin(), words.end());
    put_rans_stream(out, log2_lanes, x.data(), words.data(), words.size());
}

void put_rans_stream(std::vector<std::uint8_t>& out, unsigned log2_lanes, const std::uint32_t* states,
                     const std::uint16_t* words, std::uint64_t n_words) {
    put<std::uint8_t>(out, static_cast<std::uint8_t>(log2_lanes));
    put<std::uint64_t>(out, n_words);
    for (std::size_t l = 0; l < (std::size_t{1} << log2_lanes); ++l) put<std::uint32_t>(out, states[l]);
    const std::size_t n = out.size();
    out.resize(n + 2 * n_words);
    if (n_words) std::memcpy(out.data() + n, words, 2 * n_words);
}

void RansEncoder::finish(std::vector<std::uint8_t>& out) {
    if (j_ != 0) throw CodecError(-1, "rANS encoder: fewer ops than announced");
    if (!in_order_) {
        std::reverse(words_, words_ + n_words_);
        first_ = 0;
    }
    put_rans_stream(out, log2_lanes_, x_.data(), words_ + first_, n_words_);
}

void BitWriter::write(std::vector<std::uint8_t>& out) const {
    codec::put<std::uint64_t>(out, nbits_);
    out.insert(out.end(), buf_.begin(), buf_.end());
}

BitReader::BitReader(const std::uint8_t* data, std::size_t size, std::size_t& consumed) {
    Reader r{data, data + size};
    nbits_ = r.get<std::uint64_t>();
    if (nbits_ > (std::uint64_t{1} << 60)) throw CodecError(-5, "bit stream: bad length");
    const std::uint64_t bytes = (nbits_ + 7) / 8 + 8;
    r.need(bytes);
    p_ = r.p;
    consumed = 8 + bytes;
}

RansDecoder::RansDecoder(const std::uint8_t* data, std::size_t size, std::size_t& consumed) {
    Reader r{data, data + size};
    const unsigned log2_lanes = r.get<std::uint8_t>();
    if (log2_lanes > 5) throw CodecError(-5, "rANS stream: bad lane count");
    const std::uint32_t lanes = 1u << log2_lanes;
    mask_ = lanes - 1;
    n_words_ = r.get<std::uint64_t>();
    for (std::uint32_t k = 0; k < 32; ++k) x_[k] = kRansL;
    for (std::uint32_t k = 0; k < lanes; ++k) {
        x_[k] = r.get<std::uint32_t>();
        if (x_[k] < kRansL) throw CodecError(-5, "rANS stream: bad state");
    }
    if (n_words_ > static_cast<std::uint64_t>(r.end - r.p) / 2)
        throw CodecError(-2, "rANS stream ends early");
    words_ = r.p;
    consumed = static_cast<std::size_t>(r.p - data) + 2 * n_words_;
}

void RansDecoder::finish() const {
    if (pos_ != n_words_) throw CodecError(-5, "rANS stream has unread words");
    for (std::uint32_t s : x_)
        if (s != kRansL) throw CodecError(-5, "rANS stream does not end in its initial state");
}

Table Table::from_counts(const std::vector<std::uint64_t>& counts) {
    const std::size_t n = counts.size();
    if (n == 0 || n > kScale) throw CodecError(-1, "table: bad symbol count");
    std::uint64_t total = 0;
    std::size_t present = 0;
    for (auto c : counts) {
        total += c;
        present += c > 0;
    }
    if (total == 0) throw CodecError(-1, "table: no symbols");
    std::vector<std::uint32_t> f(n, 0);
    std::int64_t sum = 0;
    for (std::size_t s = 0; s < n; ++s) {
        if (!counts[s]) continue;
        const double ideal = static_cast<double>(counts[s]) * kScale / static_cast<double>(total);
        f[s] = std::max<std::uint32_t>(1, static_cast<std::uint32_t>(std::lround(ideal)));
        sum += f[s];
    }
    // Move the rounding remainder where it costs least: a greedy exchange by the change in
    // coded size count·log2(f_new / f_old).
    using Item = std::pair<double, std::size_t>;
    if (sum > static_cast<std::int64_t>(kScale)) {
        std::priority_queue<Item, std::vector<Item>, std::greater<Item>> heap;  // cheapest first
        auto cost = [&](std::size_t s) {
            return static_cast<double>(counts[s]) * std::log2(f[s] / (f[s] - 1.0));
        };
        for (std::size_t s = 0; s < n; ++s)
            if (f[s] > 1) heap.push({cost(s), s});
        while (sum > static_cast<std::int64_t>(kScale)) {
            if (heap.empty()) throw CodecError(-1, "table: too many symbols");
            const std::size_t s = heap.top().second;
            heap.pop();
            --f[s];
            --sum;
            if (f[s] > 1) heap.push({cost(s), s});
        }
    } else if (sum < static_cast<std::int64_t>(kScale)) {
        std::priority_queue<Item> heap;  // largest gain first
        auto gain = [&](std::size_t s) {
            return static_cast<double>(counts[s]) * std::log2((f[s] + 1.0) / f[s]);
        };
        for (std::size_t s = 0; s < n; ++s)
            if (counts[s]) heap.push({gain(s), s});
        while (sum < static_cast<std::int64_t>(kScale)) {
            const std::size_t s = heap.top().second;
            heap.pop();
            ++f[s];
            ++sum;
            heap.push({gain(s), s});
        }
    }
    Table t;
    t.freq.resize(n);
    t.cum.resize(n);
    std::uint32_t c = 0;
    for (std::size_t s = 0; s < n; ++s) {
        t.freq[s] = static_cast<std::uint16_t>(f[s]);
        t.cum[s] = static_cast<std::uint16_t>(c);
        c += f[s];
    }
    return t;
}

namespace {

void put_varint(std::vector<std::uint8_t>& out, std::uint32_t v) {
    while (v >= 0x80) {
        out.push_back(static_cast<std::uint8_t>(v | 0x80));
        v >>= 7;
    }
    out.push_back(static_cast<std::uint8_t>(v));
}

std::uint32_t get_varint(Reader& r) {
    std::uint32_t v = 0;
    for (int shift = 0; shift < 21; shift += 7) {
        const std::uint8_t b = r.get<std::uint8_t>();
        v |= static_cast<std::uint32_t>(b & 0x7f) << shift;
        if (!(b & 0x80)) return v;
    }
    throw CodecError(-5, "table: bad varint");
}

}  // namespace

// Serialised sparsely (tables of sparse data are mostly zeros): n u16, the number of present
// symbols u16, then per present symbol varint(index − previous index − 1), varint(freq − 1).
void Table::write(std::vector<std::uint8_t>& out) const {
    put<std::uint16_t>(out, static_cast<std::uint16_t>(freq.size()));
    std::uint16_t present = 0;
    for (auto f : freq) present += f > 0;
    put<std::uint16_t>(out, present);
    std::size_t prev = 0;
    bool first = true;
    for (std::size_t s = 0; s < freq.size(); ++s) {
        if (!freq[s]) continue;
        put_varint(out, static_cast<std::uint32_t>(first ? s : s - prev - 1));
        put_varint(out, freq[s] - 1u);
        prev = s;
        first = false;
    }
}

Table Table::read(const std::uint8_t*& p, const std::uint8_t* end, std::size_t max_symbols) {
    Reader r{p, end};
    const std::size_t n = r.get<std::uint16_t>();
    const std::size_t present = r.get<std::uint16_t>();
    if (n == 0 || n > max_symbols || present == 0 || present > n)
        throw CodecError(-5, "table: bad symbol count");
    Table t;
    t.freq.assign(n, 0);
    t.cum.assign(n, 0);
    std::size_t s = 0;
    for (std::size_t k = 0; k < present; ++k) {
        const std::size_t step = get_varint(r);
        s = k == 0 ? step : s + 1 + step;
        if (s >= n) throw CodecError(-5, "table: symbol out of range");
        const std::uint32_t f = get_varint(r) + 1u;
        if (f > kScale) throw CodecError(-5, "table: frequency exceeds the scale");
        t.freq[s] = static_cast<std::uint16_t>(f);
    }
    std::uint32_t c = 0;
    for (std::size_t k = 0; k < n; ++k) {
        t.cum[k] = static_cast<std::uint16_t>(std::min<std::uint32_t>(c, kScale));
        c += t.freq[k];
        if (c > kScale) throw CodecError(-5, "table: frequencies exceed the scale");
    }
    if (c != kScale) throw CodecError(-5, "table: frequencies do not sum to the scale");
    p = r.p;
    t.build_decode();
    return t;
}

void Table::build_decode() {
    sym_of_slot.assign(kScale, 0);
    for (std::size_t s = 0; s < freq.size(); ++s)
        for (std::uint32_t k = 0; k < freq[s]; ++k)
            sym_of_slot[cum[s] + k] = static_cast<std::uint16_t>(s);
}

double Table::cost_bits(const std::vector<std::uint64_t>& counts) const {
    double bits = 0;
    for (std::size_t s = 0; s < counts.size(); ++s)
        if (counts[s]) bits += static_cast<double>(counts[s]) * (kScaleBits - std::log2(freq[s]));
    return bits;
}

// --- CRC-32C ---------------------------------------------------------------------------------

namespace {

struct CrcTables {
    std::uint32_t t[8][256];
    CrcTables() {
        for (std::uint32_t i = 0; i < 256; ++i) {
            std::uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
            t[0][i] = c;
        }
        for (std::uint32_t i = 0; i < 256; ++i)
            for (int k = 1; k < 8; ++k) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xff];
    }
};

std::uint32_t crc_soft(const std::uint8_t* p, std::size_t n, std::uint32_t crc) {
    static const CrcTables tab;
    while (n >= 8) {
        std::uint64_t v;
        std::memcpy(&v, p, 8);
        v ^= crc;
        crc = tab.t[7][v & 0xff] ^ tab.t[6][(v >> 8) & 0xff] ^ tab.t[5][(v >> 16) & 0xff] ^
              tab.t[4][(v >> 24) & 0xff] ^ tab.t[3][(v >> 32) & 0xff] ^
              tab.t[2][(v >> 40) & 0xff] ^ tab.t[1][(v >> 48) & 0xff] ^ tab.t[0][v >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) crc = (crc >> 8) ^ tab.t[0][(crc ^ *p++) & 0xff];
    return crc;
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("sse4.2"))) std::uint32_t crc_hw(const std::uint8_t* p, std::size_t n,
                                                        std::uint32_t crc) {
    std::uint64_t c = crc;
    while (n >= 8) {
        std::uint64_t v;
        std::memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        n -= 8;
    }
    std::uint32_t c32 = static_cast<std::uint32_t>(c);
    while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

// a·b mod P, both reflected (bit i <-> x^(31 - i)): shift-and-add over b's 32 coefficients.
std::uint32_t gf2_mulmod(std::uint32_t a, std::uint32_t b) {
    std::uint32_t r = 0;
    for (int i = 0; i < 32; ++i) {
        if (b & (0x80000000u >> i)) r ^= a;
        a = (a >> 1) ^ (0x82F63B78u & (0u - (a & 1)));  // a·x
    }
    return r;
}

// x^(2^k) mod P for k = 0..63 (reflected), from x (bit 30) by squaring.
struct XPow2 {
    std::uint32_t t[64];
    XPow2() {
        t[0] = 0x40000000u;
        for (int k = 1; k < 64; ++k) t[k] = gf2_mulmod(t[k - 1], t[k - 1]);
    }
};

// x^e mod P, reflected (bit i <-> x^(31 - i)).
std::uint32_t xpow_mod(std::uint64_t e) {
    static const XPow2 pw;
    std::uint32_t r = 0x80000000u;  // 1
    for (int k = 0; e; e >>= 1, ++k)
        if (e & 1) r = gf2_mulmod(r, pw.t[k]);
    return r;
}

// CRC of `len` zero bytes appended (raw register, no pre/post inversion): multiplication by
// x^(8·len) modulo P (a register r stands for r·x^32 of the message, so shifting the message by
// 8·len bits multiplies it by the same power).
std::uint32_t crc_shift(std::uint32_t crc, std::size_t len) {
    return gf2_mulmod(crc, xpow_mod(8 * static_cast<std::uint64_t>(len)));
}

#if defined(__x86_64__) && defined(__GNUC__)
// Three independent crc32 chains (the instruction has 3 cycles of latency, 1 of throughput),
// joined by crc_shift: ~3× the single-chain speed on large buffers.
__attribute__((target("sse4.2"))) std::uint32_t crc_hw3(const std::uint8_t* p, std::size_t n,
                                                         std::uint32_t crc) {
    const std::size_t third = (n / 3) & ~std::size_t{7};
    if (third < 4096) return crc_hw(p, n, crc);
    std::uint64_t a = crc, b = 0, c = 0;
    const std::uint8_t* pb = p + third;
    const std::uint8_t* pc = p + 2 * third;
    for (std::size_t k = 0; k < third; k += 8) {
        std::uint64_t va, vb, vc;
        std::memcpy(&va, p + k, 8);
        std::memcpy(&vb, pb + k, 8);
        std::memcpy(&vc, pc + k, 8);
        a = __builtin_ia32_crc32di(a, va);
        b = __builtin_ia32_crc32di(b, vb);
        c = __builtin_ia32_crc32di(c, vc);
    }
    std::uint32_t r = crc_shift(static_cast<std::uint32_t>(a), third) ^ static_cast<std::uint32_t>(b);
    r = crc_shift(r, third) ^ static_cast<std::uint32_t>(c);
    return crc_hw(p + 3 * third, n - 3 * third, r);
}

// Carry-less folding, 256 bytes per step in four 512-bit accumulators (Intel's "Fast CRC
// computation using PCLMULQDQ", without its Barrett step): a 128-bit lane holding H (low qword,
// the higher-degree coefficients) and L stands for H·x^64 + L; moved D bits further it becomes
// H·x^(64+D) + L·x^D, and mod P that is clmul(H, x^(D+63)) ^ clmul(L, x^(D-1)) (the −1: a
// product of two reflected 64-bit operands comes out one degree short). The four accumulators
// are then the message's last 256 bytes, with everything before folded in: the crc32
// instruction finishes them (from a zero register; the initial register was XOR-ed into the
// first 4 bytes, as a reflected CRC allows).
#define SE_VPCLMUL __attribute__((target("avx512f,avx512bw,vpclmulqdq,sse4.2")))

SE_VPCLMUL inline __m512i fold256(__m512i x, __m512i k, const std::uint8_t* next) {
    return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, k, 0x00), _mm512_clmulepi64_epi128(x, k, 0x11),
                                     _mm512_loadu_si512(next), 0x96);  // a ^ b ^ c
}

SE_VPCLMUL std::uint32_t crc_vpclmul(
    const std::uint8_t* p, std::size_t n, std::uint32_t crc) {
    if (n < 1024) return crc_hw3(p, n, crc);
    static const std::uint64_t kh = static_cast<std::uint64_t>(xpow_mod(2048 + 63)) << 32;
    static const std::uint64_t kl = static_cast<std::uint64_t>(xpow_mod(2048 - 1)) << 32;
    const __m512i k = _mm512_set_epi64(static_cast<long long>(kl), static_cast<long long>(kh),
                                       static_cast<long long>(kl), static_cast<long long>(kh),
                                       static_cast<long long>(kl), static_cast<long long>(kh),
                                       static_cast<long long>(kl), static_cast<long long>(kh));
    __m512i x0 = _mm512_loadu_si512(p), x1 = _mm512_loadu_si512(p + 64);
    __m512i x2 = _mm512_loadu_si512(p + 128), x3 = _mm512_loadu_si512(p + 192);
    x0 = _mm512_xor_si512(x0, _mm512_castsi128_si512(_mm_cvtsi32_si128(static_cast<int>(crc))));
    p += 256;
    n -= 256;
    for (; n >= 256; p += 256, n -= 256) {
        x0 = fold256(x0, k, p);
        x1 = fold256(x1, k, p + 64);
        x2 = fold256(x2, k, p + 128);
        x3 = fold256(x3, k, p + 192);
    }
    alignas(64) std::uint8_t acc[256];
    _mm512_store_si512(acc, x0);
    _mm512_store_si512(acc + 64, x1);
    _mm512_store_si512(acc + 128, x2);
    _mm512_store_si512(acc + 192, x3);
    return crc_hw(p, n, crc_hw(acc, 256, 0));
}
#endif

}  // namespace

std::atomic<bool> g_simd{true};

std::uint32_t crc32c(const void* data, std::size_t n, std::uint32_t crc) {
    const auto* p = static_cast<const std::uint8_t*>(data);
    crc = ~crc;
#if defined(__x86_64__) && defined(__GNUC__)
    static const bool hw = __builtin_cpu_supports("sse4.2");
    static const bool vp = hw && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("vpclmulqdq");
    crc = vp && g_simd.load(std::memory_order_relaxed) ? crc_vpclmul(p, n, crc) : hw ? crc_hw3(p, n, crc) : crc_soft(p, n, crc);
#else
    crc = crc_soft(p, n, crc);
#endif
    return ~crc;
}

}  // namespace stemedge::codec
