// STEMEDGE_HD: functions written once for the host and the device (the host twins the tests run
// without a GPU are the same code).
#pragma once

#if defined(__CUDACC__)
#define STEMEDGE_HD __host__ __device__
#else
#define STEMEDGE_HD
#endif
