#pragma once
// A scratch path for one test, unique per process: ctest runs tests in parallel processes, and
// several checkouts may run their suites on one machine at once.
#include <unistd.h>

#include <filesystem>
#include <string>

namespace crossmoe::testing_paths {

inline std::filesystem::path temp_path(const std::string& name) {
  return std::filesystem::temp_directory_path() / ("crossmoe_" + name + "_" + std::to_string(::getpid()));
}

}  // namespace crossmoe::testing_paths
