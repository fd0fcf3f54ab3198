#pragma once
// A file's whole contents, byte for byte (what a command wrote, a checkpoint, a fuzzer's seed);
// empty when it cannot be read. Free of gtest, for the fuzz drivers too.
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace crossmoe::testing_files {

inline std::string bytes_of(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace crossmoe::testing_files
