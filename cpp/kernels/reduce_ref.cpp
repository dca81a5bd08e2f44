// The scalar reference backend: the definition of the reduction, pixel by pixel in float64, with
// no tricks. The optimised backends are held to it (and to numpy) in the tests.
#include <cmath>
#include <cstdint>

#include "backend.hpp"

namespace stemedge {
namespace {

template <class T>
void reduce_ref_t(const FrameStackView& f, const MaskPlan& p, const ReduceOptions& o, double* out,
                  std::size_t begin, std::size_t end) {
    const std::size_t k = p.n_masks(), nch = n_channels(o, k);
    for (std::size_t i = begin; i < end; ++i) {
        const std::uint8_t* fp = f.frame(i);
        double* row_out = out + i * nch;
        for (std::size_t c = 0; c < nch; ++c) row_out[c] = 0.0;
        for (const Span& sp : p.spans()) {
            const T* r = f.row<T>(fp, sp.row);
            std::size_t c = 0;
            for (std::size_t m = 0; m < sp.mask; ++m) c += o.moments[m] ? 3 : 1;
            const double t = o.thresholds[sp.mask];
            for (std::uint32_t x = sp.x0; x < sp.x1; ++x) {
                const double w = sp.weight_offset == kNoWeights
                                     ? 1.0
                                     : p.weights()[sp.weight_offset + (x - sp.x0)];
                double v = static_cast<double>(r[x]);
                if (!std::isnan(t)) {
                    const bool keep = std::is_floating_point_v<T>
                                          ? r[x] >= static_cast<float>(t)
                                          : v >= t;
                    if (!keep) v = 0.0;
                }
                v *= w;
                row_out[c] += v;
                if (o.moments[sp.mask]) {
                    row_out[c + 1] += static_cast<double>(sp.row) * v;
                    row_out[c + 2] += static_cast<double>(x) * v;
                }
            }
        }
    }
}

void reduce_ref(const FrameStackView& f, const MaskPlan& p, const ReduceOptions& o, double* out,
                std::size_t begin, std::size_t end) {
    switch (f.dtype) {
        case DType::kU8: return reduce_ref_t<std::uint8_t>(f, p, o, out, begin, end);
        case DType::kU16: return reduce_ref_t<std::uint16_t>(f, p, o, out, begin, end);
        case DType::kU32: return reduce_ref_t<std::uint32_t>(f, p, o, out, begin, end);
        case DType::kF32: return reduce_ref_t<float>(f, p, o, out, begin, end);
    }
}

std::uint64_t read_ref(const FrameStackView& f, std::size_t begin, std::size_t end) {
    std::uint64_t total = 0;
    const std::size_t row_bytes = f.det_x * itemsize(f.dtype);
    for (std::size_t i = begin; i < end; ++i)
        for (std::size_t y = 0; y < f.det_y; ++y) {
            const std::uint8_t* r = f.frame(i) + static_cast<std::ptrdiff_t>(y) * f.row_stride;
            for (std::size_t b = 0; b < row_bytes; ++b) total += r[b];
        }
    return total;
}

bool always() { return true; }

}  // namespace

extern const BackendOps kBackend_ref;
const BackendOps kBackend_ref = {"ref", "scalar reference (float64, unvectorised)", &always,
                                 &reduce_ref, &read_ref};

}  // namespace stemedge
