// Device discovery. Any error from cudaGetDeviceCount (no driver: error 35; no GPU: 100) means
// "no usable GPU" and is reported, not thrown, so that the CPU path stays available.
#include <string>
#include <vector>

#include "cuda_check.hpp"
#include "device.hpp"

namespace stemedge::cuda {

DeviceReport query_devices() {
    DeviceReport r;
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        r.error = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
        cudaGetLastError();  // clear the sticky-free error so later calls start clean
        return r;
    }
    int driver = 0, runtime = 0;
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    r.driver_version = driver;
    r.runtime_version = runtime;
    for (int d = 0; d < n; ++d) {
        cudaDeviceProp p{};
        STEMEDGE_CUDA_CHECK(cudaGetDeviceProperties(&p, d));
        r.devices.push_back({d, p.name, p.major * 10 + p.minor, p.totalGlobalMem, p.multiProcessorCount});
    }
    return r;
}

}  // namespace stemedge::cuda
