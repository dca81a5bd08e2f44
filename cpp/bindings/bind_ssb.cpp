// Python bindings of the SSB core: bright-field pixel plans, trotter weights and the two routes'
// kernels. Arrays are checked here (dtype, shape, contiguity) so the core can trust its inputs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <complex>
#include <string>
#include <vector>

#include "array_views.hpp"
#include "stemedge/ssb.hpp"

namespace stemedge::bind {
namespace {

using ssb::BfPixels;
using ssb::Trotters;

template <class T>
py::array_t<T, py::array::c_style> vector_array(const char* name, const py::array& a,
                                                std::size_t n = SIZE_MAX) {
    if (!py::isinstance<py::array_t<T>>(a) || a.ndim() != 1 || !(a.flags() & py::array::c_style))
        throw py::type_error(std::string(name) + ": pass a 1-D C-contiguous " +
                             std::string(py::str(py::dtype::of<T>())) + " array");
    if (n != SIZE_MAX && static_cast<std::size_t>(a.shape(0)) != n)
        throw py::value_error(std::string(name) + ": expected " + std::to_string(n) +
                              " elements, got " + std::to_string(a.shape(0)));
    return py::array_t<T, py::array::c_style>(a);
}

BfPixels make_pixels(std::pair<std::size_t, std::size_t> det_shape, const py::array& ptr,
                     const py::array& pix) {
    BfPixels bf;
    bf.det_y = det_shape.first;
    bf.det_x = det_shape.second;
    if (bf.det_y == 0 || bf.det_x == 0) throw py::value_error("det_shape must be positive");
    auto p = vector_array<std::uint32_t>("ptr", ptr);
    auto q = vector_array<std::uint32_t>("pix", pix);
    if (p.shape(0) < 1 || p.data()[0] != 0 || p.data()[p.shape(0) - 1] != q.shape(0))
        throw py::value_error("ptr must start at 0 and end at len(pix)");
    for (py::ssize_t i = 1; i < p.shape(0); ++i)
        if (p.data()[i] < p.data()[i - 1]) throw py::value_error("ptr must be non-decreasing");
    const std::size_t n = bf.det_y * bf.det_x;
    for (py::ssize_t i = 0; i < q.shape(0); ++i)
        if (q.data()[i] >= n)
            throw py::value_error("pix holds " + std::to_string(q.data()[i]) +
                                  ", outside a detector of " + std::to_string(n) + " pixels");
    bf.ptr.assign(p.data(), p.data() + p.shape(0));
    bf.pix.assign(q.data(), q.data() + q.shape(0));
    return bf;
}

Trotters make_trotters(const py::array& ky, const py::array& kx, const py::array& qy,
                       const py::array& qx, double k_alpha, double wavelength,
                       const std::vector<double>& aberrations, std::size_t cutoff,
                       const std::string& normalization, std::size_t nthreads) {
    auto ky_ = vector_array<double>("ky", ky);
    auto kx_ = vector_array<double>("kx", kx, ky_.shape(0));
    auto qy_ = vector_array<double>("qy", qy);
    auto qx_ = vector_array<double>("qx", qx, qy_.shape(0));
    if (aberrations.size() != 8)
        throw py::value_error("aberrations: pass 8 values (C10, C12, phi12, C21, phi21, C23, phi23, C30)");
    ssb::TrotterParams p;
    p.k_alpha = k_alpha;
    p.wavelength = wavelength;
    p.ab = {aberrations[0], aberrations[1], aberrations[2], aberrations[3],
            aberrations[4], aberrations[5], aberrations[6], aberrations[7]};
    p.cutoff = cutoff;
    if (normalization == "flat") p.norm = ssb::Norm::kFlat;
    else if (normalization == "matched") p.norm = ssb::Norm::kMatched;
    else throw py::value_error("normalization must be 'flat' or 'matched', got '" + normalization + "'");
    py::gil_scoped_release release;
    return ssb::build_trotters(ky_.data(), kx_.data(), static_cast<std::size_t>(ky_.shape(0)),
                               qy_.data(), qx_.data(), static_cast<std::size_t>(qy_.shape(0)), p,
                               nthreads);
}

py::array weights(const Trotters& t) {
    if (!t.is_complex) return to_numpy(t.w_re);
    py::array_t<std::complex<float>> out(static_cast<py::ssize_t>(t.nnz()));
    auto* d = out.mutable_data();
    for (std::size_t j = 0; j < t.nnz(); ++j) d[j] = {t.w_re[j], t.w_im[j]};
    return out;
}

void gather(const py::array& frames, const BfPixels& bf, const py::array& out,
            const py::array& mean, bool center, std::size_t nthreads) {
    const FrameStackView v = frame_view(frames, "frames");
    if (v.det_y != bf.det_y || v.det_x != bf.det_x)
        throw py::value_error("frames have detector shape (" + std::to_string(v.det_y) + ", " +
                              std::to_string(v.det_x) + ") but the pixel plan was made for (" +
                              std::to_string(bf.det_y) + ", " + std::to_string(bf.det_x) + ")");
    const std::size_t n = v.n_frames(), np = bf.size();
    if (!py::isinstance<py::array_t<float>>(out) || out.ndim() != 2 ||
        !(out.flags() & py::array::c_style) || !out.writeable() ||
        static_cast<std::size_t>(out.shape(0)) != n || static_cast<std::size_t>(out.shape(1)) != np)
        throw py::type_error("out: pass a writeable C-contiguous float32 array of shape (" +
                             std::to_string(n) + ", " + std::to_string(np) + ")");
    if (!py::isinstance<py::array_t<double>>(mean) || mean.ndim() != 1 ||
        !(mean.flags() & py::array::c_style) || !mean.writeable() ||
        static_cast<std::size_t>(mean.shape(0)) != np)
        throw py::type_error("mean: pass a writeable float64 array of shape (" + std::to_string(np) + ",)");
    auto* o = static_cast<float*>(py::array(out).mutable_data());
    auto* m = static_cast<double*>(py::array(mean).mutable_data());
    py::gil_scoped_release release;
    ssb::gather_cube(v, bf, o, m, center, nthreads);
}

py::array_t<std::complex<double>> apply(const Trotters& t, const py::array& g, const py::array& cells,
                                        std::size_t nthreads) {
    if (!py::isinstance<py::array_t<std::complex<float>>>(g) || g.ndim() != 2 ||
        !(g.flags() & py::array::c_style) || static_cast<std::size_t>(g.shape(1)) != t.n_pixels)
        throw py::type_error("g: pass a C-contiguous complex64 array (n_cells, " +
                             std::to_string(t.n_pixels) + ")");
    auto c = vector_array<std::int64_t>("cells", cells, t.n_columns());
    py::array_t<std::complex<double>> out(static_cast<py::ssize_t>(t.n_columns()));
    const auto* gp = static_cast<const std::complex<float>*>(g.data());
    auto* op = out.mutable_data();
    const std::size_t n_cells = static_cast<std::size_t>(g.shape(0));
    {
        py::gil_scoped_release release;
        ssb::apply(t, gp, n_cells, c.data(), op, nthreads);
    }
    return out;
}

void accumulate(const Trotters& t, const BfPixels& bf, const py::array& frames,
                const py::array& positions, std::pair<std::size_t, std::size_t> scan_shape,
                const py::array& col_qy, const py::array& col_qx, const py::array& F,
                std::size_t nthreads) {
    if (py::array(frames).ndim() != 3) throw py::value_error("frames: pass a stack (n, det_y, det_x)");
    const FrameStackView v = frame_view(frames, "frames");
    if (v.det_y != bf.det_y || v.det_x != bf.det_x)
        throw py::value_error("frames do not have the pixel plan's detector shape");
    auto pos = vector_array<std::int64_t>("positions", positions, v.n_frames());
    auto qy = vector_array<std::int32_t>("col_qy", col_qy, t.n_columns());
    auto qx = vector_array<std::int32_t>("col_qx", col_qx, t.n_columns());
    if (!py::isinstance<py::array_t<std::complex<double>>>(F) || F.ndim() != 1 ||
        !(F.flags() & py::array::c_style) || !F.writeable() ||
        static_cast<std::size_t>(F.shape(0)) != t.n_columns())
        throw py::type_error("F: pass a writeable complex128 array of shape (" +
                             std::to_string(t.n_columns()) + ",)");
    auto* f = static_cast<std::complex<double>*>(py::array(F).mutable_data());
    py::gil_scoped_release release;
    ssb::accumulate(t, bf, v, pos.data(), scan_shape.first, scan_shape.second, qy.data(), qx.data(),
                    f, nthreads);
}

}  // namespace

void init_ssb(py::module_& m) {
    py::class_<BfPixels>(m, "SsbPixels",
                         "Bright-field pixels read by SSB: pixel p sums detector pixels "
                         "pix[ptr[p]:ptr[p+1]] (flat y*det_x + x).")
        .def(py::init(&make_pixels), py::arg("det_shape"), py::arg("ptr"), py::arg("pix"))
        .def("__len__", &BfPixels::size)
        .def_property_readonly("det_shape",
                               [](const BfPixels& b) { return py::make_tuple(b.det_y, b.det_x); });
    py::class_<Trotters>(m, "SsbTrotters",
                         "SSB weights W(k, Q) for candidate frequencies, one sparse column per "
                         "kept Q (native weight generation).")
        .def(py::init(&make_trotters), py::arg("ky"), py::arg("kx"), py::arg("qy"), py::arg("qx"),
             py::arg("k_alpha"), py::arg("wavelength"), py::arg("aberrations"),
             py::arg("cutoff") = 1, py::arg("normalization") = "flat", py::arg("nthreads") = 0)
        .def_property_readonly("n_pixels", [](const Trotters& t) { return t.n_pixels; })
        .def_property_readonly("n_columns", &Trotters::n_columns)
        .def_property_readonly("nnz", &Trotters::nnz)
        .def_property_readonly("is_complex", [](const Trotters& t) { return t.is_complex; })
        .def_property_readonly("kept", [](const Trotters& t) { return to_numpy(t.kept); })
        .def_property_readonly("ptr", [](const Trotters& t) { return to_numpy(t.ptr); })
        .def_property_readonly("idx", [](const Trotters& t) { return to_numpy(t.idx); })
        .def_property_readonly("weights", &weights)
        .def_property_readonly("transfer", [](const Trotters& t) { return to_numpy(t.transfer); });
    m.def("ssb_gather", &gather,
          "out[f, p] = bright-field pixel p of frame f (float32), mean[p] its mean over the frames "
          "(float64); center=True subtracts the mean from out.",
          py::arg("frames").noconvert(), py::arg("pixels"), py::arg("out").noconvert(),
          py::arg("mean").noconvert(), py::arg("center") = true, py::arg("nthreads") = 0);
    m.def("ssb_apply", &apply, "out[c] = sum_j W_j * g[cells[c], idx_j] (complex128).",
          py::arg("trotters"), py::arg("g").noconvert(), py::arg("cells").noconvert(),
          py::arg("nthreads") = 0);
    m.def("ssb_accumulate", &accumulate,
          "F[c] += sum_b sum_j W_j I_b[idx_j] exp(-2 pi i (qy_c y_b / Ny + qx_c x_b / Nx)) for a "
          "stack of frames at flat scan positions.",
          py::arg("trotters"), py::arg("pixels"), py::arg("frames").noconvert(),
          py::arg("positions").noconvert(), py::arg("scan_shape"), py::arg("col_qy").noconvert(),
          py::arg("col_qx").noconvert(), py::arg("F").noconvert(), py::arg("nthreads") = 0);
}

}  // namespace stemedge::bind
