// A set of detector masks compiled into per-row spans: the one representation every reduction
// kernel reads. Zero runs are skipped, so a mask that covers little of the frame costs little
// ("sparse"); a mask with many short runs is stored as whole weighted row segments ("dense").
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace stemedge {

inline constexpr std::uint32_t kNoWeights = 0xFFFFFFFFu;
inline constexpr std::size_t kWeightPad = 64;  // zero floats before and after the weights

struct Span {
    std::uint32_t row;
    std::uint32_t x0, x1;        // half-open column range
    std::uint32_t mask;          // index of the mask this span belongs to
    std::uint32_t weight_offset; // into MaskPlan::weights (weights for x0..x1), or kNoWeights (all 1)
};

enum class MaskMode : std::uint8_t { kAuto, kDense, kSparse };

class MaskPlan {
  public:
    // masks: k × det_y × det_x float32 weights, C order. Non-finite weights are refused.
    MaskPlan(const float* masks, std::size_t k, std::size_t det_y, std::size_t det_x,
             MaskMode mode);

    std::size_t n_masks() const { return n_masks_; }
    std::size_t det_y() const { return det_y_; }
    std::size_t det_x() const { return det_x_; }
    // Spans of all masks merged and sorted by (row, mask): the kernels walk a frame top to
    // bottom once, so a row is read from memory once however many masks touch it.
    const std::vector<Span>& spans() const { return spans_; }
    const std::vector<float>& weights() const { return weights_; }
    bool binary(std::size_t m) const { return binary_[m] != 0; }
    bool dense(std::size_t m) const { return dense_[m] != 0; }
    std::size_t covered_pixels(std::size_t m) const { return covered_[m]; }  // pixels read
    double weight_sum(std::size_t m) const { return weight_sum_[m]; }

  private:
    std::size_t n_masks_, det_y_, det_x_;
    std::vector<Span> spans_;
    std::vector<float> weights_;
    std::vector<std::uint8_t> binary_, dense_;
    std::vector<std::size_t> covered_;
    std::vector<double> weight_sum_;
};

}  // namespace stemedge
