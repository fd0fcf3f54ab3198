// The quantized products' tiles alone, on one thread: the AVX512-VNNI table's quant_matmul_rows over
// an Interleaved8 Q8_0 / Q4_K matrix (as a loaded model holds it), called on blocks of rows as
// matmul_batch hands them out, against activations quantized once outside the timing. Prints G
// multiply-adds per CPU second of this thread (CLOCK_THREAD_CPUTIME_ID: on a shared machine, time
// the others take is not counted) and a hash of every output's bits, so that two builds taking turns
// (docs/benchmarks.md, "VNNI tiles of two groups") can be compared for speed and for equal bits.
// mem: as many copies of the matrix as fill 256 MiB, taken in turn (weights from memory); cache:
// one matrix over and over.
// Usage: bench_quant_tiles q8|q4k ROWS COLS TOKENS mem|cache SECONDS
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <string>
#include <vector>
#include "kernels/kernels.hpp"
#include "util/quant.hpp"
using namespace crossmoe;
using namespace crossmoe::kernels;
static double cpu() { timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char** argv) {
  if (argc != 7 || !isa_supported(Isa::Avx512Vnni)) {
    std::fprintf(stderr, "usage: bench_quant_tiles q8|q4k ROWS COLS TOKENS mem|cache SECONDS (needs AVX512-VNNI)\n");
    return 2;
  }
  const DType type = std::string(argv[1]) == "q8" ? DType::Q8_0 : DType::Q4_K;
  const int64_t rows = std::atoll(argv[2]), cols = std::atoll(argv[3]);
  const int tokens = std::atoi(argv[4]);
  const bool mem = std::string(argv[5]) == "mem";
  const double seconds = std::atof(argv[6]);
  if (rows <= 0 || cols <= 0 || cols % 256 || tokens <= 0) {
    std::fprintf(stderr, "error: rows and tokens must be positive, cols a positive multiple of 256\n");
    return 2;
  }
  const KernelTable& k = avx512_vnni_kernels();
  const size_t row_bytes = dtype_row_bytes(type, cols), bytes = size_t(rows) * row_bytes;
  const int copies = mem ? int((256u << 20) / bytes + 1) : 1;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<std::vector<uint8_t>> data(copies);
  std::vector<Matrix> ms;
  std::vector<float> row(cols);
  for (int c = 0; c < copies; ++c) {
    data[c].resize(bytes);
    for (int64_t r = 0; r < rows; ++r) {
      if (c == 0 || r < 64) {
        for (float& v : row) v = normal(rng);
        quant::quantize_row(type, row.data(), cols, data[c].data() + r * row_bytes);
      } else std::memcpy(data[c].data() + r * row_bytes, data[0].data() + r * row_bytes, row_bytes);
    }
    Matrix m{data[c].data(), type, rows, cols};
    interleave_rows8(m, data[c].data());
    ms.push_back(m);
  }
  std::normal_distribution<float> unit(0.0f, 1.0f);
  std::vector<float> x(size_t(cols) * tokens);
  for (float& v : x) v = unit(rng);
  const int64_t blocks = cols / 32;
  std::vector<ActivationBlock> xq(size_t(blocks) * tokens);
  std::vector<int16_t> sums(size_t(blocks) * tokens);
  for (int t = 0; t < tokens; ++t) quantize_activations(x.data() + t * cols, cols, activation_group(type), xq.data() + t * blocks);
  activation_sums(xq.data(), blocks * tokens, sums.data());
  std::vector<float> y(size_t(rows) * tokens);
  // As matmul_batch hands the rows out (dispatch.cpp): blocks of 64 rows for one token, 128 for
  // 32 tokens or more, 16 otherwise, one call each, in order.
  const int64_t block = tokens == 1 ? 64 : tokens >= 32 ? 128 : 16;
  const auto product = [&](const Matrix& m) {
    for (int64_t r = 0; r < rows; r += block)
      k.quant_matmul_rows(m, xq.data(), type == DType::Q4_K ? sums.data() : nullptr, tokens, y.data(), r, std::min(rows, r + block));
  };
  uint64_t hash = 1469598103934665603ull;
  for (int c = 0; c < copies; ++c) {  // hash: one pass over every copy
    product(ms[c]);
    for (float v : y) { uint32_t u; std::memcpy(&u, &v, 4); hash = (hash ^ u) * 1099511628211ull; }
  }
  long calls = 0;
  const double t0 = cpu();
  double t;
  do {
    for (int c = 0; c < copies; ++c, ++calls) product(ms[c]);
  } while ((t = cpu() - t0) < seconds);
  std::printf("%s %lldx%lld T=%d %s (%d copies, %.1f MiB): %.1f G MAC/cpu-s  %.3f GB/cpu-s  hash %016llx\n", argv[1],
              (long long)rows, (long long)cols, tokens, mem ? "mem" : "cache", copies, copies * bytes / 1048576.0,
              double(calls) * rows * cols * tokens / t / 1e9, double(calls) * bytes / t / 1e9, (unsigned long long)hash);
}
