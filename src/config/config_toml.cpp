// Config -> TOML: every key of every section in declaration order, doubles in their shortest
// round-trip form, so that parse_config(to_toml(c)) reproduces c exactly (the run-dir copy); and
// the keys two configs differ in, as that text (what a resume compares).
#include <charconv>
#include <cstdio>
#include <sstream>

#include "src/config/config.h"
#include "src/config/config_fields.h"

namespace moe {
namespace {

// Shortest digits that read back to the same double; integral values get ".0" to stay floats.
std::string format_double(double value) {
  char buffer[64];
  auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  std::string text(buffer, result.ptr);
  if (text.find_first_not_of("-0123456789") == std::string::npos) text += ".0";
  return text;
}

// A TOML basic string: quotes, backslashes and control characters escaped; UTF-8 passes through.
std::string quote(const std::string& value) {
  std::string out = "\"";
  for (char c : value) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\t': out += "\\t"; break;
      case '\n': out += "\\n"; break;
      case '\f': out += "\\f"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          char escaped[8];
          std::snprintf(escaped, sizeof(escaped), "\\u%04x", static_cast<unsigned>(c));
          out += escaped;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

struct FormatValue {
  std::string operator()(const int64_t* v) const { return std::to_string(*v); }
  std::string operator()(const uint64_t* v) const { return std::to_string(*v); }
  std::string operator()(const double* v) const { return format_double(*v); }
  std::string operator()(const bool* v) const { return *v ? "true" : "false"; }
  std::string operator()(const std::string* v) const { return quote(*v); }
  std::string operator()(const std::vector<int64_t>* v) const {
    std::string out = "[";
    for (size_t i = 0; i < v->size(); ++i) out += (i ? ", " : "") + std::to_string((*v)[i]);
    return out + "]";
  }
  std::string operator()(const std::vector<double>* v) const {
    std::string out = "[";
    for (size_t i = 0; i < v->size(); ++i) out += (i ? ", " : "") + format_double((*v)[i]);
    return out + "]";
  }
  std::string operator()(const std::vector<std::string>* v) const {
    std::string out = "[";
    for (size_t i = 0; i < v->size(); ++i) out += (i ? ", " : "") + quote((*v)[i]);
    return out + "]";
  }
  // An array of inline tables: [{ paths = ["a.tok"], weight = 1.0 }, ...].
  std::string operator()(const std::vector<DataSource>* v) const {
    std::string out = "[";
    for (size_t i = 0; i < v->size(); ++i) {
      const DataSource& source = (*v)[i];
      out += std::string(i ? ", " : "") + "{ paths = " + (*this)(&source.paths) +
             ", weight = " + format_double(source.weight) + " }";
    }
    return out + "]";
  }
};

}  // namespace

std::string to_toml(const Config& config) {
  Config copy = config;
  std::ostringstream out;
  out << "# moe-engine resolved config: every key, defaults included (see docs/config.md).\n";
  if (!config.source_path.empty()) {
    std::string source = config.source_path;
    for (char& c : source) c = (c == '\n' || c == '\r') ? ' ' : c;
    out << "# read from " << source << " (overrides applied)\n";
  }
  std::string section;
  for (const auto& field : config_internal::config_fields(copy)) {
    if (section != field.section) {
      section = field.section;
      out << "\n[" << section << "]\n";
    }
    out << field.key << " = " << std::visit(FormatValue{}, field.target) << "\n";
  }
  return out.str();
}

std::vector<ConfigChange> config_changes(const Config& before, const Config& after) {
  Config a = before, b = after;
  std::vector<config_internal::Field> fields_a = config_internal::config_fields(a);
  std::vector<config_internal::Field> fields_b = config_internal::config_fields(b);
  std::vector<ConfigChange> changes;
  for (size_t i = 0; i < fields_a.size(); ++i) {
    std::string old_text = std::visit(FormatValue{}, fields_a[i].target);
    std::string new_text = std::visit(FormatValue{}, fields_b[i].target);
    if (old_text != new_text) changes.push_back({fields_a[i].name(), old_text, new_text});
  }
  return changes;
}

}  // namespace moe
