#pragma once

namespace stemedge::bind::doc {

inline constexpr const char* kMaskPlan = R"(Detector masks compiled into per-row spans.

MaskPlan(masks, mode='auto'): masks is a float32 array (k, det_y, det_x). Zero pixels are skipped
('sparse'); with mode='auto' a mask with many short runs covering >10 % of the frame is stored as
whole weighted row segments ('dense'). Plans are immutable and may be shared between threads.)";

inline constexpr const char* kReduce = R"(Weighted sums (and first moments) of every frame.

reduce(frames, plan, moments, thresholds, nthreads=0, out=None) -> float64 (n_frames, channels):
for each mask m, the channels S = Σ M·I, then Σ y·M·I and Σ x·M·I if moments[m]. thresholds[m]
(NaN for none) zeroes pixels with I < t before weighting. frames: (n, det_y, det_x) or
(scan_y, scan_x, det_y, det_x) uint8/uint16/uint32/float32, rows contiguous; read in place, never
copied. The GIL is released while computing.)";

inline constexpr const char* kReadPass = R"(Read every byte of the frames once (sum of 64-bit words).

The practical memory-bandwidth limit that the kernels are measured against; returns a checksum.)";

}  // namespace stemedge::bind::doc
