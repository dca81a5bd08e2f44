// The table each compiled backend (one per instruction set, plus the scalar reference) provides to
// the dispatcher. Backends process a range of frames; threading lives in the dispatcher.
#pragma once

#include <cstddef>
#include <cstdint>

#include "stemedge/frame_view.hpp"
#include "stemedge/mask_plan.hpp"
#include "stemedge/reduce.hpp"

namespace stemedge {

struct BackendOps {
    const char* name;         // "avx512", "avx2", "sse2", "generic", "native", "ref"
    const char* description;  // e.g. "x86-64-v4 (AVX-512)"
    bool (*supported)();      // does this CPU run it?
    void (*reduce)(const FrameStackView&, const MaskPlan&, const ReduceOptions&, double* out,
                   std::size_t begin, std::size_t end);
    std::uint64_t (*read)(const FrameStackView&, std::size_t begin, std::size_t end);
};

}  // namespace stemedge
