// stemedge._cuda bindings: device discovery and the GPU kernels. Arrays arrive as raw device
// pointers read by python/stemedge/gpu.py from __cuda_array_interface__ (cupy, numba, torch...);
// every call runs on the stream it is given and returns before the kernel finishes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "codec_decode.hpp"
#include "codec_encode.hpp"
#include "device.hpp"
#include "reduce.hpp"
#include "ssb.hpp"

namespace py = pybind11;

namespace {

stemedge::cuda::FrameType frame_type(const std::string& dtype) {
    using stemedge::cuda::FrameType;
    if (dtype == "uint8") return FrameType::kU8;
    if (dtype == "uint16") return FrameType::kU16;
    if (dtype == "uint32") return FrameType::kU32;
    if (dtype == "float32") return FrameType::kF32;
    throw py::type_error("frames must be uint8, uint16, uint32 or float32, got " + dtype);
}

stemedge::cuda::ssb::Params ssb_params(double k_alpha, double wavelength,
                                       const std::vector<double>& aberrations, unsigned cutoff,
                                       const std::string& normalization) {
    if (normalization != "flat" && normalization != "matched")
        throw py::value_error("normalization must be 'flat' or 'matched', got '" + normalization + "'");
    return stemedge::cuda::ssb_params(k_alpha, wavelength, aberrations, cutoff,
                                      normalization == "matched");
}

using F64 = py::array_t<double, py::array::c_style | py::array::forcecast>;

// A host-twin call's record (DenseChunk, EncodeChunk) from its bytes, refused unless whole.
template <class R>
R record_from(const py::bytes& record, const char* refusal) {
    const std::string r = record;
    if (r.size() != sizeof(R)) throw py::value_error(refusal);
    R c;
    std::memcpy(&c, r.data(), sizeof c);
    return c;
}

stemedge::cuda::EncodeStage encode_stage(int stage, const char* refusal) {
    if (stage < 0 || stage > 3) throw py::value_error(refusal);
    return static_cast<stemedge::cuda::EncodeStage>(stage);
}

}  // namespace

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
            const auto type = frame_type(dtype);
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

    m.def(
        "ssb_gather",
        [](std::uintptr_t frames, const std::string& dtype, long long n, int det_y, int det_x,
           std::uintptr_t ptr, std::uintptr_t pix, int n_pix, std::uintptr_t out,
           std::uintptr_t stream) {
            const auto type = frame_type(dtype);
            py::gil_scoped_release release;
            stemedge::cuda::ssb_gather_device(
                reinterpret_cast<const void*>(frames), type, n, det_y, det_x,
                reinterpret_cast<const std::uint32_t*>(ptr), reinterpret_cast<const std::uint32_t*>(pix),
                n_pix, reinterpret_cast<float*>(out), reinterpret_cast<cudaStream_t>(stream));
        },
        "GPU twin of _native.ssb_gather without centring: out (n, n_pix) float32 from n "
        "C-contiguous frames and the CSR pixel lists ptr (n_pix + 1) / pix, uint32, on the device.",
        py::arg("frames"), py::arg("dtype"), py::arg("n"), py::arg("det_y"), py::arg("det_x"),
        py::arg("ptr"), py::arg("pix"), py::arg("n_pix"), py::arg("out"), py::arg("stream"));
    m.def(
        "ssb_sums",
        [](std::uintptr_t g, int n_pix, std::uintptr_t cells, std::uintptr_t qy, std::uintptr_t qx,
           std::uintptr_t ky, std::uintptr_t kx, long long n_cand, double k_alpha, double wavelength,
           const std::vector<double>& aberrations, unsigned cutoff, const std::string& normalization,
           std::uintptr_t F, std::uintptr_t kept, std::uintptr_t transfer, std::uintptr_t stream) {
            const auto prm = ssb_params(k_alpha, wavelength, aberrations, cutoff, normalization);
            py::gil_scoped_release release;
            stemedge::cuda::ssb_sums_device(
                reinterpret_cast<const void*>(g), n_pix, reinterpret_cast<const long long*>(cells),
                reinterpret_cast<const double*>(qy), reinterpret_cast<const double*>(qx),
                reinterpret_cast<const double*>(ky), reinterpret_cast<const double*>(kx), n_cand, prm,
                reinterpret_cast<void*>(F), reinterpret_cast<std::uint8_t*>(kept),
                reinterpret_cast<double*>(transfer), reinterpret_cast<cudaStream_t>(stream));
        },
        "SSB weighted sums with the weights generated on the device: F[c] (complex128) = "
        "sum_k W(k, Q_c) g[cells[c], k] for candidate frequencies (qy, qx) [1/A], with kept[c] "
        "(uint8) and transfer[c] (float64) as SsbTrotters gives them; g (cells, n_pix) complex64.",
        py::arg("g"), py::arg("n_pix"), py::arg("cells"), py::arg("qy"), py::arg("qx"), py::arg("ky"),
        py::arg("kx"), py::arg("n_cand"), py::arg("k_alpha"), py::arg("wavelength"),
        py::arg("aberrations"), py::arg("cutoff"), py::arg("normalization"), py::arg("F"),
        py::arg("kept"), py::arg("transfer"), py::arg("stream"));
    m.def(
        "ssb_weights_host",
        [](const F64& ky, const F64& kx, const F64& qy, const F64& qx, double k_alpha,
           double wavelength, const std::vector<double>& aberrations, unsigned cutoff,
           const std::string& normalization) {
            if (ky.ndim() != 1 || kx.ndim() != 1 || ky.shape(0) != kx.shape(0) || ky.shape(0) < 1)
                throw py::value_error("ky and kx: equal 1-d arrays of at least one pixel");
            if (qy.ndim() != 1 || qx.ndim() != 1 || qy.shape(0) != qx.shape(0))
                throw py::value_error("qy and qx: equal 1-d arrays");
            const auto prm = ssb_params(k_alpha, wavelength, aberrations, cutoff, normalization);
            const auto n_pix = static_cast<int>(ky.shape(0));
            const auto n_cand = static_cast<long long>(qy.shape(0));
            py::array_t<std::uint8_t> kept(n_cand);
            py::array_t<double> transfer(n_cand);
            py::array_t<std::complex<float>> w({static_cast<py::ssize_t>(n_cand),
                                                static_cast<py::ssize_t>(n_pix)});
            auto* kp = kept.mutable_data();
            auto* tp = transfer.mutable_data();
            auto* wp = w.mutable_data();
            {
                py::gil_scoped_release release;
                stemedge::cuda::ssb_weights_host(ky.data(), kx.data(), n_pix, qy.data(), qx.data(),
                                                 n_cand, prm, kp, tp, wp);
            }
            return py::make_tuple(kept.attr("astype")("bool"), transfer, w);
        },
        "The device's SSB weight generation run on the host (for tests without a GPU): "
        "(kept (n_cand,) bool, transfer (n_cand,), dense weights (n_cand, n_pix) complex64).",
        py::arg("ky"), py::arg("kx"), py::arg("qy"), py::arg("qx"), py::arg("k_alpha"),
        py::arg("wavelength"), py::arg("aberrations"), py::arg("cutoff") = 1,
        py::arg("normalization") = "flat");

    m.def(
        "codec_decode_dense",
        [](std::uintptr_t chunks, long long n_chunks, std::uintptr_t status, std::uintptr_t stream) {
            py::gil_scoped_release release;
            stemedge::cuda::dense_decode_device(
                reinterpret_cast<const stemedge::cuda::codec::DenseChunk*>(chunks), n_chunks,
                reinterpret_cast<int*>(status), reinterpret_cast<cudaStream_t>(stream));
        },
        "Decode DENSE codec chunks on the GPU: `chunks` points to n_chunks DenseChunk records "
        "(device memory, with device pointers), status (int32, n_chunks) gets 0 per exact chunk.",
        py::arg("chunks"), py::arg("n_chunks"), py::arg("status"), py::arg("stream"));
    m.def(
        "codec_decode_host",
        [](const py::bytes& record) {
            const auto c = record_from<stemedge::cuda::codec::DenseChunk>(
                record, "codec_decode_host: one DenseChunk record expected");
            py::gil_scoped_release release;
            return stemedge::cuda::dense_decode_host(c);
        },
        "The GPU's DENSE decoder run on the host (a record with host pointers), for tests "
        "without a GPU: returns the status (0: decoded exactly).",
        py::arg("record"));

    m.attr("CODEC_CRC_SEGMENT") = stemedge::cuda::codec::kCrcSegment;  // bytes per CRC part
    m.def(
        "codec_encode_dense",
        [](int stage, std::uintptr_t chunks, long long n_chunks, std::uint64_t max_pixels,
           std::uint64_t max_raw_bytes, std::uintptr_t stream) {
            const auto s = encode_stage(stage, "codec_encode_dense: stage 0..3");
            py::gil_scoped_release release;
            stemedge::cuda::dense_encode_device(
                s,
                reinterpret_cast<stemedge::cuda::codec::EncodeChunk*>(chunks), n_chunks, max_pixels,
                max_raw_bytes, reinterpret_cast<cudaStream_t>(stream));
        },
        "One stage of the DENSE encoder on the GPU (0 moments, 1 histograms, 2 payload, 3 raw "
        "CRC) for n_chunks EncodeChunk records in device memory; results land in the records.",
        py::arg("stage"), py::arg("chunks"), py::arg("n_chunks"), py::arg("max_pixels"),
        py::arg("max_raw_bytes"), py::arg("stream"));
    m.def(
        "codec_encode_host",
        [](int stage, const py::bytes& record) {
            const auto s = encode_stage(stage, "codec_encode_host: stage 0..3");
            auto c = record_from<stemedge::cuda::codec::EncodeChunk>(
                record, "codec_encode_host: one EncodeChunk record expected");
            {
                py::gil_scoped_release release;
                stemedge::cuda::dense_encode_host(s, c);
            }
            return py::bytes(reinterpret_cast<const char*>(&c), sizeof c);
        },
        "The GPU's DENSE encoder stage run on the host (a record with host pointers), for tests "
        "without a GPU: returns the record with its results.",
        py::arg("stage"), py::arg("record"));
}
