#pragma once
// Range checks for numeric options, attached with ->check(...). Each one rejects text that is not
// a number, and numbers out of range, with a message that says what was expected, e.g.
//   error: crossmoe bench: --runs: expected a whole number from 1 to 2147483647, got '0'
// Use positive() for sizes, counts and shape flags (zero or less is an error), whole_number(0)
// for counts where 0 means "off" or "all", real_number / positive_real for real-valued knobs.
// Every numeric option of every command also gets a plain "is this a number" check from main.cpp
// (check_number_syntax), so these are only needed where a range applies.
#include <CLI/CLI.hpp>
#include <climits>
#include <limits>

namespace crossmoe::cli {

// A whole number in [min, max] (decimal; the default max is what an int holds).
CLI::Validator whole_number(long long min, long long max = INT_MAX);
// A whole number >= 1 that an int holds.
CLI::Validator positive();
// A finite real number in [min, max].
CLI::Validator real_number(double min, double max = std::numeric_limits<double>::max());
// A finite real number > 0.
CLI::Validator positive_real();

// Adds the plain number-syntax check to every INT / UINT / FLOAT option of app and its
// subcommands, so `-n abc` or `--seed -1` is a one-line error naming the option.
void check_number_syntax(CLI::App& app);

}  // namespace crossmoe::cli
