// Python bindings of the frame codec (C API in stemedge/codec.h): one chunk per call, GIL
// released while coding. The multi-chunk container and the public API live in
// python/stemedge/codec/core.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "../src/codec_layout.hpp"
#include "array_views.hpp"
#include "stemedge/codec.h"

namespace stemedge::bind {
namespace {

namespace py = pybind11;

int se_dtype_of(const py::dtype& dt) {
    const char kind = dt.kind();
    const auto size = dt.itemsize();
    if (dt.byteorder() == '>')
        throw py::type_error("stemedge codec: big-endian data; pass a.astype(a.dtype.newbyteorder('='))");
    if (kind == 'b' && size == 1) return SE_BOOL;
    if (kind == 'u') {
        if (size == 1) return SE_U8;
        if (size == 2) return SE_U16;
        if (size == 4) return SE_U32;
        if (size == 8) return SE_U64;
    }
    if (kind == 'i') {
        if (size == 1) return SE_I8;
        if (size == 2) return SE_I16;
        if (size == 4) return SE_I32;
        if (size == 8) return SE_I64;
    }
    if (kind == 'f') {
        if (size == 4) return SE_F32;
        if (size == 8) return SE_F64;
    }
    throw py::type_error("stemedge codec: dtype " + std::string(py::str(dt)) +
                         " is not supported (bool, u/int 8–64 bit, float32, float64)");
}

const char* numpy_name(int code) {
    switch (code) {
        case SE_U8: return "uint8";
        case SE_U16: return "uint16";
        case SE_U32: return "uint32";
        case SE_U64: return "uint64";
        case SE_I8: return "int8";
        case SE_I16: return "int16";
        case SE_I32: return "int32";
        case SE_I64: return "int64";
        case SE_F32: return "float32";
        case SE_F64: return "float64";
        case SE_BOOL: return "bool";
        default: return "?";
    }
}

const char* mode_name(int mode) {
    switch (mode) {
        case SE_MODE_DENSE: return "dense";
        case SE_MODE_EVENTS: return "events";
        case SE_MODE_BYTES: return "bytes";
        case 4: return "stored";
        default: return "?";
    }
}

[[noreturn]] void raise(int64_t code) {
    throw py::value_error(std::string("stemedge codec: ") + se_error_string(static_cast<int>(code)) +
                          " (code " + std::to_string(code) + ")");
}

py::bytes compress(const py::array& a, const std::string& mode, double max_abs_error,
                   std::uint64_t threshold) {
    se_params p{};
    p.dtype = se_dtype_of(a.dtype());
    if (a.ndim() > SE_MAX_DIMS)
        throw py::value_error("stemedge codec: at most " + std::to_string(SE_MAX_DIMS) + " dimensions");
    if (!(a.flags() & py::array::c_style))
        throw py::type_error("stemedge codec: the array must be C-contiguous; pass np.ascontiguousarray(a)");
    p.ndim = static_cast<int>(a.ndim());
    for (int i = 0; i < p.ndim; ++i) p.shape[i] = static_cast<std::uint64_t>(a.shape(i));
    if (mode == "auto") p.mode = SE_MODE_AUTO;
    else if (mode == "dense") p.mode = SE_MODE_DENSE;
    else if (mode == "events") p.mode = SE_MODE_EVENTS;
    else if (mode == "bytes") p.mode = SE_MODE_BYTES;
    else throw py::value_error("stemedge codec: mode must be 'auto', 'dense', 'events' or 'bytes', got '" + mode + "'");
    p.max_abs_error = max_abs_error;
    p.threshold = threshold;
    const std::uint64_t raw = static_cast<std::uint64_t>(a.nbytes());
    // Not a std::vector: zeroing the bound (the raw size and more) cost ~10 % of a dense encode,
    // and only the compressed bytes at its start are ever touched.
    const std::size_t bound = se_compress_bound(raw);
    std::unique_ptr<std::uint8_t[]> out(new std::uint8_t[bound]);
    int64_t n;
    {
        py::gil_scoped_release release;
        n = se_compress(a.data(), &p, out.get(), bound);
    }
    if (n < 0) raise(n);
    return py::bytes(reinterpret_cast<const char*>(out.get()), static_cast<std::size_t>(n));
}

py::buffer_info blob_buffer(const py::buffer& blob) {
    py::buffer_info info = blob.request();
    if (info.ndim != 1 || info.itemsize != 1 || (info.ndim == 1 && info.strides[0] != 1))
        throw py::type_error("stemedge codec: pass the compressed chunk as bytes (a contiguous byte buffer)");
    return info;
}

py::dict info(const py::buffer& blob, bool verify) {
    const py::buffer_info b = blob_buffer(blob);
    se_info i{};
    const int rc = (verify ? se_info_get : se_info_peek)(b.ptr, static_cast<std::size_t>(b.size), &i);
    if (rc < 0) raise(rc);
    py::tuple shape(i.ndim);
    for (int k = 0; k < i.ndim; ++k) shape[k] = i.shape[k];
    py::dict d;
    d["dtype"] = numpy_name(i.dtype);
    d["shape"] = shape;
    d["mode"] = mode_name(i.mode);
    d["version"] = i.version;
    d["raw_nbytes"] = i.raw_nbytes;
    d["chunk_nbytes"] = i.chunk_nbytes;
    d["max_abs_error"] = i.max_abs_error;
    d["threshold"] = i.threshold;
    return d;
}

// A codec call whose C++ errors (CodecError: corrupt data, bad arguments) become ValueError.
template <class F>
auto codec_call(F&& f) {
    try {
        return f();
    } catch (const std::exception& e) {
        throw py::value_error(std::string("stemedge codec: ") + e.what());
    }
}

// The DENSE chunk's model and payload offsets for the GPU decoder, or None for other chunks.
py::object dense_layout(const py::buffer& blob) {
    const py::buffer_info b = blob_buffer(blob);
    codec::DenseLayout l;
    const bool dense = codec_call([&] {
        py::gil_scoped_release release;
        return codec::dense_layout(b.ptr, static_cast<std::size_t>(b.size), l);
    });
    if (!dense) return py::none();
    py::dict d;
    d["dtype"] = numpy_name(l.dtype);
    d["frames"] = l.frames;
    d["pixels"] = l.pixels;
    d["lo"] = l.lo;
    d["hi"] = l.hi;
    d["klass"] = to_numpy(l.klass);
    d["base"] = to_numpy(l.base);
    d["sym"] = to_numpy(l.sym);
    d["fc"] = to_numpy(l.fc);
    d["qmin"] = to_numpy(l.qmin);
    d["esc"] = to_numpy(l.esc);
    d["shift"] = to_numpy(l.shift);
    d["x"] = to_numpy(std::vector<std::uint32_t>(l.x, l.x + 32));
    d["words_offset"] = l.words_offset;
    d["n_words"] = l.n_words;
    d["bits_offset"] = l.bits_offset;
    d["nbits"] = l.nbits;
    d["raw_crc"] = l.raw_crc;
    return d;
}

py::array decompress(const py::buffer& blob, const py::object& out_obj) {
    const py::buffer_info b = blob_buffer(blob);
    se_info i{};
    // Allocating: trust only a verified header. Into `out`: se_decompress verifies everything
    // before it writes, so the checksum is not computed twice.
    const int rc = (out_obj.is_none() ? se_info_get : se_info_peek)(b.ptr, static_cast<std::size_t>(b.size), &i);
    if (rc < 0) raise(rc);
    std::vector<py::ssize_t> shape(i.shape, i.shape + i.ndim);
    const py::dtype dt(numpy_name(i.dtype));
    py::array out;
    if (out_obj.is_none()) {
        out = py::array(dt, shape);
    } else {
        out = py::reinterpret_borrow<py::array>(out_obj);
        if (!py::isinstance<py::array>(out_obj) || !out.dtype().equal(dt) ||
            !(out.flags() & py::array::c_style) || !out.writeable() ||
            static_cast<std::uint64_t>(out.nbytes()) != i.raw_nbytes)
            throw py::value_error(std::string("stemedge codec: out must be a writeable C-contiguous ") +
                                  numpy_name(i.dtype) + " array of " + std::to_string(i.raw_nbytes) + " bytes");
    }
    void* dst = out.mutable_data();
    int64_t n;
    {
        py::gil_scoped_release release;
        n = se_decompress(b.ptr, static_cast<std::size_t>(b.size), dst, static_cast<std::size_t>(i.raw_nbytes));
    }
    if (n < 0) raise(n);
    return out;
}

std::uint32_t crc32c_of(const py::buffer& blob) {
    const py::buffer_info b = blob_buffer(blob);
    return se_crc32c(b.ptr, static_cast<std::size_t>(b.size));
}

// --- the GPU encoder's host steps (codec_layout.hpp) ---------------------------------------------

template <class T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;


py::dict dense_class_map(const carray<double>& s1, const carray<double>& s2, std::uint32_t count) {
    if (s1.ndim() != 1 || s2.ndim() != 1 || s1.size() != s2.size())
        throw py::value_error("stemedge codec: s1 and s2 must be 1-D arrays of one length (the pixels)");
    codec::DenseClassMap c = codec_call([&] {
        return codec::dense_class_map(s1.data(), s2.data(), count, static_cast<std::uint64_t>(s1.size()));
    });
    py::dict d;
    d["base"] = to_numpy(c.base);
    d["slot"] = to_numpy(c.slot);
    d["classes"] = to_numpy(c.classes);
    d["shift"] = to_numpy(c.shift);
    return d;
}

template <class T>
std::vector<T> to_vector(const carray<T>& a) {
    return std::vector<T>(a.data(), a.data() + a.size());
}

py::dict dense_encode_model(const carray<std::int64_t>& base, const carray<std::int32_t>& slot,
                            const carray<std::int32_t>& classes, const carray<std::uint32_t>& hist,
                            std::uint64_t hist_step, unsigned elem_bits) {
    if (hist.ndim() != 2 || hist.shape(1) != static_cast<py::ssize_t>(codec::kDenseHistStride))
        throw py::value_error("stemedge codec: hist must be (classes, 256) uint32");
    codec::DenseClassMap map{to_vector(base), to_vector(slot), to_vector(classes), {}};
    codec::DenseEncodeModel m = codec_call([&] {
        return codec::dense_encode_model(map, hist.data(), static_cast<std::size_t>(hist.shape(0)), hist_step,
                                         elem_bits);
    });
    py::dict d;
    d["prefix"] = py::bytes(reinterpret_cast<const char*>(m.prefix.data()), m.prefix.size());
    d["fc"] = to_numpy(m.fc);
    d["qmin"] = to_numpy(m.qmin);
    d["nsym"] = to_numpy(m.nsym);
    return d;
}

py::object dense_chunk(const py::dtype& dtype, const std::vector<std::uint64_t>& shape, const py::bytes& prefix,
                       const carray<std::uint32_t>& states, const carray<std::uint16_t>& words,
                       const carray<std::uint8_t>& bits, std::uint64_t nbits, std::uint32_t raw_crc) {
    if (states.size() != 32) throw py::value_error("stemedge codec: 32 rANS states expected");
    if (static_cast<std::uint64_t>(bits.size()) < (nbits + 7) / 8)
        throw py::value_error("stemedge codec: fewer bit-stream bytes than nbits");
    if (shape.size() > SE_MAX_DIMS) throw py::value_error("stemedge codec: too many dimensions");
    const std::string pre = prefix;
    const int code = se_dtype_of(dtype);
    std::vector<std::uint8_t> out = codec_call([&] {
        return codec::dense_chunk(code, static_cast<int>(shape.size()), shape.data(),
                                  std::vector<std::uint8_t>(pre.begin(), pre.end()), states.data(),
                                  words.data(), static_cast<std::uint64_t>(words.size()), bits.data(), nbits,
                                  raw_crc);
    });
    if (out.empty()) return py::none();
    return py::bytes(reinterpret_cast<const char*>(out.data()), out.size());
}

}  // namespace

void init_codec(py::module_& m) {
    m.def("codec_compress", &compress,
          "Compress a C-contiguous array into one self-describing stemedge chunk (bytes).",
          py::arg("array"), py::arg("mode") = "auto", py::arg("max_abs_error") = 0.0,
          py::arg("threshold") = 0);
    m.def("codec_decompress", &decompress,
          "Decode one stemedge chunk into a new array (or into out=, same dtype and size).",
          py::arg("blob"), py::arg("out") = py::none());
    m.def("codec_info", &info,
          "Header of one stemedge chunk (dtype, shape, mode, sizes, lossy options); verify=False "
          "skips the chunk checksum (for a caller that decodes it next, which verifies).",
          py::arg("blob"), py::arg("verify") = true);
    m.def("codec_set_simd", [](bool enabled) { se_set_simd(enabled ? 1 : 0); },
          "Use (default) or bypass the AVX-512 decoder; the output is identical.", py::arg("enabled"));
    m.def("codec_dense_layout", &dense_layout,
          "A lossless-integer DENSE chunk's parsed model and payload offsets (for the GPU "
          "decoder; the chunk CRC is verified), or None for other chunks.",
          py::arg("blob"));
    m.def("codec_dense_sampling", [](std::uint64_t frames, std::uint64_t pixels) {
              const codec::DenseSampling d = codec::dense_sampling(frames, pixels);
              return py::make_tuple(d.moment_step, d.hist_step);
          },
          "(moment_step, hist_step): the frames (every k-th from 0) the DENSE model passes sample.",
          py::arg("frames"), py::arg("pixels"));
    m.def("codec_dense_class_map", &dense_class_map,
          "Per pixel base and class slot, per slot class id and bucket shift, from the moments "
          "(count samples of sum v and sum v^2 per pixel): the GPU encoder's first host step.",
          py::arg("s1"), py::arg("s2"), py::arg("count"));
    m.def("codec_dense_encode_model", &dense_encode_model,
          "The DENSE body's model bytes (prefix) and coding tables from the class map (base, slot, "
          "classes of codec_dense_class_map) and the residual histograms (classes x 256): the GPU "
          "encoder's second host step.",
          py::arg("base"), py::arg("slot"), py::arg("classes"), py::arg("hist"), py::arg("hist_step"),
          py::arg("elem_bits"));
    m.def("codec_dense_chunk", &dense_chunk,
          "A DENSE chunk from its parts (model prefix, 32 final rANS states, words in decoding "
          "order, raw bit stream, CRC-32C of the raw data); None when it would not be smaller "
          "than the raw data (store it with codec_compress).",
          py::arg("dtype"), py::arg("shape"), py::arg("prefix"), py::arg("states"), py::arg("words"),
          py::arg("bits"), py::arg("nbits"), py::arg("raw_crc"));
    m.def("codec_crc32c", &crc32c_of, "CRC-32C of a byte buffer (the codec's checksum).", py::arg("data"));
}

}  // namespace stemedge::bind
