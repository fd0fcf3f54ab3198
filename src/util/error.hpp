#pragma once
// One exception type for every user-facing failure: bad files, bad configs, bad arguments.
// The CLI prints what() on one line and exits non-zero.
#include <stdexcept>
#include <string>

namespace crossmoe {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws Error(message) when cond is false.
void require(bool cond, const std::string& message);

}  // namespace crossmoe
