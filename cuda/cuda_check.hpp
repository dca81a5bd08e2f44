// Every CUDA call goes through STEMEDGE_CUDA_CHECK: a failure throws with the CUDA error text
// (pybind11 turns it into a RuntimeError), never prints and continues.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace stemedge::cuda {

class CudaError : public std::runtime_error {
  public:
    CudaError(cudaError_t code, const char* what_call, const char* file, int line)
        : std::runtime_error(std::string(what_call) + " failed: " + cudaGetErrorName(code) + ": " +
                             cudaGetErrorString(code) + " (" + file + ":" + std::to_string(line) + ")"),
          code_(code) {}
    cudaError_t code() const { return code_; }

  private:
    cudaError_t code_;
};

}  // namespace stemedge::cuda

#define STEMEDGE_CUDA_CHECK(call)                                                   \
    do {                                                                            \
        const cudaError_t stemedge_err_ = (call);                                   \
        if (stemedge_err_ != cudaSuccess)                                           \
            throw ::stemedge::cuda::CudaError(stemedge_err_, #call, __FILE__, __LINE__); \
    } while (0)
