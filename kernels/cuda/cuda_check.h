// CUDA, cuBLAS and NCCL status checks built on the engine's one generic check macro.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "src/util/check.h"

#define CUDA_CHECK(expr) MOE_CHECK_CALL((expr), cudaSuccess, cudaGetErrorString)
#define CUBLAS_CHECK(expr) MOE_CHECK_CALL((expr), CUBLAS_STATUS_SUCCESS, cublasGetStatusString)
// After a kernel launch: reports launch-configuration errors at the launch site.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
