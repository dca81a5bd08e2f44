#include "stemedge/ssb.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "stemedge/thread_pool.hpp"

// Hot loops are built once per instruction set and chosen at load time (as in frame_sum.cpp).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define STEMEDGE_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define STEMEDGE_CLONES
#endif

namespace stemedge::ssb {
namespace {

constexpr double kPi = 3.14159265358979323846;

std::size_t pool_threads(std::size_t nthreads) {
    ThreadPool& pool = ThreadPool::global();
    return nthreads == 0 ? pool.size() : std::min(nthreads, pool.size());
}

// χ(k) [rad] (PHYSICS.md C6), k in Å⁻¹.
double chi(const Aberrations& ab, double lam, double ky, double kx) {
    const double a2 = lam * lam * (ky * ky + kx * kx);
    if (a2 == 0.0) return 0.0;
    const double a = std::sqrt(a2), phi = std::atan2(ky, kx);
    double c = 0.5 * a2 * (ab.C10 + ab.C12 * std::cos(2.0 * (phi - ab.phi12)));
    c += a2 * a / 3.0 * (ab.C21 * std::cos(phi - ab.phi21) + ab.C23 * std::cos(3.0 * (phi - ab.phi23)));
    c += 0.25 * a2 * a2 * ab.C30;
    return 2.0 * kPi / lam * c;
}

struct Column {
    std::vector<std::uint32_t> idx;
    std::vector<float> re, im;
    double transfer = 0;
    bool kept = false;
};

void build_column(const double* ky, const double* kx, std::size_t n_pix, double qy, double qx,
                  const TrotterParams& p, bool aberrated, Column& col) {
    const double ka2 = p.k_alpha * p.k_alpha;
    if (qy == 0.0 && qx == 0.0) {  // DC: the mean over the bright-field disk
        col.idx.resize(n_pix);
        col.re.assign(n_pix, static_cast<float>(1.0 / static_cast<double>(n_pix)));
        if (aberrated) col.im.assign(n_pix, 0.0f);
        for (std::size_t i = 0; i < n_pix; ++i) col.idx[i] = static_cast<std::uint32_t>(i);
        col.transfer = 1.0;
        col.kept = n_pix > 0;
        return;
    }
    if (qy * qy + qx * qx >= 4.0 * ka2) return;  // the disks at ±Q do not reach the centre one
    // Half trotters: M+ = D0 ∧ D(+Q) ∧ ¬D(−Q), M− = D0 ∧ D(−Q) ∧ ¬D(+Q); D0 is the pixel set.
    std::vector<std::uint32_t> plus, minus;
    for (std::size_t i = 0; i < n_pix; ++i) {
        const double py = ky[i] - qy, px = kx[i] - qx, my = ky[i] + qy, mx = kx[i] + qx;
        const bool in_p = py * py + px * px <= ka2, in_m = my * my + mx * mx <= ka2;
        if (in_p && !in_m) plus.push_back(static_cast<std::uint32_t>(i));
        if (in_m && !in_p) minus.push_back(static_cast<std::uint32_t>(i));
    }
    const std::size_t np = plus.size(), nm = minus.size();
    if (np == 0 || nm == 0 || np < p.cutoff || nm < p.cutoff) return;
    double sp, sm;  // weight magnitudes on each half
    if (p.norm == Norm::kFlat) {
        sp = 0.5 / static_cast<double>(np);
        sm = 0.5 / static_cast<double>(nm);
        col.transfer = 1.0;
    } else {
        sp = sm = 1.0 / static_cast<double>(n_pix);
        col.transfer = static_cast<double>(np + nm) / static_cast<double>(n_pix);
    }
    col.idx.reserve(np + nm);
    col.re.reserve(np + nm);
    if (aberrated) col.im.reserve(np + nm);
    // W = ½Γ*(M+/|M+| + M−/|M−|) (flat): Γ* = e^{−i(χ(k) − χ(k−Q))} on M+ and
    // −e^{+i(χ(k) − χ(k+Q))} on M− (PHYSICS.md §4.1), ±1 without aberrations.
    for (std::uint32_t i : plus) {
        col.idx.push_back(i);
        if (aberrated) {
            const double d = chi(p.ab, p.wavelength, ky[i], kx[i]) -
                             chi(p.ab, p.wavelength, ky[i] - qy, kx[i] - qx);
            col.re.push_back(static_cast<float>(sp * std::cos(d)));
            col.im.push_back(static_cast<float>(-sp * std::sin(d)));
        } else {
            col.re.push_back(static_cast<float>(sp));
        }
    }
    for (std::uint32_t i : minus) {
        col.idx.push_back(i);
        if (aberrated) {
            const double d = chi(p.ab, p.wavelength, ky[i], kx[i]) -
                             chi(p.ab, p.wavelength, ky[i] + qy, kx[i] + qx);
            col.re.push_back(static_cast<float>(-sm * std::cos(d)));
            col.im.push_back(static_cast<float>(-sm * std::sin(d)));
        } else {
            col.re.push_back(static_cast<float>(-sm));
        }
    }
    col.kept = true;
}

// Per-frame byte offsets of the bright-field source pixels for this stack's row stride.
template <class T>
void pixel_offsets(const FrameStackView& v, const BfPixels& bf, std::vector<std::ptrdiff_t>& off) {
    off.resize(bf.pix.size());
    for (std::size_t i = 0; i < bf.pix.size(); ++i) {
        const std::size_t y = bf.pix[i] / bf.det_x, x = bf.pix[i] % bf.det_x;
        off[i] = static_cast<std::ptrdiff_t>(y) * v.row_stride +
                 static_cast<std::ptrdiff_t>(x * sizeof(T));
    }
}

// Without binning the bright-field pixels are row segments of the frame: copied run by run (the
// loops vectorise) instead of pixel by pixel.
struct Run {
    std::ptrdiff_t src;  // byte offset in the frame
    std::uint32_t dst, len;
};

template <class T>
std::vector<Run> make_runs(const BfPixels& bf, const std::vector<std::ptrdiff_t>& off) {
    std::vector<Run> runs;
    for (std::size_t p = 0; p < bf.size(); ++p)
        if (bf.ptr[p + 1] - bf.ptr[p] != 1) return {};  // binned: no runs
    for (std::size_t p = 0; p < bf.size(); ++p) {
        const std::ptrdiff_t o = off[bf.ptr[p]];
        if (!runs.empty() && runs.back().dst + runs.back().len == p &&
            runs.back().src + static_cast<std::ptrdiff_t>(runs.back().len * sizeof(T)) == o)
            ++runs.back().len;
        else
            runs.push_back({o, static_cast<std::uint32_t>(p), 1});
    }
    return runs;
}

// dst[p] = Σ of the source pixels of bright-field pixel p in one frame (float32).
template <class T>
inline void gather_frame(const std::uint8_t* frame, const BfPixels& bf, const std::ptrdiff_t* off,
                         const std::vector<Run>& runs, float* dst) {
    if (!runs.empty()) {
        for (const Run& r : runs) {
            const T* src = reinterpret_cast<const T*>(frame + r.src);
            float* d = dst + r.dst;
            for (std::uint32_t i = 0; i < r.len; ++i) d[i] = static_cast<float>(src[i]);
        }
        return;
    }
    const std::size_t n = bf.size();
    const std::uint32_t* ptr = bf.ptr.data();
    for (std::size_t p = 0; p < n; ++p) {
        float s = 0.0f;
        for (std::uint32_t j = ptr[p]; j < ptr[p + 1]; ++j)
            s += static_cast<float>(*reinterpret_cast<const T*>(frame + off[j]));
        dst[p] = s;
    }
}

template <class T>
void gather_cube_t(const FrameStackView& v, const BfPixels& bf, float* out, double* mean,
                   bool center, std::size_t nthreads) {
    const std::size_t n = v.n_frames(), np = bf.size();
    std::fill_n(mean, np, 0.0);
    if (n == 0 || np == 0) return;
    std::vector<std::ptrdiff_t> off;
    pixel_offsets<T>(v, bf, off);
    const std::vector<Run> runs = make_runs<T>(bf, off);
    const std::size_t threads = pool_threads(nthreads);
    const std::size_t tasks = std::min(n, threads * 4);
    std::vector<std::vector<double>> sums(tasks, std::vector<double>(np, 0.0));
    ThreadPool& pool = ThreadPool::global();
    pool.run(tasks, threads, [&](std::size_t t) {
        double* s = sums[t].data();
        for (std::size_t f = t * n / tasks; f < (t + 1) * n / tasks; ++f) {
            float* row = out + f * np;
            gather_frame<T>(v.frame(f), bf, off.data(), runs, row);
            for (std::size_t p = 0; p < np; ++p) s[p] += row[p];
        }
    });
    for (const auto& s : sums)
        for (std::size_t p = 0; p < np; ++p) mean[p] += s[p];
    for (std::size_t p = 0; p < np; ++p) mean[p] /= static_cast<double>(n);
    if (!center) return;
    std::vector<float> mean32(mean, mean + np);
    pool.run(tasks, threads, [&](std::size_t t) {
        for (std::size_t f = t * n / tasks; f < (t + 1) * n / tasks; ++f) {
            float* row = out + f * np;
            for (std::size_t p = 0; p < np; ++p) row[p] -= mean32[p];
        }
    });
}

// acc[b] = Σ_j w_j · I[idx_j][b] over one column for kBlock frames (I rows `ld` floats). The
// rows are zero-padded to a multiple of kBlock, so a partial block runs the vector path too.
constexpr std::size_t kBlock = 64;

// GCC vector types: one source, lowered to zmm/ymm/xmm per target clone; unaligned loads.
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));

STEMEDGE_CLONES void column_sums(const std::uint32_t* idx, const float* w, std::size_t nnz,
                                 const float* I, std::size_t ld, float* acc) {
    // Two sets of four accumulators (even and odd j) keep eight FMA chains in flight.
    v16 a0 = {}, a1 = {}, a2 = {}, a3 = {}, b0 = {}, b1 = {}, b2 = {}, b3 = {};
    std::size_t j = 0;
    for (; j + 1 < nnz; j += 2) {
        const float w0 = w[j], w1 = w[j + 1];
        const float* r0 = I + static_cast<std::size_t>(idx[j]) * ld;
        const float* r1 = I + static_cast<std::size_t>(idx[j + 1]) * ld;
        a0 += w0 * *reinterpret_cast<const v16u*>(r0);
        a1 += w0 * *reinterpret_cast<const v16u*>(r0 + 16);
        a2 += w0 * *reinterpret_cast<const v16u*>(r0 + 32);
        a3 += w0 * *reinterpret_cast<const v16u*>(r0 + 48);
        b0 += w1 * *reinterpret_cast<const v16u*>(r1);
        b1 += w1 * *reinterpret_cast<const v16u*>(r1 + 16);
        b2 += w1 * *reinterpret_cast<const v16u*>(r1 + 32);
        b3 += w1 * *reinterpret_cast<const v16u*>(r1 + 48);
    }
    if (j < nnz) {
        const float w0 = w[j];
        const float* r0 = I + static_cast<std::size_t>(idx[j]) * ld;
        a0 += w0 * *reinterpret_cast<const v16u*>(r0);
        a1 += w0 * *reinterpret_cast<const v16u*>(r0 + 16);
        a2 += w0 * *reinterpret_cast<const v16u*>(r0 + 32);
        a3 += w0 * *reinterpret_cast<const v16u*>(r0 + 48);
    }
    *reinterpret_cast<v16u*>(acc) = a0 + b0;
    *reinterpret_cast<v16u*>(acc + 16) = a1 + b1;
    *reinterpret_cast<v16u*>(acc + 32) = a2 + b2;
    *reinterpret_cast<v16u*>(acc + 48) = a3 + b3;
}

// Σ_b (v_b) · er_b · ec_b for complex v (re, im arrays), er, ec: the DFT phase of each frame.
STEMEDGE_CLONES void phase_sum(const float* vr, const float* vi, double cr, double ci,
                               const double* err, const double* eri, const double* ecr,
                               const double* eci, std::size_t nb, double& out_r, double& out_i) {
    double sr = 0, si = 0;
    for (std::size_t b = 0; b < nb; ++b) {
        const double er = err[b] * ecr[b] - eri[b] * eci[b];
        const double ei = err[b] * eci[b] + eri[b] * ecr[b];
        const double xr = static_cast<double>(vr[b]) + cr;
        const double xi = (vi ? static_cast<double>(vi[b]) : 0.0) + ci;
        sr += xr * er - xi * ei;
        si += xr * ei + xi * er;
    }
    out_r += sr;
    out_i += si;
}

}  // namespace

Trotters build_trotters(const double* ky, const double* kx, std::size_t n_pixels, const double* qy,
                        const double* qx, std::size_t n_q, const TrotterParams& params,
                        std::size_t nthreads) {
    if (!(params.k_alpha > 0) || !std::isfinite(params.k_alpha))
        throw std::invalid_argument("k_alpha must be positive and finite");
    if (!(params.wavelength > 0)) throw std::invalid_argument("wavelength must be positive");
    if (n_pixels >= (std::size_t{1} << 31)) throw std::invalid_argument("too many pixels");
    const bool aberrated = params.ab.any();
    std::vector<Column> cols(n_q);
    const std::size_t threads = pool_threads(nthreads);
    const std::size_t tasks = std::min<std::size_t>(n_q, threads * 8);
    if (tasks > 0)
        ThreadPool::global().run(tasks, threads, [&](std::size_t t) {
            for (std::size_t i = t * n_q / tasks; i < (t + 1) * n_q / tasks; ++i)
                build_column(ky, kx, n_pixels, qy[i], qx[i], params, aberrated, cols[i]);
        });
    Trotters out;
    out.n_pixels = n_pixels;
    out.is_complex = aberrated;
    out.ptr.push_back(0);
    std::size_t nnz = 0;
    for (const Column& c : cols) nnz += c.idx.size();
    out.idx.reserve(nnz);
    out.w_re.reserve(nnz);
    if (aberrated) out.w_im.reserve(nnz);
    for (std::size_t i = 0; i < n_q; ++i) {
        const Column& c = cols[i];
        if (!c.kept) continue;
        out.kept.push_back(static_cast<std::uint32_t>(i));
        out.idx.insert(out.idx.end(), c.idx.begin(), c.idx.end());
        out.w_re.insert(out.w_re.end(), c.re.begin(), c.re.end());
        if (aberrated) out.w_im.insert(out.w_im.end(), c.im.begin(), c.im.end());
        out.ptr.push_back(out.idx.size());
        out.transfer.push_back(c.transfer);
    }
    return out;
}

void apply(const Trotters& t, const std::complex<float>* g, std::size_t n_cells,
           const std::int64_t* cell, std::complex<double>* out, std::size_t nthreads) {
    const std::size_t nc = t.n_columns(), np = t.n_pixels;
    for (std::size_t c = 0; c < nc; ++c)
        if (cell[c] < 0 || static_cast<std::size_t>(cell[c]) >= n_cells)
            throw std::out_of_range("cell index " + std::to_string(cell[c]) + " outside [0, " +
                                    std::to_string(n_cells) + ")");
    if (nc == 0) return;
    const std::size_t threads = pool_threads(nthreads);
    const std::size_t tasks = std::min(nc, threads * 8);
    ThreadPool::global().run(tasks, threads, [&](std::size_t task) {
        for (std::size_t c = task * nc / tasks; c < (task + 1) * nc / tasks; ++c) {
            const std::complex<float>* col = g + static_cast<std::size_t>(cell[c]) * np;
            double sr = 0, si = 0;
            for (std::uint64_t j = t.ptr[c]; j < t.ptr[c + 1]; ++j) {
                const std::complex<float> v = col[t.idx[j]];
                const double wr = t.w_re[j], wi = t.is_complex ? t.w_im[j] : 0.0;
                sr += wr * v.real() - wi * v.imag();
                si += wr * v.imag() + wi * v.real();
            }
            out[c] = {sr, si};
        }
    });
}

void gather_cube(const FrameStackView& frames, const BfPixels& bf, float* out, double* mean,
                 bool center, std::size_t nthreads) {
    switch (frames.dtype) {
        case DType::kU8: return gather_cube_t<std::uint8_t>(frames, bf, out, mean, center, nthreads);
        case DType::kU16: return gather_cube_t<std::uint16_t>(frames, bf, out, mean, center, nthreads);
        case DType::kU32: return gather_cube_t<std::uint32_t>(frames, bf, out, mean, center, nthreads);
        case DType::kF32: return gather_cube_t<float>(frames, bf, out, mean, center, nthreads);
    }
}

void accumulate(const Trotters& t, const BfPixels& bf, const FrameStackView& frames,
                const std::int64_t* pos, std::size_t scan_y, std::size_t scan_x,
                const std::int32_t* col_qy, const std::int32_t* col_qx, std::complex<double>* F,
                std::size_t nthreads) {
    const std::size_t nb = frames.n_frames(), np = bf.size(), nc = t.n_columns();
    if (t.n_pixels != np)
        throw std::invalid_argument("trotters were built for " + std::to_string(t.n_pixels) +
                                    " bright-field pixels, the pixel plan has " + std::to_string(np));
    for (std::size_t b = 0; b < nb; ++b)
        if (pos[b] < 0 || static_cast<std::size_t>(pos[b]) >= scan_y * scan_x)
            throw std::out_of_range("scan position " + std::to_string(pos[b]) + " outside [0, " +
                                    std::to_string(scan_y * scan_x) + ")");
    for (std::size_t c = 0; c < nc; ++c)
        if (col_qy[c] < 0 || static_cast<std::size_t>(col_qy[c]) >= scan_y || col_qx[c] < 0 ||
            static_cast<std::size_t>(col_qx[c]) >= scan_x)
            throw std::out_of_range("frequency index outside the scan grid");
    if (nb == 0 || nc == 0) return;

    // I[p][b]: bright-field pixels minus their stack mean ref[p] (so the float32 sums carry only
    // the contrast); the mean's share, Σ_j w_j·ref[idx_j], is added back in float64.
    const std::size_t ld = (nb + kBlock - 1) / kBlock * kBlock;
    std::vector<float> I(np * ld, 0.0f);
    std::vector<double> ref(np, 0.0);
    {
        std::vector<std::ptrdiff_t> off;
        std::vector<float> tmp(np);
        auto gather = [&](auto tag) {
            using T = decltype(tag);
            pixel_offsets<T>(frames, bf, off);
            const std::vector<Run> runs = make_runs<T>(bf, off);
            for (std::size_t b = 0; b < nb; ++b) {
                gather_frame<T>(frames.frame(b), bf, off.data(), runs, tmp.data());
                for (std::size_t p = 0; p < np; ++p) {
                    I[p * ld + b] = tmp[p];
                    ref[p] += tmp[p];
                }
            }
        };
        switch (frames.dtype) {
            case DType::kU8: gather(std::uint8_t{}); break;
            case DType::kU16: gather(std::uint16_t{}); break;
            case DType::kU32: gather(std::uint32_t{}); break;
            case DType::kF32: gather(float{}); break;
        }
        for (std::size_t p = 0; p < np; ++p) {
            ref[p] /= static_cast<double>(nb);
            const float r = static_cast<float>(ref[p]);
            ref[p] = r;  // the value actually subtracted, so the split is exact
            for (std::size_t b = 0; b < nb; ++b) I[p * ld + b] -= r;
        }
    }
    // DFT phases of each frame: er[qy][b] = e^{−2πi qy·y_b/Ny}, ec[qx][b] = e^{−2πi qx·x_b/Nx},
    // from exact integer products modulo N.
    std::vector<double> er_r(scan_y * ld), er_i(scan_y * ld), ec_r(scan_x * ld), ec_i(scan_x * ld);
    {
        std::vector<double> ty_r(scan_y), ty_i(scan_y), tx_r(scan_x), tx_i(scan_x);
        for (std::size_t m = 0; m < scan_y; ++m) {
            const double a = -2.0 * kPi * static_cast<double>(m) / static_cast<double>(scan_y);
            ty_r[m] = std::cos(a);
            ty_i[m] = std::sin(a);
        }
        for (std::size_t m = 0; m < scan_x; ++m) {
            const double a = -2.0 * kPi * static_cast<double>(m) / static_cast<double>(scan_x);
            tx_r[m] = std::cos(a);
            tx_i[m] = std::sin(a);
        }
        for (std::size_t b = 0; b < nb; ++b) {
            const std::size_t y = static_cast<std::size_t>(pos[b]) / scan_x;
            const std::size_t x = static_cast<std::size_t>(pos[b]) % scan_x;
            for (std::size_t q = 0; q < scan_y; ++q) {
                const std::size_t m = (q * y) % scan_y;
                er_r[q * ld + b] = ty_r[m];
                er_i[q * ld + b] = ty_i[m];
            }
            for (std::size_t q = 0; q < scan_x; ++q) {
                const std::size_t m = (q * x) % scan_x;
                ec_r[q * ld + b] = tx_r[m];
                ec_i[q * ld + b] = tx_i[m];
            }
        }
    }
    const std::size_t threads = pool_threads(nthreads);
    const std::size_t tasks = std::min(nc, threads * 8);
    ThreadPool::global().run(tasks, threads, [&](std::size_t task) {
        std::vector<float> acc_r(ld), acc_i(t.is_complex ? ld : 0);
        for (std::size_t c = task * nc / tasks; c < (task + 1) * nc / tasks; ++c) {
            const std::uint64_t j0 = t.ptr[c], j1 = t.ptr[c + 1];
            const std::uint32_t* idx = t.idx.data() + j0;
            const std::size_t nnz = j1 - j0;
            double cr = 0, ci = 0;  // Σ_j w_j · ref[idx_j]
            for (std::size_t j = 0; j < nnz; ++j) {
                cr += t.w_re[j0 + j] * ref[idx[j]];
                if (t.is_complex) ci += t.w_im[j0 + j] * ref[idx[j]];
            }
            for (std::size_t b0 = 0; b0 < nb; b0 += kBlock) {
                column_sums(idx, t.w_re.data() + j0, nnz, I.data() + b0, ld, acc_r.data() + b0);
                if (t.is_complex)
                    column_sums(idx, t.w_im.data() + j0, nnz, I.data() + b0, ld, acc_i.data() + b0);
            }
            const std::size_t qy = static_cast<std::size_t>(col_qy[c]);
            const std::size_t qx = static_cast<std::size_t>(col_qx[c]);
            double fr = F[c].real(), fi = F[c].imag();
            phase_sum(acc_r.data(), t.is_complex ? acc_i.data() : nullptr, cr, ci,
                      er_r.data() + qy * ld, er_i.data() + qy * ld, ec_r.data() + qx * ld,
                      ec_i.data() + qx * ld, nb, fr, fi);
            F[c] = {fr, fi};
        }
    });
}

}  // namespace stemedge::ssb
