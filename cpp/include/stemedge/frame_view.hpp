// Non-owning, typed, strided views of frame stacks: the only form in which frames enter kernels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace stemedge {

enum class DType : std::uint8_t { kU8, kU16, kU32, kF32 };

inline std::size_t itemsize(DType t) {
    switch (t) {
        case DType::kU8: return 1;
        case DType::kU16: return 2;
        case DType::kU32: return 4;
        case DType::kF32: return 4;
    }
    return 0;
}

inline const char* dtype_name(DType t) {
    switch (t) {
        case DType::kU8: return "uint8";
        case DType::kU16: return "uint16";
        case DType::kU32: return "uint32";
        case DType::kF32: return "float32";
    }
    return "?";
}

// Frames indexed by up to two outer (scan) axes with arbitrary byte strides; rows of a frame are
// `row_stride` bytes apart and pixels within a row are contiguous (the only hard requirement:
// that is what lets the kernels vectorise without gathers).
struct FrameStackView {
    const std::uint8_t* base = nullptr;
    DType dtype = DType::kU16;
    std::size_t outer[2] = {1, 0};          // (scan_y, scan_x) or (1, n)
    std::ptrdiff_t outer_stride[2] = {0, 0};  // bytes
    std::size_t det_y = 0, det_x = 0;
    std::ptrdiff_t row_stride = 0;  // bytes

    std::size_t n_frames() const { return outer[0] * outer[1]; }

    const std::uint8_t* frame(std::size_t i) const {
        const std::size_t iy = i / outer[1], ix = i % outer[1];
        return base + static_cast<std::ptrdiff_t>(iy) * outer_stride[0] +
               static_cast<std::ptrdiff_t>(ix) * outer_stride[1];
    }

    template <class T>
    const T* row(const std::uint8_t* frame_ptr, std::size_t y) const {
        return reinterpret_cast<const T*>(frame_ptr + static_cast<std::ptrdiff_t>(y) * row_stride);
    }
};

}  // namespace stemedge
