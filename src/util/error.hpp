#pragma once
// One exception type for every user-facing failure: bad files, bad configs, bad arguments.
// The CLI prints what() on one line, "error: ...", and exits 1; a UsageError (the command line
// itself is wrong) exits 2, like the option parser's own errors.
#include <filesystem>
#include <stdexcept>
#include <string>

namespace crossmoe {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A wrong command line found after parsing: options that conflict, a required one missing.
struct UsageError : Error {
  using Error::Error;
};

// Throws Error(message) when cond is false.
void require(bool cond, const std::string& message);

// Throws Error unless path is an existing regular file (symlinks followed). Call it before
// opening a file a user named: opening a FIFO blocks forever, a directory reads as nothing.
void require_regular_file(const std::filesystem::path& path);

}  // namespace crossmoe
