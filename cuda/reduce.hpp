// GPU twin of stemedge::reduce_frames (cpp/kernels/reduce_ref.cpp is the definition it is held
// to): for every frame and mask m, S = Σ M·I and, where moments[m], Σ y·M·I and Σ x·M·I, in
// float64. Centre of mass, virtual detectors and their fused pass are this one reduction.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace stemedge::cuda {

constexpr int kMaxMasks = 8;  // masks per call (the Python layer splits bigger sets)

enum class FrameType { kU8 = 0, kU16 = 1, kU32 = 2, kF32 = 3 };

// frames: device pointer to a C-contiguous (n, det_y, det_x) stack; masks: device (k, det_y,
// det_x) float32, dense; out: device (n, channels) float64. Runs on `stream`, asynchronously.
// Pixels whose weight is 0 are skipped, as the CPU's mask spans skip them (a NaN outside a mask
// does not count). Throws CudaError (with the CUDA error text) or std::invalid_argument.
void reduce_frames_device(const void* frames, FrameType type, long long n, int det_y, int det_x,
                          const float* masks, int k, const std::vector<std::uint8_t>& moments,
                          const std::vector<double>& thresholds, double* out,
                          cudaStream_t stream);

// Output columns for these moments (1 per mask, 3 with moments).
int n_channels(const std::vector<std::uint8_t>& moments);

}  // namespace stemedge::cuda
