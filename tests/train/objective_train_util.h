// Helpers of the objectives' training tests (masked LM, span corruption): metrics records of a
// run, and the check that a resumed run continues bit-identically (its random choices included).
#pragma once

#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "parallel/communicator.h"
#include "src/train/trainer.h"
#include "tests/train/train_test_util.h"

namespace moe::test {

// The records of a metrics.jsonl that carry `key`.
inline std::vector<nlohmann::json> read_records(const std::string& path, const char* key) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    auto record = nlohmann::json::parse(line);
    if (record.contains(key)) out.push_back(record);
  }
  return out;
}

// 6 steps of c (2 micro-batches each, a checkpoint at step 3), then a run resumed from step 3:
// its losses are those of steps 4-6, exactly.
inline void require_bit_identical_resume(Config c, const TempDir& dir) {
  c.train.grad_accum = 2;
  c.train.save_every = 3;
  auto world = make_world_communicator(Device::cpu());
  std::vector<double> full;
  {
    Trainer trainer(c, 0, *world);
    trainer.train();
    for (const auto& r : read_records(c.train.run_dir + "/metrics.jsonl", "loss")) full.push_back(r["loss"]);
  }
  REQUIRE(full.size() == 6);
  Config resumed = c;
  resumed.train.run_dir = dir.str("run2");
  resumed.train.resume = c.train.run_dir + "/checkpoints/step_3";
  Trainer trainer(resumed, 0, *world);
  trainer.train();
  const auto losses = read_records(resumed.train.run_dir + "/metrics.jsonl", "loss");
  REQUIRE(losses.size() == 3);
  for (size_t i = 0; i < 3; ++i) REQUIRE(losses[i]["loss"].get<double>() == full[i + 3]);  // exact
}

}  // namespace moe::test
