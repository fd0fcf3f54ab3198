#pragma once
// `crossmoe train --profile FILE`: where a training step's time goes, from libtorch's own profiler.
#include <cstdint>
#include <filesystem>

namespace crossmoe::train {

// Records a few steps of a run and writes FILE (and prints it): the device's kernels (on CUDA) and
// the host's operators, each by calls and total time, beside the steps' wall time, so that a low
// MFU shows as idle device time (launches, host waits) or as the kernels that take it. Operators'
// times are inclusive (an operator's time holds the operators it calls); kernels do not nest.
// Where libtorch has Kineto (CUDA builds) the whole timeline goes beside it as FILE.trace.json,
// for Perfetto or chrome://tracing.
class StepProfiler {
 public:
  static constexpr int64_t kSteps = 5;  // steps recorded
  static constexpr int64_t kSkip = 10;  // steps of the run before them (warm-up, allocator growth)

  // For the run's steps [first_step, steps): records kSteps from first_step + kSkip, or the last
  // ones of a shorter run.
  StepProfiler(std::filesystem::path file, int64_t first_step, int64_t steps, bool cuda);
  ~StepProfiler();  // stops recording if the run ended inside the window
  StepProfiler(const StepProfiler&) = delete;
  StepProfiler& operator=(const StepProfiler&) = delete;

  void begin_step(int64_t step);
  void end_step(int64_t step);  // after the step's results are read back (the device is done)

 private:
  std::filesystem::path file_;
  int64_t begin_ = 0, end_ = 0;  // the recorded steps [begin_, end_)
  bool cuda_ = false, recording_ = false;
  double started_ = 0;  // steady-clock seconds at the first recorded step
};

}  // namespace crossmoe::train
