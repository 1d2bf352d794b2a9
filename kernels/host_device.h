// MOE_HOST_DEVICE marks functions that the CPU code and the CUDA kernels share (plain inline
// functions when the compiler is not nvcc).
#pragma once

#if defined(__CUDACC__)
#define MOE_HOST_DEVICE __host__ __device__
#else
#define MOE_HOST_DEVICE
#endif
