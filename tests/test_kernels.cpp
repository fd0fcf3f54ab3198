// Kernels of every ISA this CPU runs against a double-precision loop, per weight dtype.
#include <gtest/gtest.h>

#include <omp.h>

#include <atomic>
#include <cmath>
#include <memory>
#include <random>

#include "kernels/kernels.hpp"
#include "kernels/thread_pool.hpp"

using namespace crossmoe;
using namespace crossmoe::kernels;

namespace {

std::vector<Isa> supported() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::Generic, Isa::Avx2, Isa::Avx512})
    if (isa_supported(isa)) out.push_back(isa);
  return out;
}

struct IsaGuard {
  explicit IsaGuard(Isa isa) : previous(active_isa()) { set_isa(isa); }
  ~IsaGuard() { set_isa(previous); }
  Isa previous;
};

TEST(Kernels, MatmulMatchesDoubleLoopForEveryDtypeAndShape) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (Isa isa : supported()) {
    IsaGuard guard(isa);
    for (DType dtype : {DType::F32, DType::BF16, DType::F16})
      for (auto [rows, cols, tokens] : {std::tuple{37, 83, 1}, {64, 64, 5}, {130, 256, 9}, {3, 17, 4}, {1024, 48, 2}}) {
        std::vector<float> w_f32(size_t(rows) * cols), x(size_t(tokens) * cols), y(size_t(tokens) * rows);
        std::vector<uint16_t> w_16(w_f32.size());
        for (size_t i = 0; i < w_f32.size(); ++i) {
          const float v = dist(rng);
          if (dtype == DType::BF16) w_16[i] = f32_to_bf16(v), w_f32[i] = bf16_to_f32(w_16[i]);
          else if (dtype == DType::F16) w_16[i] = f32_to_f16(v), w_f32[i] = f16_to_f32(w_16[i]);
          else w_f32[i] = v;
        }
        for (float& v : x) v = dist(rng);
        const Matrix m{dtype == DType::F32 ? static_cast<const void*>(w_f32.data()) : w_16.data(), dtype, rows, cols};
        matmul(m, x.data(), tokens, y.data());
        double worst = 0;
        for (int t = 0; t < tokens; ++t)
          for (int r = 0; r < rows; ++r) {
            double ref = 0;
            for (int c = 0; c < cols; ++c) ref += double(w_f32[size_t(r) * cols + c]) * x[size_t(t) * cols + c];
            worst = std::max(worst, std::fabs(ref - y[size_t(t) * rows + r]));
          }
        EXPECT_LT(worst, 1e-4) << isa_name(isa) << " " << dtype_name(dtype) << " " << rows << "x" << cols << "x" << tokens;
      }
  }
}

TEST(Kernels, MatmulReadsRowsWithAStride) {
  // The left 5 columns of a [7, 12] matrix, as attention reads a window of its caches.
  std::vector<float> w(7 * 12), x(2 * 5), y(2 * 7);
  for (size_t i = 0; i < w.size(); ++i) w[i] = float(i % 13) - 6.0f;
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.5f * float(i) - 1.0f;
  for (Isa isa : supported()) {
    IsaGuard guard(isa);
    matmul(Matrix{w.data(), DType::F32, 7, 5, 12}, x.data(), 2, y.data());
    for (int t = 0; t < 2; ++t)
      for (int r = 0; r < 7; ++r) {
        float ref = 0;
        for (int c = 0; c < 5; ++c) ref += w[size_t(r * 12 + c)] * x[size_t(t * 5 + c)];
        EXPECT_FLOAT_EQ(y[size_t(t * 7 + r)], ref) << isa_name(isa);
      }
  }
}

TEST(Kernels, DotAndAxpyHandleTails) {
  for (Isa isa : supported()) {
    IsaGuard guard(isa);
    for (int n : {1, 7, 16, 33, 100}) {
      std::vector<float> a(n), b(n), y(n, 1.0f);
      double ref = 0;
      for (int i = 0; i < n; ++i) a[i] = 0.5f * i, b[i] = 1.0f - 0.25f * i, ref += double(a[i]) * b[i];
      EXPECT_NEAR(dot(a.data(), b.data(), n), ref, 1e-3 * std::max(1.0, std::fabs(ref)));
      axpy(2.0f, a.data(), y.data(), n);
      for (int i = 0; i < n; ++i) EXPECT_FLOAT_EQ(y[i], 1.0f + 2.0f * a[i]);
    }
  }
}

TEST(Kernels, HalfPrecisionConversionsAreExact) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(f32_to_bf16(1.0f + 1.0f / 256), 0x3f80);  // halfway: rounds to even
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(1e6f), 0x7c00);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(f16_to_f32(0xc400), -4.0f);
  for (uint32_t h = 0; h < 0x7c00; ++h) EXPECT_EQ(f32_to_f16(f16_to_f32(uint16_t(h))), h);
}

TEST(Kernels, NormSoftmaxSiluRope) {
  std::vector<float> x = {1, 2, 3, 4}, w = {1, 1, 2, 0.5f}, out(4);
  rmsnorm(x.data(), w.data(), 4, 0.0f, out.data());
  const float inv = 1.0f / std::sqrt(7.5f);
  EXPECT_FLOAT_EQ(out[2], 3 * inv * 2);
  std::vector<float> s = {1000, 1000, 1000 + std::log(2.0f)};
  softmax(s.data(), 3);
  EXPECT_NEAR(s[2], 0.5f, 1e-4);  // no overflow at large logits; 1000 + ln 2 rounds in f32
  std::vector<float> g = {0.0f, 2.0f}, up = {3.0f, 1.0f};
  silu_mul(g.data(), up.data(), 2);
  EXPECT_FLOAT_EQ(g[0], 0.0f);
  EXPECT_NEAR(g[1], 2.0f / (1 + std::exp(-2.0f)), 1e-6);
  std::vector<float> v = {1, 0, 0, 1}, c = {0, 1}, sn = {1, 0};  // pair 0 by 90 degrees, pair 1 by 0
  rope(v.data(), 1, 4, c.data(), sn.data());
  EXPECT_FLOAT_EQ(v[0], 0);
  EXPECT_FLOAT_EQ(v[2], 1);
  EXPECT_FLOAT_EQ(v[3], 1);
}

// The worker pool runs every index exactly once, for any thread count, for more indices than one
// job word holds, back to back (workers arriving late must not touch the next job), and nested.
TEST(ThreadPool, RunsEveryIndexExactlyOnce) {
  const int threads_before = omp_get_max_threads();
  for (int threads : {1, 2, 3, 4}) {
    omp_set_num_threads(threads);
    for (int64_t count : {int64_t(0), int64_t(1), int64_t(2), int64_t(17), int64_t(1000), int64_t(1 << 20) + 5}) {
      std::unique_ptr<std::atomic<int>[]> hits(new std::atomic<int>[size_t(count) + 1]());
      parallel_for(count, [&](int64_t i) { hits[size_t(i)].fetch_add(1); });
      int64_t wrong = 0;
      for (int64_t i = 0; i < count; ++i) wrong += hits[size_t(i)].load() != 1;
      EXPECT_EQ(wrong, 0) << threads << " threads, " << count << " indices";
    }
    std::atomic<int64_t> sum{0};
    for (int job = 0; job < 2000; ++job) parallel_for(3, [&](int64_t i) { sum += i + 1; });
    EXPECT_EQ(sum.load(), 2000 * 6);
    std::atomic<int64_t> nested{0};
    parallel_for(8, [&](int64_t) { parallel_for(8, [&](int64_t j) { nested += j; }); });
    EXPECT_EQ(nested.load(), 8 * 28);
  }
  omp_set_num_threads(threads_before);
}

}  // namespace
