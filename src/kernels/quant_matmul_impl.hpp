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

template <class L>
float dot_q8_0(const uint8_t* w, const ActivationBlock* a, int64_t blocks) {
  typename L::Acc acc = L::zero();
  for (int64_t b = 0; b < blocks; ++b, w += 34)
    acc = L::madd_q8(reinterpret_cast<const int8_t*>(w + 2), a[b].q, L::half(w) * a[b].d, acc);
  return L::sum(acc);
}

// Per sub-block j: d * sc[j] * a.d * sum(q * a.q) - dmin * m[j] * a.d * a.sum.
template <class L>
float dot_q4_k(const uint8_t* w, const ActivationBlock* a, int64_t superblocks) {
  typename L::Acc acc = L::zero();
  float mins = 0.0f;
  for (int64_t b = 0; b < superblocks; ++b, w += 144, a += 8) {
    const float d = L::half(w), dmin = L::half(w + 2);
    float step[8], min_term = 0.0f;
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      quant::q4_k_scale_min(w + 4, j, &sc, &m);
      step[j] = d * float(sc) * a[j].d;
      min_term += float(m * a[j].sum) * a[j].d;
    }
    mins += dmin * min_term;
    for (int p = 0; p < 4; ++p)
      acc = L::madd_q4(w + 16 + 32 * p, a[2 * p].q, a[2 * p + 1].q, step[2 * p], step[2 * p + 1], acc);
  }
  return L::sum(acc) - mins;
}

// A few tokens per pass over the rows: the rows stay in L1 while each token reads them.
template <class L>
void quant_matmul_rows(const Matrix& m, const ActivationBlock* x, int tokens, float* y, int64_t r0, int64_t r1) {
  constexpr int kTokens = 4;
  const int64_t blocks = m.cols / 32;
  const size_t row_bytes = dtype_row_bytes(m.dtype, m.row_stride());
  const auto* base = static_cast<const uint8_t*>(m.data);
  for (int t0 = 0; t0 < tokens; t0 += kTokens) {
    const int t1 = std::min(tokens, t0 + kTokens);
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* w = base + size_t(r) * row_bytes;
      for (int t = t0; t < t1; ++t)
        y[t * m.rows + r] = m.dtype == DType::Q8_0 ? dot_q8_0<L>(w, x + t * blocks, blocks)
                                                   : dot_q4_k<L>(w, x + t * blocks, blocks / 8);
    }
  }
}

}  // namespace
}  // namespace quant_impl
}  // namespace crossmoe::kernels
