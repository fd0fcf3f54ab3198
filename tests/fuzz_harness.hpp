#pragma once
// One fuzz target per reader of untrusted input. Each tests/fuzz_<reader>.cpp defines
//   CROSSMOE_FUZZ_TARGET(bytes) { ...hand bytes to the reader the way crossmoe would... }
// which becomes libFuzzer's entry point LLVMFuzzerTestOneInput. The contract checked is the one
// users rely on: a malformed input ends in crossmoe::Error (the CLI's one-line `error:`); any other
// exception escapes and fails the run, as do sanitizer reports and inputs that run too long.
// Built with clang's -fsanitize=fuzzer it is a libFuzzer program; otherwise fuzz_driver.cpp
// supplies a main() with a bounded mutation loop (tests/CMakeLists.txt).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "util/error.hpp"

namespace crossmoe::fuzz {

// Inputs a target rejected with Error (the driver reports how many of those it tried).
inline uint64_t rejected = 0;

// An invariant of the reader's result: when it fails, the input is a bug even though nothing
// crashed, so it aborts (a sanitizer report with the input saved) rather than throwing Error.
inline void check(bool invariant, const char* what) {
  if (invariant) return;
  std::fprintf(stderr, "FAIL: %s\n", what);
  std::abort();
}

// A scratch directory of this process (removed at exit), for readers that take a path.
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    const auto d = std::filesystem::temp_directory_path() / ("crossmoe-fuzz-" + std::to_string(getpid()));
    std::filesystem::create_directories(d);
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(scratch_dir(), ignored);
    });
    return d;
  }();
  return dir;
}

// Writes `bytes` to scratch_dir() / name and returns the path.
inline std::filesystem::path write_scratch(const std::string& name, const std::string& bytes) {
  const auto path = scratch_dir() / name;
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), std::streamsize(bytes.size()));
  return path;
}

}  // namespace crossmoe::fuzz

#define CROSSMOE_FUZZ_TARGET(bytes)                                                       \
  static void crossmoe_fuzz_target(const std::string& bytes);                            \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {              \
    try {                                                                                 \
      crossmoe_fuzz_target(std::string(reinterpret_cast<const char*>(data), size));     \
    } catch (const crossmoe::Error&) {                                                    \
      ++crossmoe::fuzz::rejected;                                                         \
    }                                                                                     \
    return 0;                                                                             \
  }                                                                                       \
  static void crossmoe_fuzz_target(const std::string& bytes)
