// Portable kernels: one float per "vector"; the compiler vectorises what it can.
#include <cmath>
#include <cstring>

#include "kernels/matmul_impl.hpp"

namespace crossmoe::kernels {

namespace {
struct Scalar {
  using V = float;
  static constexpr int width = 1;
  static constexpr int decode_rows = 4;
  template <DType D> static constexpr int tile_rows = 4;
  template <DType D> static constexpr int tile_tokens = 4;
  static V zero() { return 0.0f; }
  static V broadcast(float a) { return a; }
  static V load(const float* p) { return *p; }
  static void store(float* p, V v) { *p = v; }
  static V fma(V a, V b, V acc) { return acc + a * b; }
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V mul(V a, V b) { return a * b; }
  static V max(V a, V b) { return a > b ? a : b; }  // as MAXPS / MINPS: b when either is NaN
  static V min(V a, V b) { return a < b ? a : b; }
  static V fused_fma(V a, V b, V c) { return std::fma(a, b, c); }
  static V pow2(V n) {  // n + 1.5 * 2^23 holds n in its low mantissa bits
    return std::bit_cast<float>((std::bit_cast<uint32_t>(n + 12582912.0f) - (0x4B400000u - 127u)) << 23);
  }
  static float fma1(float a, float b, float acc) { return acc + a * b; }
  static float sum(V v) { return v; }
  template <DType D> static V widen(const impl::Stored<D>* p) { return impl::scalar_widen<D>(*p); }
  static void widen_bf16_pair(const uint16_t* p, V& even, V& odd) {
    even = impl::scalar_widen<DType::BF16>(p[0]);
    odd = impl::scalar_widen<DType::BF16>(p[1]);
  }
};

struct QuantLaneScalar {
  static void quantize_activations(const float* x, int64_t n, int64_t group, ActivationBlock* out) {
    kernels::quantize_activations(x, n, group, out);
  }
  using Acc = float;
  static Acc zero() { return 0.0f; }
  static float sum(Acc v) { return v; }
  static float half(const uint8_t* p) { return quant::read_half(p); }
  using Scale = float;
  static Scale splat(float v) { return v; }
  static int32_t dot_q8(const int8_t* w, const int8_t* a) {
    int32_t s = 0;
    for (int i = 0; i < 32; ++i) s += int32_t(w[i]) * a[i];
    return s;
  }
  static Acc madd_q8(const int8_t* w, const int8_t* a, Scale dw, const float* da, Acc acc) {
    return acc + dw * *da * float(dot_q8(w, a));
  }
  template <DType kType, int T>
  static void small_block_sums(const uint8_t* block, const ActivationBlock* x, int64_t blocks, int32_t* sums) {
    int8_t values[32];
    quant::small_block_values<kType>(block, values);
    for (int t = 0; t < T; ++t) sums[t] = dot_q8(values, x[t * blocks].q);
  }
  // The values as they are (codebook_block_values), so the blocks' sums go unread.
  template <DType kType, int T>
  static void codebook_sums(const uint8_t* w, const ActivationBlock* x, const int16_t*, int64_t blocks, int32_t* sums) {
    int8_t q[256];
    int16_t scale[16];
    quant::codebook_block_values<kType>(w, q, scale);
    for (int t = 0; t < T; ++t) {
      int32_t sum = 0;
      for (int j = 0; j < 16; ++j) {
        int32_t dot = 0;
        for (int i = 0; i < 16; ++i) dot += int32_t(q[16 * j + i]) * x[t * blocks + j / 2].q[16 * (j % 2) + i];
        sum += scale[j] * dot;
      }
      sums[t] = sum;
    }
  }
  using Int = int32_t;
  static Int int_zero() { return 0; }
  static Int madd_q4(const uint8_t* q, const int8_t* a_lo, const int8_t* a_hi, int s_lo, int s_hi, Int acc) {
    int32_t lo = 0, hi = 0;
    for (int i = 0; i < 32; ++i) {
      lo += int32_t(q[i] & 15) * a_lo[i];
      hi += int32_t(q[i] >> 4) * a_hi[i];
    }
    return acc + s_lo * lo + s_hi * hi;
  }
  static Int madd_mins(const uint8_t* m, const int16_t* s) {
    int32_t sum = 0;
    for (int j = 0; j < 8; ++j) sum += int32_t(m[j]) * s[j];
    return sum;
  }
  static Acc madd_int(Int sums, float scale, Acc acc) { return acc + scale * float(sums); }
  template <int T>
  static void q5_k_sums(const uint8_t* w, const uint8_t* sc, const ActivationBlock* x, int64_t blocks, int32_t* sums) {
    for (int t = 0; t < T; ++t) {
      int32_t total = 0;
      for (int j = 0; j < 8; ++j) {
        int32_t sub = 0;
        for (int i = 0; i < 32; ++i) {
          const uint8_t low = w[48 + 32 * (j / 2) + i];
          const int q = (j % 2 == 0 ? low & 15 : low >> 4) | ((w[16 + i] >> j) & 1) << 4;
          sub += q * x[t * blocks + j].q[i];
        }
        total += sc[j] * sub;
      }
      sums[t] = total;
    }
  }
  template <int T, DType kType>
  static void low_bit_k_sums(const uint8_t* w, const ActivationBlock* x, const int16_t* half_sums, int64_t blocks,
                             int32_t* dots, int32_t* mins) {
    uint8_t q[256];
    int16_t scale[16], min[16];
    quant::low_bit_k_values<kType>(w, q, scale, min);
    for (int t = 0; t < T; ++t) {
      dots[t] = mins[t] = 0;
      for (int j = 0; j < 16; ++j) {
        int32_t qa = 0;
        for (int i = 0; i < 16; ++i) qa += int32_t(q[16 * j + i]) * x[t * blocks + j / 2].q[16 * (j % 2) + i];
        dots[t] += scale[j] * qa;
        mins[t] += min[j] * half_sums[2 * t * blocks + j];
      }
    }
  }
  template <int T>
  static void q6_k_sums(const uint8_t* w, const ActivationBlock* x, int64_t blocks, int32_t* sums) {
    const auto* sc = reinterpret_cast<const int8_t*>(w + 192);
    for (int t = 0; t < T; ++t) {
      int32_t total = 0;
      for (int j = 0; j < 16; ++j) {
        int32_t sub = 0;
        for (int i = 0; i < 16; ++i) {
          const int v = 16 * j + i, half = v / 128, k = v % 128 / 32, l = v % 32;
          const uint8_t low = w[64 * half + 32 * (k % 2) + l];
          const int q = (k < 2 ? low & 15 : low >> 4) | ((w[128 + 32 * half + l] >> (2 * k)) & 3) << 4;
          sub += (q - 32) * x[t * blocks + v / 32].q[v % 32];
        }
        total += sc[j] * sub;
      }
      sums[t] = total;
    }
  }

  // Interleaved groups: each block index's 8 blocks put back in rows (quant::deinterleave8_block),
  // then the products of quant_matmul_impl.hpp's contract, row by row.
  static constexpr int x8_tokens = 4;  // tokens per interleaved tile
  // Q8_0, or Q4_0 / Q5_0 / Q4_1 / Q5_1 / IQ4_NL / MXFP4 (each block's values unpacked to Q8_0's int8 values first;
  // Q4_1's and Q5_1's q as stored, then small_block_tile's second step for m).
  template <int T, DType D = DType::Q8_0>
  static void q8_0_x8(const uint8_t* g, const ActivationBlock* x, int64_t blocks, float* y, int64_t ldy) {
    constexpr size_t kBlock = quant::small_block_bytes(D);
    float acc[T][8] = {};
    uint8_t plain[8 * kBlock];
    for (int64_t b = 0; b < blocks; ++b) {
      quant::deinterleave8_block(D, g + b * 8 * kBlock, plain);
      for (int r = 0; r < 8; ++r) {
        const float d = quant::small_block_step<D>(plain + kBlock * r);
        int8_t values[32];
        if constexpr (D != DType::Q8_0) quant::small_block_values<D>(plain + kBlock * r, values);
        else std::memcpy(values, plain + kBlock * r + 2, 32);
        const int8_t* q = values;
        for (int t = 0; t < T; ++t) {
          const ActivationBlock& a = x[t * blocks + b];
          int32_t s = 0;
          for (int i = 0; i < 32; ++i) s += int32_t(q[i]) * a.q[i];
          acc[t][r] = std::fma(float(s), d * a.d, acc[t][r]);
          if constexpr (quant::has_block_min(D))
            acc[t][r] = std::fma(float(a.sum), quant::read_half(plain + kBlock * r + 2) * a.d, acc[t][r]);
        }
      }
    }
    for (int t = 0; t < T; ++t)
      for (int r = 0; r < 8; ++r) y[t * ldy + r] = acc[t][r];
  }
  // IQ4_XS: each sub-block's values looked up (as an IQ4_NL block's, whose nibbles lie after a
  // 2-byte d), its exact dot, then iq4_xs_tile's float step.
  template <int T>
  static void iq4_xs_x8(const uint8_t* g, const ActivationBlock* x, int64_t blocks, float* y, int64_t ldy) {
    float acc[T][8] = {};
    uint8_t plain[8 * 136];
    for (int64_t b = 0; b < blocks; b += 8) {
      quant::deinterleave8_block(DType::IQ4_XS, g + b / 8 * 8 * 136, plain);
      for (int r = 0; r < 8; ++r)
        for (int j = 0; j < 8; ++j) {
          const uint8_t* block = plain + 136 * r;
          int8_t values[32];
          quant::small_block_values<DType::IQ4_NL>(block + 6 + 16 * j, values);
          const float step = quant::iq4_xs_step(block, j);
          for (int t = 0; t < T; ++t) {
            const ActivationBlock& a = x[t * blocks + b + j];
            acc[t][r] = std::fma(float(dot_q8(values, a.q)), step * a.d, acc[t][r]);
          }
        }
    }
    for (int t = 0; t < T; ++t)
      for (int r = 0; r < 8; ++r) y[t * ldy + r] = acc[t][r];
  }
  // Q4_K, or Q5_K (its integer q sums: q5_k_sums's on each row's super-block as stored).
  template <int T, DType D = DType::Q4_K>
  static void q4_k_x8(const uint8_t* g, const ActivationBlock* x, const int16_t* sums, int64_t blocks, float* y,
                      int64_t ldy) {
    constexpr size_t kBlock = D == DType::Q5_K ? 176 : 144;
    float acc[T][8] = {};
    uint8_t plain[8 * kBlock];
    for (int64_t b = 0; b < blocks; b += 8) {
      quant::deinterleave8_block(D, g + b / 8 * 8 * kBlock, plain);
      for (int r = 0; r < 8; ++r) {
        const uint8_t* block = plain + kBlock * r;
        const float d = quant::read_half(block), dmin = quant::read_half(block + 2);
        uint8_t sc[8], m[8];
        quant::q4_k_scales_mins(block + 4, sc, m);
        int32_t dots[T] = {};
        if constexpr (D == DType::Q5_K) q5_k_sums<T>(block, sc, x + b, blocks, dots);
        for (int t = 0; t < T; ++t) {
          const ActivationBlock* a = x + t * blocks + b;
          int32_t mins = 0;
          if constexpr (D == DType::Q4_K)
            for (int p = 0; p < 4; ++p)
              dots[t] = madd_q4(block + 16 + 32 * p, a[2 * p].q, a[2 * p + 1].q, sc[2 * p], sc[2 * p + 1], dots[t]);
          for (int j = 0; j < 8; ++j) mins += int32_t(m[j]) * sums[t * blocks + b + j];
          acc[t][r] = std::fma(float(dots[t]), d * a->d, acc[t][r]);
          acc[t][r] = std::fma(-float(mins), dmin * a->d, acc[t][r]);
        }
      }
    }
    for (int t = 0; t < T; ++t)
      for (int r = 0; r < 8; ++r) y[t * ldy + r] = acc[t][r];
  }
  // Q6_K: each row's super-block as stored, then q6_k_sums (no offsets: it subtracts the 32 itself).
  // Q3_K: the same with its exact sum_j (sc[j] - 32) sum_i (q_i - 4) a_i per row.
  static constexpr int q6_k_tokens = 4;
  template <int T>
  static void q3_k_sums(const uint8_t* w, const ActivationBlock* x, int64_t blocks, int32_t* sums) {
    uint8_t q[256];
    int16_t scale[16], unused[16];
    quant::low_bit_k_values<DType::Q3_K>(w, q, scale, unused);
    for (int t = 0; t < T; ++t) {
      sums[t] = 0;
      for (int j = 0; j < 16; ++j) {
        int32_t sub = 0;
        for (int i = 0; i < 16; ++i) sub += (int32_t(q[16 * j + i]) - 4) * x[t * blocks + j / 2].q[16 * (j % 2) + i];
        sums[t] += scale[j] * sub;
      }
    }
  }
  // Q2_K: low_bit_k_sums's two sums per row and its two float steps.
  template <int T, DType D = DType::Q6_K>
  static void q6_k_x8(const uint8_t* g, const ActivationBlock* x, const int32_t* /*offsets*/,
                      const int16_t* half_sums, int64_t blocks, float* y, int64_t ldy) {
    constexpr int kBlock = D == DType::Q2_K ? 84 : D == DType::Q3_K ? 110 : 210;
    constexpr int kSteps = D == DType::Q2_K ? 80 : D == DType::Q3_K ? 108 : 208;
    float acc[T][8] = {};
    uint8_t plain[8 * kBlock];
    for (int64_t b = 0; b < blocks; b += 8) {
      quant::deinterleave8_block(D, g + b / 8 * 8 * kBlock, plain);
      for (int r = 0; r < 8; ++r) {
        int32_t sums[T], mins[T];
        if constexpr (D == DType::Q2_K) low_bit_k_sums<T, D>(plain + kBlock * r, x + b, half_sums + 2 * b, blocks, sums, mins);
        else if constexpr (D == DType::Q3_K) q3_k_sums<T>(plain + kBlock * r, x + b, blocks, sums);
        else q6_k_sums<T>(plain + kBlock * r, x + b, blocks, sums);
        const float d = quant::read_half(plain + kBlock * r + kSteps);
        for (int t = 0; t < T; ++t) acc[t][r] = std::fma(float(sums[t]), d * x[t * blocks + b].d, acc[t][r]);
        if constexpr (D == DType::Q2_K) {
          const float dmin = quant::read_half(plain + kBlock * r + 82);
          for (int t = 0; t < T; ++t) acc[t][r] = std::fma(float(mins[t]), -(dmin * x[t * blocks + b].d), acc[t][r]);
        }
      }
    }
    for (int t = 0; t < T; ++t)
      for (int r = 0; r < 8; ++r) y[t * ldy + r] = acc[t][r];
  }
};
}  // namespace

const KernelTable& generic_kernels() {
  static const KernelTable table = impl::make_table<Scalar, QuantLaneScalar>(Isa::Generic);
  return table;
}

}  // namespace crossmoe::kernels
