#pragma once
// The one place the library writes to the terminal: status lines go to stderr, so that
// stdout carries only a command's real output (generated text, tables, JSON).
#include <chrono>
#include <string>

namespace crossmoe {

void log_info(const std::string& line);

// A seconds stopwatch.
class Stopwatch {
 public:
  Stopwatch() : start_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

}  // namespace crossmoe
