// stemedge._cuda bindings: device discovery and the GPU kernels. Arrays arrive as raw device
// pointers read by python/stemedge/gpu.py from __cuda_array_interface__ (cupy, numba, torch...);
// every call runs on the stream it is given and returns before the kernel finishes.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "device.hpp"
#include "reduce.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
    m.doc() = "stemedge CUDA extension";
    m.def("device_report", [] {
        const auto r = stemedge::cuda::query_devices();
        py::list devices;
        for (const auto& d : r.devices) {
            py::dict e;
            e["index"] = d.index;
            e["name"] = d.name;
            e["compute_capability"] = d.compute_capability;
            e["total_memory"] = d.total_memory;
            e["multiprocessors"] = d.multiprocessors;
            devices.append(e);
        }
        py::dict out;
        out["devices"] = devices;
        out["error"] = r.error.empty() ? py::object(py::none()) : py::object(py::str(r.error));
        out["driver_version"] = r.driver_version;
        out["runtime_version"] = r.runtime_version;
        out["architectures"] = STEMEDGE_CUDA_ARCHS;
        out["nvcc_version"] = STEMEDGE_CUDA_VERSION;
        return out;
    }, "CUDA devices visible to this process, or the error that prevents their use.");

    m.attr("MAX_MASKS") = stemedge::cuda::kMaxMasks;
    m.def(
        "reduce",
        [](std::uintptr_t frames, const std::string& dtype, long long n, int det_y, int det_x,
           std::uintptr_t masks, int k, const std::vector<bool>& moments,
           const std::vector<double>& thresholds, std::uintptr_t out, std::uintptr_t stream) {
            using stemedge::cuda::FrameType;
            FrameType type;
            if (dtype == "uint8") type = FrameType::kU8;
            else if (dtype == "uint16") type = FrameType::kU16;
            else if (dtype == "uint32") type = FrameType::kU32;
            else if (dtype == "float32") type = FrameType::kF32;
            else throw py::type_error("frames must be uint8, uint16, uint32 or float32, got " + dtype);
            const std::vector<std::uint8_t> mom(moments.begin(), moments.end());
            py::gil_scoped_release release;
            stemedge::cuda::reduce_frames_device(
                reinterpret_cast<const void*>(frames), type, n, det_y, det_x,
                reinterpret_cast<const float*>(masks), k, mom, thresholds,
                reinterpret_cast<double*>(out), reinterpret_cast<cudaStream_t>(stream));
        },
        "GPU twin of _native.reduce on device pointers: frames (n, det_y, det_x) C-contiguous, "
        "masks (k, det_y, det_x) float32 dense, out (n, channels) float64; asynchronous on "
        "`stream` (0: the legacy default stream).",
        py::arg("frames"), py::arg("dtype"), py::arg("n"), py::arg("det_y"), py::arg("det_x"),
        py::arg("masks"), py::arg("k"), py::arg("moments"), py::arg("thresholds"), py::arg("out"),
        py::arg("stream"));
}
