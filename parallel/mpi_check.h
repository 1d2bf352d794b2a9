// MPI_CHECK: MPI status checks on the engine's one generic check macro. MpiEnv switches
// MPI_COMM_WORLD to MPI_ERRORS_RETURN so that failures arrive here as moe::Error.
#pragma once

#include <mpi.h>

#include <string>

#include "src/util/check.h"

namespace moe::detail {
std::string mpi_error_string(int code);
}  // namespace moe::detail

#define MPI_CHECK(expr) MOE_CHECK_CALL((expr), MPI_SUCCESS, ::moe::detail::mpi_error_string)
