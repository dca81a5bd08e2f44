// stemedge._cuda bindings. The kernels themselves arrive with the GPU issue; this module already
// proves the CUDA toolchain, the static runtime and device discovery on every build.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "device.hpp"

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
}
