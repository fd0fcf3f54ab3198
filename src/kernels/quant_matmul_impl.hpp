#pragma once
// Products of Q8_0 / Q4_K weight rows with quantized activations, written once over an integer
// "lane" type L. Each ISA's .cpp file includes this with its own L, compiled with its flags.
//   L::Acc                      float accumulators
//   L::zero(), L::sum(Acc)
//   L::half(const uint8_t*)     an fp16 field as float
//   L::madd_q8(w, a, scale, acc)             acc + scale * sum_i w[i] * a[i] over 32 int8 pairs
//   L::madd_q4(q, a_lo, a_hi, s_lo, s_hi, acc)
//       32 bytes of nibbles: acc + s_lo * sum_i (q[i] & 15) * a_lo[i] + s_hi * sum_i (q[i] >> 4) * a_hi[i]
// Integer sums are exact in every lane type, so ISAs differ only in the order of float additions.
#include <algorithm>

#include "kernels/kernels.hpp"
#include "util/quant.hpp"

// Internal linkage on purpose (see matmul_impl.hpp).
namespace crossmoe::kernels {
namespace quant_impl {
namespace {

// R rows x T tokens at a time: every weight block loaded (and its magnitudes, nibbles, scales
// unpacked) serves T tokens, every activation block R rows. Each (row, token) pair runs the same
// operations in the same order whatever the tile, so a token gets the same bits alone (decode)
// or beside others (prefill, batches). Per Q4_K sub-block j the product is
// d * sc[j] * a.d * sum(q * a.q) - dmin * m[j] * a.d * a.sum, the min terms summed apart.
template <class L, int R, int T>
void q8_0_tile(const uint8_t* w, size_t row_bytes, const ActivationBlock* x, int64_t blocks, float* y, int64_t ldy) {
  typename L::Acc acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = L::zero();
  for (int64_t b = 0; b < blocks; ++b)
    for (int r = 0; r < R; ++r) {
      const uint8_t* wb = w + r * row_bytes + b * 34;
      const float dw = L::half(wb);
      for (int t = 0; t < T; ++t) {
        const ActivationBlock& a = x[t * blocks + b];
        acc[r][t] = L::madd_q8(reinterpret_cast<const int8_t*>(wb + 2), a.q, dw * a.d, acc[r][t]);
      }
    }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * ldy + r] = L::sum(acc[r][t]);
}

template <class L, int R, int T>
void q4_k_tile(const uint8_t* w, size_t row_bytes, const ActivationBlock* x, int64_t blocks, float* y, int64_t ldy) {
  typename L::Acc acc[R][T];
  float mins[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = L::zero(), mins[r][t] = 0.0f;
  for (int64_t b = 0; b < blocks; b += 8)
    for (int r = 0; r < R; ++r) {
      const uint8_t* wb = w + r * row_bytes + b / 8 * 144;
      const float d = L::half(wb), dmin = L::half(wb + 2);
      float d_sc[8];
      int m[8];
      for (int j = 0; j < 8; ++j) {
        int sc;
        quant::q4_k_scale_min(wb + 4, j, &sc, &m[j]);
        d_sc[j] = d * float(sc);
      }
      for (int t = 0; t < T; ++t) {
        const ActivationBlock* a = x + t * blocks + b;
        float step[8], min_term = 0.0f;
        for (int j = 0; j < 8; ++j) {
          step[j] = d_sc[j] * a[j].d;
          min_term += float(m[j] * a[j].sum) * a[j].d;
        }
        mins[r][t] += dmin * min_term;
        for (int p = 0; p < 4; ++p)
          acc[r][t] = L::madd_q4(wb + 16 + 32 * p, a[2 * p].q, a[2 * p + 1].q, step[2 * p], step[2 * p + 1], acc[r][t]);
      }
    }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * ldy + r] = L::sum(acc[r][t]) - mins[r][t];
}

template <class L, int T>
void quant_rows_for_tokens(const Matrix& m, const ActivationBlock* x, float* y, int64_t r0, int64_t r1) {
  // One token (decode) streams its rows one at a time: the rows' data arrive from memory anyway,
  // and a single row's sums keep the Q4_K scale unpacking in registers.
  constexpr int R = T == 1 ? 1 : 4;
  const int64_t blocks = m.cols / 32;
  const size_t row_bytes = dtype_row_bytes(m.dtype, m.row_stride());
  const auto* base = static_cast<const uint8_t*>(m.data);
  const bool q8 = m.dtype == DType::Q8_0;
  int64_t r = r0;
  for (; r + R <= r1; r += R) {
    if (q8) q8_0_tile<L, R, T>(base + size_t(r) * row_bytes, row_bytes, x, blocks, y + r, m.rows);
    else q4_k_tile<L, R, T>(base + size_t(r) * row_bytes, row_bytes, x, blocks, y + r, m.rows);
  }
  for (; r < r1; ++r) {
    if (q8) q8_0_tile<L, 1, T>(base + size_t(r) * row_bytes, row_bytes, x, blocks, y + r, m.rows);
    else q4_k_tile<L, 1, T>(base + size_t(r) * row_bytes, row_bytes, x, blocks, y + r, m.rows);
  }
}

// Token pairs take turns over the rows, which stay in cache while the pairs read them.
template <class L>
void quant_matmul_rows(const Matrix& m, const ActivationBlock* x, int tokens, float* y, int64_t r0, int64_t r1) {
  const int64_t blocks = m.cols / 32;
  int t = 0;
  for (; t + 2 <= tokens; t += 2) quant_rows_for_tokens<L, 2>(m, x + t * blocks, y + t * m.rows, r0, r1);
  for (; t < tokens; ++t) quant_rows_for_tokens<L, 1>(m, x + t * blocks, y + t * m.rows, r0, r1);
}

}  // namespace
}  // namespace quant_impl
}  // namespace crossmoe::kernels
