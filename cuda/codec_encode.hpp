// GPU encoding of DENSE codec chunks (codec_encode.cuh): the stages run for all chunks of a batch
// in one launch each; the host decides the model between them (python/stemedge/gpu_codec.py).
#pragma once

#include <cuda_runtime.h>

#include "codec_encode.cuh"

namespace stemedge::cuda {

enum class EncodeStage { kMoments = 0, kHist = 1, kPayload = 2, kCrc = 3 };

// `chunks`: n_chunks device records with device pointers; max_pixels and max_raw_bytes bound
// the chunks' pixels and raw sizes (they size the grids). Results land in the records.
void dense_encode_device(EncodeStage stage, codec::EncodeChunk* chunks, long long n_chunks,
                         std::uint64_t max_pixels, std::uint64_t max_raw_bytes, cudaStream_t stream);

// The same stage on the host (a record with host pointers), lane by lane for the payload.
void dense_encode_host(EncodeStage stage, codec::EncodeChunk& chunk);

}  // namespace stemedge::cuda
