// Kernels of every ISA this CPU runs against a double-precision loop, per weight dtype.
#include <gtest/gtest.h>

#include <omp.h>

#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kernels/kernels.hpp"
#include "kernels/thread_pool.hpp"
#include "util/quant.hpp"

using namespace crossmoe;
using namespace crossmoe::kernels;

namespace {

std::vector<Isa> supported() {
  std::vector<Isa> out;
  for (Isa isa : kIsas)
    if (isa_supported(isa)) out.push_back(isa);
  return out;
}

// An activation as a product against weights of `dtype` reads it: avx512_bf16 rounds it to bf16
// against bf16 weights (its dot product multiplies pairs of bf16 values), the others take it as is.
float activation_as_read(Isa isa, DType weights, float x) {
  return isa == Isa::Avx512Bf16 && weights == DType::BF16 ? bf16_to_f32(f32_to_bf16(x)) : x;
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
      // The last shapes: prefill-sized token counts, partial tiles of rows and tokens, column tails.
      for (auto [rows, cols, tokens] : {std::tuple{37, 83, 1}, {64, 64, 5}, {130, 256, 9}, {3, 17, 4}, {1024, 48, 2},
                                        {37, 600, 50}, {20, 1030, 8}, {5, 7, 13}}) {
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
            for (int c = 0; c < cols; ++c)
              ref += double(w_f32[size_t(r) * cols + c]) * activation_as_read(isa, dtype, x[size_t(t) * cols + c]);
            worst = std::max(worst, std::fabs(ref - y[size_t(t) * rows + r]));
          }
        EXPECT_LT(worst, 1e-4) << isa_name(isa) << " " << dtype_name(dtype) << " " << rows << "x" << cols << "x" << tokens;
      }
  }
}

TEST(Kernels, MatmulGivesATokenTheSameBitsAloneOrInABatch) {
  // Batched decoding promises each sequence the tokens it gets alone, so a token's products
  // must not depend on the tile it shares with other tokens (a tail of 83 columns included),
  // nor on how many tokens share the call (a prefill chunk), nor on the spans of columns a prefill
  // goes over (4200 columns: two spans of 2048, then 3 chunks and a tail).
  for (auto [rows, cols, tokens] : {std::tuple{40, 83, 7}, {37, 600, 50}, {24, 4200, 40}}) {
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> w_f32(size_t(rows) * cols), x(size_t(tokens) * cols);
    std::vector<uint16_t> w_16(w_f32.size());
    for (size_t i = 0; i < w_f32.size(); ++i) w_f32[i] = dist(rng), w_16[i] = f32_to_bf16(w_f32[i]);
    for (float& v : x) v = dist(rng);
    for (Isa isa : supported()) {
      IsaGuard guard(isa);
      for (DType dtype : {DType::F32, DType::BF16, DType::F16}) {
        const Matrix m{dtype == DType::F32 ? static_cast<const void*>(w_f32.data()) : w_16.data(), dtype, rows, cols};
        std::vector<float> together(size_t(tokens) * rows), alone(rows);
        matmul(m, x.data(), tokens, together.data());
        for (int t = 0; t < tokens; ++t) {
          matmul(m, &x[size_t(t) * cols], 1, alone.data());
          for (int r = 0; r < rows; ++r)
            ASSERT_EQ(alone[r], together[size_t(t) * rows + r])
                << isa_name(isa) << " " << dtype_name(dtype) << " " << cols << " columns, token " << t;
        }
      }
    }
  }
}

TEST(Kernels, EveryTokenCountAndColumnTailGivesATokenItsBitsAlone) {
  // Several tokens run in groups of up to 6 (avx512_bf16 bf16 tiles of 4 rows x 6 tokens; AVX2 bf16
  // 4 x 2; 3 or 4 tokens for f32 and f16), one token in tiles of 4 rows that prefetch: every group
  // size, with 9 rows (whole tiles and a row after them) and columns with every kind of tail (none,
  // a few, one short of a whole bf16 chunk of 16 or 32 or an f32 one of 8, past several chunks). A
  // token's products are the bits it gets alone, and within float rounding of a double-precision loop.
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  const int rows = 9, most = 64;
  for (int cols : {1, 7, 15, 16, 17, 31, 40, 83, 129}) {
    std::vector<float> w_f32(size_t(rows) * cols), x(size_t(most) * cols);
    std::vector<uint16_t> w_bf16(w_f32.size()), w_f16(w_f32.size());
    for (size_t i = 0; i < w_f32.size(); ++i) w_f32[i] = dist(rng), w_bf16[i] = f32_to_bf16(w_f32[i]), w_f16[i] = f32_to_f16(w_f32[i]);
    for (float& v : x) v = dist(rng);
    for (Isa isa : supported()) {
      IsaGuard guard(isa);
      for (DType dtype : {DType::F32, DType::BF16, DType::F16}) {
        const void* data = dtype == DType::F32 ? static_cast<const void*>(w_f32.data())
                           : dtype == DType::BF16 ? static_cast<const void*>(w_bf16.data())
                                                  : static_cast<const void*>(w_f16.data());
        const Matrix m{data, dtype, rows, cols};
        std::vector<float> alone(size_t(most) * rows), together(size_t(most) * rows);
        for (int t = 0; t < most; ++t) {
          matmul(m, &x[size_t(t) * cols], 1, &alone[size_t(t) * rows]);
          for (int r = 0; r < rows; ++r) {
            double ref = 0;
            for (int c = 0; c < cols; ++c) {
              const size_t i = size_t(r) * cols + c;
              const double weight = dtype == DType::F32 ? w_f32[i] : dtype == DType::BF16 ? bf16_to_f32(w_bf16[i]) : f16_to_f32(w_f16[i]);
              ref += weight * activation_as_read(isa, dtype, x[size_t(t) * cols + c]);
            }
            ASSERT_NEAR(alone[size_t(t) * rows + r], ref, 1e-5 * cols) << isa_name(isa) << " " << dtype_name(dtype) << " " << cols << " columns";
          }
        }
        for (int tokens : {2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 19, 31, 64}) {
          matmul(m, x.data(), tokens, together.data());
          for (size_t i = 0; i < size_t(tokens) * rows; ++i)
            ASSERT_EQ(alone[i], together[i]) << isa_name(isa) << " " << dtype_name(dtype) << " " << cols << " columns, "
                                             << tokens << " tokens, token " << i / rows << " row " << i % rows;
        }
      }
    }
  }
}

TEST(Kernels, Avx512Bf16ProductsAreRoundedActivationsTimesWeightsWithinTheSummationBound) {
  // avx512_bf16 multiplies bf16 weights by the activations rounded to bf16, 32 columns per
  // VDPBF16PS. Products of two bf16 values are exact in float (8-bit significands), so the only
  // errors are the float additions: per lane at most 2 per chunk of 32 columns (the instruction
  // adds a pair's two products one at a time), then 4 levels summing the 16 lanes. A sum whose
  // terms each pass through at most k roundings is within gamma_k = k u / (1 - k u), u = 2^-24, of
  // the sum of |terms| from the exact sum (Higham, Accuracy and Stability of Numerical Algorithms,
  // section 3.1). The reference is that exact sum in double precision, of bf16(x) times w. Shapes:
  // every kind of column tail around chunks of 32, odd row counts, 1 to 25 tokens, strided rows.
  if (!isa_supported(Isa::Avx512Bf16)) GTEST_SKIP() << "this CPU has no AVX512_BF16";
  IsaGuard guard(Isa::Avx512Bf16);
  std::mt19937 rng(17);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  int wide = 0, unrounded_outside = 0;  // outputs of 32 columns or more; those the bound tells from unrounded
  for (auto [rows, cols, tokens, stride] :
       {std::tuple{13, 1, 3, 0}, {9, 2, 7, 0}, {5, 31, 1, 0}, {6, 32, 9, 0}, {7, 33, 13, 0}, {11, 63, 2, 0},
        {4, 65, 6, 0}, {8, 95, 25, 0}, {17, 1000, 1, 0}, {17, 1000, 19, 0}, {6, 2049, 7, 0}, {5, 77, 8, 96}}) {
    const int64_t ld = stride ? stride : cols;
    std::vector<uint16_t> w(size_t(rows) * ld);
    std::vector<float> x(size_t(tokens) * cols), y(size_t(tokens) * rows);
    for (uint16_t& v : w) v = f32_to_bf16(0.05f * normal(rng));
    for (int t = 0; t < tokens; ++t)  // activations of several magnitudes
      for (int c = 0; c < cols; ++c) x[size_t(t) * cols + c] = std::ldexp(normal(rng), t % 7 - 3);
    matmul(Matrix{w.data(), DType::BF16, rows, cols, stride}, x.data(), tokens, y.data());
    const int k = 2 * ((cols + 31) / 32) + 4;
    const double u = std::ldexp(1.0, -24), gamma = k * u / (1 - k * u);
    for (int t = 0; t < tokens; ++t)
      for (int r = 0; r < rows; ++r) {
        double exact = 0, magnitude = 0, unrounded = 0;
        for (int c = 0; c < cols; ++c) {
          const double wc = bf16_to_f32(w[size_t(r) * ld + c]), xc = x[size_t(t) * cols + c];
          const double term = wc * bf16_to_f32(f32_to_bf16(float(xc)));
          exact += term, magnitude += std::fabs(term), unrounded += wc * xc;
        }
        const double got = y[size_t(t) * rows + r];
        ASSERT_LE(std::fabs(got - exact), gamma * magnitude)
            << rows << "x" << cols << "x" << tokens << " token " << t << " row " << r << ": " << got << " vs " << exact;
        if (cols >= 32) ++wide, unrounded_outside += std::fabs(unrounded - exact) > gamma * magnitude;
      }
  }
  // The bound is tight enough to tell: the exact products of the unrounded activations land outside it.
  EXPECT_GT(unrounded_outside, wide * 9 / 10) << "of " << wide;
}

TEST(Kernels, Avx512Bf16RoundsActivationsToNearestEven) {
  // bf16_x_layout of avx512_bf16 writes each token's activations as bf16 at the start of its row
  // of floats, rounded as f32_to_bf16 rounds (ties to even, NaN stays NaN, overflow to infinity)
  // for every column tail; denormal activations become zeros of their sign (the instruction's DAZ).
  if (!isa_supported(Isa::Avx512Bf16)) GTEST_SKIP() << "this CPU has no AVX512_BF16";
  std::mt19937 rng(19);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const std::vector<uint32_t> special = {0x3f808000u, 0x3f818000u, 0xbf808000u, 0x3f80ffffu, 0x7f7fffffu, 0xff7fffffu,
                                         0x7f800000u, 0xff800000u, 0x7fc00001u, 0x7f800001u, 0x80000000u, 0x00000000u};
  const std::vector<uint32_t> denormal = {0x00000001u, 0x807fffffu, 0x00400000u};
  for (int cols : {1, 5, 15, 16, 17, 31, 32, 33, 100}) {
    const int tokens = 3;
    std::vector<float> x(size_t(tokens) * cols), out(x.size());
    for (size_t i = 0; i < x.size(); ++i)
      x[i] = i % 3 == 0 ? std::bit_cast<float>(special[i / 3 % special.size()]) : normal(rng) * 1e3f;
    x.back() = std::bit_cast<float>(denormal[size_t(cols) % denormal.size()]);
    avx512_bf16_kernels().bf16_x_layout(x.data(), tokens, cols, out.data());
    for (int t = 0; t < tokens; ++t)
      for (int c = 0; c < cols; ++c) {
        const float v = x[size_t(t) * cols + c];
        const uint16_t got = reinterpret_cast<const uint16_t*>(out.data() + size_t(t) * cols)[c];
        if (std::fpclassify(v) == FP_SUBNORMAL)
          EXPECT_EQ(got, std::signbit(v) ? 0x8000 : 0) << cols << " columns, " << v;
        else
          EXPECT_EQ(got, f32_to_bf16(v)) << cols << " columns, token " << t << " column " << c << ": 0x" << std::hex
                                         << std::bit_cast<uint32_t>(v);
      }
  }
}

TEST(Kernels, MatmulReadsRowsWithAStride) {
  // The left 5 columns of a [7, 12] matrix, as attention reads a window of its caches, for a few
  // tokens and for more than one register tile of them.
  std::vector<float> w(7 * 12);
  for (size_t i = 0; i < w.size(); ++i) w[i] = float(i % 13) - 6.0f;
  for (int tokens : {2, 9}) {
    std::vector<float> x(size_t(tokens) * 5), y(size_t(tokens) * 7);
    for (size_t i = 0; i < x.size(); ++i) x[i] = 0.5f * float(i) - 1.0f;
    for (Isa isa : supported()) {
      IsaGuard guard(isa);
      matmul(Matrix{w.data(), DType::F32, 7, 5, 12}, x.data(), tokens, y.data());
      for (int t = 0; t < tokens; ++t)
        for (int r = 0; r < 7; ++r) {
          float ref = 0;
          for (int c = 0; c < 5; ++c) ref += w[size_t(r * 12 + c)] * x[size_t(t * 5 + c)];
          EXPECT_FLOAT_EQ(y[size_t(t * 7 + r)], ref) << isa_name(isa) << " " << tokens << " tokens";
        }
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

// Against double sums, and the split property attention relies on: a block of positions
// taken in two calls gives the same bits as in one (values: one chain per lane, in order).
// The bits themselves: each score is dot's (positions taken 16 at a time reduce their lanes
// together, in dot's tree), each output lane one multiply-add chain over the positions in order
// (fused where the ISA fuses: all but the portable code, which rounds the product).
TEST(Kernels, AttentionScoresAndValuesMatchDoubleSumsAndSplitAnywhere) {
  // Up to 6 queries (more than one group of kernel queries on every ISA) against a block of 40
  // positions (keys in tiles of kKeyTile, the last one cut), over ranges that start and end inside
  // tiles. Each query's scores and P V must equal double-precision sums, and be the same bits
  // when computed alone, with other queries, or with the positions split over two calls.
  constexpr int kBlock = 40, kTiled = (kBlock + kKeyTile - 1) / kKeyTile * kKeyTile;
  for (Isa isa : supported()) {
    IsaGuard guard(isa);
    for (int hd : {8, 40, 64, 72, 128})
      for (auto [lo, hi] : std::vector<std::pair<int, int>>{{0, 1}, {0, 16}, {3, 21}, {16, 40}, {0, 40}, {5, 38}}) {
        const int n = hi - lo, nq = 6;
        std::vector<float> keys(size_t(kTiled) * hd, NAN), v(size_t(kBlock) * hd);  // never-written lanes: NaN
        std::vector<float> q(size_t(nq) * hd), p(size_t(nq) * n);
        for (int j = 0; j < kBlock; ++j)
          for (int d = 0; d < hd; ++d)
            keys[size_t(j / kKeyTile) * kKeyTile * hd + d * kKeyTile + j % kKeyTile] = std::cos(0.7f * (j * hd + d));
        for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(1.3f * i) - 0.2f;
        for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.3f * i + 0.1f);
        for (size_t i = 0; i < p.size(); ++i) p[i] = 1.0f / (i % n + 2) + 0.01f * (i / n);
        std::vector<float> scores(size_t(nq) * n), alone(n), split(n);
        std::vector<const float*> qs, ps;
        std::vector<float*> ss;
        for (int i = 0; i < nq; ++i) qs.push_back(&q[size_t(i) * hd]), ps.push_back(&p[size_t(i) * n]), ss.push_back(&scores[size_t(i) * n]);
        attention_scores(qs.data(), nq, keys.data(), lo, hi, hd, ss.data());
        std::vector<float> out(size_t(nq) * hd, 0.5f);
        std::vector<float*> os;
        for (int i = 0; i < nq; ++i) os.push_back(&out[size_t(i) * hd]);
        attention_values(ps.data(), nq, v.data() + size_t(lo) * hd, n, hd, os.data());
        const int mid = lo + n / 3;
        for (int i = 0; i < nq; ++i) {
          const std::string at = isa_name(isa) + " hd " + std::to_string(hd) + " range " + std::to_string(lo) + "-" +
                                 std::to_string(hi) + " query " + std::to_string(i);
          float* alone_row = alone.data();
          attention_scores(&qs[i], 1, keys.data(), lo, hi, hd, &alone_row);
          float* split_rows[] = {split.data(), split.data() + (mid - lo)};
          attention_scores(&qs[i], 1, keys.data(), lo, mid, hd, &split_rows[0]);
          attention_scores(&qs[i], 1, keys.data(), mid, hi, hd, &split_rows[1]);
          for (int j = lo; j < hi; ++j) {
            double ref = 0;
            for (int d = 0; d < hd; ++d) ref += double(q[size_t(i) * hd + d]) * std::cos(0.7f * (j * hd + d));
            const float got = scores[size_t(i) * n + (j - lo)];
            EXPECT_NEAR(got, ref, 1e-5 * hd) << at << " position " << j;
            EXPECT_EQ(got, alone[j - lo]) << at << " position " << j;
            EXPECT_EQ(got, split[j - lo]) << at << " position " << j;
          }
          std::vector<float> out_alone(hd, 0.5f), out_split(hd, 0.5f);
          float* oa = out_alone.data();
          float* osplit = out_split.data();
          attention_values(&ps[i], 1, v.data() + size_t(lo) * hd, n, hd, &oa);
          attention_values(&ps[i], 1, v.data() + size_t(lo) * hd, mid - lo, hd, &osplit);
          const float* p_rest = ps[i] + (mid - lo);
          attention_values(&p_rest, 1, v.data() + size_t(mid) * hd, hi - mid, hd, &osplit);
          for (int d = 0; d < hd; ++d) {
            double ref = 0.5;
            for (int j = 0; j < n; ++j) ref += double(p[size_t(i) * n + j]) * v[size_t(lo + j) * hd + d];
            const float got = out[size_t(i) * hd + d];
            EXPECT_NEAR(got, ref, 1e-5 * n) << at << " dim " << d;
            EXPECT_EQ(got, out_alone[d]) << at << " dim " << d;
            EXPECT_EQ(got, out_split[d]) << at << " dim " << d;
          }
        }
      }
  }
}

// Latent attention's values are the first vd dimensions of its keys, read from the key tiles: the
// same bits as attention_values over those dimensions copied out as rows, for ranges that start
// and end inside tiles and value widths that end inside a tile's 16 dimensions or not.
TEST(Kernels, AttentionValuesInKeysAreTheBitsOfAttentionValuesOverTheKeysRows) {
  constexpr int kBlock = 40, kTiled = (kBlock + kKeyTile - 1) / kKeyTile * kKeyTile, nq = 6;
  for (Isa isa : supported()) {
    IsaGuard guard(isa);
    for (auto [hd, vd] : std::vector<std::pair<int, int>>{{24, 16}, {72, 64}, {40, 37}, {576, 512}})
      for (auto [lo, hi] : std::vector<std::pair<int, int>>{{0, 1}, {0, 16}, {3, 21}, {16, 40}, {5, 38}}) {
        const int n = hi - lo;
        std::vector<float> keys(size_t(kTiled) * hd, NAN), rows(size_t(n) * vd), p(size_t(nq) * n);
        for (int j = 0; j < kBlock; ++j)
          for (int d = 0; d < hd; ++d) {
            const float value = std::cos(0.7f * (j * hd + d)) - 0.1f;
            keys[size_t(j / kKeyTile) * kKeyTile * hd + d * kKeyTile + j % kKeyTile] = value;
            if (j >= lo && j < hi && d < vd) rows[size_t(j - lo) * vd + d] = value;
          }
        for (size_t i = 0; i < p.size(); ++i) p[i] = 1.0f / (i % n + 2) + 0.01f * (i / n);
        std::vector<float> expected(size_t(nq) * vd, 0.5f), got(expected);
        std::vector<const float*> ps;
        std::vector<float*> expected_rows, got_rows;
        for (int i = 0; i < nq; ++i) {
          ps.push_back(&p[size_t(i) * n]);
          expected_rows.push_back(&expected[size_t(i) * vd]);
          got_rows.push_back(&got[size_t(i) * vd]);
        }
        attention_values(ps.data(), nq, rows.data(), n, vd, expected_rows.data());
        attention_values_in_keys(ps.data(), nq, keys.data(), lo, hi, hd, vd, got_rows.data());
        for (size_t i = 0; i < got.size(); ++i)
          ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(expected[i]))
              << isa_name(isa) << " hd " << hd << " vd " << vd << " range " << lo << "-" << hi << " query "
              << i / vd << " dim " << i % vd;
      }
  }
}

// Distance in floats between two non-negative floats (subnormals included): 0 when equal.
int64_t floats_apart(float a, float b) {
  return std::abs(int64_t(std::bit_cast<uint32_t>(a)) - int64_t(std::bit_cast<uint32_t>(b)));
}

// exp_floats against long double's exp rounded to float, over every range attention's softmax
// reaches (its arguments are <= 0: normal results down to -87.3, subnormal ones to -103.9, 0
// past that) and the rest of the float range, and the same bits from every ISA.
TEST(Kernels, ExpFloatsIsWithinAnUlpAndTheSameBitsOnEveryIsa) {
  std::vector<float> x;
  for (float v = -110.0f; v <= 90.0f; v += 1.0f / 512) x.push_back(v);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> any(-104.0f, 89.0f), small(-1e-3f, 1e-3f);
  for (int i = 0; i < 20000; ++i) x.push_back(any(rng)), x.push_back(small(rng));
  for (float v : {0.0f, -0.0f, 1e-30f, -1e-30f, -87.33f, -87.34f, -103.97f, -103.98f, -104.0f, -149.0f, -150.0f,
                  -151.0f, -1e4f, -INFINITY, 88.72f, 88.73f, 89.0f, 100.0f, INFINITY})
    x.push_back(v);
  x.push_back(0.5f);  // an odd count: a partial last vector on every ISA
  std::vector<float> generic(x.size());
  {
    IsaGuard guard(Isa::Generic);
    exp_floats(x.data(), int(x.size()), generic.data());
  }
  int64_t worst = 0;
  float worst_at = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const float want = float(std::exp(static_cast<long double>(x[i])));
    const int64_t apart = floats_apart(generic[i], want);
    if (apart > worst) worst = apart, worst_at = x[i];
  }
  EXPECT_LE(worst, 1) << "at x = " << worst_at;
  for (Isa isa : supported()) {
    IsaGuard guard(isa);
    std::vector<float> got(x.size());
    exp_floats(x.data(), int(x.size()), got.data());
    for (size_t i = 0; i < x.size(); ++i)
      ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(generic[i])) << isa_name(isa) << " x " << x[i];
    const float specials[] = {0.0f, -INFINITY, INFINITY, NAN, -NAN, -1e4f, 1e4f};
    float out[7];
    exp_floats(specials, 7, out);
    EXPECT_EQ(out[0], 1.0f) << isa_name(isa);
    EXPECT_EQ(std::bit_cast<uint32_t>(out[1]), 0u) << isa_name(isa);
    EXPECT_EQ(out[2], INFINITY) << isa_name(isa);
    EXPECT_TRUE(std::isnan(out[3]) && std::isnan(out[4])) << isa_name(isa);
    EXPECT_EQ(std::bit_cast<uint32_t>(out[5]), 0u) << isa_name(isa);
    EXPECT_EQ(out[6], INFINITY) << isa_name(isa);
  }
}

// attention_softmax: e^(scale * x - max) element by element as exp_floats gives it, the sum in 16
// lanes (element j in lane j % 16) added in a fixed tree, the same bits on every ISA, and within
// float rounding of the exact sum.
TEST(Kernels, AttentionSoftmaxSumsIn16LanesTheSameOnEveryIsa) {
  std::mt19937 rng(11);
  std::normal_distribution<float> score(0.0f, 6.0f);
  for (int n : {1, 5, 16, 17, 40, 300, 3001}) {
    std::vector<float> row(n);
    for (float& v : row) v = score(rng);
    const float scale = 0.125f;
    std::vector<float> scaled(n), want(n);
    float m = -INFINITY;
    for (int j = 0; j < n; ++j) m = std::max(m, scaled[j] = row[j] * scale);
    for (int j = 0; j < n; ++j) scaled[j] -= m;
    {
      IsaGuard guard(Isa::Generic);
      exp_floats(scaled.data(), n, want.data());
    }
    float lanes[16] = {};
    double exact = 0;
    for (int j = 0; j < n; ++j) lanes[j % 16] += want[j], exact += std::exp(double(row[j]) * scale - m);
    for (int h = 8; h >= 1; h /= 2)
      for (int k = 0; k < h; ++k) lanes[k] += lanes[k + h];
    EXPECT_NEAR(lanes[0], exact, 1e-6 * exact * std::log2(n + 1)) << "n " << n;
    for (Isa isa : supported()) {
      IsaGuard guard(isa);
      std::vector<float> got = row;
      const float sum = attention_softmax(got.data(), n, scale);
      EXPECT_EQ(std::bit_cast<uint32_t>(sum), std::bit_cast<uint32_t>(lanes[0])) << isa_name(isa) << " n " << n;
      for (int j = 0; j < n; ++j)
        ASSERT_EQ(std::bit_cast<uint32_t>(got[j]), std::bit_cast<uint32_t>(want[j])) << isa_name(isa) << " n " << n << " j " << j;
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

// silu_mul takes its exponentials from exp_floats: within a few float ulps of long double's
// x / (1 + e^-x) * up over the float range (values past expf's range, infinities, NaN, zeros of
// both signs; more than one piece of 256), and the same bits on every ISA. rmsnorm's partial sums:
// within float rounding of a long double norm, for row lengths with and without a tail.
TEST(Kernels, SiluMulAndRmsnormAgainstLongDouble) {
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  std::vector<float> gate(700), up(700);
  for (size_t i = 0; i < gate.size(); ++i) gate[i] = std::ldexp(unit(rng), int(rng() % 16) - 6), up[i] = unit(rng);
  const float specials[] = {0.0f, -0.0f, 88.0f, -88.0f, 100.0f, -100.0f, 1e30f, -1e30f, INFINITY, -INFINITY, NAN};
  std::copy(std::begin(specials), std::end(specials), gate.begin() + 250);  // across the first piece's end
  std::vector<float> first;
  for (Isa isa : supported()) {
    IsaGuard guard(isa);
    std::vector<float> got = gate;
    silu_mul(got.data(), up.data(), int(got.size()));
    for (size_t i = 0; i < got.size(); ++i) {
      const long double g = gate[i], want = g / (1 + std::exp(-g)) * up[i];
      if (std::isnan(want)) {
        EXPECT_TRUE(std::isnan(got[i])) << isa_name(isa) << " gate " << gate[i];
        continue;
      }
      if (std::isinf(want)) {
        EXPECT_EQ(got[i], float(want)) << isa_name(isa) << " gate " << gate[i];
        continue;
      }
      EXPECT_LE(std::fabs(got[i] - want), 4e-7L * std::fabs(want) + 1e-37L) << isa_name(isa) << " gate " << gate[i];
    }
    if (first.empty()) first = got;
    for (size_t i = 0; i < got.size(); ++i)
      if (!std::isnan(got[i])) ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(first[i])) << isa_name(isa) << " " << i;
  }
  for (int n : {1, 7, 8, 13, 128, 2048, 2051}) {
    std::vector<float> x(n), w(n), out(n);
    for (int i = 0; i < n; ++i) x[i] = 3 * unit(rng), w[i] = unit(rng);
    rmsnorm(x.data(), w.data(), n, 1e-6f, out.data());
    long double ss = 0;
    for (float v : x) ss += (long double)v * v;
    const long double inv = 1 / std::sqrt(ss / n + 1e-6L);
    for (int i = 0; i < n; ++i) EXPECT_NEAR(out[i], x[i] * inv * w[i], 1e-6 * (std::fabs(x[i] * inv * w[i]) + 1e-6)) << n << " " << i;
  }
}

// matmul_batch prepares a large input (a prefill's: quantized blocks and their sums, or bf16's
// reordered floats) in pieces of tokens over the threads: each token's prepared values lie at its
// own offset, so two threads give the bits of one, and every token the bits it gets alone. Q2_K
// reads two sums per block (their offsets scale with it); two jobs share one input, a third has its own.
TEST(Kernels, LargeInputsPreparedOverThreadsGiveTheBitsOfOneThread) {
  const int rows = 24, cols = 2048, tokens = 70;  // 70 x 2048 values: past kMinParallelWork
  ASSERT_GE(int64_t(tokens) * cols, kMinParallelWork);
  std::mt19937 rng(23);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(size_t(tokens) * cols), x2(x.size()), w(size_t(rows) * cols);
  for (float& v : x) v = normal(rng);
  for (float& v : x2) v = normal(rng);
  for (float& v : w) v = 0.05f * normal(rng);
  const int threads_before = omp_get_max_threads();
  // (BF16 twice: as rows, then in the tiles' layout, whose inputs are bf16 parts.)
  const bool tiles = isa_supported(Isa::Avx512Vnni);
  for (int pass = 0; pass < (tiles ? 5 : 4); ++pass) {
    const DType dtype = pass < 4 ? std::array{DType::Q8_0, DType::Q4_K, DType::Q2_K, DType::BF16}[pass] : DType::BF16;
    const size_t row_bytes = dtype_row_bytes(dtype, cols);
    std::vector<uint8_t> data(rows * row_bytes);
    for (int r = 0; r < rows; ++r) {
      if (dtype == DType::BF16)
        for (int c = 0; c < cols; ++c) reinterpret_cast<uint16_t*>(data.data())[size_t(r) * cols + c] = f32_to_bf16(w[size_t(r) * cols + c]);
      else
        quant::quantize_row(dtype, &w[size_t(r) * cols], cols, data.data() + r * row_bytes);
    }
    Matrix m{data.data(), dtype, rows, cols};
    if (pass == 4) pack_bf16_tiles(m, data.data());
    std::vector<float> out[2][3];
    for (int run = 0; run < 2; ++run) {
      omp_set_num_threads(run + 1);
      for (auto& y : out[run]) y.assign(size_t(tokens) * rows, NAN);
      const MatmulJob jobs[] = {{m, x.data(), tokens, out[run][0].data()},
                                {m, x2.data(), tokens, out[run][1].data()},
                                {m, x.data(), tokens, out[run][2].data()}};
      matmul_batch(jobs, 3);
    }
    omp_set_num_threads(threads_before);
    for (int j = 0; j < 3; ++j)
      ASSERT_EQ(std::memcmp(out[0][j].data(), out[1][j].data(), out[0][j].size() * sizeof(float)), 0)
          << dtype_name(dtype) << " job " << j;
    std::vector<float> alone(rows);
    for (int t : {0, 17, tokens - 1}) {
      matmul(m, &x2[size_t(t) * cols], 1, alone.data());
      ASSERT_EQ(std::memcmp(alone.data(), &out[1][1][size_t(t) * rows], rows * sizeof(float)), 0) << dtype_name(dtype) << " token " << t;
    }
  }
}

// bf16 matrices in the tile unit's order (Bf16Tiles): the activations' three bf16 parts sum to
// them exactly, so the products are exact-class (within the bound of f32 sums over the columns,
// not bf16-rounded activations'); a token gets the same bits alone, among others and however the
// rows are split; the rows after the last whole strip (packed per call) too.
struct Bf16TilesGuard {
  explicit Bf16TilesGuard(Bf16TilesUse use) { set_bf16_tiles(use); }
  ~Bf16TilesGuard() { set_bf16_tiles(Bf16TilesUse::ByIsa); }
};

TEST(Kernels, Bf16PartsSumToTheActivationsExactly) {
  std::mt19937 rng(29);
  std::vector<float> x = {0.0f, -0.0f, 1.0f, -1.0f, 1.00390625f, 0.99999994f, 3.4e37f, -1.1754944e-38f * 16384};
  for (int i = 0; i < 20000; ++i) {
    const float mantissa = std::uniform_real_distribution<float>(1.0f, 2.0f)(rng);
    x.push_back(std::ldexp(rng() % 2 ? mantissa : -mantissa, int(rng() % 201) - 100));
  }
  std::vector<uint16_t> parts(3 * x.size());
  bf16_parts(x.data(), 1, int64_t(x.size()), parts.data());
  for (size_t i = 0; i < x.size(); ++i) {
    const float hi = bf16_to_f32(parts[i]), mid = bf16_to_f32(parts[x.size() + i]), lo = bf16_to_f32(parts[2 * x.size() + i]);
    ASSERT_EQ((long double)hi + mid + lo, (long double)x[i]) << x[i];
    ASSERT_EQ(parts[i], f32_to_bf16(x[i])) << x[i];  // hi is x rounded to nearest even
    ASSERT_LE(std::fabs(mid), std::fabs(hi) * 0x1p-8f) << x[i];
  }
}

TEST(Kernels, Bf16TilesAreExactClassAndGiveATokenItsBitsAlone) {
  if (!isa_supported(Isa::Avx512Vnni)) GTEST_SKIP() << "this CPU runs neither AMX-BF16 nor the model of its tiles";
  std::vector<const KernelTable*> tables = {&amx_emulated_kernels()};
  if (amx_bf16_supported()) tables.push_back(&amx_kernels());
  std::mt19937 rng(31);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  // Shapes: one strip; tails of 8 and 13 rows; 1 to 17 tokens (groups of 5 and a last one that
  // overlaps); 2048 columns (prefetch distances inside the strip).
  for (auto [rows, cols, tokens] : {std::tuple{16, 32, 1}, {40, 96, 7}, {64, 256, 17}, {77, 160, 11}, {130, 64, 6},
                                    {48, 2048, 5}, {29, 32, 3}, {16, 64, 2}}) {
    std::vector<uint16_t> w(size_t(rows) * cols), packed;
    for (uint16_t& v : w) v = f32_to_bf16(dist(rng));
    std::vector<float> x(size_t(tokens) * cols);
    for (float& v : x) v = dist(rng) * (rng() % 8 == 0 ? 20.0f : 1.0f);
    packed = w;
    Matrix m{packed.data(), DType::BF16, rows, cols};
    pack_bf16_tiles(m, packed.data());
    ASSERT_EQ(m.layout, Layout::Bf16Tiles);
    std::vector<uint16_t> parts(3 * x.size());
    bf16_parts(x.data(), tokens, cols, parts.data());
    const std::string shape = std::to_string(rows) + "x" + std::to_string(cols) + "x" + std::to_string(tokens);
    for (const KernelTable* k : tables) {
      const char* name = k == &amx_kernels() ? "amx" : "emulated amx";
      std::vector<float> y(size_t(tokens) * rows, NAN), split(y.size(), NAN), alone(rows, NAN);
      k->bf16_tile_matmul_rows(m, parts.data(), tokens, y.data(), 0, rows);
      const int64_t at = std::min<int64_t>(rows, 16);  // rows split where matmul_batch's blocks may end
      k->bf16_tile_matmul_rows(m, parts.data(), tokens, split.data(), 0, at);
      k->bf16_tile_matmul_rows(m, parts.data(), tokens, split.data(), at, rows);
      ASSERT_EQ(std::memcmp(y.data(), split.data(), y.size() * sizeof(float)), 0) << name << " " << shape;
      for (int t = 0; t < tokens; ++t) {
        for (int r = 0; r < rows; ++r) {
          long double exact = 0, magnitude = 0;
          for (int c = 0; c < cols; ++c) {
            const long double term = (long double)bf16_to_f32(w[size_t(r) * cols + c]) * x[size_t(t) * cols + c];
            exact += term, magnitude += std::fabs(term);
          }
          ASSERT_LE(std::fabs(y[size_t(t) * rows + r] - exact), (cols + 3) * 0x1p-24 * magnitude)
              << name << " " << shape << " token " << t << " row " << r;
        }
        k->bf16_tile_matmul_rows(m, &parts[3 * size_t(t) * cols], 1, alone.data(), 0, rows);
        ASSERT_EQ(std::memcmp(alone.data(), &y[size_t(t) * rows], rows * sizeof(float)), 0) << name << " " << shape << " token " << t;
      }
    }
    // The dispatch sends a Bf16Tiles matrix to the tile unit (its model without AMX-BF16) whatever
    // the active ISA, with the parts made per call.
    const KernelTable& expected = amx_bf16_supported() ? amx_kernels() : amx_emulated_kernels();
    std::vector<float> want(size_t(tokens) * rows), got(want.size());
    expected.bf16_tile_matmul_rows(m, parts.data(), tokens, want.data(), 0, rows);
    for (Isa isa : supported()) {
      IsaGuard guard(isa);
      matmul(m, x.data(), tokens, got.data());
      ASSERT_EQ(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)), 0) << isa_name(isa) << " " << shape;
    }
  }
}

TEST(Kernels, ArrangeForMatmulPacksTheBf16MatricesTheTilesRead) {
  if (!isa_supported(Isa::Avx512Vnni)) GTEST_SKIP() << "this CPU runs neither AMX-BF16 nor the model of its tiles";
  const int cols = 64;
  std::vector<uint16_t> original(size_t(40) * cols);
  for (size_t i = 0; i < original.size(); ++i) original[i] = uint16_t(i);
  for (Bf16TilesUse use : {Bf16TilesUse::Always, Bf16TilesUse::Never}) {
    const Bf16TilesGuard guard(use);
    EXPECT_EQ(bf16_tiles_in_use(), use == Bf16TilesUse::Always);
    std::vector<uint16_t> data = original;
    Matrix m{data.data(), DType::BF16, 40, cols};
    arrange_for_matmul(m, data.data());
    if (use == Bf16TilesUse::Never) {
      EXPECT_EQ(m.layout, Layout::Rows);
      EXPECT_EQ(data, original);
      continue;
    }
    ASSERT_EQ(m.layout, Layout::Bf16Tiles);
    // Strip s, chunk c, line k, row n, pair element i: row 16s + n's column 32c + 2k + i.
    for (int s = 0; s < 2; ++s)
      for (int c = 0; c < 2; ++c)
        for (int k = 0; k < 16; ++k)
          for (int n = 0; n < 16; ++n)
            for (int i = 0; i < 2; ++i)
              ASSERT_EQ(data[size_t(s) * 16 * cols + 512 * c + 32 * k + 2 * n + i],
                        original[size_t(16 * s + n) * cols + 32 * c + 2 * k + i]);
    EXPECT_TRUE(std::equal(data.begin() + 32 * cols, data.end(), original.begin() + 32 * cols));  // the tail rows
    // Left alone: columns not a multiple of 32, rows with a stride, fewer than 16 rows, f32.
    for (Matrix other : {Matrix{data.data(), DType::BF16, 20, 48}, Matrix{data.data(), DType::BF16, 16, 32, 64},
                         Matrix{data.data(), DType::BF16, 15, 64}, Matrix{data.data(), DType::F32, 16, 32}}) {
      std::vector<uint16_t> before = data;
      arrange_for_matmul(other, data.data());
      EXPECT_EQ(other.layout, Layout::Rows);
      EXPECT_EQ(before, data);
    }
  }
  EXPECT_EQ(bf16_tiles_in_use(), active_isa() == Isa::Amx && amx_bf16_supported());
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

// Jobs of every small size back to back (the threads' runs empty, one item, uneven; a thread that
// empties its run takes the others' items from their backs), some after a pause long enough for
// the workers to sleep, and bodies of uneven cost: every index once, in every job.
TEST(ThreadPool, UnevenJobsBackToBackAndAfterSleeping) {
  const int threads_before = omp_get_max_threads();
  std::mt19937 rng(5);
  for (int threads : {2, 3}) {
    omp_set_num_threads(threads);
    std::vector<std::atomic<int>> hits(64);
    int64_t wrong = 0;
    for (int job = 0; job < 4000; ++job) {
      const int64_t count = int64_t(rng() % 40);
      const unsigned slow = rng() % 64;
      for (auto& h : hits) h.store(0);
      parallel_for(count, [&](int64_t i) {
        if (unsigned(i) == slow) {  // one item much longer than the rest
          const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(20);
          while (std::chrono::steady_clock::now() < until) {
          }
        }
        hits[size_t(i)].fetch_add(1);
      });
      for (int64_t i = 0; i < 64; ++i) wrong += hits[size_t(i)].load() != (i < count ? 1 : 0);
      if (job % 500 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    EXPECT_EQ(wrong, 0) << threads << " threads";
  }
  omp_set_num_threads(threads_before);
}

}  // namespace

// Quantized weights (Q8_0, Q4_K): the product reads x quantized to 8 bits with one step d_b per
// group of 32 (Q8_0) or 256 (Q4_K) columns, so against the dequantized weights times the exact x
// it may differ by
//   sum over blocks b of (d_b / 2) * sum_{i in b} |w_i|        (|x_i - d_b q_i| <= d_b / 2)
// plus float rounding. The integer block sums are exact in every ISA, which differ only in the
// order of float operations: about cols / 32 + 3 roundings of 2^-24 each, on at most
//   M = sum_i (|w_i| + |offset_i|) * (|x_i| + d_b)
// (offset: Q4_K's dmin * m term, which the kernel subtracts separately), so 1e-5 * M covers
// rows up to 2048 columns with room to spare.
namespace {

struct QuantCase {
  int rows, cols, tokens;
};
constexpr QuantCase kQuantCases[] = {{37, 256, 1}, {64, 512, 5}, {130, 1024, 9}, {16, 2048, 4}, {3, 256, 17}, {38, 512, 21}};

// Every block type the kernels multiply that interleave_rows8 interleaves.
constexpr DType kBlockTypes[] = {DType::Q8_0, DType::Q4_0, DType::Q5_0, DType::Q4_1, DType::Q5_1, DType::IQ4_NL, DType::MXFP4, DType::IQ4_XS, DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K};
// The codebook and ternary types: read and multiplied as rows, never written by crossmoe (their
// test matrices are random bytes with finite steps).
constexpr DType kCodebookTypes[] = {DType::IQ2_XXS, DType::IQ2_XS, DType::IQ2_S, DType::IQ3_XXS, DType::IQ3_S,
                                    DType::IQ1_S,   DType::IQ1_M,  DType::TQ1_0, DType::TQ2_0};
std::vector<DType> every_block_type() {
  std::vector<DType> all(std::begin(kBlockTypes), std::end(kBlockTypes));
  all.insert(all.end(), std::begin(kCodebookTypes), std::end(kCodebookTypes));
  return all;
}

std::vector<float> weight_like(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng);
  for (size_t i = 0; i < n; i += 61) v[i] *= 20.0f;  // outliers, as real weights and activations have
  return v;
}

struct QuantizedMatrix {
  std::vector<uint8_t> bytes, interleaved_bytes;  // the rows as quantized; the same interleaved
  std::vector<float> values, offsets;  // dequantized; Q4_K's / Q5_K's per-element min term (0 for Q8_0)
  Matrix matrix(DType t, int rows, int cols) const { return Matrix{bytes.data(), t, rows, cols}; }
  // The matrix in the layout the runtime gives weights in memory (kernels::interleave_rows8).
  Matrix interleaved(DType t, int rows, int cols) {
    interleaved_bytes = bytes;
    Matrix m{interleaved_bytes.data(), t, rows, cols};
    interleave_rows8(m, interleaved_bytes.data());
    return m;
  }
  Matrix in_layout(Layout layout, DType t, int rows, int cols) {
    return layout == Layout::Rows ? matrix(t, rows, cols) : interleaved(t, rows, cols);
  }
};

// Random super-blocks of a codebook or ternary type whose fp16 factor d is a step of 2^-13 .. 2^-10
// (IQ1_M keeps its d in the top nibbles of its 4 scale words).
void random_codebook_rows(DType t, size_t bytes, uint32_t seed, uint8_t* out) {
  std::mt19937 rng(seed);
  for (size_t i = 0; i < bytes; ++i) out[i] = uint8_t(rng());
  const size_t block = dtype_row_bytes(t, 256);
  std::uniform_real_distribution<float> step(1.0f / 8192, 1.0f / 1024);
  for (uint8_t* b = out; b < out + bytes; b += block) {
    const uint16_t d = f32_to_f16(step(rng));
    if (t == DType::IQ1_M) {
      for (int k = 0; k < 4; ++k) b[49 + 2 * k] = uint8_t((b[49 + 2 * k] & 0x0f) | ((d >> (4 * k)) & 15) << 4);
    } else {
      const size_t at = t == DType::TQ1_0 ? 52 : t == DType::TQ2_0 ? 64 : 0;
      std::memcpy(b + at, &d, 2);
    }
  }
}

QuantizedMatrix quantize_matrix(DType t, const std::vector<float>& w, int rows, int cols) {
  QuantizedMatrix q;
  const size_t row_bytes = dtype_row_bytes(t, cols);
  q.bytes.resize(row_bytes * rows);
  q.values.resize(w.size());
  q.offsets.assign(w.size(), 0.0f);
  if (quant::is_codebook_block(t)) random_codebook_rows(t, q.bytes.size(), std::bit_cast<uint32_t>(w[0]), q.bytes.data());
  for (int r = 0; r < rows; ++r) {
    if (!quant::is_codebook_block(t)) quant::quantize_row(t, w.data() + size_t(r) * cols, cols, q.bytes.data() + r * row_bytes);
    quant::dequantize_row(t, q.bytes.data() + r * row_bytes, cols, q.values.data() + size_t(r) * cols);
  }
  if (t == DType::Q4_K || t == DType::Q5_K || t == DType::Q2_K) {  // the same blocks with every q zero decode to -dmin * m
    std::vector<uint8_t> no_q = q.bytes;
    const size_t block_bytes = dtype_row_bytes(t, 256), q_end = t == DType::Q2_K ? 80 : block_bytes;
    for (size_t b = 0; b < no_q.size(); b += block_bytes)
      std::fill(no_q.begin() + b + 16, no_q.begin() + b + q_end, 0);
    for (int r = 0; r < rows; ++r)
      quant::dequantize_row(t, no_q.data() + r * row_bytes, cols, q.offsets.data() + size_t(r) * cols);
  }
  return q;
}

// The product of every case on `isa`, checked against dequantize-then-double with the bound
// above; returns the outputs for comparison between ISAs (and M per output).
void quant_products(Isa isa, DType t, std::vector<std::vector<float>>* outputs, std::vector<std::vector<double>>* scale,
                    Layout layout = Layout::Rows) {
  std::mt19937 rng(5);
  IsaGuard guard(isa);
  for (const auto& [rows, cols, tokens] : kQuantCases) {
    const std::vector<float> w = weight_like(size_t(rows) * cols, rng), x = weight_like(size_t(tokens) * cols, rng);
    QuantizedMatrix q = quantize_matrix(t, w, rows, cols);
    std::vector<ActivationBlock> xq(size_t(tokens) * cols / 32);
    quantize_activations(x.data(), int64_t(tokens) * cols, activation_group(t), xq.data());
    std::vector<float> y(size_t(tokens) * rows);
    const Matrix weights = q.in_layout(layout, t, rows, cols);
    ASSERT_EQ(weights.layout, rows >= 8 ? layout : Layout::Rows);
    matmul(weights, x.data(), tokens, y.data());
    std::vector<double> m(y.size());
    for (int tk = 0; tk < tokens; ++tk)
      for (int r = 0; r < rows; ++r) {
        double ref = 0, bound = 0, magnitude = 0;
        for (int c = 0; c < cols; ++c) {
          const size_t wi = size_t(r) * cols + c, xi = size_t(tk) * cols + c;
          const double d = xq[xi / 32].d;
          ref += double(q.values[wi]) * x[xi];
          bound += d / 2 * std::fabs(q.values[wi]);
          magnitude += (std::fabs(q.values[wi]) + std::fabs(q.offsets[wi])) * (std::fabs(x[xi]) + d);
        }
        const size_t yi = size_t(tk) * rows + r;
        m[yi] = magnitude;
        ASSERT_LE(std::fabs(y[yi] - ref), bound + 1e-5 * magnitude)
            << isa_name(isa) << " " << dtype_name(t) << (layout == Layout::Rows ? "" : " interleaved") << " " << rows
            << "x" << cols << "x" << tokens << " row " << r;
      }
    outputs->push_back(y);
    scale->push_back(m);
  }
}

void expect_isa_matches_portable(Isa isa) {
  if (!isa_supported(isa)) GTEST_SKIP() << "this CPU does not run " << isa_name(isa) << "; its kernels are untested here";
  for (DType t : every_block_type()) {
    std::vector<std::vector<float>> portable, vector_isa;
    std::vector<std::vector<double>> magnitude, unused;
    // (A product outside its bound stops quant_products part way: stop here too, before indexing.)
    ASSERT_NO_FATAL_FAILURE(quant_products(Isa::Generic, t, &portable, &magnitude));
    ASSERT_NO_FATAL_FAILURE(quant_products(isa, t, &vector_isa, &unused));
    for (size_t c = 0; c < portable.size(); ++c)
      for (size_t i = 0; i < portable[c].size(); ++i)
        ASSERT_LE(std::fabs(portable[c][i] - vector_isa[c][i]), 1e-5 * magnitude[c][i])
            << isa_name(isa) << " " << dtype_name(t) << " case " << c << " output " << i;
  }
}

// A table's quantized product of x (tokens x m.cols) on its own, outside the dispatch: the
// activations quantized by the table, then its rows in two calls ([0, split) and [split, rows),
// split a multiple of 8 as matmul_batch's blocks of rows are). Outputs start as NaN, so one that
// is never written differs from everything.
std::vector<float> table_product(const KernelTable& k, const Matrix& m, const float* x, int tokens, int64_t split = 0) {
  std::vector<ActivationBlock> xq(size_t(tokens) * size_t(m.cols / 32));
  k.quantize_activations(x, int64_t(tokens) * m.cols, activation_group(m.dtype), xq.data());
  std::vector<int16_t> sums(2 * xq.size());
  activation_sums_for(m.dtype, xq.data(), int64_t(xq.size()), sums.data());
  const int16_t* s = activation_sums_per_block(m.dtype) ? sums.data() : nullptr;  // as matmul_batch passes them
  std::vector<float> y(size_t(tokens) * size_t(m.rows), std::nanf(""));
  k.quant_matmul_rows(m, xq.data(), s, tokens, y.data(), 0, split);
  k.quant_matmul_rows(m, xq.data(), s, tokens, y.data(), split, m.rows);
  return y;
}

// "" when a and b (tokens x rows) hold the same bits, else where they first differ and how many do.
std::string first_difference(const std::vector<float>& a, const std::vector<float>& b, int rows) {
  if (a.size() != b.size()) return "sizes " + std::to_string(a.size()) + " and " + std::to_string(b.size());
  size_t first = a.size(), count = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::bit_cast<uint32_t>(a[i]) != std::bit_cast<uint32_t>(b[i])) {
      if (first == a.size()) first = i;
      ++count;
    }
  if (count == 0) return "";
  char text[200];
  std::snprintf(text, sizeof text, "%zu of %zu outputs differ, the first at token %zu row %zu: %.9g vs %.9g", count,
                a.size(), first / size_t(rows), first % size_t(rows), double(a[first]), double(b[first]));
  return text;
}

}  // namespace

TEST(QuantKernels, ActivationsQuantizeWithinHalfAStep) {
  std::mt19937 rng(2);
  std::vector<float> x = weight_like(512, rng);
  std::fill(x.begin() + 64, x.begin() + 96, 0.0f);
  std::fill(x.begin() + 256, x.end(), 0.0f);  // a zero super-block: step 0, every q 0
  EXPECT_EQ(activation_group(DType::Q8_0), 32);
  EXPECT_EQ(activation_group(DType::Q4_K), 256);
  for (int64_t group : {32, 256}) {
    std::vector<ActivationBlock> a(16);
    quantize_activations(x.data(), 512, group, a.data());
    for (int b = 0; b < 16; ++b) {
      const int first = int(b / (group / 32) * (group / 32));  // the first block of b's group
      float amax = 0;
      for (int i = first * 32; i < first * 32 + group; ++i) amax = std::max(amax, std::fabs(x[i]));
      EXPECT_EQ(a[b].d, amax / 127.0f) << "one step per group of " << group << ", block " << b;
      int32_t sum = 0, qmax = 0;
      for (int i = 0; i < 32; ++i) {
        EXPECT_LE(std::fabs(x[b * 32 + i] - a[b].d * a[b].q[i]), a[b].d / 2 * (1 + 1e-6f)) << b << " " << i;
        sum += a[b].q[i];
        qmax = std::max(qmax, std::abs(int32_t(a[b].q[i])));
      }
      EXPECT_EQ(a[b].sum, sum);
      if (group == 32) EXPECT_EQ(qmax, b == 2 || b >= 8 ? 0 : 127) << "the largest value of a block maps to 127";
    }
  }
}

// Each ISA quantizes activations its own way (the decode path's input step) to the portable
// code's bytes: steps, sums and every q, ties at exactly half a step included (to even).
TEST(QuantKernels, EveryIsaQuantizesActivationsToThePortableBytes) {
  std::mt19937 rng(9);
  std::vector<float> x = weight_like(1024, rng);
  std::fill(x.begin() + 256, x.begin() + 512, 0.0f);  // a zero super-block
  x[512] = -127.0f;  // a group whose step is 1: these land on exact halves
  for (int i = 1; i < 32; ++i) x[512 + i] = float(i % 7) - 3.5f + (i % 2 ? 0.0f : 1.0f);
  for (int64_t group : {32, 256}) {
    std::vector<ActivationBlock> portable(32);
    quantize_activations(x.data(), 1024, group, portable.data());
    ASSERT_EQ(portable[16].d, 1.0f);  // the ties are ties: -2.5 -> -2, 0.5 -> 0, -0.5 -> -0
    EXPECT_EQ(portable[16].q[0], -127);
    EXPECT_EQ(portable[16].q[1], -2);
    EXPECT_EQ(portable[16].q[3], 0);
    for (const KernelTable* table : {&generic_kernels(), &avx2_kernels(), &avx512_kernels(), &avx512_vnni_kernels()}) {
      if (!isa_supported(table->isa)) continue;
      std::vector<ActivationBlock> a(32);
      table->quantize_activations(x.data(), 1024, group, a.data());
      for (int b = 0; b < 32; ++b) {
        EXPECT_EQ(a[b].d, portable[b].d) << isa_name(table->isa) << " group " << group << " block " << b;
        EXPECT_EQ(a[b].sum, portable[b].sum) << isa_name(table->isa) << " group " << group << " block " << b;
        for (int i = 0; i < 32; ++i)
          ASSERT_EQ(a[b].q[i], portable[b].q[i]) << isa_name(table->isa) << " group " << group << " block " << b << " " << i;
      }
    }
  }
}

TEST(QuantKernels, PortableMatchesDequantizedWeightsWithinTheBound) {
  for (DType t : every_block_type()) {
    std::vector<std::vector<float>> y;
    std::vector<std::vector<double>> m;
    ASSERT_NO_FATAL_FAILURE(quant_products(Isa::Generic, t, &y, &m));
  }
}

TEST(QuantKernels, Avx2MatchesPortable) { expect_isa_matches_portable(Isa::Avx2); }
TEST(QuantKernels, Avx512MatchesPortable) { expect_isa_matches_portable(Isa::Avx512); }
TEST(QuantKernels, Avx512VnniMatchesPortable) { expect_isa_matches_portable(Isa::Avx512Vnni); }

// The bytes the integer lanes' bounds are about, which quantizing smooth values seldom makes:
// Q8_0 weights of -128 and 127, Q4_0 nibbles of 0 and 15, Q4_K nibbles of 15 under 6-bit scales and mins of 63, against
// activations of -127 and 127 (whole blocks of them), beside random bytes of every value. Every
// ISA gives the portable code's bits for the rows of whole groups, for one token (decode's
// tiles) and several (the tiles of several tokens, and their tail; from 16 tokens on, AMX's tiles
// of 16 tokens, the last one overlapping the one before). 24 rows and 23 tokens: the VNNI lane's
// tiles of two groups and a last group alone, in turns of 8, 8, 4, 2 and 1 tokens.
TEST(QuantKernels, InterleavedTilesGiveThePortableBitsOnExtremeBytes) {
  std::mt19937 rng(12);
  std::uniform_int_distribution<int> byte(0, 255);
  const int rows = 24, cols = 512, tokens = 23;
  std::vector<float> x(size_t(tokens) * cols);
  for (int t = 0; t < tokens; ++t)
    for (int c = 0; c < cols; ++c)
      x[size_t(t) * cols + c] = t == 0 ? -1.0f : t == 1 ? 1.0f : float(byte(rng) - 128) / 128.0f;
  const uint16_t step = f32_to_f16(0.01f);
  for (DType t : {DType::Q8_0, DType::Q4_0, DType::Q4_K}) {
    const size_t row_bytes = dtype_row_bytes(t, cols), block_bytes = dtype_row_bytes(t, dtype_block(t));
    std::vector<uint8_t> bytes(row_bytes * rows);
    for (int r = 0; r < rows; ++r)
      for (size_t b = 0; b < row_bytes; b += block_bytes) {
        uint8_t* block = &bytes[r * row_bytes + b];
        const size_t fp16_fields = t == DType::Q4_K ? 2 : 1;
        for (size_t f = 0; f < fp16_fields; ++f) std::memcpy(block + 2 * f, &step, 2);
        const uint8_t first = t == DType::Q8_0 ? 0x80 : t == DType::Q4_0 ? 0x00 : 0xff;
        const uint8_t second = t == DType::Q8_0 ? 0x7f : 0xff;
        for (size_t i = 2 * fp16_fields; i < block_bytes; ++i) block[i] = r == 0 ? first : r == 1 ? second : byte(rng);
      }
    std::vector<uint8_t> interleaved = bytes;
    Matrix m{interleaved.data(), t, rows, cols};
    interleave_rows8(m, interleaved.data());
    ASSERT_EQ(m.layout, Layout::Interleaved8);
    std::vector<float> portable(size_t(tokens) * rows);
    {
      IsaGuard guard(Isa::Generic);
      matmul(m, x.data(), tokens, portable.data());
    }
    if (isa_supported(Isa::Avx512Vnni)) {
      const std::vector<float> emulated = table_product(amx_emulated_kernels(), m, x.data(), tokens);
      EXPECT_EQ(first_difference(emulated, portable, rows), "") << "emulated AMX tiles, " << dtype_name(t);
    }
    for (Isa isa : supported()) {
      IsaGuard guard(isa);
      std::vector<float> y(size_t(tokens) * rows), alone(rows);
      matmul(m, x.data(), tokens, y.data());
      EXPECT_EQ(first_difference(y, portable, rows), "") << isa_name(isa) << " " << dtype_name(t);
      matmul(m, x.data(), 1, alone.data());
      EXPECT_EQ(alone, std::vector<float>(portable.begin(), portable.begin() + rows)) << isa_name(isa) << " " << dtype_name(t);
    }
    // The extreme rows really are extreme: row 0 against token 0, exactly as the integers say.
    const float ad = 1.0f / 127.0f, d = f16_to_f32(step);
    if (t == DType::Q8_0)
      EXPECT_FLOAT_EQ(portable[0], 512 * 128 * 127 * d * ad) << "every product -128 x -127";
    else if (t == DType::Q4_0)
      EXPECT_FLOAT_EQ(portable[0], 512 * 8 * 127 * d * ad) << "every product (0 - 8) x -127";
    else
      EXPECT_FLOAT_EQ(portable[0], 2 * (-63 * 15 * 127 * 8 * 32 + 63 * 127 * 8 * 32) * d * ad)
          << "every product 63 x 15 x -127, every min 63 x -127";
  }
}

// Rows of a block type on random bytes of every value (fill(block, r, rng) writes each block of
// row r; rows 0 and 1 extreme), against tokens of -1, of 1 and random. The contract of
// quant_matmul_impl.hpp: exact integer sums per super-block, (row, token), then the same float
// steps, so every ISA gives the portable rows' bits, as rows and interleaved (4 groups of 8 and 5
// rows after them), for any number of tokens (1 to 17 and 23: the VNNI lane's turns of 8, 8, 4, 2,
// 1, AVX2's tiles of 4 and their tail) and any block of rows; and each output within the bound
// against the dequantized rows times the quantized activations. Returns the portable outputs.
template <class Fill>
std::vector<float> expect_rows_give_the_portable_bits(DType type, Fill fill) {
  std::mt19937 rng(14);
  std::uniform_int_distribution<int> byte(0, 255);
  const int rows = 37, cols = 768, tokens = 23;
  std::vector<float> x(size_t(tokens) * cols);
  for (int t = 0; t < tokens; ++t)
    for (int c = 0; c < cols; ++c)
      x[size_t(t) * cols + c] = t == 0 ? -1.0f : t == 1 ? 1.0f : float(byte(rng) - 128) / 128.0f;
  const size_t row_bytes = dtype_row_bytes(type, cols), block_bytes = dtype_row_bytes(type, 256);
  std::vector<uint8_t> bytes(row_bytes * rows);
  for (int r = 0; r < rows; ++r)
    for (size_t b = 0; b < row_bytes; b += block_bytes) fill(&bytes[r * row_bytes + b], r, rng);
  const Matrix m{bytes.data(), type, rows, cols};
  std::vector<uint8_t> interleaved_bytes = bytes;
  Matrix interleaved{interleaved_bytes.data(), type, rows, cols};
  interleave_rows8(interleaved, interleaved_bytes.data());
  EXPECT_EQ(interleaved.layout, Layout::Interleaved8) << dtype_name(type);
  EXPECT_NE(interleaved_bytes, bytes) << dtype_name(type);
  const std::vector<Matrix> layouts = {m, interleaved};
  std::vector<float> portable(size_t(tokens) * rows);
  {
    IsaGuard guard(Isa::Generic);
    matmul(m, x.data(), tokens, portable.data());
  }
  // Q5_K's and Q2_K's min terms (the blocks with every q zero), summed apart from their q terms.
  const bool with_mins = type == DType::Q5_K || type == DType::Q2_K;
  std::vector<uint8_t> no_q = bytes;
  if (with_mins)
    for (size_t b = 0; b < no_q.size(); b += block_bytes)
      std::fill(&no_q[b + 16], &no_q[b + (type == DType::Q5_K ? block_bytes : 80)], 0);
  std::vector<float> w(size_t(rows) * cols), offsets(w.size(), 0.0f);
  for (int r = 0; r < rows; ++r) {
    to_f32(&bytes[r * row_bytes], type, cols, &w[size_t(r) * cols]);
    if (with_mins) to_f32(&no_q[r * row_bytes], type, cols, &offsets[size_t(r) * cols]);
  }
  std::vector<ActivationBlock> xq(size_t(tokens) * cols / 32);
  quantize_activations(x.data(), int64_t(tokens) * cols, activation_group(type), xq.data());
  for (int t = 0; t < tokens; ++t)
    for (int r = 0; r < rows; ++r) {
      // Against the quantized activations the integer sums are exact: what is left is float
      // rounding, a step or two per super-block on at most sum (|w| + |min term|) |a|.
      double ref = 0, magnitude = 0;
      for (int c = 0; c < cols; ++c) {
        const ActivationBlock& a = xq[(size_t(t) * cols + c) / 32];
        const double xa = double(a.d) * a.q[c % 32];
        const size_t wi = size_t(r) * cols + c;
        ref += double(w[wi]) * xa;
        magnitude += (std::fabs(double(w[wi])) + 2 * std::fabs(double(offsets[wi]))) * std::fabs(xa);
      }
      EXPECT_LE(std::fabs(portable[size_t(t) * rows + r] - ref), 1e-6 * magnitude)
          << dtype_name(type) << " token " << t << " row " << r;
    }
  if (isa_supported(Isa::Avx512Vnni)) {  // AMX's tiles (interleaved groups of 16 rows; the 5 rows after: its VNNI lane)
    const std::vector<float> emulated = table_product(amx_emulated_kernels(), interleaved, x.data(), tokens);
    EXPECT_EQ(first_difference(emulated, portable, rows), "") << "emulated AMX tiles, " << dtype_name(type);
  }
  for (Isa isa : supported())
    for (const Matrix& layout : layouts) {
      const std::string name =
          isa_name(isa) + " " + dtype_name(type) + (layout.layout == Layout::Rows ? " rows" : " interleaved");
      IsaGuard guard(isa);
      std::vector<float> y(size_t(tokens) * rows), alone(rows);
      matmul(layout, x.data(), tokens, y.data());
      EXPECT_EQ(first_difference(y, portable, rows), "") << name;
      for (int k : {0, 1, 2, 9, 22}) {
        matmul(layout, &x[size_t(k) * cols], 1, alone.data());
        EXPECT_EQ(alone, std::vector<float>(portable.begin() + size_t(k) * rows, portable.begin() + size_t(k + 1) * rows))
            << name << " token " << k << " alone";
      }
      for (int n = 2; n <= 17; ++n) {
        std::vector<float> few(size_t(n) * rows);
        matmul(layout, x.data(), n, few.data());
        EXPECT_EQ(first_difference(few, std::vector<float>(portable.begin(), portable.begin() + size_t(n) * rows), rows), "")
            << name << " " << n << " tokens";
      }
    }
  return portable;
}

// Q6_K's extreme rows: every 6-bit q 0 under scales of -128 (each value +4096 d) and every q 63
// under scales of 127.
TEST(QuantKernels, Q6_KRowsAndInterleavedGroupsGiveThePortableBitsInEveryIsaAndTheDoubleSum) {
  const auto fill = [](uint8_t* block, int r, std::mt19937& rng) {
    std::uniform_int_distribution<int> byte(0, 255);
    for (int i = 0; i < 192; ++i) block[i] = r == 0 ? 0x00 : r == 1 ? 0xff : uint8_t(byte(rng));
    for (int j = 0; j < 16; ++j) block[192 + j] = r == 0 ? 0x80 : r == 1 ? 0x7f : uint8_t(byte(rng));
    const uint16_t d = f32_to_f16(r < 2 ? 0.01f : 0.001f * float(1 + byte(rng)));
    std::memcpy(block + 208, &d, 2);
  };
  const std::vector<float> portable = expect_rows_give_the_portable_bits(DType::Q6_K, fill);
  const int rows = 37;
  const float d = f16_to_f32(f32_to_f16(0.01f)), ad = 1.0f / 127.0f;
  EXPECT_FLOAT_EQ(portable[0], 768.0f * -128 * -32 * -127 * d * ad) << "every weight -128 x -32 d, activation -127 a.d";
  EXPECT_FLOAT_EQ(portable[rows + 1], 768.0f * 127 * 31 * 127 * d * ad) << "every weight 127 x 31 d, activation 127 a.d";
}

// Q5_K's extreme rows: every 5-bit q 31 under scales of 63 and mins of 0 (row 0), every q 0 under
// mins of 63 (row 1): row 0's 16 products per 32-bit lane of VNNI reach 62992, past the 16 bits
// that Q4_K's sums fit; the random rows have any scales, mins, q and high bits.
TEST(QuantKernels, Q5_KRowsAndInterleavedGroupsGiveThePortableBitsInEveryIsaAndTheDoubleSum) {
  const auto fill = [](uint8_t* block, int r, std::mt19937& rng) {
    std::uniform_int_distribution<int> byte(0, 255);
    const uint16_t d = f32_to_f16(r < 2 ? 0.01f : 0.001f * float(1 + byte(rng)));
    const uint16_t dmin = f32_to_f16(r < 2 ? 0.02f : 0.001f * float(1 + byte(rng)));
    std::memcpy(block, &d, 2);
    std::memcpy(block + 2, &dmin, 2);
    // sc 63, m 0: bytes 0-3 0xff (sc[0..3], sc[4..7]'s top bits), 4-7 0, 8-11 0x0f; the reverse for row 1.
    for (int i = 0; i < 12; ++i)
      block[4 + i] = r == 0 ? (i < 4 ? 0xff : i < 8 ? 0x00 : 0x0f) : r == 1 ? (i < 4 ? 0x00 : i < 8 ? 0xff : 0xf0)
                                                                        : uint8_t(byte(rng));
    for (int i = 16; i < 176; ++i) block[i] = r == 0 ? 0xff : r == 1 ? 0x00 : uint8_t(byte(rng));
  };
  const std::vector<float> portable = expect_rows_give_the_portable_bits(DType::Q5_K, fill);
  const int rows = 37;
  const float d = f16_to_f32(f32_to_f16(0.01f)), dmin = f16_to_f32(f32_to_f16(0.02f)), ad = 1.0f / 127.0f;
  EXPECT_FLOAT_EQ(portable[0], 768.0f * 63 * 31 * -127 * d * ad) << "every weight 63 x 31 d, activation -127 a.d";
  EXPECT_FLOAT_EQ(portable[rows + 1], 768.0f * -63 * 127 * dmin * ad) << "every weight -63 dmin, activation 127 a.d";
}

// Q4_0 / Q5_0 rows: every nibble 0 and every 5th bit clear (q - 8 = -8, q - 16 = -16: the
// most negative values, row 0), every bit set (7, 15: row 1), random bytes and steps in the others.
TEST(QuantKernels, Q4_0AndQ5_0RowsGiveThePortableBitsInEveryIsaAndTheDoubleSum) {
  for (DType type : {DType::Q4_0, DType::Q5_0}) {
    const size_t block_bytes = dtype_row_bytes(type, 32);
    const auto fill = [block_bytes](uint8_t* blocks, int r, std::mt19937& rng) {  // 8 blocks: 256 values
      std::uniform_int_distribution<int> byte(0, 255);
      for (uint8_t* block = blocks; block < blocks + 8 * block_bytes; block += block_bytes) {
        const uint16_t d = f32_to_f16(r < 2 ? 0.01f : 0.001f * float(1 + byte(rng)));
        std::memcpy(block, &d, 2);
        for (size_t i = 2; i < block_bytes; ++i) block[i] = r == 0 ? 0x00 : r == 1 ? 0xff : uint8_t(byte(rng));
      }
    };
    const std::vector<float> portable = expect_rows_give_the_portable_bits(type, fill);
    const int rows = 37;
    const float d = f16_to_f32(f32_to_f16(0.01f)), ad = 1.0f / 127.0f;
    const float low = type == DType::Q4_0 ? -8.0f : -16.0f, high = type == DType::Q4_0 ? 7.0f : 15.0f;
    EXPECT_FLOAT_EQ(portable[0], 768.0f * low * -127 * d * ad) << dtype_name(type) << ": every weight " << low << " d";
    EXPECT_FLOAT_EQ(portable[rows + 1], 768.0f * high * 127 * d * ad) << dtype_name(type) << ": every weight " << high << " d";
  }
}

// Q4_1 / Q5_1 (value q d + m), as rows and interleaved: every q 0 (row 0: m, against tokens of -1),
// every bit set (row 1: 15 or 31 steps above m), random bytes, steps and mins in the others.
TEST(QuantKernels, Q4_1AndQ5_1RowsAndGroupsGiveThePortableBitsInEveryIsaAndTheDoubleSum) {
  for (DType type : {DType::Q4_1, DType::Q5_1}) {
    const size_t block_bytes = dtype_row_bytes(type, 32);
    const auto fill = [block_bytes](uint8_t* blocks, int r, std::mt19937& rng) {  // 8 blocks: 256 values
      std::uniform_int_distribution<int> byte(0, 255);
      for (uint8_t* block = blocks; block < blocks + 8 * block_bytes; block += block_bytes) {
        const uint16_t d = f32_to_f16(r < 2 ? 0.01f : 0.001f * float(1 + byte(rng)));
        const uint16_t m = f32_to_f16(r < 2 ? -0.05f : 0.0005f * float(byte(rng) - 128));
        std::memcpy(block, &d, 2);
        std::memcpy(block + 2, &m, 2);
        for (size_t i = 4; i < block_bytes; ++i) block[i] = r == 0 ? 0x00 : r == 1 ? 0xff : uint8_t(byte(rng));
      }
    };
    const std::vector<float> portable = expect_rows_give_the_portable_bits(type, fill);
    const int rows = 37;
    const float d = f16_to_f32(f32_to_f16(0.01f)), m = f16_to_f32(f32_to_f16(-0.05f)), ad = 1.0f / 127.0f;
    const float top = type == DType::Q4_1 ? 15.0f : 31.0f;
    EXPECT_FLOAT_EQ(portable[0], 768.0f * m * -127 * ad) << dtype_name(type) << ": every value m";
    EXPECT_FLOAT_EQ(portable[rows + 1], 768.0f * (top * d + m) * 127 * ad) << dtype_name(type) << ": every value 15 d + m";
  }
}

// Q3_K's extreme rows (as rows and interleaved): every q 0 (value -4) under scales of -32 (row 0: each
// weight +128 d) and every bit set (row 1: q 7, value 3, under scales of 31); random bytes and steps
// in the others.
TEST(QuantKernels, Q3_KRowsAndGroupsGiveThePortableBitsInEveryIsaAndTheDoubleSum) {
  const auto fill = [](uint8_t* block, int r, std::mt19937& rng) {
    std::uniform_int_distribution<int> byte(0, 255);
    for (int i = 0; i < 108; ++i) block[i] = r == 0 ? 0x00 : r == 1 ? 0xff : uint8_t(byte(rng));
    const uint16_t d = f32_to_f16(r < 2 ? 0.01f : 0.001f * float(1 + byte(rng)));
    std::memcpy(block + 108, &d, 2);
  };
  const std::vector<float> portable = expect_rows_give_the_portable_bits(DType::Q3_K, fill);
  const int rows = 37;
  const float d = f16_to_f32(f32_to_f16(0.01f)), ad = 1.0f / 127.0f;
  EXPECT_FLOAT_EQ(portable[0], 768.0f * 128 * -127 * d * ad) << "every weight -32 x -4 d, activation -127 a.d";
  EXPECT_FLOAT_EQ(portable[rows + 1], 768.0f * 93 * 127 * d * ad) << "every weight 31 x 3 d, activation 127 a.d";
}

// Q2_K's extreme rows (as rows and interleaved): every q 0 under scales of 0 and mins of 15 (row 0: each
// weight -15 dmin), every bit set (row 1: q 3 under scales and mins of 15); random in the others.
TEST(QuantKernels, Q2_KRowsAndGroupsGiveThePortableBitsInEveryIsaAndTheDoubleSum) {
  const auto fill = [](uint8_t* block, int r, std::mt19937& rng) {
    std::uniform_int_distribution<int> byte(0, 255);
    for (int i = 0; i < 80; ++i) block[i] = r == 0 ? (i < 16 ? 0xf0 : 0x00) : r == 1 ? 0xff : uint8_t(byte(rng));
    const uint16_t d = f32_to_f16(r < 2 ? 0.01f : 0.001f * float(1 + byte(rng)));
    const uint16_t dmin = f32_to_f16(r < 2 ? 0.005f : 0.001f * float(1 + byte(rng)));
    std::memcpy(block + 80, &d, 2);
    std::memcpy(block + 82, &dmin, 2);
  };
  const std::vector<float> portable = expect_rows_give_the_portable_bits(DType::Q2_K, fill);
  const int rows = 37;
  const double d = f16_to_f32(f32_to_f16(0.01f)), dmin = f16_to_f32(f32_to_f16(0.005f)), ad = 1.0 / 127.0;
  EXPECT_NEAR(portable[0], 768.0 * -15 * dmin * -127 * ad, 1e-5 * 768 * 15 * dmin) << "every weight -15 dmin, activation -127 a.d";
  EXPECT_NEAR(portable[rows + 1], 768.0 * (45 * d - 15 * dmin) * 127 * ad, 1e-5 * 768 * 45 * d)
      << "every weight 45 d - 15 dmin, activation 127 a.d";
}

TEST(QuantKernels, BatchSharesQuantizedInputsAndMixesDtypes) {
  // Jobs reading the same x (as q, k, v do), another x, and a bf16 job in between: each output
  // equals its own matmul call.
  std::mt19937 rng(9);
  const int cols = 512;
  const std::vector<float> x1 = weight_like(2 * cols, rng), x2 = weight_like(2 * cols, rng);
  const QuantizedMatrix a = quantize_matrix(DType::Q8_0, weight_like(40 * cols, rng), 40, cols);
  const QuantizedMatrix b = quantize_matrix(DType::Q4_K, weight_like(24 * cols, rng), 24, cols);
  const std::vector<float> c_f32 = weight_like(8 * cols, rng);
  std::vector<uint16_t> c(c_f32.size());
  for (size_t i = 0; i < c.size(); ++i) c[i] = f32_to_bf16(c_f32[i]);
  const Matrix ma = a.matrix(DType::Q8_0, 40, cols), mb = b.matrix(DType::Q4_K, 24, cols);
  const Matrix mc{c.data(), DType::BF16, 8, cols};
  for (Isa isa : supported()) {
    IsaGuard guard(isa);
    std::vector<float> ya(80), yb(48), yc(16), ya2(80), ya_ref(80), yb_ref(48), yc_ref(16), ya2_ref(80);
    const MatmulJob jobs[] = {{ma, x1.data(), 2, ya.data()}, {mc, x1.data(), 2, yc.data()},
                              {mb, x1.data(), 2, yb.data()}, {ma, x2.data(), 2, ya2.data()}};
    matmul_batch(jobs, 4);
    matmul(ma, x1.data(), 2, ya_ref.data());
    matmul(mb, x1.data(), 2, yb_ref.data());
    matmul(mc, x1.data(), 2, yc_ref.data());
    matmul(ma, x2.data(), 2, ya2_ref.data());
    EXPECT_EQ(ya, ya_ref) << isa_name(isa);
    EXPECT_EQ(yb, yb_ref) << isa_name(isa);
    EXPECT_EQ(yc, yc_ref) << isa_name(isa);
    EXPECT_EQ(ya2, ya2_ref) << isa_name(isa);
  }
}

// A codebook matrix and a Q4_K one reading the same x (llama.cpp's IQ3_M files hold attn_q in IQ3_S
// and attn_v in Q4_K): the codebook job's prepared input comes first and serves both, so it must
// carry the sums Q4_K's min terms read.
TEST(QuantKernels, BatchSharesInputsBetweenCodebookAndKQuantWeights) {
  std::mt19937 rng(10);
  const int cols = 512;
  const std::vector<float> x = weight_like(3 * cols, rng);
  const QuantizedMatrix k = quantize_matrix(DType::Q4_K, weight_like(24 * cols, rng), 24, cols);
  const Matrix mk = k.matrix(DType::Q4_K, 24, cols);
  for (DType t : kCodebookTypes) {
    const QuantizedMatrix c = quantize_matrix(t, weight_like(16 * cols, rng), 16, cols);
    const Matrix mc = c.matrix(t, 16, cols);
    for (Isa isa : supported()) {
      IsaGuard guard(isa);
      std::vector<float> yc(48), yk(72), yc_ref(48), yk_ref(72);
      const MatmulJob jobs[] = {{mc, x.data(), 3, yc.data()}, {mk, x.data(), 3, yk.data()}};
      matmul_batch(jobs, 2);
      matmul(mc, x.data(), 3, yc_ref.data());
      matmul(mk, x.data(), 3, yk_ref.data());
      EXPECT_EQ(yc, yc_ref) << isa_name(isa) << " " << dtype_name(t);
      EXPECT_EQ(yk, yk_ref) << isa_name(isa) << " " << dtype_name(t);
    }
  }
}

TEST(QuantKernels, ATokenGetsTheSameBitsAloneOrInABatch) {
  // As for the other dtypes: the tiles of rows x tokens run each pair's operations in one order,
  // in both layouts (38 rows: 4 interleaved groups and 6 rows as they were; 19 tokens: AMX's
  // tiles of 16 tokens, where a CPU has them, against its VNNI lane alone).
  std::mt19937 rng(6);
  const int rows = 38, cols = 512, tokens = 19;
  const std::vector<float> x = weight_like(size_t(tokens) * cols, rng);
  for (DType t : every_block_type()) {
    QuantizedMatrix q = quantize_matrix(t, weight_like(size_t(rows) * cols, rng), rows, cols);
    for (Layout layout : {Layout::Rows, Layout::Interleaved8}) {  // (the codebook types stay rows)
      const Matrix m = q.in_layout(layout, t, rows, cols);
      for (Isa isa : supported()) {
        IsaGuard guard(isa);
        std::vector<float> together(size_t(tokens) * rows), alone(rows);
        matmul(m, x.data(), tokens, together.data());
        for (int k = 0; k < tokens; ++k) {
          matmul(m, &x[size_t(k) * cols], 1, alone.data());
          for (int r = 0; r < rows; ++r)
            ASSERT_EQ(alone[r], together[size_t(k) * rows + r])
                << isa_name(isa) << " " << dtype_name(t) << " layout " << int(layout) << " token " << k;
        }
      }
    }
  }
}

// Weights interleaved 8 rows at a time (as the runtime holds them in memory) against the same
// weights as rows: within the bound against the dequantized weights, bit for bit the same in every
// ISA for the rows of whole groups (the contract of quant_matmul_impl.hpp: exact integer sums, then
// the same float operations), and within float rounding of the row layout's products (whose float
// additions run in another order; Q4_0's, Q5_0's, Q5_K's and Q6_K's rows take the same steps: the same bits).
TEST(QuantKernels, InterleavedRowsMatchTheBoundAndTheRowLayout) {
  for (DType t : kBlockTypes) {
    std::vector<std::vector<float>> portable;
    std::vector<std::vector<double>> magnitude, unused;
    ASSERT_NO_FATAL_FAILURE(quant_products(Isa::Generic, t, &portable, &magnitude, Layout::Interleaved8));
    for (Isa isa : supported()) {
      std::vector<std::vector<float>> interleaved, as_rows;
      ASSERT_NO_FATAL_FAILURE(quant_products(isa, t, &interleaved, &unused, Layout::Interleaved8));
      ASSERT_NO_FATAL_FAILURE(quant_products(isa, t, &as_rows, &unused, Layout::Rows));
      for (size_t c = 0; c < portable.size(); ++c) {
        const auto& [rows, cols, tokens] = kQuantCases[c];
        for (size_t i = 0; i < portable[c].size(); ++i) {
          const bool grouped = int(i % size_t(rows)) < rows / 8 * 8;
          if (grouped)
            ASSERT_EQ(interleaved[c][i], portable[c][i]) << isa_name(isa) << " " << dtype_name(t) << " case " << c << " output " << i;
          else
            ASSERT_LE(std::fabs(interleaved[c][i] - portable[c][i]), 1e-5 * magnitude[c][i]);
          ASSERT_LE(std::fabs(interleaved[c][i] - as_rows[c][i]), 1e-5 * magnitude[c][i])
              << isa_name(isa) << " " << dtype_name(t) << " case " << c << " output " << i;
          if (t != DType::Q8_0 && t != DType::Q4_K)
            ASSERT_EQ(interleaved[c][i], as_rows[c][i]) << dtype_name(t) << isa_name(isa) << " case " << c << " output " << i;
        }
      }
    }
  }
}

// AMX's tiles (16 tokens x 16 rows, one block of 32 columns per tile product) on shapes that do
// not fill them: rows past the last strip of 16 (a lone group of 8, rows after the last group),
// token counts past the last whole tile, Q8_0 blocks of an odd count (two blocks in flight at
// a time), calls that start mid-matrix. The interleaved rows must have the portable code's bits,
// every output the VNNI lane's (AMX leaves the rest to it). Run on the real tiles where the CPU
// has AMX, and on the emulated tile unit (amx_emulated_kernels) wherever AVX-512 VNNI runs, so
// that the tiles' layout is checked on CPUs without AMX too.
TEST(QuantKernels, AmxTilesGiveThePortableBitsOnRaggedShapes) {
  if (!isa_supported(Isa::Avx512Vnni)) GTEST_SKIP() << "this CPU runs neither AMX nor its VNNI lane";
  struct Shape {
    DType type;
    int rows, cols, tokens;
    int64_t split;
  };
  const Shape shapes[] = {{DType::Q8_0, 40, 288, 16, 0},  {DType::Q8_0, 61, 800, 37, 24}, {DType::Q8_0, 32, 64, 71, 16},
                          {DType::Q8_0, 16, 32, 17, 0},   {DType::Q4_K, 40, 768, 37, 0},  {DType::Q4_K, 61, 256, 16, 8},
                          {DType::Q4_K, 56, 512, 33, 32}, {DType::Q8_0, 64, 256, 15, 0},  {DType::Q6_K, 40, 768, 37, 8},
                          {DType::Q5_K, 40, 768, 37, 8},  {DType::Q4_0, 40, 288, 37, 8},
                          {DType::Q5_0, 40, 288, 37, 8},  {DType::Q5_K, 61, 256, 16, 8},  {DType::Q4_0, 61, 800, 16, 24},
                          {DType::Q5_0, 32, 64, 71, 16},  {DType::Q6_K, 61, 512, 16, 24}, {DType::IQ4_NL, 40, 288, 37, 8},
                          {DType::IQ4_NL, 61, 800, 16, 24}, {DType::IQ4_XS, 40, 512, 37, 8}, {DType::MXFP4, 40, 288, 37, 8},
                          {DType::MXFP4, 61, 800, 16, 24}};
  std::mt19937 rng(21);
  for (const auto& [type, rows, cols, tokens, split] : shapes) {
    QuantizedMatrix q = quantize_matrix(type, weight_like(size_t(rows) * cols, rng), rows, cols);
    const Matrix m = q.interleaved(type, rows, cols);
    const std::vector<float> x = weight_like(size_t(tokens) * cols, rng);
    const std::string shape = dtype_name(type) + " " + std::to_string(rows) + "x" + std::to_string(cols) + "x" +
                              std::to_string(tokens) + " split at " + std::to_string(split);
    const std::vector<float> portable = table_product(generic_kernels(), m, x.data(), tokens, split);
    const std::vector<float> vnni = table_product(avx512_vnni_kernels(), m, x.data(), tokens, split);
    std::vector<const KernelTable*> tables = {&amx_emulated_kernels()};
    if (isa_supported(Isa::Amx)) tables.push_back(&amx_kernels());
    for (const KernelTable* k : tables) {
      const char* name = k == &amx_kernels() ? "amx" : "emulated amx";
      const std::vector<float> y = table_product(*k, m, x.data(), tokens, split);
      EXPECT_EQ(first_difference(y, vnni, rows), "") << name << " against avx512_vnni, " << shape;
      std::vector<float> grouped = y, grouped_portable = portable;  // the rows of whole groups
      for (int t = 0; t < tokens; ++t)
        for (int r = rows / 8 * 8; r < rows; ++r) grouped[size_t(t) * rows + r] = grouped_portable[size_t(t) * rows + r] = 0;
      EXPECT_EQ(first_difference(grouped, grouped_portable, rows), "") << name << " against the portable code, " << shape;
    }
  }
}

TEST(QuantKernels, InterleavingLeavesTailRowsAndOtherMatricesAsTheyWere) {
  std::mt19937 rng(8);
  const int cols = 256;
  for (DType t : kBlockTypes) {
    const size_t row_bytes = dtype_row_bytes(t, cols);
    QuantizedMatrix q = quantize_matrix(t, weight_like(19 * cols, rng), 19, cols);
    const Matrix m = q.interleaved(t, 19, cols);
    EXPECT_EQ(m.layout, Layout::Interleaved8);
    EXPECT_NE(q.interleaved_bytes, q.bytes);
    EXPECT_TRUE(std::equal(q.bytes.begin() + 16 * row_bytes, q.bytes.end(), q.interleaved_bytes.begin() + 16 * row_bytes))
        << "rows 16..18 stay as rows";
    std::vector<uint8_t> copy = q.bytes;
    Matrix small{copy.data(), t, 7, cols}, strided{copy.data(), t, 8, cols / 2, cols};
    interleave_rows8(small, copy.data());
    interleave_rows8(strided, copy.data());
    EXPECT_EQ(small.layout, Layout::Rows);
    EXPECT_EQ(strided.layout, Layout::Rows);
    EXPECT_EQ(copy, q.bytes) << "fewer than 8 rows, or rows with a stride: untouched";
  }
}

TEST(QuantKernels, RowsOfABlockTypeWidenToTheirDequantizedValues) {
  std::mt19937 rng(4);
  for (DType t : every_block_type()) {
    const QuantizedMatrix q = quantize_matrix(t, weight_like(2 * 512, rng), 2, 512);
    std::vector<float> row(512);
    to_f32(q.bytes.data() + dtype_row_bytes(t, 512), t, 512, row.data());
    EXPECT_EQ(row, std::vector<float>(q.values.begin() + 512, q.values.end())) << dtype_name(t);
  }
}

// The codebook and ternary types have no interleaved layout: the kernels read their rows as stored.
TEST(QuantKernels, CodebookMatricesStayRows) {
  std::mt19937 rng(12);
  for (DType t : kCodebookTypes) {
    QuantizedMatrix q = quantize_matrix(t, weight_like(16 * 256, rng), 16, 256);
    EXPECT_EQ(q.interleaved(t, 16, 256).layout, Layout::Rows) << dtype_name(t);
    EXPECT_EQ(q.interleaved_bytes, q.bytes) << dtype_name(t);
  }
}
