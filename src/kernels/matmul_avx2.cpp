// AVX2 + FMA + F16C kernels: 8 floats per vector. Compiled with -mavx2 -mfma -mf16c only.
#include <immintrin.h>

#include "kernels/matmul_impl.hpp"
#include "kernels/quant_lane_avx2.hpp"

namespace crossmoe::kernels {

namespace {
struct Avx2 {
  using V = __m256;
  static constexpr int width = 8;
  // Of the 16 registers, bf16 tiles of 4 rows x 2 tokens hold 8 accumulators and one row's even
  // and odd weight vectors (the token vectors are the FMAs' memory operands). 2 rows x 6 tokens
  // (12 accumulators) measured 0.78x on a 512-token prefill and no faster in a batch-16 decode
  // step on a quiet machine (docs/benchmarks.md). f32 and f16: 4 rows x 3 tokens, the 3 token
  // vectors in registers, one weight vector at a time.
  static constexpr int decode_rows = 4;
  template <DType D> static constexpr int tile_rows = 4;
  template <DType D> static constexpr int tile_tokens = D == DType::BF16 ? 2 : 3;
  static V zero() { return _mm256_setzero_ps(); }
  static V broadcast(float a) { return _mm256_set1_ps(a); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V fma(V a, V b, V acc) { return _mm256_fmadd_ps(a, b, acc); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V fused_fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V pow2(V n) {  // n + 1.5 * 2^23 holds n in its low mantissa bits
    const __m256i bits = _mm256_castps_si256(_mm256_add_ps(n, _mm256_set1_ps(12582912.0f)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_sub_epi32(bits, _mm256_set1_epi32(0x4B400000 - 127)), 23));
  }
  static float fma1(float a, float b, float acc) {
    return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(acc)));
  }
  static float sum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  template <DType D> static V widen(const impl::Stored<D>* p) {
    if constexpr (D == DType::F32) {
      return _mm256_loadu_ps(p);
    } else {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      if constexpr (D == DType::BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
      else
        return _mm256_cvtph_ps(h);
    }
  }
  static void widen_bf16_pair(const uint16_t* p, V& even, V& odd) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    even = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
    odd = _mm256_castsi256_ps(_mm256_and_si256(raw, _mm256_set1_epi32(int(0xFFFF0000u))));
  }
};
}  // namespace

const KernelTable& avx2_kernels() {
  static const KernelTable table = impl::make_table<Avx2, QuantLaneAvx2>(Isa::Avx2);
  return table;
}

}  // namespace crossmoe::kernels
