// What the codec's device decoder and encoder share: the rANS constants of the CPU coder
// (cpp/src/codec_rans.hpp) and the records' addresses as pointers.
#pragma once

#include <cstdint>

#include "hd.cuh"

namespace stemedge::cuda::codec {

constexpr std::uint32_t kScaleBits = 12, kScale = 1u << kScaleBits, kRansL = 1u << 16;

// A record's 8-byte address field as a pointer.
template <class P>
STEMEDGE_HD inline P* ptr(std::uint64_t address) {
    return reinterpret_cast<P*>(static_cast<std::uintptr_t>(address));
}

}  // namespace stemedge::cuda::codec
