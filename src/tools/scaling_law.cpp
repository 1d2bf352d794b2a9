// Scaling-law formulas (Kaplan, Chinchilla approach 3), compute-optimal allocations, and the
// reader of (params, tokens, loss) rows for the fit. The fit itself is in scaling_fit.cpp.
#include "src/tools/scaling_law.h"

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "src/util/check.h"

namespace moe {

namespace {

void check_positive(double value, const char* what) {
  MOE_CHECK(std::isfinite(value) && value > 0, what, " must be a positive number, got ", value);
}

}  // namespace

double training_flops(double params, double tokens) {
  check_positive(params, "params");
  check_positive(tokens, "tokens");
  return 6.0 * params * tokens;
}

double kaplan_loss_params(const KaplanLaw& law, double params) {
  check_positive(params, "params");
  return std::pow(law.n_c / params, law.alpha_n);
}

double kaplan_loss_tokens(const KaplanLaw& law, double tokens) {
  check_positive(tokens, "tokens");
  return std::pow(law.d_c / tokens, law.alpha_d);
}

double kaplan_loss(const KaplanLaw& law, double params, double tokens) {
  check_positive(params, "params");
  check_positive(tokens, "tokens");
  return std::pow(std::pow(law.n_c / params, law.alpha_n / law.alpha_d) + law.d_c / tokens, law.alpha_d);
}

ChinchillaLaw hoffmann_law() { return {1.69, 406.4, 410.7, 0.34, 0.28}; }
ChinchillaLaw besiroglu_law() { return {1.8172, 482.01, 2085.43, 0.3478, 0.3658}; }

double chinchilla_loss(const ChinchillaLaw& law, double params, double tokens) {
  check_positive(params, "params");
  check_positive(tokens, "tokens");
  return law.e + law.a / std::pow(params, law.alpha) + law.b / std::pow(tokens, law.beta);
}

Allocation compute_optimal(const ChinchillaLaw& law, double flops) {
  check_positive(flops, "flops");
  MOE_CHECK(law.alpha > 0 && law.beta > 0 && law.a > 0 && law.b > 0,
            "a compute-optimal allocation needs A, B, alpha, beta > 0 (got A = ", law.a, ", B = ", law.b,
            ", alpha = ", law.alpha, ", beta = ", law.beta, ")");
  Allocation out;
  out.flops = flops;
  out.params = optimum_coefficient(law) * std::pow(flops / 6.0, law.beta / (law.alpha + law.beta));
  out.tokens = flops / 6.0 / out.params;
  return out;
}

double optimum_coefficient(const ChinchillaLaw& law) {
  // Setting d/dN of E + A N^-α + B (C/6N)^-β to zero: α A N^-α = β B (C/6)^-β N^β.
  return std::pow(law.alpha * law.a / (law.beta * law.b), 1.0 / (law.alpha + law.beta));
}

Allocation allocate_by_ratio(double flops, double tokens_per_param) {
  check_positive(flops, "flops");
  check_positive(tokens_per_param, "tokens per parameter");
  Allocation out;
  out.flops = flops;
  out.params = std::sqrt(flops / (6.0 * tokens_per_param));
  out.tokens = tokens_per_param * out.params;
  return out;
}

// ---- reading rows ----

namespace {

double parse_field(const std::string& text, const std::string& field, const std::string& where) {
  const char* begin = text.c_str();
  while (*begin == ' ' || *begin == '\t') ++begin;
  char* end = nullptr;
  errno = 0;
  double value = std::strtod(begin, &end);
  while (end && (*end == ' ' || *end == '\t' || *end == '\r')) ++end;
  MOE_CHECK(end != begin && *end == '\0' && errno == 0, where, ": ", field, " is not a number: '", text, "'");
  MOE_CHECK(std::isfinite(value) && value > 0, where, ": ", field, " must be positive, got ", text);
  return value;
}

std::vector<std::string> split_csv(const std::string& line) {
  std::vector<std::string> cells;
  std::stringstream in(line);
  std::string cell;
  while (std::getline(in, cell, ',')) cells.push_back(cell);
  if (!line.empty() && line.back() == ',') cells.push_back("");
  return cells;
}

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r"), e = s.find_last_not_of(" \t\r");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

LossObservation parse_json_row(const std::string& line, const std::string& where, const std::string names[3]) {
  nlohmann::json row = nlohmann::json::parse(line, nullptr, false);
  MOE_CHECK(!row.is_discarded() && row.is_object(), where, ": not a JSON object");
  double values[3];
  for (int i = 0; i < 3; ++i) {
    MOE_CHECK(row.contains(names[i]), where, ": missing field '", names[i], "'");
    const auto& v = row[names[i]];
    if (v.is_string()) {
      values[i] = parse_field(v.get<std::string>(), names[i], where);
    } else {
      MOE_CHECK(v.is_number(), where, ": ", names[i], " is not a number: ", v.dump());
      values[i] = parse_field(v.dump(), names[i], where);
    }
  }
  return {values[0], values[1], values[2]};
}

}  // namespace

std::vector<LossObservation> parse_loss_observations(const std::string& text, const std::string& source,
                                                     const LossColumns& columns) {
  const std::string names[3] = {columns.params, columns.tokens, columns.loss};
  std::vector<LossObservation> rows;
  std::stringstream in(text);
  std::string line;
  int column[3] = {0, 1, 2};  // params, tokens, loss: their CSV columns
  bool first = true;
  for (int number = 1; std::getline(in, line); ++number) {
    line = trim(line);
    if (line.empty() || line[0] == '#') continue;
    std::string where = source + ":" + std::to_string(number);
    if (line[0] == '{') {
      rows.push_back(parse_json_row(line, where, names));
      first = false;
      continue;
    }
    std::vector<std::string> cells = split_csv(line);
    for (auto& cell : cells) cell = trim(cell);
    bool header = first && !cells.empty() && std::isalpha(static_cast<unsigned char>(cells[0][0]));
    first = false;
    if (header) {
      for (int i = 0; i < 3; ++i) {
        column[i] = -1;
        for (size_t c = 0; c < cells.size(); ++c) if (cells[c] == names[i]) column[i] = static_cast<int>(c);
        MOE_CHECK(column[i] >= 0, where, ": the CSV header has no column '", names[i], "'");
      }
      continue;
    }
    int needed = std::max(column[0], std::max(column[1], column[2])) + 1;
    MOE_CHECK(static_cast<int>(cells.size()) >= needed, where, ": expected ", needed, " comma-separated fields, got ",
              cells.size());
    rows.push_back({parse_field(cells[column[0]], names[0], where), parse_field(cells[column[1]], names[1], where),
                    parse_field(cells[column[2]], names[2], where)});
  }
  return rows;
}

std::vector<LossObservation> read_loss_observations(const std::string& path, const LossColumns& columns) {
  std::ifstream file(path);
  MOE_CHECK(file.good(), "cannot open loss file ", path);
  std::stringstream text;
  text << file.rdbuf();
  return parse_loss_observations(text.str(), path, columns);
}

}  // namespace moe
