// Frame reductions: for every frame and every mask m of a MaskPlan, the weighted sum
// S_m = Σ_k M_m(k)·I(k) and optionally the first moments Σ_k y·M_m·I, Σ_k x·M_m·I. Centre of mass,
// virtual detectors and their fused pass are all this one reduction with different masks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "stemedge/frame_view.hpp"
#include "stemedge/mask_plan.hpp"

namespace stemedge {

struct ReduceOptions {
    std::vector<std::uint8_t> moments;  // per mask: also compute Σy·M·I and Σx·M·I
    std::vector<double> thresholds;     // per mask: pixels with I < t count as 0; NaN = no threshold
    std::size_t nthreads = 0;           // 0 = all available
};

// Output layout per frame (row of `out`, `n_channels(...)` doubles): for each mask in order,
// S, then Sy, Sx if moments[m]. Integer inputs are summed exactly (integer accumulators).
// Throws std::invalid_argument unless moments and thresholds have one entry per mask.
std::size_t n_channels(const ReduceOptions& opt, std::size_t n_masks);

void reduce_frames(const FrameStackView& frames, const MaskPlan& plan, const ReduceOptions& opt,
                   double* out);

// One read-only pass over every byte of the frames (sum of 64-bit words per row): the practical
// memory-bandwidth limit the kernels are measured against. Returns a checksum so it is not elided.
std::uint64_t read_pass(const FrameStackView& frames, std::size_t nthreads);

// Backend selection: "auto" (best this CPU supports), or one of available_backends().
std::vector<std::string> compiled_backends();
std::vector<std::string> available_backends();  // compiled and supported by this CPU
void set_backend(const std::string& name);
std::string active_backend();
std::string backend_description(const std::string& name);

}  // namespace stemedge
