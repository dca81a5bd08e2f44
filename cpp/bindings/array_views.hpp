// numpy array -> FrameStackView, with the checks that make a silent copy impossible: the array is
// read in place or refused with an error that says what to pass instead.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <vector>

#include "stemedge/frame_view.hpp"

namespace stemedge::bind {

namespace py = pybind11;

// A 1-D numpy array holding a copy of v.
template <class T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
    py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
    std::copy(v.begin(), v.end(), out.mutable_data());
    return out;
}

inline DType frame_dtype(const py::dtype& dt, const char* name) {
    const char kind = dt.kind();
    const auto size = dt.itemsize();
    const char order = dt.byteorder();
    if (order == '>')
        throw py::type_error(std::string(name) + ": big-endian data (e.g. Merlin '>u2'); pass " +
                             name + ".astype(" + name + ".dtype.newbyteorder('='))");
    if (kind == 'u' && size == 1) return DType::kU8;
    if (kind == 'u' && size == 2) return DType::kU16;
    if (kind == 'u' && size == 4) return DType::kU32;
    if (kind == 'f' && size == 4) return DType::kF32;
    throw py::type_error(std::string(name) + ": dtype " + std::string(py::str(dt)) +
                         " is not supported; pass uint8, uint16, uint32 or float32 frames (e.g. " +
                         name + ".astype(np.float32))");
}

inline DType frame_dtype(const py::array& a, const char* name) { return frame_dtype(a.dtype(), name); }

inline FrameStackView frame_view(const py::array& a, const char* name) {
    FrameStackView v;
    v.dtype = frame_dtype(a, name);
    const auto nd = a.ndim();
    if (nd != 3 && nd != 4)
        throw py::value_error(std::string(name) + ": expected a stack (n, det_y, det_x) or a 4D scan "
                              "(scan_y, scan_x, det_y, det_x), got " + std::to_string(nd) + " dimensions");
    const auto* shape = a.shape();
    const auto* strides = a.strides();
    v.det_y = static_cast<std::size_t>(shape[nd - 2]);
    v.det_x = static_cast<std::size_t>(shape[nd - 1]);
    if (v.det_y == 0 || v.det_x == 0)
        throw py::value_error(std::string(name) + ": frames have an empty detector axis");
    const bool no_frames = a.size() == 0;  // numpy gives empty arrays arbitrary strides
    if (!no_frames && static_cast<std::size_t>(strides[nd - 1]) != itemsize(v.dtype) && v.det_x > 1)
        throw py::type_error(std::string(name) + ": pixels within a row must be contiguous (last-axis "
                             "stride " + std::to_string(strides[nd - 1]) + " bytes); pass "
                             "np.ascontiguousarray(" + name + ")");
    if (reinterpret_cast<std::uintptr_t>(a.data()) % itemsize(v.dtype) != 0)
        throw py::type_error(std::string(name) + ": data is not aligned to its dtype; pass a copy");
    v.base = static_cast<const std::uint8_t*>(a.data());
    v.row_stride = strides[nd - 2];
    if (nd == 3) {
        v.outer[0] = 1;
        v.outer[1] = static_cast<std::size_t>(shape[0]);
        v.outer_stride[0] = 0;
        v.outer_stride[1] = strides[0];
    } else {
        v.outer[0] = static_cast<std::size_t>(shape[0]);
        v.outer[1] = static_cast<std::size_t>(shape[1]);
        v.outer_stride[0] = strides[0];
        v.outer_stride[1] = strides[1];
    }
    return v;
}

}  // namespace stemedge::bind
