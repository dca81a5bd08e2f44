// Bindings of the bitshuffle-LZ4 / LZ4 decoders (DECTRIS streams). Three steps each: validate
// and take raw views with the GIL, decode without it, build results with it. Inputs are read in
// place (bytes-like objects or uint8 arrays, never converted); outputs are caller-owned arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "array_views.hpp"
#include "stemedge/bslz4.hpp"

namespace py = pybind11;

namespace stemedge::bind {
namespace {

constexpr const char* kDecodeDoc = R"doc(Decode one bitshuffle-LZ4 payload into ``out``.

Parameters
----------
src : bytes-like
    The payload as DECTRIS detectors and the bitshuffle HDF5 filter frame it: a 12-byte header
    (uint64 BE uncompressed bytes, uint32 BE block bytes), then ``[uint32 BE size][LZ4 block]``
    per block, then the ``n % 8`` trailing elements raw. ``bytes``, ``bytearray``, a
    ``memoryview`` or a 1-D uint8 array, contiguous; read in place.
out : numpy.ndarray
    Writable C-contiguous uint8/uint16/uint32/float32 array whose size is the uncompressed frame;
    its item size is the element size of the bitshuffle transform.

Returns
-------
numpy.ndarray
    ``out``.

Raises
------
ValueError
    Corrupt or hostile payload (header total not ``out.nbytes``, block sizes beyond the buffer,
    LZ4 errors, missing or extra bytes). Nothing is read or written out of bounds.
TypeError
    ``src`` or ``out`` of the wrong kind (no silent conversion).
)doc";

constexpr const char* kDecodeStackDoc =
    R"doc(Decode the per-frame payloads of a ring slot, GIL released.

Parameters
----------
raw : uint8 array
    The slot's bytes (``FilledStack.raw``); payload ``i`` starts at ``i * frame_bytes``.
nbytes : uint32 array
    Payload sizes (``FilledStack.nbytes``), at least ``n_frames`` of them, each ``<= frame_bytes``.
n_frames : int
frame_bytes : int
    Uncompressed bytes per frame (the slot stride).
out : numpy.ndarray
    ``(n, det_y, det_x)`` C-contiguous, ``n >= n_frames``, ``det_y * det_x * itemsize ==
    frame_bytes``; must not overlap ``raw``.
nthreads : int
    1 (default) decodes on the calling thread, so several pipeline workers decode in parallel;
    more spreads the frames over the shared thread pool (0: all its threads).

Returns
-------
list of (int, str)
    The frames that failed (zero-filled in ``out``) and why; empty when all decoded.
)doc";

struct ByteSpan {
    const std::uint8_t* data = nullptr;
    std::size_t size = 0;
};

ByteSpan byte_span(const py::buffer_info& info, const char* name) {
    if (info.itemsize != 1)
        throw py::type_error(std::string(name) + ": pass bytes or a uint8 array (got items of " +
                             std::to_string(info.itemsize) + " bytes); use arr.view(np.uint8)");
    if (info.ndim != 1)
        throw py::type_error(std::string(name) + ": pass a 1-D buffer (got " +
                             std::to_string(info.ndim) + " dimensions); use arr.reshape(-1)");
    if (info.shape[0] > 1 && info.strides[0] != 1)
        throw py::type_error(std::string(name) +
                             ": the buffer must be contiguous; pass a copy (bytes(...))");
    return {static_cast<const std::uint8_t*>(info.ptr), static_cast<std::size_t>(info.shape[0])};
}

struct OutSpan {
    std::uint8_t* data = nullptr;
    std::size_t nbytes = 0;
    std::size_t elem_size = 0;
};

OutSpan out_span(py::array& out, const char* name) {
    const DType dt = frame_dtype(out.dtype(), name);
    if (!out.writeable()) throw py::value_error(std::string(name) + ": the array is read-only");
    if (!(out.flags() & py::array::c_style))
        throw py::type_error(std::string(name) +
                             ": pass a C-contiguous array (np.empty(shape, dtype))");
    return {static_cast<std::uint8_t*>(out.mutable_data()), static_cast<std::size_t>(out.nbytes()),
            itemsize(dt)};
}

py::array decode_one(const py::buffer& src, py::array out) {
    const py::buffer_info info = src.request();
    const ByteSpan in = byte_span(info, "src");
    const OutSpan o = out_span(out, "out");
    {
        py::gil_scoped_release release;
        bslz4::decode(in.data, in.size, o.data, o.nbytes, o.elem_size);
    }
    return out;
}

py::array lz4_one(const py::buffer& src, py::array out) {
    const py::buffer_info info = src.request();
    const ByteSpan in = byte_span(info, "src");
    const OutSpan o = out_span(out, "out");
    {
        py::gil_scoped_release release;
        bslz4::lz4_decode(in.data, in.size, o.data, o.nbytes);
    }
    return out;
}

py::bytes lz4_compress(const py::buffer& src) {
    const py::buffer_info info = src.request();
    const ByteSpan in = byte_span(info, "src");
    std::string dst(bslz4::lz4_bound(in.size), '\0');
    std::size_t n = 0;
    {
        py::gil_scoped_release release;
        n = bslz4::lz4_compress(in.data, in.size, reinterpret_cast<std::uint8_t*>(dst.data()),
                                dst.size());
    }
    return py::bytes(dst.data(), n);
}

py::list decode_stack(const py::buffer& raw, const py::array& nbytes, std::size_t n_frames,
                      std::size_t frame_bytes, py::array out, std::size_t nthreads) {
    const py::buffer_info info = raw.request();
    const ByteSpan in = byte_span(info, "raw");
    if (!py::isinstance<py::array_t<std::uint32_t>>(nbytes) || nbytes.dtype().byteorder() == '>' ||
        nbytes.ndim() != 1 || !(nbytes.flags() & py::array::c_style))
        throw py::type_error("nbytes: pass a contiguous 1-D uint32 array (FilledStack.nbytes)");
    if (static_cast<std::size_t>(nbytes.shape(0)) < n_frames)
        throw py::value_error("nbytes: " + std::to_string(nbytes.shape(0)) +
                              " sizes for n_frames=" + std::to_string(n_frames));
    if (frame_bytes == 0) throw py::value_error("frame_bytes must be positive");
    if (n_frames > in.size / frame_bytes)
        throw py::value_error("raw: " + std::to_string(in.size) + " bytes cannot hold " +
                              std::to_string(n_frames) + " frames of " +
                              std::to_string(frame_bytes) + " bytes");
    const OutSpan o = out_span(out, "out");
    if (out.ndim() != 3)
        throw py::value_error("out: expected a stack (n, det_y, det_x), got " +
                              std::to_string(out.ndim()) + " dimensions");
    const std::size_t per_frame = static_cast<std::size_t>(out.shape(1)) *
                                  static_cast<std::size_t>(out.shape(2)) * o.elem_size;
    if (per_frame != frame_bytes)
        throw py::value_error("out: frames of " + std::to_string(per_frame) +
                              " bytes (det_y * det_x * " +
                              "itemsize) but frame_bytes=" + std::to_string(frame_bytes) +
                              "; pass the ring's frame shape and dtype");
    if (static_cast<std::size_t>(out.shape(0)) < n_frames)
        throw py::value_error("out: room for " + std::to_string(out.shape(0)) +
                              " frames, n_frames=" + std::to_string(n_frames));
    const auto a0 = reinterpret_cast<std::uintptr_t>(in.data);
    const auto b0 = reinterpret_cast<std::uintptr_t>(o.data);
    const std::size_t span = n_frames * frame_bytes;
    if (span > 0 && a0 < b0 + span && b0 < a0 + span)
        throw py::value_error("out: overlaps raw; decode into a separate (scratch) array");
    const auto* sizes = static_cast<const std::uint32_t*>(nbytes.data());
    std::vector<bslz4::FrameError> errors;
    {
        py::gil_scoped_release release;
        errors = bslz4::decode_stack(in.data, sizes, n_frames, frame_bytes, o.data, o.elem_size,
                                     nthreads);
    }
    py::list result;
    for (const auto& e : errors) result.append(py::make_tuple(e.frame, e.message));
    return result;
}

}  // namespace

void init_bslz4(py::module_& m) {
    m.def("bslz4_decode", &decode_one, py::arg("src"), py::arg("out").noconvert(), kDecodeDoc);
    m.def("bslz4_decode_stack", &decode_stack, py::arg("raw"), py::arg("nbytes").noconvert(),
          py::arg("n_frames"), py::arg("frame_bytes"), py::arg("out").noconvert(),
          py::arg("nthreads") = 1, kDecodeStackDoc);
    m.def("lz4_decode", &lz4_one, py::arg("src"), py::arg("out").noconvert(),
          "Decode one plain LZ4 block (DECTRIS 'lz4<' images) into ``out``; it must fill ``out`` "
          "exactly (ValueError otherwise). Returns ``out``.");
    m.def("lz4_compress", &lz4_compress, py::arg("src"),
          "Compress a bytes-like object into one plain LZ4 block (no size prefix), as DECTRIS "
          "'lz4<' images are; for simulators and tests.");
    m.def("bslz4_set_backend", &bslz4::set_backend, py::arg("name"),
          "Select the bit-untranspose backend: 'auto', 'avx512', 'avx2' or 'scalar' (ValueError "
          "if unknown or unsupported by this CPU).");
    m.def("bslz4_backend", &bslz4::active_backend, "The active bit-untranspose backend.");
    m.def("bslz4_available_backends", &bslz4::available_backends,
          "Backends compiled in and supported by this CPU, fastest first.");
    m.def("bslz4_compiled_backends", &bslz4::compiled_backends, "Backends compiled in.");
    m.def("lz4_version", &bslz4::lz4_version, "Version of the vendored LZ4 library.");
}

}  // namespace stemedge::bind
