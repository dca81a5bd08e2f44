// Binding of the frame ring. Waits and copies release the GIL; slot views are numpy arrays on
// the ring's memory that keep the ring alive (never copies).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <memory>
#include <string>

#include "array_views.hpp"
#include "stemedge/frame_ring.hpp"

namespace py = pybind11;

namespace stemedge::bind {
namespace {

// The ring plus what numpy needs to view its slots as frames.
struct RingHandle {
    std::unique_ptr<FrameRing> ring;
    std::size_t det_y = 0, det_x = 0;
    DType dtype = DType::kU16;
    py::dtype np_dtype;
};

double timeout_arg(const py::object& timeout) {
    if (timeout.is_none()) return -1.0;
    const double t = timeout.cast<double>();
    if (!(t >= 0) || std::isinf(t))
        throw py::value_error("timeout must be a non-negative number of seconds or None (wait forever)");
    return t;
}

RingPolicy parse_policy(const std::string& p) {
    if (p == "block") return RingPolicy::kBlock;
    if (p == "drop") return RingPolicy::kDrop;
    throw py::value_error("policy must be 'block' (backpressure) or 'drop', got '" + p + "'");
}

void check_slot_index(const RingHandle& h, int slot) {
    if (slot < 0 || static_cast<std::size_t>(slot) >= h.ring->config().n_slots)
        throw py::index_error("slot " + std::to_string(slot) + " does not exist (ring has " +
                              std::to_string(h.ring->config().n_slots) + " slots)");
}

py::array slot_frames_view(py::object self, int slot) {
    auto& h = self.cast<RingHandle&>();
    check_slot_index(h, slot);
    const auto isz = static_cast<py::ssize_t>(itemsize(h.dtype));
    const auto dx = static_cast<py::ssize_t>(h.det_x), dy = static_cast<py::ssize_t>(h.det_y);
    return py::array(h.np_dtype, {static_cast<py::ssize_t>(h.ring->config().slot_frames), dy, dx},
                     {dy * dx * isz, dx * isz, isz}, h.ring->slot_data(slot), self);
}

py::array slot_bytes_view(py::object self, int slot) {
    auto& h = self.cast<RingHandle&>();
    check_slot_index(h, slot);
    const auto n = static_cast<py::ssize_t>(h.ring->config().slot_frames * h.ring->config().frame_bytes);
    return py::array(py::dtype("u1"), {n}, {py::ssize_t{1}}, h.ring->slot_data(slot), self);
}

py::array slot_indices_view(py::object self, int slot) {
    auto& h = self.cast<RingHandle&>();
    check_slot_index(h, slot);
    return py::array_t<std::int64_t>({static_cast<py::ssize_t>(h.ring->config().slot_frames)},
                                     h.ring->slot_indices(slot), self);
}

py::array slot_nbytes_view(py::object self, int slot) {
    auto& h = self.cast<RingHandle&>();
    check_slot_index(h, slot);
    return py::array_t<std::uint32_t>({static_cast<py::ssize_t>(h.ring->config().slot_frames)},
                                      h.ring->slot_nbytes(slot), self);
}

std::size_t push_frames(RingHandle& h, const py::array& frames, const py::array& indices,
                        const py::object& timeout) {
    const FrameStackView v = frame_view(frames, "frames");
    if (v.dtype != h.dtype)
        throw py::type_error(std::string("frames: dtype ") + dtype_name(v.dtype) + " but the ring holds " +
                             dtype_name(h.dtype) + " frames; convert them once before writing");
    if (v.det_y != h.det_y || v.det_x != h.det_x)
        throw py::value_error("frames: detector shape (" + std::to_string(v.det_y) + ", " +
                              std::to_string(v.det_x) + ") but the ring holds (" + std::to_string(h.det_y) +
                              ", " + std::to_string(h.det_x) + ") frames");
    if (frames.ndim() != 3)
        throw py::value_error("frames: pass a stack (n, det_y, det_x)");
    const std::size_t n = v.n_frames();
    const auto row_bytes = static_cast<std::ptrdiff_t>(h.det_x * itemsize(h.dtype));
    // A one-row frame (a spectrum, (1, channels)) has no row stride to speak of: numpy may give
    // its length-1 axis any stride, even in a C-contiguous array.
    if (n > 0 && h.det_y > 1 && v.row_stride != row_bytes)
        throw py::type_error("frames: each frame must be contiguous; pass np.ascontiguousarray(frames)");
    if (!py::isinstance<py::array_t<std::int64_t>>(indices) || indices.ndim() != 1 ||
        static_cast<std::size_t>(indices.shape(0)) != n || !(indices.flags() & py::array::c_style))
        throw py::type_error("indices: pass a contiguous int64 array with one scan index per frame");
    const double t = timeout_arg(timeout);
    const auto* src = v.base;
    const auto stride = v.outer_stride[1];
    const auto* idx = static_cast<const std::int64_t*>(indices.data());
    py::gil_scoped_release release;
    return h.ring->push(src, stride, n, idx, t);
}

py::dict counters_dict(const RingCounters& c) {
    py::dict d;
    d["frames_in"] = c.frames_in;
    d["frames_processed"] = c.frames_processed;
    d["frames_dropped"] = c.frames_dropped;
    d["frames_discarded"] = c.frames_discarded;
    d["stacks_in"] = c.stacks_in;
    d["stacks_processed"] = c.stacks_processed;
    d["full_events"] = c.full_events;
    d["filled"] = c.filled;
    d["reading"] = c.reading;
    d["high_water"] = c.high_water;
    d["producer_wait_s"] = c.producer_wait_s;
    d["consumer_wait_s"] = c.consumer_wait_s;
    d["latency_count"] = c.latency_count;
    d["latency_sum_s"] = c.latency_sum_s;
    d["latency_max_s"] = c.latency_max_s;
    py::list hist;
    for (auto v : c.latency_hist) hist.append(v);
    d["latency_hist_log2_us"] = hist;
    return d;
}

}  // namespace

void init_ring(py::module_& m) {
    py::class_<RingHandle>(m, "FrameRing", "Native frame ring (see stemedge.ring.FrameRing)")
        .def(py::init([](std::size_t n_slots, std::size_t slot_frames, std::pair<std::size_t, std::size_t> shape,
                         const py::object& dtype, const std::string& policy, bool huge_pages) {
                 auto h = std::make_unique<RingHandle>();
                 h->dtype = frame_dtype(py::dtype::from_args(dtype), "dtype");
                 h->np_dtype = py::dtype(dtype_name(h->dtype));
                 if (shape.first < 1 || shape.second < 1)
                     throw py::value_error("frame_shape must be positive");
                 h->det_y = shape.first;
                 h->det_x = shape.second;
                 RingConfig cfg;
                 cfg.n_slots = n_slots;
                 cfg.slot_frames = slot_frames;
                 cfg.frame_bytes = shape.first * shape.second * itemsize(h->dtype);
                 cfg.policy = parse_policy(policy);
                 cfg.huge_pages = huge_pages;
                 {
                     py::gil_scoped_release release;  // touching a large slab takes a while
                     h->ring = std::make_unique<FrameRing>(cfg);
                 }
                 return h;
             }),
             py::arg("n_slots"), py::arg("slot_frames"), py::arg("frame_shape"), py::arg("dtype"),
             py::arg("policy") = "block", py::arg("huge_pages") = true)
        .def_property_readonly("n_slots", [](const RingHandle& h) { return h.ring->config().n_slots; })
        .def_property_readonly("slot_frames", [](const RingHandle& h) { return h.ring->config().slot_frames; })
        .def_property_readonly("frame_bytes", [](const RingHandle& h) { return h.ring->config().frame_bytes; })
        .def_property_readonly("frame_shape", [](const RingHandle& h) { return py::make_tuple(h.det_y, h.det_x); })
        .def_property_readonly("dtype", [](const RingHandle& h) { return h.np_dtype; })
        .def_property_readonly("policy", [](const RingHandle& h) {
            return h.ring->config().policy == RingPolicy::kBlock ? "block" : "drop";
        })
        .def_property_readonly("slot_bytes", [](const RingHandle& h) { return h.ring->slot_bytes(); })
        .def_property_readonly("slab_bytes", [](const RingHandle& h) { return h.ring->slab_bytes(); })
        .def_property_readonly("data_address", [](RingHandle& h) {
            return reinterpret_cast<std::uintptr_t>(h.ring->data());
        })
        .def_property_readonly("huge_pages_advised", [](const RingHandle& h) { return h.ring->huge_pages_advised(); })
        .def("frames_view", &slot_frames_view, py::arg("slot"))
        .def("bytes_view", &slot_bytes_view, py::arg("slot"))
        .def("indices_view", &slot_indices_view, py::arg("slot"))
        .def("nbytes_view", &slot_nbytes_view, py::arg("slot"))
        .def("acquire_write", [](RingHandle& h, const py::object& timeout) {
                 const double t = timeout_arg(timeout);
                 py::gil_scoped_release release;
                 return h.ring->acquire_write(t);
             }, py::arg("timeout") = py::none())
        .def("commit", [](RingHandle& h, int slot, std::size_t n, std::uint32_t encoding) {
                 h.ring->commit(slot, n, encoding);
             }, py::arg("slot"), py::arg("n_frames"), py::arg("encoding") = 0)
        .def("cancel", [](RingHandle& h, int slot) { h.ring->cancel(slot); }, py::arg("slot"))
        .def("count_dropped", [](RingHandle& h, std::uint64_t n) { h.ring->count_dropped(n); }, py::arg("n"))
        .def("push", &push_frames, py::arg("frames"), py::arg("indices"), py::arg("timeout") = py::none())
        .def("acquire_read", [](RingHandle& h, const py::object& timeout) {
                 const double t = timeout_arg(timeout);
                 py::gil_scoped_release release;
                 return h.ring->acquire_read(t);
             }, py::arg("timeout") = py::none())
        .def("slot_info", [](const RingHandle& h, int slot) {
                 check_slot_index(h, slot);
                 const auto info = h.ring->slot_info(slot);
                 return py::make_tuple(info.n_frames, info.encoding, info.sequence);
             }, py::arg("slot"))
        .def("release", [](RingHandle& h, int slot) { h.ring->release(slot); }, py::arg("slot"))
        .def("close", [](RingHandle& h) { h.ring->close(); })
        .def("abort", [](RingHandle& h) { h.ring->abort(); })
        .def_property_readonly("closed", [](const RingHandle& h) { return h.ring->closed(); })
        .def_property_readonly("aborted", [](const RingHandle& h) { return h.ring->aborted(); })
        .def("counters", [](const RingHandle& h) { return counters_dict(h.ring->counters()); });
    m.attr("RING_TIMEOUT") = FrameRing::kTimeout;
    m.attr("RING_CLOSED") = FrameRing::kClosed;
    m.attr("RING_FULL") = FrameRing::kFull;
}

}  // namespace stemedge::bind
