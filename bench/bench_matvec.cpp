// Decode-shaped matmul (one token) against the machine's streaming read bandwidth: per ISA and
// weight dtype, the effective GB/s of weights read and its ratio to the bandwidth probed right
// before that row (a shared machine's bandwidth moves by +-20% within a minute: one probe before
// all the rows put some rows above 100% of it). The block types are timed in both layouts (rows as
// stored; interleaved 8 at a time, as a model in memory holds them); bf16 in the tile unit's order
// too where the CPU has AMX-BF16 ("BF16 tiles"). Each figure is the best of 5 timed products of
// one matrix, so keep rows x cols several times the last-level cache; a model's decode share is
// what `crossmoe bench` prints.
// With a token count above 1 it times prefill-shaped products instead (compute-bound: no probe):
// multiply-adds per second, and the ratio of each time to the latest one of the first ISA listed
// on the same matrix in the same run, so that
// `bench_matvec 4096 4096 avx512_vnni,amx,avx512_vnni,amx 512` gives AMX's tiles against the
// VNNI lane, A/B/A/B. Prefill also measures the f32 multiply-add peak of the threads first (12
// independent chains of the widest vector FMA per thread, in registers) and gives each rate as a
// share of it: the ceiling of products that widen their weights to f32 (the default bf16 path).
// Usage: bench_matvec [rows] [cols] [isas] [tokens]   (isas: one or more of generic, avx2, avx512,
//        avx512_vnni, avx512_bf16, amx, comma-separated, in the order to run them; or all, the
//        default: every supported one; tokens: default 1)
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "kernels/bandwidth.hpp"
#include "kernels/kernels.hpp"
#include "kernels/thread_pool.hpp"
#include "util/progress.hpp"
#include "util/quant.hpp"

using namespace crossmoe;
using namespace crossmoe::kernels;

namespace {

// kChains chains of n dependent multiply-adds in vector registers; returns a value of them all, so
// that none is dropped. 12 chains cover a 4-cycle FMA latency on two FMA units.
constexpr int kChains = 12;
__attribute__((target("avx512f"))) float fma_chains_avx512(int64_t n) {
  __m512 a[kChains];
  for (int i = 0; i < kChains; ++i) a[i] = _mm512_set1_ps(1e-3f * float(i));
  const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (int64_t k = 0; k < n; ++k)
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) a[i] = _mm512_fmadd_ps(a[i], m, c);
  float total = 0.0f;
  for (int i = 0; i < kChains; ++i) total += _mm512_reduce_add_ps(a[i]);
  return total;
}
__attribute__((target("avx2,fma"))) float fma_chains_avx2(int64_t n) {
  __m256 a[kChains];
  for (int i = 0; i < kChains; ++i) a[i] = _mm256_set1_ps(1e-3f * float(i));
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (int64_t k = 0; k < n; ++k)
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) a[i] = _mm256_fmadd_ps(a[i], m, c);
  alignas(32) float lanes[8];
  float total = 0.0f;
  for (int i = 0; i < kChains; ++i) {
    _mm256_store_ps(lanes, a[i]);
    for (float v : lanes) total += v;
  }
  return total;
}

// Multiply-adds per second of the chains on every thread at once (best of 5), or 0 on a CPU
// without AVX2's FMA.
double fma_peak() {
  const bool wide = isa_supported(Isa::Avx512);
  if (!wide && !isa_supported(Isa::Avx2)) return 0.0;
  constexpr int64_t kSteps = 20'000'000;
  const int threads = thread_count();
  std::atomic<float> sink{0.0f};
  double best = 0.0;
  for (int r = 0; r < 5; ++r) {
    Stopwatch s;
    parallel_for(threads, [&](int64_t) { sink.store(wide ? fma_chains_avx512(kSteps) : fma_chains_avx2(kSteps), std::memory_order_relaxed); });
    best = std::max(best, double(threads) * kSteps * kChains * (wide ? 16 : 8) / s.seconds());
  }
  return best;
}

double best_seconds(const Matrix& m, const float* x, int tokens, float* y) {
  matmul(m, x, tokens, y);  // warm-up
  double best = 1e30;
  for (int r = 0; r < 5; ++r) {
    Stopwatch s;
    matmul(m, x, tokens, y);
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
  const std::string only = argc > 3 ? argv[3] : "all";
  const int tokens = argc > 4 ? std::atoi(argv[4]) : 1;
  if (rows <= 0 || cols <= 0 || cols % 256 || tokens <= 0) {
    std::fprintf(stderr, "error: rows, cols and tokens must be positive and cols a multiple of 256\n");
    return 2;
  }
  std::vector<Isa> order;
  if (only == "all") {
    for (Isa isa : kIsas)
      if (isa_supported(isa)) order.push_back(isa);
  } else {
    for (size_t start = 0; start <= only.size();) {
      const size_t end = std::min(only.find(',', start), only.size());
      const std::string name = only.substr(start, end - start);
      bool known = false;
      for (Isa isa : kIsas)
        if (isa_name(isa) == name) {
          known = true;
          if (isa_supported(isa)) order.push_back(isa);
          else std::printf("(%s: not supported by this CPU)\n", name.c_str());
        }
      if (!known) {
        std::fprintf(stderr, "error: unknown isa '%s'\n", name.c_str());
        return 2;
      }
      start = end + 1;
    }
  }
  const bool prefill = tokens > 1;
  // The probe's reads per row: the default 1 GiB buffer, best of 2 passes.
  const auto probe = [] { return measure_read_bandwidth(size_t(1) << 30, 2); };
  const double peak = prefill ? fma_peak() : 0.0;
  if (prefill) {
    std::printf("matrix %lld x %lld times %d tokens; f32 FMA peak %.2f GMAC/s (%d threads)\n", (long long)rows,
                (long long)cols, tokens, peak / 1e9, thread_count());
    std::printf("%-12s %-18s %12s %10s %14s\n", "isa", "dtype", "GMAC/s", "ratio", "of FMA peak");
  } else {
    std::printf("matrix %lld x %lld, one token; the streaming read bandwidth probed before each row\n",
                (long long)rows, (long long)cols);
    std::printf("%-12s %-18s %10s %12s %10s\n", "isa", "dtype", "GB/s", "probe GB/s", "of probe");
  }
  std::vector<uint16_t> w16(size_t(rows * cols), f32_to_bf16(0.01f));
  std::vector<float> w32(size_t(rows * cols), 0.01f), x(size_t(cols) * tokens), y(size_t(rows) * tokens);
  std::mt19937 rng(2);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : x) v = normal(rng);
  std::vector<std::pair<Matrix, std::string>> matrices;
  for (DType dtype : {DType::BF16, DType::F16, DType::F32})
    matrices.push_back({Matrix{dtype == DType::F32 ? static_cast<const void*>(w32.data()) : w16.data(), dtype, rows, cols},
                        dtype_name(dtype)});
  // Where the CPU has AMX-BF16, bf16 weights as a model in memory holds them there (the tile
  // unit's order): multiplied on the tiles whatever the ISA listed.
  std::vector<uint16_t> tiles16;
  if (amx_bf16_supported()) {
    tiles16 = w16;
    Matrix tiles{tiles16.data(), DType::BF16, rows, cols};
    pack_bf16_tiles(tiles, tiles16.data());
    matrices.push_back({tiles, "BF16 tiles"});
  }
  std::vector<std::vector<uint8_t>> quantized;
  for (DType dtype : {DType::Q8_0, DType::Q4_0, DType::Q5_0, DType::Q4_1, DType::Q5_1, DType::IQ4_NL, DType::MXFP4, DType::IQ4_XS, DType::Q2_K, DType::Q3_K,
                      DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    quantized.push_back(quantized_matrix(dtype, rows, cols));
    matrices.push_back({Matrix{quantized.back().data(), dtype, rows, cols}, dtype_name(dtype) + " rows"});
    quantized.push_back(quantized.back());
    Matrix interleaved{quantized.back().data(), dtype, rows, cols};
    interleave_rows8(interleaved, quantized.back().data());
    matrices.push_back({interleaved, dtype_name(dtype) + " interleaved"});
  }
  std::map<std::string, double> baseline;  // per matrix: the latest time of the first ISA listed
  for (Isa isa : order) {
    set_isa(isa);
    for (const auto& [m, name] : matrices) {
      const double bandwidth = prefill ? 0.0 : probe();
      const double seconds = best_seconds(m, x.data(), tokens, y.data());
      if (prefill) {
        if (isa == order.front()) baseline[name] = seconds;
        const double macs = double(rows) * double(cols) * tokens / seconds;
        std::printf("%-12s %-18s %12.2f %9.2fx %13.1f%%\n", isa_name(isa).c_str(), name.c_str(), macs / 1e9,
                    baseline[name] / seconds, peak > 0 ? 100 * macs / peak : 0.0);
      } else {
        const double gbs = double(rows) * double(dtype_row_bytes(m.dtype, cols)) / seconds;
        std::printf("%-12s %-18s %10.2f %12.2f %9.1f%%\n", isa_name(isa).c_str(), name.c_str(), gbs / 1e9,
                    bandwidth / 1e9, 100 * gbs / bandwidth);
      }
    }
  }
}
