// Catch2 entry point of the CPU test executables.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
