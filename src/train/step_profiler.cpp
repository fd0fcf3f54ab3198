#include "train/step_profiler.hpp"

#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <vector>

#include "util/error.hpp"
#include "util/progress.hpp"

namespace crossmoe::train {

namespace {

namespace profiler = torch::profiler::impl;

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// An event's duration in microseconds: libtorch 2 counts in nanoseconds, 1.x in microseconds.
template <class Event>
auto duration_us(const Event& e, int) -> decltype(double(e.durationNs())) {
  return double(e.durationNs()) / 1e3;
}
template <class Event>
double duration_us(const Event& e, long) {
  return double(e.durationUs());
}

struct Total {
  int64_t calls = 0;
  double us = 0;
};

// The `rows` names with the most time, as a table with each one's share of `wall_us`.
void write_table(std::ostream& out, const std::map<std::string, Total>& totals, double wall_us, size_t rows,
                 const char* what) {
  std::vector<std::pair<std::string, Total>> sorted(totals.begin(), totals.end());
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.second.us > b.second.us; });
  char line[256];
  std::snprintf(line, sizeof line, "%10s %12s %8s  %s\n", "calls", "total ms", "of wall", what);
  out << line;
  for (size_t i = 0; i < std::min(rows, sorted.size()); ++i) {
    const auto& [name, t] = sorted[i];
    // Kernel names are whole template instantiations: their start says which kernel it is.
    const std::string shown = name.size() > 110 ? name.substr(0, 107) + "..." : name;
    std::snprintf(line, sizeof line, "%10lld %12.2f %7.1f%%  ", (long long)t.calls, t.us / 1e3, 100.0 * t.us / wall_us);
    out << line << shown << "\n";
  }
}

}  // namespace

StepProfiler::StepProfiler(std::filesystem::path file, int64_t first_step, int64_t steps, bool cuda)
    : file_(std::move(file)), cuda_(cuda) {
  end_ = std::min(steps, first_step + kSkip + kSteps);
  begin_ = std::max(first_step, end_ - kSteps);
}

StepProfiler::~StepProfiler() {
  if (recording_) torch::autograd::profiler::disableProfiler();
}

void StepProfiler::begin_step(int64_t step) {
  if (step != begin_) return;
  const profiler::ProfilerConfig config(profiler::ProfilerState::KINETO, false, false, false);
  std::set<profiler::ActivityType> activities{profiler::ActivityType::CPU};
  if (cuda_) activities.insert(profiler::ActivityType::CUDA);
  if (cuda_) torch::cuda::synchronize();  // the wall time starts with an idle device
  torch::autograd::profiler::prepareProfiler(config, activities);
  torch::autograd::profiler::enableProfiler(config, activities);
  recording_ = true;
  started_ = now_seconds();
}

void StepProfiler::end_step(int64_t step) {
  if (!recording_ || step + 1 != end_) return;
  if (cuda_) torch::cuda::synchronize();
  const double wall_us = (now_seconds() - started_) * 1e6;
  recording_ = false;
  const std::unique_ptr<torch::autograd::profiler::ProfilerResult> result = torch::autograd::profiler::disableProfiler();
  std::map<std::string, Total> kernels, operators;
  double kernel_us = 0;
  for (const auto& e : result->events()) {
    const double us = duration_us(e, 0);
    Total& t = (e.deviceType() == c10::DeviceType::CPU ? operators : kernels)[e.name()];
    t.calls += 1, t.us += us;
    if (e.deviceType() != c10::DeviceType::CPU) kernel_us += us;
  }
  const int64_t n = end_ - begin_;
  std::ostringstream out;
  char line[256];
  std::snprintf(line, sizeof line, "profile of steps %lld-%lld: %.1f ms of wall time, %.1f ms a step\n",
                (long long)begin_ + 1, (long long)end_, wall_us / 1e3, wall_us / 1e3 / double(n));
  out << line;
  if (cuda_) {
    std::snprintf(line, sizeof line, "device kernels: %.1f ms, %.1f%% of the wall time (the rest the device waits)\n",
                  kernel_us / 1e3, 100.0 * kernel_us / wall_us);
    out << line;
    write_table(out, kernels, wall_us, 25, "kernel");
  }
  out << "host operators (inclusive):\n";
  write_table(out, operators, wall_us, 25, "operator");
  {
    std::ofstream file(file_, std::ios::trunc);
    file << out.str();
    require(file.good(), "train: cannot write the profile " + file_.string());
  }
  const std::filesystem::path trace = file_.string() + ".trace.json";
  try {
    result->save(trace.string());
    out << "timeline: " << trace.string() << "\n";
  } catch (const c10::Error&) {
    out << "(no timeline file: this libtorch was built without Kineto)\n";
  }
  log_info(out.str() + "profile written to " + file_.string());
}

}  // namespace crossmoe::train
