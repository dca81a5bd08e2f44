// One instruction-set build of the kernels: CMake compiles this file once per target with
// STEMEDGE_ISA (the backend's name, used as a namespace) and STEMEDGE_ISA_LEVEL set:
// 4 = x86-64-v4 (AVX-512), 3 = x86-64-v3 (AVX2+FMA), 1 = x86-64 baseline (SSE2),
// 9 = -march=native, 0 = the compiler's default target (generic).
#include "reduce_impl.hpp"

#define STEMEDGE_CAT2(a, b) a##b
#define STEMEDGE_CAT(a, b) STEMEDGE_CAT2(a, b)
#define STEMEDGE_STR2(a) #a
#define STEMEDGE_STR(a) STEMEDGE_STR2(a)

namespace stemedge {
namespace {

bool isa_supported() {
#if STEMEDGE_ISA_LEVEL == 4
    return __builtin_cpu_supports("x86-64-v4");
#elif STEMEDGE_ISA_LEVEL == 3
    return __builtin_cpu_supports("x86-64-v3");
#else
    return true;
#endif
}

constexpr const char* kDescription =
#if STEMEDGE_ISA_LEVEL == 4
    "x86-64-v4 (AVX-512)";
#elif STEMEDGE_ISA_LEVEL == 3
    "x86-64-v3 (AVX2, FMA)";
#elif STEMEDGE_ISA_LEVEL == 1
    "x86-64 baseline (SSE2)";
#elif STEMEDGE_ISA_LEVEL == 9
    "-march=native (this build machine's CPU)";
#else
    "compiler default target";
#endif

}  // namespace

extern const BackendOps STEMEDGE_CAT(kBackend_, STEMEDGE_ISA);
const BackendOps STEMEDGE_CAT(kBackend_, STEMEDGE_ISA) = {
    STEMEDGE_STR(STEMEDGE_ISA), kDescription, &isa_supported, &STEMEDGE_ISA::reduce_range,
    &STEMEDGE_ISA::read_range};

}  // namespace stemedge
