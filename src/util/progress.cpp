#include "util/progress.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace crossmoe {

void log_info(const std::string& line) {
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

std::string format_duration(double seconds) {
  const long s = std::max(0L, long(seconds + 0.5));
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%lds", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
  return buf;
}

ProgressBar::ProgressBar(int64_t total, int64_t start, double log_every_s)
    : total_(std::max<int64_t>(total, 1)), start_(start), log_every_s_(log_every_s), tty_(isatty(STDERR_FILENO)) {}

std::string ProgressBar::line(int64_t done, const std::string& status) const {
  constexpr int kWidth = 24;
  const double frac = std::clamp(double(done) / double(total_), 0.0, 1.0);
  const int filled = int(frac * kWidth);
  std::string bar(size_t(filled), '=');
  if (filled < kWidth) bar += '>' + std::string(size_t(kWidth - filled - 1), ' ');
  const double rate = double(done - start_) / std::max(watch_.seconds(), 1e-9);
  const std::string eta = done > start_ ? format_duration(double(total_ - done) / rate) : "?";
  char head[96];
  std::snprintf(head, sizeof head, "[%s] %3d%% %lld/%lld ", bar.c_str(), int(frac * 100), (long long)done, (long long)total_);
  return head + status + " ETA " + eta;
}

void ProgressBar::update(int64_t done, const std::string& status) {
  const double now = watch_.seconds();
  if (tty_) {
    if (now - last_print_ < 0.1) return;
    std::fprintf(stderr, "\r\033[K%s", line(done, status).c_str());
  } else {
    if (now - last_print_ < log_every_s_) return;
    std::fprintf(stderr, "%s\n", line(done, status).c_str());
  }
  last_print_ = now;
  std::fflush(stderr);
}

void ProgressBar::finish(const std::string& status) {
  std::fprintf(stderr, "%s%s in %s\n", tty_ ? "\r\033[K" : "", status.c_str(), format_duration(watch_.seconds()).c_str());
  std::fflush(stderr);
}

}  // namespace crossmoe
