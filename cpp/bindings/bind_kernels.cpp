// Bindings of the frame reductions (centre of mass, virtual detectors, fused pass all use
// `reduce`), the compiled mask plans and the read-once baseline.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "array_views.hpp"
#include "kernels_doc.hpp"
#include "stemedge/frame_sum.hpp"
#include "stemedge/mask_plan.hpp"
#include "stemedge/reduce.hpp"

namespace py = pybind11;

namespace stemedge::bind {
namespace {

MaskMode parse_mode(const std::string& mode) {
    if (mode == "auto") return MaskMode::kAuto;
    if (mode == "dense") return MaskMode::kDense;
    if (mode == "sparse") return MaskMode::kSparse;
    throw py::value_error("mode must be 'auto', 'dense' or 'sparse', got '" + mode + "'");
}

MaskPlan make_plan(const py::array& masks, const std::string& mode) {
    if (!py::isinstance<py::array_t<float>>(masks) || masks.dtype().byteorder() == '>')
        throw py::type_error("masks: pass a float32 array (k, det_y, det_x), e.g. "
                             "masks.astype(np.float32)");
    if (masks.ndim() != 3) throw py::value_error("masks: expected shape (k, det_y, det_x)");
    if (!(masks.flags() & py::array::c_style))
        throw py::type_error("masks: pass a C-contiguous array (np.ascontiguousarray(masks))");
    const auto* s = masks.shape();
    const auto* data = static_cast<const float*>(masks.data());
    const MaskMode m = parse_mode(mode);
    py::gil_scoped_release release;  // large masks take a while to scan
    return MaskPlan(data, static_cast<std::size_t>(s[0]), static_cast<std::size_t>(s[1]),
                    static_cast<std::size_t>(s[2]), m);
}

py::array_t<double> reduce(const py::array& frames, const MaskPlan& plan,
                           const std::vector<bool>& moments, const std::vector<double>& thresholds,
                           std::size_t nthreads, const py::object& out) {
    const FrameStackView view = frame_view(frames, "frames");
    ReduceOptions opt;
    opt.moments.assign(moments.begin(), moments.end());
    opt.thresholds = thresholds;
    opt.nthreads = nthreads;
    const std::size_t n = view.n_frames(), nch = n_channels(opt, plan.n_masks());
    py::array_t<double> result;
    if (out.is_none()) {
        result = py::array_t<double>({n, nch});
    } else {
        result = py::reinterpret_borrow<py::array>(out);
        if (!py::isinstance<py::array_t<double>>(out))
            throw py::type_error("out: must be a float64 array");
        if (!(result.flags() & py::array::c_style) || !result.writeable() || result.ndim() != 2 ||
            static_cast<std::size_t>(result.shape(0)) != n ||
            static_cast<std::size_t>(result.shape(1)) != nch)
            throw py::value_error("out: must be a writeable C-contiguous float64 array of shape (" +
                                  std::to_string(n) + ", " + std::to_string(nch) + ")");
    }
    double* dst = result.mutable_data();
    {
        py::gil_scoped_release release;
        reduce_frames(view, plan, opt, dst);
    }
    return result;
}

std::uint64_t read_once(const py::array& frames, std::size_t nthreads) {
    const FrameStackView view = frame_view(frames, "frames");
    py::gil_scoped_release release;
    return read_pass(view, nthreads);
}

void sum_into(const py::array& frames, const py::array& acc, std::size_t nthreads) {
    const FrameStackView view = frame_view(frames, "frames");
    if (!py::isinstance<py::array_t<double>>(acc) || acc.ndim() != 2 ||
        !(acc.flags() & py::array::c_style) || !acc.writeable() ||
        static_cast<std::size_t>(acc.shape(0)) != view.det_y ||
        static_cast<std::size_t>(acc.shape(1)) != view.det_x)
        throw py::type_error("acc: pass a writeable C-contiguous float64 array of shape (" +
                             std::to_string(view.det_y) + ", " + std::to_string(view.det_x) + ")");
    if (py::array(frames).ndim() != 3) throw py::value_error("frames: pass a stack (n, det_y, det_x)");
    auto* out = static_cast<double*>(py::array(acc).mutable_data());
    if (!(frames.size() == 0) && frames.data() == static_cast<const void*>(out))
        throw py::value_error("acc must not share memory with frames");
    py::gil_scoped_release release;
    sum_frames(view, out, nthreads);
}

}  // namespace

void init_kernels(py::module_& m) {
    py::class_<MaskPlan>(m, "MaskPlan", doc::kMaskPlan)
        .def(py::init(&make_plan), py::arg("masks").noconvert(), py::arg("mode") = "auto")
        .def_property_readonly("n_masks", &MaskPlan::n_masks)
        .def_property_readonly("det_shape",
                               [](const MaskPlan& p) { return py::make_tuple(p.det_y(), p.det_x()); })
        .def_property_readonly("n_spans", [](const MaskPlan& p) { return p.spans().size(); })
        .def("binary", &MaskPlan::binary, py::arg("m"))
        .def("dense", &MaskPlan::dense, py::arg("m"))
        .def("covered_pixels", &MaskPlan::covered_pixels, py::arg("m"))
        .def("weight_sum", &MaskPlan::weight_sum, py::arg("m"));

    m.def("reduce", &reduce, doc::kReduce, py::arg("frames").noconvert(), py::arg("plan"),
          py::arg("moments"), py::arg("thresholds"), py::arg("nthreads") = 0,
          py::arg("out") = py::none());
    m.def("sum_frames", &sum_into,
          "acc += frames.sum(axis=0): per-pixel sum of a stack (n, det_y, det_x) into a float64 "
          "(det_y, det_x) accumulator; integers exact, float32 in float64 (NaN propagates).",
          py::arg("frames").noconvert(), py::arg("acc").noconvert(), py::arg("nthreads") = 0);
    m.def("read_pass", &read_once, doc::kReadPass, py::arg("frames").noconvert(),
          py::arg("nthreads") = 0);
    m.def("set_backend", &set_backend, py::arg("name"),
          "Select the kernel backend: 'auto' or one of available_backends().");
    m.def("active_backend", &active_backend, "Name of the kernel backend in use.");
    m.def("compiled_backends", &compiled_backends, "Kernel backends compiled into this build.");
    m.def("available_backends", &available_backends,
          "Compiled kernel backends this CPU can run ('ref' is the scalar reference).");
}

}  // namespace stemedge::bind
