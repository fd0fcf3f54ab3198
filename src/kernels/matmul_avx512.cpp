// AVX-512 (F, BW, VL, DQ) kernels: 16 floats per vector. Compiled with AVX-512 flags only.
#include <immintrin.h>

#include <type_traits>

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
  static float fma1(float a, float b, float acc) {
    return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(acc)));
  }
  static float sum(V v) { return _mm512_reduce_add_ps(v); }
  // sum(acc[k]) for 16 accumulators at once, in _mm512_reduce_add_ps's tree (lanes i + 8 of the
  // halves, then i + 4, i + 2, i + 1), so each sum is the same bits as alone: pairs of
  // accumulators share each step's vector, each step halving the vectors. (The masked forms with
  // every lane selected are the plain instructions; GCC 12's unmasked ones pass an undefined
  // vector that -Wmaybe-uninitialized reports.)
  static void sum16(const V* acc, float* out) {
    constexpr __mmask16 all = 0xFFFF;
    const auto lanes128 = [](V a, V b, auto lo, auto hi) {  // a's and b's 128-bit lanes lo + hi
      return _mm512_add_ps(_mm512_mask_shuffle_f32x4(a, all, a, b, decltype(lo)::value),
                           _mm512_mask_shuffle_f32x4(a, all, a, b, decltype(hi)::value));
    };
    V b[8], c[4], d[2];
    for (int k = 0; k < 8; ++k)  // lanes i + (i + 8): accumulator 2k in lanes 0-7, 2k + 1 in 8-15
      b[k] = lanes128(acc[2 * k], acc[2 * k + 1], std::integral_constant<int, 0x44>(), std::integral_constant<int, 0xEE>());
    for (int k = 0; k < 4; ++k)  // i + (i + 4): accumulator 4k + m in 128-bit lane m
      c[k] = lanes128(b[2 * k], b[2 * k + 1], std::integral_constant<int, 0x88>(), std::integral_constant<int, 0xDD>());
    for (int k = 0; k < 2; ++k) {  // i + (i + 2): in 128-bit lane m, accumulator 8k + m, then 8k + 4 + m
      const __m512d lo = _mm512_castps_pd(c[2 * k]), hi = _mm512_castps_pd(c[2 * k + 1]);
      d[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_mask_unpacklo_pd(lo, 0xFF, lo, hi)),
                           _mm512_castpd_ps(_mm512_mask_unpackhi_pd(lo, 0xFF, lo, hi)));
    }
    // i + (i + 1): element 4m + r holds accumulator m + 4r; put accumulator k at element k.
    const V e = _mm512_add_ps(_mm512_mask_shuffle_ps(d[0], all, d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_mask_shuffle_ps(d[0], all, d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_storeu_ps(out, _mm512_mask_permutexvar_ps(e, all, order, e));
  }
  template <DType D> static V widen(const impl::Stored<D>* p) {
    if constexpr (D == DType::F32) {
      return _mm512_loadu_ps(p);
    } else {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      if constexpr (D == DType::BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
      else
        return _mm512_cvtph_ps(h);
    }
  }
  static void widen_bf16_pair(const uint16_t* p, V& even, V& odd) {
    const __m512i raw = _mm512_loadu_si512(p);
    even = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
    odd = _mm512_castsi512_ps(_mm512_and_si512(raw, _mm512_set1_epi32(int(0xFFFF0000u))));
  }
};
}  // namespace

const KernelTable& avx512_kernels() {
  static const KernelTable table = impl::make_table<Avx512, QuantLaneAvx2>(Isa::Avx512);
  return table;
}

}  // namespace crossmoe::kernels
