// The [data] datasets: data.train / data.val as arrays of tables (inline or [[data.train]]),
// overrides, the to_toml round trip, and each bad entry with its message and line.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "src/config/config.h"

using Catch::Contains;
using Catch::StartsWith;

namespace {

moe::Config parse(const std::string& text, const std::vector<std::string>& overrides = {}) {
  return moe::parse_config(text, "data.toml", overrides);
}

}  // namespace

TEST_CASE("data.train and data.val take arrays of datasets", "[config][data]") {
  const moe::Config c = parse(R"([data]
train = [{ path = "web/train.tok", weight = 0.7 }, { paths = ["code/a_*.tok", "code/b.tok"], weight = 0.3 }]
val = [{ path = "web/val.tok" }]
sampling = "epochs"
)");
  REQUIRE(c.data.train.size() == 2);
  CHECK(c.data.train[0].paths == std::vector<std::string>{"web/train.tok"});
  CHECK(c.data.train[0].weight == 0.7);
  CHECK(c.data.train[1].paths == std::vector<std::string>{"code/a_*.tok", "code/b.tok"});
  CHECK(c.data.train[1].weight == 0.3);
  REQUIRE(c.data.val.size() == 1);
  CHECK(c.data.val[0].weight == 1.0);  // the default
  CHECK(c.data.train_path.empty());
  // The array-of-tables form is the same config.
  const moe::Config same = parse(R"([[data.train]]
path = "web/train.tok"
weight = 0.7

[[data.train]]
paths = ["code/a_*.tok", "code/b.tok"]
weight = 0.3

[[data.val]]
path = "web/val.tok"
)");
  CHECK(same.data == c.data);
  // The defaults: no datasets, epoch sampling.
  const moe::Config d = parse("");
  CHECK(d.data.train.empty());
  CHECK(d.data.val.empty());
  CHECK(d.data.sampling == "epochs");
}

TEST_CASE("datasets round-trip through to_toml, overrides and config_changes", "[config][data]") {
  moe::Config c = parse("[data]\ntrain = [{ path = \"a \\\"quoted\\\".tok\", weight = 0.125 }, { path = \"b.tok\" }]\n",
                        {"data.val=[{paths=[\"v1.tok\",\"v2.tok\"]}]", "data.sampling=random_windows",
                         "data.train=[{path=\"only.tok\",weight=3}]"});
  REQUIRE(c.data.train.size() == 1);  // the later override replaced the file's list
  CHECK(c.data.train[0].paths == std::vector<std::string>{"only.tok"});
  CHECK(c.data.train[0].weight == 3.0);
  CHECK(c.data.val[0].paths == std::vector<std::string>{"v1.tok", "v2.tok"});
  CHECK(c.data.sampling == "random_windows");
  const std::string text = moe::to_toml(c);
  CHECK_THAT(text, Contains("train = [{ paths = [\"only.tok\"], weight = 3.0 }]\n"));
  const moe::Config back = moe::parse_config(text, "resolved.toml");
  CHECK(back.data == c.data);
  c.source_path = back.source_path;
  CHECK(back == c);
  moe::Config other = c;
  other.data.train[0].weight = 2.0;
  const auto changes = moe::config_changes(c, other);
  REQUIRE(changes.size() == 1);
  CHECK(changes[0].key == "data.train");
  CHECK(changes[0].before == "[{ paths = [\"only.tok\"], weight = 3.0 }]");
}

TEST_CASE("bad dataset entries name the key, the entry and the line", "[config][data][errors]") {
  REQUIRE_THROWS_WITH(parse("[data]\ntrain = [{ path = \"a.tok\" }, { path = \"b.tok\", weigth = 2 }]\n"),
                      StartsWith("data.toml:2: data.train: entry [1] unknown key 'weigth' (keys: path, paths, weight)"));
  REQUIRE_THROWS_WITH(parse("[data]\ntrain = [{ path = \"a.tok\", weight = \"big\" }]\n"),
                      StartsWith("data.toml:2: data.train: entry [0] weight: expected a number, got string 'big'"));
  REQUIRE_THROWS_WITH(parse("[data]\ntrain = [{ path = 3 }]\n"),
                      StartsWith("data.toml:2: data.train: entry [0] path: expected a string, got integer 3"));
  REQUIRE_THROWS_WITH(parse("[data]\ntrain = [\"a.tok\"]\n"),
                      StartsWith("data.toml:2: data.train: entry [0] is string 'a.tok', not a table"));
  REQUIRE_THROWS_WITH(parse("[data]\ntrain = [{ path = \"a.tok\", paths = [\"b.tok\"] }]\n"),
                      StartsWith("data.toml:2: data.train: entry [0] give path or paths, not both"));
  REQUIRE_THROWS_WITH(parse("[data]\nval = [{ weight = 1.0 }]\n"),
                      StartsWith("data.toml:2: data.val: entry [0] needs path = \"...\" or paths = [...]"));
  REQUIRE_THROWS_WITH(parse("[data]\ntrain = \"a.tok\"\n"),
                      StartsWith("data.toml:2: data.train: expected an array of tables like { path = \"shard.tok\", "
                                 "weight = 1.0 }, got string 'a.tok'"));
}

TEST_CASE("dataset rules: positive weights, one way to give each split, one shard for random windows",
          "[config][data][errors]") {
  REQUIRE_THROWS_WITH(parse("[data]\ntrain = [{ path = \"a.tok\" }, { path = \"b.tok\", weight = 0 }]\n"),
                      StartsWith("data.toml:2: data.train[1].weight = 0 must be positive: it is the dataset's share "
                                 "of the training samples"));
  REQUIRE_THROWS_WITH(parse("[data]\ntrain = [{ path = \"a.tok\", weight = -0.5 }]\n"),
                      Contains("data.train[0].weight = -0.5 must be positive"));
  REQUIRE_THROWS_WITH(parse("[data]\ntrain = [{ path = \"a.tok\", weight = nan }]\n"),
                      Contains("data.train[0].weight = nan must be positive"));
  REQUIRE_THROWS_WITH(parse("[data]\ntrain = [{ paths = [] }]\n"),
                      Contains("data.train[0]: no shard paths (give path = \"...\" or paths = [...])"));
  REQUIRE_THROWS_WITH(parse("[data]\ntrain = [{ paths = [\"a.tok\", \"\"] }]\n"),
                      Contains("data.train[0]: an empty shard path"));
  REQUIRE_THROWS_WITH(parse("[data]\nval = [{ path = \"v.tok\", weight = 2 }]\n"),
                      Contains("data.val[0].weight = 2: validation datasets are not blended"));
  REQUIRE_THROWS_WITH(parse("[data]\ntrain_path = \"a.tok\"\ntrain = [{ path = \"b.tok\" }]\n"),
                      StartsWith("data.toml:3: data.train_path and data.train are both set"));
  REQUIRE_THROWS_WITH(parse("[data]\nval_path = \"a.tok\"\nval = [{ path = \"b.tok\" }]\n"),
                      Contains("data.val_path and data.val are both set"));
  REQUIRE_THROWS_WITH(parse("[data]\nsampling = \"shuffle\"\n"),
                      Contains("data.sampling = 'shuffle' is not one of: epochs, random_windows"));
  REQUIRE_THROWS_WITH(parse("[data]\nsampling = \"random_windows\"\ntrain = [{ paths = [\"a.tok\", \"b.tok\"] }]\n"),
                      Contains("data.sampling = 'random_windows' draws from one shard, but data.train lists 1 "
                               "datasets with 2 shard paths"));
  REQUIRE_NOTHROW(parse("[data]\nsampling = \"random_windows\"\ntrain = [{ path = \"a.tok\", weight = 4 }]\n"));
  REQUIRE_NOTHROW(parse("[data]\nsampling = \"random_windows\"\ntrain_path = \"a.tok\"\n"));
}
