#pragma once
// What the tests of the crossmoe command share: a fixture with a working model directory, and
// helpers for command lines and their outputs (test_cli.cpp, and test_cli_train.cpp for the
// commands that need libtorch).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <string>

#include "cli_run.hpp"
#include "file_bytes.hpp"

namespace crossmoe::testing_cli {

inline void expect_one_line_error(const Result& r, const std::string& fragment) {
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_EQ(r.out.rfind("error: ", 0), 0u) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  EXPECT_NE(r.out.find(fragment), std::string::npos) << r.out;
}

class Cli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // One directory per process: ctest runs the tests of this suite in parallel processes.
    dir_ = std::filesystem::temp_directory_path() / ("crossmoe_cli_" + std::to_string(getpid()));
    std::filesystem::remove_all(dir_);
    ASSERT_EQ(run("init " + (dir_ / "good").string() + " --layout megrez2 --hidden 64 --layers 4 --vocab 300").code, 0);
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }
  std::filesystem::path copy_of_good(const std::string& name) {
    const std::filesystem::path d = dir_ / name;
    std::filesystem::remove_all(d);
    std::filesystem::copy(dir_ / "good", d);
    return d;
  }
  static inline std::filesystem::path dir_;
};

// `text` with `from` replaced by `to` (a flag's value changed in a command line).
inline std::string replaced(std::string text, const std::string& from, const std::string& to) {
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return at == std::string::npos ? text : text.replace(at, from.size(), to);
}

using testing_files::bytes_of;

// Paragraphs of made-up English, deterministic.
inline std::string made_up_text(int paragraphs, int words_per_paragraph) {
  const char* words[] = {"the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "old", "mill", "where",
                         "river", "kept", "grain", "in", "winter", "light", "fell"};
  std::string text;
  uint32_t x = 12345;
  for (int p = 0; p < paragraphs; ++p) {
    for (int w = 0; w < words_per_paragraph; ++w) {
      x = x * 1103515245u + 12345u;
      text += std::string(words[(x >> 16) % 20]) + (w % 9 == 8 ? ".\n" : " ");
    }
    text += "\n\n";
  }
  return text;
}

}  // namespace crossmoe::testing_cli
