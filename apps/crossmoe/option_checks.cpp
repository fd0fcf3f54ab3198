#include "option_checks.hpp"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <string>

namespace crossmoe::cli {

namespace {

std::string in_quotes(const std::string& s) { return "'" + s + "'"; }

// %g without the noise of 6 significant digits where fewer do.
std::string number_text(double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.10g", x);
  return buf;
}

// Parses all of text as a decimal whole number. from_chars takes no leading '+' or spaces, and
// unlike the option library's own parsing it reads "010" as ten, not eight.
template <class Int>
bool parse_whole(const std::string& text, Int& value) {
  const char* begin = text.data() + (text.size() > 1 && text[0] == '+' ? 1 : 0);
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(begin, end, value);
  return ec == std::errc() && ptr == end;
}

bool parse_real(const std::string& text, double& value) {
  if (text.empty() || std::isspace(static_cast<unsigned char>(text[0]))) return false;
  char* end = nullptr;
  value = std::strtod(text.c_str(), &end);
  return end == text.c_str() + text.size() && std::isfinite(value);
}

}  // namespace

CLI::Validator whole_number(long long min, long long max) {
  const std::string expected =
      max == LLONG_MAX ? "a whole number of at least " + std::to_string(min)
                       : "a whole number from " + std::to_string(min) + " to " + std::to_string(max);
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        long long value = 0;
        if (!parse_whole(text, value) || value < min || value > max) return "expected " + expected + ", got " + in_quotes(text);
        text = std::to_string(value);  // canonical decimal for the option library's conversion
        return {};
      },
      max == LLONG_MAX ? ">=" + std::to_string(min) : "in [" + std::to_string(min) + ", " + std::to_string(max) + "]");
}

CLI::Validator positive() { return whole_number(1); }

CLI::Validator real_number(double min, double max) {
  const bool unbounded = max == std::numeric_limits<double>::max();
  const std::string expected = unbounded ? "a number of at least " + number_text(min)
                                         : "a number from " + number_text(min) + " to " + number_text(max);
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        double value = 0;
        if (!parse_real(text, value) || value < min || value > max) return "expected " + expected + ", got " + in_quotes(text);
        return {};
      },
      unbounded ? ">=" + number_text(min) : "in [" + number_text(min) + ", " + number_text(max) + "]");
}

CLI::Validator positive_real() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        double value = 0;
        if (!parse_real(text, value) || value <= 0) return "expected a number greater than 0, got " + in_quotes(text);
        return {};
      },
      ">0");
}

void check_number_syntax(CLI::App& app) {
  for (CLI::Option* opt : app.get_options()) {
    const std::string type = opt->get_type_name();
    if (type == "INT") {
      opt->check(CLI::Validator(
          [](std::string& text) -> std::string {
            long long value = 0;
            if (!parse_whole(text, value)) return "expected a whole number, got " + in_quotes(text);
            text = std::to_string(value);
            return {};
          },
          ""));
    } else if (type == "UINT") {
      opt->check(CLI::Validator(
          [](std::string& text) -> std::string {
            unsigned long long value = 0;
            if (!parse_whole(text, value)) return "expected a whole number of at least 0, got " + in_quotes(text);
            text = std::to_string(value);
            return {};
          },
          ""));
    } else if (type == "FLOAT") {
      opt->check(CLI::Validator(
          [](std::string& text) -> std::string {
            double value = 0;
            if (!parse_real(text, value)) return "expected a number, got " + in_quotes(text);
            return {};
          },
          ""));
    }
  }
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) check_number_syntax(*sub);
}

}  // namespace crossmoe::cli
