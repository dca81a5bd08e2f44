#include "stemedge/mask_plan.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace stemedge {
namespace {

// A mask whose nonzero pixels form runs shorter than this on average, and that covers more than
// kSparseCoverage of the frame, is cheaper to read as whole row segments (PHYSICS.md §3: sparse
// pays off below ~10 % coverage).
constexpr double kMinMeanRun = 8.0;
constexpr double kSparseCoverage = 0.10;

}  // namespace

MaskPlan::MaskPlan(const float* masks, std::size_t k, std::size_t det_y, std::size_t det_x,
                   MaskMode mode)
    : n_masks_(k), det_y_(det_y), det_x_(det_x) {
    if (k == 0) throw std::invalid_argument("masks: need at least one mask");
    if (det_y == 0 || det_x == 0) throw std::invalid_argument("masks: detector shape has a zero");
    if (det_y > std::numeric_limits<std::uint32_t>::max() / 2 ||
        det_x > std::numeric_limits<std::uint32_t>::max() / 2)
        throw std::invalid_argument("masks: detector too large");
    const std::size_t npix = det_y * det_x;
    binary_.assign(k, 1);
    dense_.assign(k, 0);
    covered_.assign(k, 0);
    weight_sum_.assign(k, 0.0);

    // Zero padding on both sides: vector tails may read up to one vector before a span's weights.
    weights_.assign(kWeightPad, 0.0f);
    std::vector<std::vector<Span>> per_mask(k);
    for (std::size_t m = 0; m < k; ++m) {
        const float* mk = masks + m * npix;
        std::size_t nonzero = 0, runs = 0;
        bool all_ones = true;
        for (std::size_t p = 0; p < npix; ++p) {
            const float w = mk[p];
            if (!std::isfinite(w))
                throw std::invalid_argument("masks: mask " + std::to_string(m) +
                                            " has a non-finite weight at pixel " +
                                            std::to_string(p));
            if (w != 0.0f) {
                ++nonzero;
                weight_sum_[m] += w;
                if (w != 1.0f) all_ones = false;
                if (p % det_x == 0 || mk[p - 1] == 0.0f) ++runs;
            }
        }
        const double coverage = static_cast<double>(nonzero) / static_cast<double>(npix);
        const double mean_run = runs ? static_cast<double>(nonzero) / runs : 0.0;
        bool dense = false;
        if (mode == MaskMode::kDense) dense = true;
        if (mode == MaskMode::kAuto) dense = coverage > kSparseCoverage && mean_run < kMinMeanRun;
        dense_[m] = dense;
        binary_[m] = all_ones && !dense;

        for (std::size_t y = 0; y < det_y; ++y) {
            const float* row = mk + y * det_x;
            if (dense) {
                // One weighted segment from the first to the last nonzero pixel of the row.
                std::size_t x0 = det_x, x1 = 0;
                for (std::size_t x = 0; x < det_x; ++x)
                    if (row[x] != 0.0f) {
                        x0 = std::min(x0, x);
                        x1 = x + 1;
                    }
                if (x0 >= x1) continue;
                per_mask[m].push_back({static_cast<std::uint32_t>(y), static_cast<std::uint32_t>(x0),
                                       static_cast<std::uint32_t>(x1), static_cast<std::uint32_t>(m),
                                       static_cast<std::uint32_t>(weights_.size())});
                weights_.insert(weights_.end(), row + x0, row + x1);
                covered_[m] += x1 - x0;
                continue;
            }
            std::size_t x = 0;
            while (x < det_x) {
                if (row[x] == 0.0f) {
                    ++x;
                    continue;
                }
                const std::size_t x0 = x;
                while (x < det_x && row[x] != 0.0f) ++x;
                std::uint32_t woff = kNoWeights;
                if (!binary_[m]) {
                    woff = static_cast<std::uint32_t>(weights_.size());
                    weights_.insert(weights_.end(), row + x0, row + x);
                }
                per_mask[m].push_back({static_cast<std::uint32_t>(y), static_cast<std::uint32_t>(x0),
                                       static_cast<std::uint32_t>(x), static_cast<std::uint32_t>(m),
                                       woff});
                covered_[m] += x - x0;
            }
        }
        if (weights_.size() >= kNoWeights) throw std::invalid_argument("masks: too many weights");
    }
    weights_.insert(weights_.end(), kWeightPad, 0.0f);
    for (auto& v : per_mask) spans_.insert(spans_.end(), v.begin(), v.end());
    std::stable_sort(spans_.begin(), spans_.end(), [](const Span& a, const Span& b) {
        return a.row != b.row ? a.row < b.row : a.mask < b.mask;
    });
}

}  // namespace stemedge
