// Decode-shaped matmul (one token) against the machine's streaming read bandwidth, measured in
// the same run: per ISA and weight dtype, the effective GB/s of weights read and its ratio to
// the bandwidth limit. Usage: bench_matvec [rows] [cols]
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/bandwidth.hpp"
#include "kernels/kernels.hpp"
#include "util/progress.hpp"

using namespace crossmoe;
using namespace crossmoe::kernels;

int main(int argc, char** argv) {
  const int64_t rows = argc > 1 ? std::atoll(argv[1]) : 32768, cols = argc > 2 ? std::atoll(argv[2]) : 8192;
  const double bandwidth = measure_read_bandwidth();
  std::printf("streaming read bandwidth: %.2f GB/s; matrix %lld x %lld\n", bandwidth / 1e9, (long long)rows,
              (long long)cols);
  std::printf("%-8s %-5s %10s %10s\n", "isa", "dtype", "GB/s", "of limit");
  std::vector<uint16_t> w16(size_t(rows * cols), f32_to_bf16(0.01f));
  std::vector<float> w32(size_t(rows * cols), 0.01f), x(cols, 1.0f), y(rows);
  for (Isa isa : {Isa::Generic, Isa::Avx2, Isa::Avx512}) {
    if (!isa_supported(isa)) continue;
    set_isa(isa);
    for (DType dtype : {DType::BF16, DType::F16, DType::F32}) {
      const Matrix m{dtype == DType::F32 ? static_cast<const void*>(w32.data()) : w16.data(), dtype, rows, cols};
      matmul(m, x.data(), 1, y.data());  // warm-up
      double best = 1e30;
      for (int r = 0; r < 5; ++r) {
        Stopwatch s;
        matmul(m, x.data(), 1, y.data());
        best = std::min(best, s.seconds());
      }
      const double gbs = double(rows * cols) * dtype_size(dtype) / best;
      std::printf("%-8s %-5s %10.2f %9.1f%%\n", isa_name(isa).c_str(), dtype_name(dtype).c_str(), gbs / 1e9,
                  100 * gbs / bandwidth);
    }
  }
}
