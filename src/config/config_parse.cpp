// TOML -> Config: reads the file with TOML++, assigns each key through the registry with type
// checks, applies `--set section.key=value` overrides, then validates. Errors start "<file>:<line>: ".
#include <toml++/toml.h>

#include <algorithm>
#include <fstream>
#include <optional>
#include <sstream>

#include "src/config/config.h"
#include "src/config/config_fields.h"
#include "src/util/check.h"

namespace moe {
namespace {

using config_internal::Field;
using config_internal::KeyOrigins;

std::string type_name(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string: return "string";
    case toml::node_type::integer: return "integer";
    case toml::node_type::floating_point: return "float";
    case toml::node_type::boolean: return "boolean";
    case toml::node_type::array: return "array";
    case toml::node_type::table: return "table";
    case toml::node_type::date: return "date";
    case toml::node_type::time: return "time";
    case toml::node_type::date_time: return "date-time";
    default: return "nothing";
  }
}

// "string \"64\"" for scalars (the value helps find the mistake), the bare type otherwise.
std::string describe(const toml::node& node) {
  if (node.is_array() || node.is_table()) return type_name(node);
  std::ostringstream out;
  node.visit([&](const auto& value) { out << value; });
  return type_name(node) + " " + out.str();
}

std::string expected_of(const Field& field) {
  struct Names {
    std::string operator()(int64_t*) const { return "an integer"; }
    std::string operator()(uint64_t*) const { return "a non-negative integer"; }
    std::string operator()(double*) const { return "a number"; }
    std::string operator()(bool*) const { return "a boolean"; }
    std::string operator()(std::string*) const { return "a string"; }
    std::string operator()(std::vector<int64_t>*) const { return "an array of integers"; }
    std::string operator()(std::vector<double>*) const { return "an array of numbers"; }
    std::string operator()(std::vector<std::string>*) const { return "an array of strings"; }
    std::string operator()(std::vector<DataSource>*) const {
      return "an array of tables like { path = \"shard.tok\", weight = 1.0 }";
    }
  };
  return std::visit(Names{}, field.target);
}

// Each assign_to returns "" on success, else what was wrong with the value (without the key).
std::string assign_to(int64_t* target, const toml::node& node) {
  if (!node.is_integer()) return "got " + describe(node);
  *target = node.as_integer()->get();
  return "";
}

std::string assign_to(uint64_t* target, const toml::node& node) {
  if (!node.is_integer() || node.as_integer()->get() < 0) return "got " + describe(node);
  *target = static_cast<uint64_t>(node.as_integer()->get());
  return "";
}

// Integers are accepted where floats are expected (`lr = 1` means 1.0).
std::optional<double> number_of(const toml::node& node) {
  if (node.is_floating_point()) return node.as_floating_point()->get();
  if (node.is_integer()) return static_cast<double>(node.as_integer()->get());
  return std::nullopt;
}

std::string assign_to(double* target, const toml::node& node) {
  auto number = number_of(node);
  if (!number) return "got " + describe(node);
  *target = *number;
  return "";
}

std::string assign_to(bool* target, const toml::node& node) {
  if (!node.is_boolean()) return "got " + describe(node);
  *target = node.as_boolean()->get();
  return "";
}

std::string assign_to(std::string* target, const toml::node& node) {
  if (!node.is_string()) return "got " + describe(node);
  *target = node.as_string()->get();
  return "";
}

std::string assign_to(std::vector<int64_t>* target, const toml::node& node) {
  const toml::array* array = node.as_array();
  if (!array) return "got " + describe(node);
  std::vector<int64_t> values;
  for (const auto& element : *array) {
    if (!element.is_integer()) return "got an array containing " + describe(element);
    values.push_back(element.as_integer()->get());
  }
  *target = std::move(values);
  return "";
}

std::string assign_to(std::vector<double>* target, const toml::node& node) {
  const toml::array* array = node.as_array();
  if (!array) return "got " + describe(node);
  std::vector<double> values;
  for (const auto& element : *array) {
    auto number = number_of(element);
    if (!number) return "got an array containing " + describe(element);
    values.push_back(*number);
  }
  *target = std::move(values);
  return "";
}

std::string assign_to(std::vector<std::string>* target, const toml::node& node) {
  const toml::array* array = node.as_array();
  if (!array) return "got " + describe(node);
  std::vector<std::string> values;
  for (const auto& element : *array) {
    if (!element.is_string()) return "got an array containing " + describe(element);
    values.push_back(element.as_string()->get());
  }
  *target = std::move(values);
  return "";
}

// One data source table: path (a string) or paths (an array of strings), and weight (a number).
std::string assign_source(DataSource& source, const toml::table& table) {
  bool has_paths = false;
  for (const auto& [key, value] : table) {
    const std::string name(key.str());
    std::string problem;
    if (name == "path" || name == "paths") {
      if (has_paths) return "give path or paths, not both";
      has_paths = true;
      if (name == "paths") {
        problem = assign_to(&source.paths, value);
      } else {
        source.paths.emplace_back();
        problem = assign_to(&source.paths.back(), value);
      }
    } else if (name == "weight") {
      problem = assign_to(&source.weight, value);
    } else {
      return "unknown key '" + name + "' (keys: path, paths, weight)";
    }
    if (!problem.empty()) {
      const char* expected = name == "weight" ? "a number" : name == "path" ? "a string" : "an array of strings";
      return name + ": expected " + expected + ", " + problem;
    }
  }
  return has_paths ? "" : "needs path = \"...\" or paths = [...]";
}

std::string assign_to(std::vector<DataSource>* target, const toml::node& node) {
  const toml::array* array = node.as_array();
  if (!array) return "got " + describe(node);
  std::vector<DataSource> values;
  for (const auto& element : *array) {
    const std::string at = "entry [" + std::to_string(values.size()) + "] ";
    if (!element.is_table()) return at + "is " + describe(element) + ", not a table";
    DataSource source;
    std::string problem = assign_source(source, *element.as_table());
    if (!problem.empty()) return at + problem;
    values.push_back(std::move(source));
  }
  *target = std::move(values);
  return "";
}

std::string assign_node(const Field& field, const toml::node& node) {
  std::string problem = std::visit([&](auto* target) { return assign_to(target, node); }, field.target);
  if (problem.empty()) return "";
  // A data source's own problem is named as is; a value of the wrong type says what was expected.
  const bool inside_entry = std::holds_alternative<std::vector<DataSource>*>(field.target) && node.is_array();
  return inside_entry ? problem : "expected " + expected_of(field) + ", " + problem;
}

toml::table parse_document(const std::string& text, const std::string& source_name) {
  try {
    return toml::parse(text, source_name);
  } catch (const toml::parse_error& error) {
    const auto& begin = error.source().begin;
    MOE_FAIL(source_name, ":", begin.line, ": TOML syntax error (column ", begin.column, "): ",
             error.description());
  }
}

// The line of a key in the file: the key's own position, else its value's.
toml::source_index line_of(const toml::key& key, const toml::node& node) {
  auto line = key.source().begin.line;
  return line != 0 ? line : node.source().begin.line;
}

std::string location(const std::string& source_name, const toml::key& key, const toml::node& node) {
  return source_name + ":" + std::to_string(line_of(key, node));
}

// A table's entries in file order (TOML++ keeps them sorted by name), so that the first
// error reported is the first one in the file.
std::vector<std::pair<const toml::key*, const toml::node*>> in_file_order(const toml::table& table) {
  std::vector<std::pair<const toml::key*, const toml::node*>> entries;
  for (const auto& [key, node] : table) entries.emplace_back(&key, &node);
  std::stable_sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
    return line_of(*a.first, *a.second) < line_of(*b.first, *b.second);
  });
  return entries;
}

void apply_section(const toml::table& table, const std::string& section, std::vector<Field>& fields,
                   KeyOrigins& origins) {
  for (auto [key_ptr, node_ptr] : in_file_order(table)) {
    const toml::key& key = *key_ptr;
    const toml::node& node = *node_ptr;
    std::string at = location(origins.source, key, node);
    Field* field = config_internal::find_field(fields, section, key.str());
    if (!field) {
      MOE_FAIL(at, ": unknown key '", section, ".", key.str(), "'",
               config_internal::suggest_key(fields, section, key.str()));
    }
    std::string problem = assign_node(*field, node);
    MOE_CHECK(problem.empty(), at, ": ", field->name(), ": ", problem);
    origins.where[field->name()] = at;
  }
}

std::string section_list() {
  std::string out;
  for (const auto& name : config_internal::config_sections()) out += (out.empty() ? "" : ", ") + name;
  return out;
}

void apply_document(const toml::table& document, std::vector<Field>& fields, KeyOrigins& origins) {
  for (auto [key, node_ptr] : in_file_order(document)) {
    const toml::node& node = *node_ptr;
    std::string at = location(origins.source, *key, node);
    std::string name(key->str());
    if (!config_internal::is_section(name)) {
      MOE_CHECK(!node.is_table(), at, ": unknown section [", name, "] (sections: ", section_list(), ")");
      MOE_FAIL(at, ": unknown key '", name, "' outside any section",
               config_internal::suggest_key(fields, "", name));
    }
    MOE_CHECK(node.is_table(), at, ": ", name, ": expected a table [", name, "], got ", type_name(node));
    apply_section(*node.as_table(), name, fields, origins);
  }
}

std::string trim(std::string_view text) {
  const char* blank = " \t\r\n";
  auto begin = text.find_first_not_of(blank);
  if (begin == std::string_view::npos) return "";
  auto end = text.find_last_not_of(blank);
  return std::string(text.substr(begin, end - begin + 1));
}

// The override's value read as one TOML value, or nullopt when it is not valid TOML.
std::optional<toml::table> parse_value(const std::string& value) {
  try {
    toml::table table = toml::parse("v = " + value);
    if (table.size() == 1 && table.contains("v")) return table;
  } catch (const toml::parse_error&) {
  }
  return std::nullopt;
}

std::string assign_override(const Field& field, const std::string& value) {
  auto parsed = parse_value(value);
  if (auto* target = std::get_if<std::string*>(&field.target)) {
    // Strings may be given bare (`train.device=cpu`); a TOML string literal is unquoted.
    const toml::node* node = parsed ? parsed->get("v") : nullptr;
    **target = node && node->is_string() ? node->as_string()->get() : value;
    return "";
  }
  if (!parsed) return "expected " + expected_of(field) + ", got '" + value + "'";
  return assign_node(field, *parsed->get("v"));
}

void apply_override(const std::string& text, std::vector<Field>& fields, KeyOrigins& origins) {
  std::string at = "--set " + text;
  auto equals = text.find('=');
  MOE_CHECK(equals != std::string::npos, at, ": expected section.key=value");
  std::string name = trim(std::string_view(text).substr(0, equals));
  std::string value = trim(std::string_view(text).substr(equals + 1));
  auto dot = name.find('.');
  MOE_CHECK(dot != std::string::npos && dot > 0 && dot + 1 < name.size(), at,
            ": expected section.key=value, got key '", name, "'");
  std::string section = name.substr(0, dot), key = name.substr(dot + 1);
  MOE_CHECK(config_internal::is_section(section), at, ": unknown section [", section, "] (sections: ",
            section_list(), ")");
  Field* field = config_internal::find_field(fields, section, key);
  if (!field) {
    MOE_FAIL(at, ": unknown key '", name, "'", config_internal::suggest_key(fields, section, key));
  }
  std::string problem = assign_override(*field, value);
  MOE_CHECK(problem.empty(), at, ": ", name, ": ", problem);
  origins.where[name] = at;
}

}  // namespace

Config parse_config(const std::string& toml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides) {
  Config config;
  config.source_path = source_name;
  KeyOrigins origins{source_name, {}};
  auto fields = config_internal::config_fields(config);
  apply_document(parse_document(toml_text, source_name), fields, origins);
  for (const auto& text : overrides) apply_override(text, fields, origins);
  config_internal::validate_config_at(config, origins);
  return config;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  require_regular_file(path, "cannot read config file");
  std::ifstream in(path, std::ios::binary);
  MOE_CHECK(in.good(), path, ": cannot open config file");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_config(text.str(), path, overrides);
}

}  // namespace moe
