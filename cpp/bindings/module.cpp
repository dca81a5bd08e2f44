// stemedge._native: the pybind11 module. One init_<area> per binding file.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace stemedge::bind {
void init_kernels(py::module_& m);
void init_info(py::module_& m);
void init_ring(py::module_& m);
void init_bslz4(py::module_& m);
void init_ssb(py::module_& m);
void init_codec(py::module_& m);
}  // namespace stemedge::bind

PYBIND11_MODULE(_native, m) {
    m.doc() = "stemedge native core: CPU kernels, mask plans, frame ring, SSB, build information";
    stemedge::bind::init_kernels(m);
    stemedge::bind::init_info(m);
    stemedge::bind::init_ring(m);
    stemedge::bind::init_bslz4(m);
    stemedge::bind::init_ssb(m);
    stemedge::bind::init_codec(m);
}
