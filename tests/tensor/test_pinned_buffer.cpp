// PinnedBuffer on the CPU: reads a tensor's values, keeps its storage for smaller reads and grows
// for larger ones, rejects a read of another element size (tests/cuda/test_cuda_balance.cpp reads
// from a GPU into page-locked memory).
#include <catch2/catch.hpp>

#include <vector>

#include "src/tensor/pinned_buffer.h"

namespace moe {

TEST_CASE("PinnedBuffer reads CPU values, reusing its storage until a read needs more", "[tensor][pinned]") {
  PinnedBuffer buffer;
  const std::vector<int64_t> values = {3, -4, 5, 9000000000};
  const Tensor t = Tensor::from_vector(values, {4}, DType::i64);
  const int64_t* first = buffer.read<int64_t>(t);
  REQUIRE(std::vector<int64_t>(first, first + 4) == values);
  REQUIRE(!buffer.pinned());  // CPU sources need no page-locked memory
  REQUIRE(buffer.capacity() == 32);
  const int64_t* part = buffer.read<int64_t>(t.rows(2, 4));
  REQUIRE(part == first);  // the same storage
  REQUIRE(std::vector<int64_t>(part, part + 2) == std::vector<int64_t>(values.begin() + 2, values.end()));
  const std::vector<double> more(10, 1.5);
  const double* grown = buffer.read<double>(Tensor::from_vector(more, {10}, DType::f64));
  REQUIRE(buffer.capacity() == 80);
  REQUIRE(std::vector<double>(grown, grown + 10) == more);
  REQUIRE_NOTHROW(buffer.read<int32_t>(Tensor::empty({0}, DType::i32)));
  REQUIRE_THROWS_WITH(buffer.read<int32_t>(t),
                      Catch::Contains("PinnedBuffer::read: a i64 tensor read as 4-byte values"));
}

TEST_CASE("PinnedBuffer's split read returns the values at read_finish", "[tensor][pinned]") {
  PinnedBuffer buffer;
  const std::vector<int64_t> values = {7, -1, 12};
  Tensor t = Tensor::from_vector(values, {3}, DType::i64);
  REQUIRE_THROWS_WITH(buffer.read_finish<int64_t>(), Catch::Contains("no read of 8-byte values was started"));
  buffer.read_start(t);
  t.zero_();  // the source may change after the start: the read already took its values
  REQUIRE_THROWS_WITH(buffer.read_finish<int32_t>(), Catch::Contains("no read of 4-byte values was started"));
  const int64_t* got = buffer.read_finish<int64_t>();
  REQUIRE(std::vector<int64_t>(got, got + 3) == values);
  REQUIRE_THROWS_WITH(buffer.read_finish<int64_t>(), Catch::Contains("no read of 8-byte values was started"));
}

}  // namespace moe
