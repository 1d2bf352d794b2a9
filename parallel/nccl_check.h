// NCCL_CHECK: NCCL status checks on the engine's one generic check macro (CUDA builds only).
#pragma once

#include <nccl.h>

#include "src/util/check.h"

#define NCCL_CHECK(expr) MOE_CHECK_CALL((expr), ncclSuccess, ncclGetErrorString)
