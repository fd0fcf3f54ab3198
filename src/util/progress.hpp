#pragma once
// The one place the library writes to the terminal: status lines go to stderr, so that
// stdout carries only a command's real output (generated text, tables, JSON).
#include <chrono>
#include <cstdint>
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

// A progress bar for long work: "[=====>    ] 40% 400/1000 <status> ETA 1m20s". On a terminal it
// redraws one line; otherwise (logs, CI) it prints a line at most every `log_every_s` seconds.
class ProgressBar {
 public:
  ProgressBar(int64_t total, int64_t start = 0, double log_every_s = 10.0);
  void update(int64_t done, const std::string& status);
  void finish(const std::string& status);  // the last line, kept on screen

 private:
  std::string line(int64_t done, const std::string& status) const;
  int64_t total_, start_;
  double log_every_s_, last_print_ = -1e9;
  bool tty_;
  Stopwatch watch_;
};

std::string format_duration(double seconds);  // "42s", "3m05s", "1h02m"

}  // namespace crossmoe
