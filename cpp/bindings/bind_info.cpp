// build_info(): what this build compiled and what it will use on this machine.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "build_config.hpp"
#include "stemedge/reduce.hpp"
#include "stemedge/thread_pool.hpp"

namespace py = pybind11;

namespace stemedge::bind {

void init_info(py::module_& m) {
    m.def("build_info", [] {
        py::dict simd;
        for (const auto& name : compiled_backends()) simd[py::str(name)] = backend_description(name);
        py::dict info;
        info["version"] = STEMEDGE_VERSION;
        info["compiler"] = STEMEDGE_COMPILER;
        info["cxx_flags"] = STEMEDGE_CXX_FLAGS;
        info["simd_mode"] = STEMEDGE_SIMD_MODE;
        info["simd_compiled"] = simd;
        info["simd_available"] = available_backends();
        info["simd_active"] = active_backend();
        info["threads"] = ThreadPool::global().size();
        info["cpus_available"] = available_cpus();
        return info;
    }, "What the native extension was compiled with and will use here.");
}

}  // namespace stemedge::bind
