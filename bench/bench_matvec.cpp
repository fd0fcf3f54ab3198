// Decode-shaped matmul (one token) against the machine's streaming read bandwidth, measured in
// the same run: per ISA and weight dtype, the effective GB/s of weights read and its ratio to
// the bandwidth limit. Q8_0 and Q4_K are timed in both layouts (rows as stored; interleaved 8 at
// a time, as a model in memory holds them). Each figure is the best of 5 timed products; on a
// shared machine the probe and the products see different load, so compare the columns of one run.
// Usage: bench_matvec [rows] [cols] [isa]   (isa: generic, avx2, avx512, avx512_vnni or avx512_bf16;
//        default: every supported one)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels/bandwidth.hpp"
#include "kernels/kernels.hpp"
#include "util/progress.hpp"
#include "util/quant.hpp"

using namespace crossmoe;
using namespace crossmoe::kernels;

namespace {

double best_seconds(const Matrix& m, const float* x, float* y) {
  matmul(m, x, 1, y);  // warm-up
  double best = 1e30;
  for (int r = 0; r < 5; ++r) {
    Stopwatch s;
    matmul(m, x, 1, y);
    best = std::min(best, s.seconds());
  }
  return best;
}

// rows x cols of `type`, made of 64 distinct random quantized rows repeated (quantizing every row
// of a 300 MB matrix would take longer than the benchmark).
std::vector<uint8_t> quantized_matrix(DType type, int64_t rows, int64_t cols) {
  const size_t row_bytes = dtype_row_bytes(type, cols);
  std::vector<uint8_t> out(size_t(rows) * row_bytes);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t r = 0; r < std::min<int64_t>(rows, 64); ++r) {
    for (float& v : row) v = normal(rng);
    quant::quantize_row(type, row.data(), cols, out.data() + size_t(r) * row_bytes);
  }
  for (int64_t r = 64; r < rows; ++r)
    std::copy_n(out.data() + size_t(r % 64) * row_bytes, row_bytes, out.data() + size_t(r) * row_bytes);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t rows = argc > 1 ? std::atoll(argv[1]) : 32768, cols = argc > 2 ? std::atoll(argv[2]) : 8192;
  if (rows <= 0 || cols <= 0 || cols % 256) {
    std::fprintf(stderr, "error: rows and cols must be positive and cols a multiple of 256\n");
    return 2;
  }
  const double bandwidth = measure_read_bandwidth();
  std::printf("streaming read bandwidth: %.2f GB/s; matrix %lld x %lld\n", bandwidth / 1e9, (long long)rows,
              (long long)cols);
  std::printf("%-8s %-18s %10s %10s\n", "isa", "dtype", "GB/s", "of limit");
  std::vector<uint16_t> w16(size_t(rows * cols), f32_to_bf16(0.01f));
  std::vector<float> w32(size_t(rows * cols), 0.01f), x(cols), y(rows);
  std::mt19937 rng(2);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : x) v = normal(rng);
  std::vector<std::pair<Matrix, std::string>> matrices;
  for (DType dtype : {DType::BF16, DType::F16, DType::F32})
    matrices.push_back({Matrix{dtype == DType::F32 ? static_cast<const void*>(w32.data()) : w16.data(), dtype, rows, cols},
                        dtype_name(dtype)});
  std::vector<std::vector<uint8_t>> quantized;
  for (DType dtype : {DType::Q8_0, DType::Q4_K}) {
    quantized.push_back(quantized_matrix(dtype, rows, cols));
    matrices.push_back({Matrix{quantized.back().data(), dtype, rows, cols}, dtype_name(dtype) + " rows"});
    quantized.push_back(quantized.back());
    Matrix interleaved{quantized.back().data(), dtype, rows, cols};
    interleave_rows8(interleaved, quantized.back().data());
    matrices.push_back({interleaved, dtype_name(dtype) + " interleaved"});
  }
  for (Isa isa : kIsas) {
    if (!isa_supported(isa) || (argc > 3 && isa_name(isa) != argv[3])) continue;
    set_isa(isa);
    for (const auto& [m, name] : matrices) {
      const double gbs = double(rows) * double(dtype_row_bytes(m.dtype, cols)) / best_seconds(m, x.data(), y.data());
      std::printf("%-8s %-18s %10.2f %9.1f%%\n", isa_name(isa).c_str(), name.c_str(), gbs / 1e9, 100 * gbs / bandwidth);
    }
  }
}
