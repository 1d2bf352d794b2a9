// The tensor-parallel groups the TP module tests run over, built from the world under mpirun.
#pragma once

#include <memory>
#include <vector>

#include "parallel/communicator.h"

namespace moe::test {

// The whole world; with 4 ranks also two groups of 2; with groups_of_one also a group of one
// per rank (no sharding). Split is collective over the world: every rank builds the same list.
inline std::vector<std::unique_ptr<Communicator>> tp_groups(Communicator& world, bool groups_of_one) {
  std::vector<std::unique_ptr<Communicator>> groups;
  groups.push_back(world.split(0, world.rank()));
  if (world.size() == 4) groups.push_back(world.split(world.rank() / 2, world.rank()));
  if (groups_of_one) groups.push_back(world.split(world.rank(), 0));
  return groups;
}

}  // namespace moe::test
