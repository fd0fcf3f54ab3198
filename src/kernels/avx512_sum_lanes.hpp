#pragma once
// The sum of a 512-bit vector's 16 float lanes in one fixed order: halves, then quarters, then
// pairs, then neighbours, lane i meeting lane i + 8, i + 4, i + 2, i + 1. That is the tree of
// GCC's _mm512_reduce_add_ps (and of the portable code's dot), so every AVX-512 kernel that ends a
// dot product here gives the same bits as the others. Spelled out in the masked forms with every
// lane set: GCC 12's unmasked shuffles and extracts (and so _mm512_reduce_add_ps) start from an
// "undefined" vector that -Wuninitialized reports inside its own headers; with a full mask they
// compile to the same instructions. Included only by files compiled with AVX-512 flags.
#include <immintrin.h>

namespace crossmoe::kernels {
namespace {

inline float sum_lanes(__m512 v) {
  constexpr __mmask16 all = 0xFFFF;
  v = _mm512_add_ps(v, _mm512_mask_shuffle_f32x4(v, all, v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_mask_shuffle_f32x4(v, all, v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  v = _mm512_add_ps(v, _mm512_mask_permute_ps(v, all, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_mask_permute_ps(v, all, v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_cvtss_f32(v);
}

}  // namespace
}  // namespace crossmoe::kernels
