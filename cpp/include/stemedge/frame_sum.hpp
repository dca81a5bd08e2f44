// Per-pixel sum over a stack of frames: the sum/mean pattern. acc[y, x] += Σ_i frame_i[y, x].
#pragma once

#include <cstddef>

#include "stemedge/frame_view.hpp"

namespace stemedge {

// `acc` is a C-contiguous float64 (det_y, det_x) array. Integer frames are summed exactly (in
// integer tiles, then added to acc); float32 frames in float64, NaN propagating. Rows of the
// detector are split over `nthreads` (0: all) of the global pool.
void sum_frames(const FrameStackView& frames, double* acc, std::size_t nthreads);

}  // namespace stemedge
