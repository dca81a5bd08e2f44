// GPU decoding of DENSE codec chunks (codec_decode.cuh): one warp per chunk, all chunks of a
// batch in one launch; status[i] is codec::Status of chunk i (0: decoded exactly).
#pragma once

#include <cuda_runtime.h>

#include "codec_decode.cuh"

namespace stemedge::cuda {

void dense_decode_device(const codec::DenseChunk* chunks, long long n_chunks, int* status,
                         cudaStream_t stream);

// The same decoding on the host (pointers in `chunk` are host pointers): its status.
int dense_decode_host(const codec::DenseChunk& chunk);

}  // namespace stemedge::cuda
