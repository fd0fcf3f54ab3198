// AVX-512 (F, BW, VL, DQ) kernels: 16 floats per vector. Compiled with AVX-512 flags only.
#include <immintrin.h>

#include "kernels/avx512_sum_lanes.hpp"
#include "kernels/matmul_impl.hpp"
#include "kernels/quant_lane_avx2.hpp"

namespace crossmoe::kernels {

namespace {
struct Avx512 {
  using V = __m512;
  static constexpr int width = 16;
  static constexpr int decode_rows = 4;
  template <DType D> static constexpr int tile_rows = 4;  // 4 x 4: 16 accumulators of the 32 registers
  template <DType D> static constexpr int tile_tokens = 4;
  static V zero() { return _mm512_setzero_ps(); }
  static V broadcast(float a) { return _mm512_set1_ps(a); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V fma(V a, V b, V acc) { return _mm512_fmadd_ps(a, b, acc); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  // (max, min, the shifts and f16's widening in their masked forms with every lane selected: the
  // same instructions; GCC 12's unmasked ones pass an undefined vector that -Wmaybe-uninitialized
  // reports.)
  static V max(V a, V b) { return _mm512_mask_max_ps(a, 0xFFFF, a, b); }
  static V min(V a, V b) { return _mm512_mask_min_ps(a, 0xFFFF, a, b); }
  static V fused_fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V pow2(V n) {  // n + 1.5 * 2^23 holds n in its low mantissa bits
    const __m512i bits = _mm512_castps_si512(_mm512_add_ps(n, _mm512_set1_ps(12582912.0f)));
    const __m512i biased = _mm512_sub_epi32(bits, _mm512_set1_epi32(0x4B400000 - 127));
    return _mm512_castsi512_ps(_mm512_mask_slli_epi32(biased, 0xFFFF, biased, 23));
  }
  static float fma1(float a, float b, float acc) {
    return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(acc)));
  }
  static float sum(V v) { return sum_lanes(v); }
  template <DType D> static V widen(const impl::Stored<D>* p) {
    if constexpr (D == DType::F32) {
      return _mm512_loadu_ps(p);
    } else {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      if constexpr (D == DType::BF16) {
        const __m512i wide = _mm512_cvtepu16_epi32(h);
        return _mm512_castsi512_ps(_mm512_mask_slli_epi32(wide, 0xFFFF, wide, 16));
      } else {
        return _mm512_maskz_cvtph_ps(0xFFFF, h);
      }
    }
  }
  // One load for both halves: GCC folds the load into the shift and into the and, two loads of
  // the same 64 bytes, and the 4 x 4 tile's loop (32 FMAs, 8 loads of x) is bound by its loads
  // (16 with both folded, 12 with one; 1.04-1.16x per CPU second on matrices past L2). The empty
  // asm hands the register over as an opaque value, so the load cannot be repeated.
  static void widen_bf16_pair(const uint16_t* p, V& even, V& odd) {
    __m512i raw = _mm512_loadu_si512(p);
    asm("" : "+v"(raw));
    even = _mm512_castsi512_ps(_mm512_mask_slli_epi32(raw, 0xFFFF, raw, 16));
    odd = _mm512_castsi512_ps(_mm512_and_si512(raw, _mm512_set1_epi32(int(0xFFFF0000u))));
  }
};
}  // namespace

const KernelTable& avx512_kernels() {
  static const KernelTable table = impl::make_table<Avx512, QuantLaneAvx2>(Isa::Avx512);
  return table;
}

}  // namespace crossmoe::kernels
