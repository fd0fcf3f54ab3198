#include "kernels/bandwidth.hpp"

#include "kernels/kernels.hpp"
#include "kernels/thread_pool.hpp"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "util/progress.hpp"

namespace crossmoe::kernels {

double measure_read_bandwidth(size_t bytes, int repeats) {
  // Read as an f32 matrix-vector product through the dispatched kernels: of the read patterns
  // tried (a plain summing loop, one vector stream per thread, this), this one reads fastest, so
  // it is the ceiling to hold decode against. Several rows are streamed at once per thread.
  constexpr int64_t kCols = 4096;
  const int64_t rows = int64_t(bytes / sizeof(float)) / kCols;
  std::unique_ptr<float[]> buffer(new float[size_t(rows * kCols)]);
  parallel_for(rows, [&](int64_t r) {  // touch every page from the threads that will read it
    for (int64_t c = 0; c < kCols; ++c) buffer[size_t(r * kCols + c)] = 1.0f;
  });
  std::vector<float> x(kCols, 1.0f), y(static_cast<size_t>(rows));
  const Matrix m{buffer.get(), DType::F32, rows, kCols};
  double best = 0.0;
  for (int r = 0; r < repeats; ++r) {
    Stopwatch watch;
    matmul(m, x.data(), 1, y.data());
    best = std::max(best, double(rows * kCols * sizeof(float)) / watch.seconds());
  }
  return best;
}

}  // namespace crossmoe::kernels
