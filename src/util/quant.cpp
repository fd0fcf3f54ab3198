#include "util/quant.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "util/error.hpp"

namespace crossmoe::quant {

namespace {

constexpr float kHalfMax = 65504.0f;

// The smallest fp16 value >= v (v >= 0 and finite, at most 65504): a scale rounded up keeps
// every value of its block on the grid.
uint16_t half_at_least(float v) {
  uint16_t h = f32_to_f16(v);
  if (f16_to_f32(h) < v) ++h;  // positive halves order like their bit patterns
  return h;
}

// The largest fp16 value <= v (|v| at most 65504): a min rounded down keeps its block on the grid.
uint16_t half_at_most(float v) {
  if (v < 0) return half_at_least(-v) ^ 0x8000;
  uint16_t h = f32_to_f16(v);
  if (f16_to_f32(h) > v) --h;
  return h;
}

void write_half(uint8_t* p, uint16_t h) { std::memcpy(p, &h, 2); }

void check_finite(const float* x, int64_t n, const char* type) {
  for (int64_t i = 0; i < n; ++i)
    require(std::isfinite(x[i]), std::string("cannot quantize a value that is not finite to ") + type);
}

// Q4_0 (top 7) and Q5_0 (top 15): Q8_0's grid with fewer steps, q stored with Q8_0's offset
// removed as small_block_values reads it back.
void quantize_small_block(DType type, const float* x, uint8_t* block) {
  const int top = type == DType::Q4_0 ? 7 : 15;
  float amax = 0.0f;
  for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
  require(amax / float(top) <= kHalfMax,
          "value " + std::to_string(amax) + " is too large for " + dtype_name(type) + "'s fp16 scale");
  const uint16_t dh = half_at_least(amax / float(top));
  write_half(block, dh);
  const float d = f16_to_f32(dh);
  int q[32];
  for (int i = 0; i < 32; ++i)
    q[i] = top + 1 + (d == 0.0f ? 0 : int(std::clamp(std::nearbyint(x[i] / d), -float(top), float(top))));
  uint8_t* qs = block + (type == DType::Q4_0 ? 2 : 6);
  for (int i = 0; i < 16; ++i) qs[i] = uint8_t((q[i] & 15) | (q[i + 16] & 15) << 4);
  if (type == DType::Q5_0) {
    uint32_t qh = 0;
    for (int i = 0; i < 32; ++i) qh |= uint32_t(q[i] >> 4) << i;
    std::memcpy(block + 2, &qh, 4);
  }
}

// Q4_1 (15 steps) and Q5_1 (31): the grid [m, m + top * d] from the block's min, rounded down,
// to its max, the step rounded up.
void quantize_small_block_with_min(DType type, const float* x, uint8_t* block) {
  const int top = type == DType::Q4_1 ? 15 : 31;
  const auto [lo, hi] = std::minmax_element(x, x + 32);
  require(std::fabs(*lo) <= kHalfMax && (*hi - *lo) / float(top) <= kHalfMax,
          "values " + std::to_string(*lo) + " .. " + std::to_string(*hi) + " are too large for " + dtype_name(type) + "'s fp16 fields");
  const uint16_t mh = half_at_most(*lo);
  const float m = f16_to_f32(mh);
  const uint16_t dh = half_at_least((*hi - m) / float(top));
  write_half(block, dh);
  write_half(block + 2, mh);
  const float d = f16_to_f32(dh);
  int q[32];
  for (int i = 0; i < 32; ++i) q[i] = d == 0.0f ? 0 : int(std::clamp(std::nearbyint((x[i] - m) / d), 0.0f, float(top)));
  uint8_t* qs = block + (type == DType::Q4_1 ? 4 : 8);
  for (int i = 0; i < 16; ++i) qs[i] = uint8_t((q[i] & 15) | (q[i + 16] & 15) << 4);
  if (type == DType::Q5_1) {
    uint32_t qh = 0;
    for (int i = 0; i < 32; ++i) qh |= uint32_t(q[i] >> 4) << i;
    std::memcpy(block + 4, &qh, 4);
  }
}

// The value of 32 with the largest magnitude (IQ4_NL's and IQ4_XS's sub-blocks put it on the
// table's -127).
float extreme_value(const float* x) {
  return *std::max_element(x, x + 32, [](float a, float b) { return std::fabs(a) < std::fabs(b); });
}

// 32 values' indices into kIq4NlValues, each the entry nearest x / step, as 16 bytes of nibbles
// (value i low in byte i, value i + 16 high); a step of 0 gives every value 0.
void iq4_nibbles(const float* x, float step, uint8_t* qs) {
  uint8_t q[32];
  for (int i = 0; i < 32; ++i) {
    q[i] = 8;  // the entry nearest 0, for a step of 0
    if (step == 0.0f) continue;
    const float target = x[i] / step;
    for (uint8_t k = 0; k < 16; ++k)
      if (std::fabs(target - float(kIq4NlValues[k])) < std::fabs(target - float(kIq4NlValues[q[i]]))) q[i] = k;
  }
  for (int i = 0; i < 16; ++i) qs[i] = uint8_t(q[i] | q[i + 16] << 4);
}

// IQ4_NL: the block's largest magnitude on the table's -127 (d negative when that value is
// positive), then each value's nearest table entry.
void quantize_iq4_nl(const float* x, uint8_t* block) {
  const float extreme = extreme_value(x);
  require(std::fabs(extreme) / 127.0f <= kHalfMax,
          "value " + std::to_string(extreme) + " is too large for IQ4_NL's fp16 scale");
  const uint16_t dh = uint16_t(half_at_least(std::fabs(extreme) / 127.0f) | (extreme > 0.0f ? 0x8000 : 0));
  write_half(block, dh);
  iq4_nibbles(x, f16_to_f32(dh), block + 2);
}

// MXFP4, as ggml's quantize_row_mxfp4_ref (see quant.hpp): e from the largest magnitude's binary
// exponent, each value's nearest table entry by the same float comparisons, the first on a tie.
void quantize_mxfp4(const float* x, uint8_t* block) {
  float amax = 0.0f;
  for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float exponent = amax > 0.0f ? std::floor(std::log2(amax)) - 2.0f + 127.0f : 0.0f;
  const uint8_t e = uint8_t(std::clamp(exponent, 0.0f, 254.0f));
  const float step = mxfp4_step(e);
  const auto nearest = [&](float v) {
    uint8_t best = 0;
    for (uint8_t k = 1; k < 16; ++k)
      if (std::fabs(float(kMxfp4Values[k]) * step - v) < std::fabs(float(kMxfp4Values[best]) * step - v)) best = k;
    return best;
  };
  block[0] = e;
  for (int i = 0; i < 16; ++i) block[1 + i] = uint8_t(nearest(x[i]) | nearest(x[i + 16]) << 4);
}

// IQ4_XS: each sub-block's IQ4_NL step s_j = -x_m / 127, d the largest |s_j| over 31 steps (rounded
// up), ls - 32 = s_j's sign times the steps of d that reach |s_j|.
void quantize_iq4_xs(const float* x, uint8_t* block) {
  float ideal[8], largest = 0.0f;
  for (int j = 0; j < 8; ++j) {
    ideal[j] = -extreme_value(x + 32 * j) / 127.0f;
    largest = std::max(largest, std::fabs(ideal[j]));
  }
  require(largest / 31.0f <= kHalfMax, "value " + std::to_string(127.0f * largest) + " is too large for IQ4_XS's fp16 scale");
  const uint16_t dh = half_at_least(largest / 31.0f);
  write_half(block, dh);
  const float d = f16_to_f32(dh);
  uint16_t scales_h = 0;
  std::fill_n(block + 4, 4, 0);
  for (int j = 0; j < 8; ++j) {
    const int steps = d == 0.0f ? 0 : std::min(31, int(std::ceil(std::fabs(ideal[j]) / d)));
    const int ls = 32 + (ideal[j] < 0.0f ? -steps : steps);
    block[4 + j / 2] |= uint8_t((ls & 15) << (4 * (j % 2)));
    scales_h |= uint16_t((ls >> 4) << (2 * j));
  }
  std::memcpy(block + 2, &scales_h, 2);
  for (int j = 0; j < 8; ++j) iq4_nibbles(x + 32 * j, iq4_xs_step(block, j), block + 8 + 16 * j);
}

void quantize_q8_0(const float* x, uint8_t* block) {
  float amax = 0.0f;
  for (int i = 0; i < kQ8_0Block; ++i) amax = std::max(amax, std::fabs(x[i]));
  require(amax / 127.0f <= kHalfMax, "value " + std::to_string(amax) + " is too large for Q8_0's fp16 scale");
  const uint16_t dh = half_at_least(amax / 127.0f);
  write_half(block, dh);
  const float d = f16_to_f32(dh);
  auto* q = reinterpret_cast<int8_t*>(block + 2);
  for (int i = 0; i < kQ8_0Block; ++i)
    q[i] = d == 0.0f ? 0 : int8_t(std::clamp(std::nearbyint(x[i] / d), -127.0f, 127.0f));
}

// The affine k-quant grid of Q4_K and Q5_K (8 sub-blocks of 32, 6-bit scales and mins) and of
// Q2_K (16 sub-blocks of 16, 4-bit ones): each value's q (0..top) written to q, and d, dmin and the
// integer scales and mins returned. Mins first, rounded up, so that -dmin * m[j] <= min(x_j); then
// each scale is the step that reaches max(x_j) from there in `top` steps, rounded up.
struct AffineGrid {
  uint16_t d = 0, dmin = 0;
  int scales[16] = {}, mins[16] = {};
};
AffineGrid quantize_affine_k(const float* x, int sub_block, int factor_max, int top, const char* type, uint8_t* q) {
  const int subs = 256 / sub_block;
  float high[16], low[16];  // per sub-block: max(x) and -min(0, min(x)), both >= 0
  float max_low = 0.0f;
  for (int j = 0; j < subs; ++j) {
    const auto [lo, hi] = std::minmax_element(x + j * sub_block, x + (j + 1) * sub_block);
    high[j] = *hi;
    low[j] = std::max(0.0f, -*lo);
    max_low = std::max(max_low, low[j]);
  }
  require(max_low / float(factor_max) <= kHalfMax,
          "value -" + std::to_string(max_low) + " is too large for " + type + "'s fp16 min");
  AffineGrid grid;
  grid.dmin = half_at_least(max_low / float(factor_max));
  const float dmin = f16_to_f32(grid.dmin);
  float offset[16], step[16], max_step = 0.0f;
  for (int j = 0; j < subs; ++j) {
    grid.mins[j] = dmin == 0.0f ? 0 : std::min(factor_max, int(std::ceil(low[j] / dmin)));
    offset[j] = dmin * float(grid.mins[j]);
    step[j] = std::max(0.0f, (high[j] + offset[j]) / float(top));
    max_step = std::max(max_step, step[j]);
  }
  require(max_step / float(factor_max) <= kHalfMax, "values spanning " + std::to_string(float(top) * max_step) +
                                                        " are too large for " + type + "'s fp16 scale");
  grid.d = half_at_least(max_step / float(factor_max));
  const float d = f16_to_f32(grid.d);
  for (int j = 0; j < subs; ++j) grid.scales[j] = d == 0.0f ? 0 : std::min(factor_max, int(std::ceil(step[j] / d)));
  for (int j = 0; j < subs; ++j) {
    // The same products the dequantization forms.
    const float s = d * float(grid.scales[j]), m = dmin * float(grid.mins[j]);
    for (int i = 0; i < sub_block; ++i) {
      const float v = x[j * sub_block + i];
      q[j * sub_block + i] = uint8_t(s == 0.0f ? 0 : int(std::clamp(std::nearbyint((v + m) / s), 0.0f, float(top))));
    }
  }
  return grid;
}

// Q4_K's and Q5_K's first 16 bytes: d, dmin, the packed scales and mins.
void write_affine_k_header(const AffineGrid& grid, uint8_t* block) {
  write_half(block, grid.d);
  write_half(block + 2, grid.dmin);
  q4_k_pack_scales_mins(grid.scales, grid.mins, block + 4);
}

// Q2_K's and Q3_K's 2-bit fields of q (util/quant.hpp): value v at bits 2 (v % 128 / 32) of qs byte
// 32 (v / 128) + v % 32.
void pack_two_bit_fields(const uint8_t* q, uint8_t* qs) {
  std::memset(qs, 0, 64);
  for (int v = 0; v < 256; ++v) qs[32 * (v / 128) + v % 32] |= uint8_t((q[v] & 3) << (2 * (v % 128 / 32)));
}

void quantize_q2_k(const float* x, uint8_t* block) {
  uint8_t q[256];
  const AffineGrid grid = quantize_affine_k(x, 16, 15, 3, "Q2_K", q);
  for (int j = 0; j < 16; ++j) block[j] = uint8_t(grid.scales[j] | grid.mins[j] << 4);
  pack_two_bit_fields(q, block + 16);
  write_half(block + 80, grid.d);
  write_half(block + 82, grid.dmin);
}

void quantize_q3_k(const float* x, uint8_t* block) {
  // Each sub-block's step reaches max|x_j| at 3.5 steps (q - 4 in -4..3: the rounding of 3.5 to 4
  // is clamped to 3, still half a step off), and the 6-bit scales are those steps in units of d,
  // rounded up.
  float step[16], max_step = 0.0f;
  for (int j = 0; j < 16; ++j) {
    float amax = 0.0f;
    for (int i = 0; i < 16; ++i) amax = std::max(amax, std::fabs(x[16 * j + i]));
    step[j] = amax / 3.5f;
    max_step = std::max(max_step, step[j]);
  }
  require(max_step / 31.0f <= kHalfMax, "value " + std::to_string(3.5f * max_step) + " is too large for Q3_K's fp16 scale");
  const uint16_t d_h = half_at_least(max_step / 31.0f);
  const float d = f16_to_f32(d_h);
  int sc[16];
  for (int j = 0; j < 16; ++j) sc[j] = d == 0.0f ? 0 : std::min(31, int(std::ceil(step[j] / d)));
  uint8_t q[256];
  for (int v = 0; v < 256; ++v) {
    const float s = d * float(sc[v / 16]);  // the product the dequantization forms
    q[v] = uint8_t(4 + (s == 0.0f ? 0 : int(std::clamp(std::nearbyint(x[v] / s), -4.0f, 3.0f))));
  }
  uint8_t* hmask = block;
  std::memset(hmask, 0, 32);
  for (int v = 0; v < 256; ++v) hmask[v % 32] |= uint8_t((q[v] >> 2) << (v / 32));
  pack_two_bit_fields(q, block + 32);
  uint8_t* packed = block + 96;
  std::memset(packed, 0, 12);
  for (int j = 0; j < 16; ++j) {
    const int stored = sc[j] + 32;  // 6 bits: 32 + (0..31)
    packed[j % 8] |= uint8_t((stored & 15) << (j < 8 ? 0 : 4));
    packed[8 + j % 4] |= uint8_t((stored >> 4) << (2 * (j / 4)));
  }
  write_half(block + 108, d_h);
}

void quantize_q4_k(const float* x, uint8_t* block) {
  uint8_t q[kQ4_KBlock];
  write_affine_k_header(quantize_affine_k(x, kQ4_KSubBlock, 63, 15, "Q4_K", q), block);
  uint8_t* qs = block + 16;
  for (int i = 0; i < kQ4_KBlock / 2; ++i) qs[i] = uint8_t(q[i / 32 * 64 + i % 32] | q[i / 32 * 64 + 32 + i % 32] << 4);
}

void quantize_q5_k(const float* x, uint8_t* block) {
  uint8_t q[kQ5_KBlock];
  write_affine_k_header(quantize_affine_k(x, kQ5_KSubBlock, 63, 31, "Q5_K", q), block);
  uint8_t* qh = block + 16;
  uint8_t* qs = block + 48;
  std::memset(qh, 0, 32);
  for (int i = 0; i < kQ5_KBlock / 2; ++i)
    qs[i] = uint8_t((q[i / 32 * 64 + i % 32] & 15) | (q[i / 32 * 64 + 32 + i % 32] & 15) << 4);
  for (int v = 0; v < kQ5_KBlock; ++v) qh[v % 32] |= uint8_t((q[v] >> 4) << (v / 32));
}

void quantize_q6_k(const float* x, uint8_t* block) {
  constexpr int kSubs = kQ6_KBlock / kQ6_KSubBlock;
  // Each sub-block's step reaches max|x_j| in 31 steps (q - 32 in -31..31), and the 8-bit scales
  // are those steps in units of d, rounded up.
  float step[kSubs], max_step = 0.0f;
  for (int j = 0; j < kSubs; ++j) {
    float amax = 0.0f;
    for (int i = 0; i < kQ6_KSubBlock; ++i) amax = std::max(amax, std::fabs(x[j * kQ6_KSubBlock + i]));
    step[j] = amax / 31.0f;
    max_step = std::max(max_step, step[j]);
  }
  require(max_step / 127.0f <= kHalfMax, "value " + std::to_string(31 * max_step) + " is too large for Q6_K's fp16 scale");
  const uint16_t d_h = half_at_least(max_step / 127.0f);
  const float d = f16_to_f32(d_h);
  uint8_t* ql = block;
  uint8_t* qh = block + 128;
  auto* sc = reinterpret_cast<int8_t*>(block + 192);
  std::memset(block, 0, 192);
  for (int j = 0; j < kSubs; ++j) sc[j] = int8_t(d == 0.0f ? 0 : std::min(127, int(std::ceil(step[j] / d))));
  write_half(block + 208, d_h);
  for (int v = 0; v < kQ6_KBlock; ++v) {
    const float s = d * float(sc[v / kQ6_KSubBlock]);  // the product the dequantization forms
    const int q = 32 + (s == 0.0f ? 0 : int(std::clamp(std::nearbyint(x[v] / s), -32.0f, 31.0f)));
    const int half = v / 128, k = v % 128 / 32, l = v % 32;
    ql[64 * half + 32 * (k % 2) + l] |= uint8_t(k < 2 ? q & 15 : (q & 15) << 4);
    qh[32 * half + l] |= uint8_t((q >> 4) << (2 * k));
  }
}

void dequantize_q8_0(const uint8_t* block, float* y) {
  const float d = read_half(block);
  const auto* q = reinterpret_cast<const int8_t*>(block + 2);
  for (int i = 0; i < kQ8_0Block; ++i) y[i] = d * float(q[i]);
}

template <DType kType>
void dequantize_small_block(const uint8_t* block, float* y) {
  int8_t q[32];
  small_block_values<kType>(block, q);
  const float d = small_block_step<kType>(block);
  if constexpr (has_block_min(kType)) {
    const float m = read_half(block + 2);
    for (int i = 0; i < 32; ++i) y[i] = float(q[i]) * d + m;
  } else {
    for (int i = 0; i < 32; ++i) y[i] = float(q[i]) * d;
  }
}

void dequantize_iq4_xs(const uint8_t* block, float* y) {
  for (int j = 0; j < 8; ++j) {
    const float step = iq4_xs_step(block, j);
    const uint8_t* qs = block + 8 + 16 * j;
    for (int i = 0; i < 16; ++i) {
      y[32 * j + i] = step * float(kIq4NlValues[qs[i] & 15]);
      y[32 * j + i + 16] = step * float(kIq4NlValues[qs[i] >> 4]);
    }
  }
}

void dequantize_q4_k(const uint8_t* block, float* y) {
  const float d = read_half(block), dmin = read_half(block + 2);
  const uint8_t* qs = block + 16;
  for (int j = 0; j < kQ4_KBlock / kQ4_KSubBlock; ++j) {
    int sc, m;
    q4_k_scale_min(block + 4, j, &sc, &m);
    const float s = d * float(sc), offset = dmin * float(m);
    for (int i = 0; i < kQ4_KSubBlock; ++i) {
      const uint8_t byte = qs[(j / 2) * 32 + i];
      y[j * kQ4_KSubBlock + i] = s * float(j % 2 == 0 ? byte & 15 : byte >> 4) - offset;
    }
  }
}

void dequantize_q5_k(const uint8_t* block, float* y) {
  const float d = read_half(block), dmin = read_half(block + 2);
  const uint8_t* qh = block + 16;
  const uint8_t* qs = block + 48;
  for (int j = 0; j < kQ5_KBlock / kQ5_KSubBlock; ++j) {
    int sc, m;
    q4_k_scale_min(block + 4, j, &sc, &m);
    const float s = d * float(sc), offset = dmin * float(m);
    for (int i = 0; i < kQ5_KSubBlock; ++i) {
      const uint8_t byte = qs[(j / 2) * 32 + i];
      const int q = (j % 2 == 0 ? byte & 15 : byte >> 4) | ((qh[i] >> j) & 1) << 4;
      y[j * kQ5_KSubBlock + i] = s * float(q) - offset;
    }
  }
}

void dequantize_q6_k(const uint8_t* block, float* y) {
  const uint8_t* ql = block;
  const uint8_t* qh = block + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(block + 192);
  const float d = read_half(block + 208);
  for (int v = 0; v < kQ6_KBlock; ++v) {
    const int half = v / 128, k = v % 128 / 32, l = v % 32;
    const uint8_t low = ql[64 * half + 32 * (k % 2) + l];
    const int q = (k < 2 ? low & 15 : low >> 4) | ((qh[32 * half + l] >> (2 * k)) & 3) << 4;
    y[v] = d * float(sc[v / kQ6_KSubBlock]) * float(q - 32);
  }
}

// Q2_K and Q3_K: ggml's to_float, operation for operation (a sub-block's float step first, then
// the value, then Q2_K's min subtracted).
void dequantize_q2_k(const uint8_t* block, float* y) {
  const float d = read_half(block + 80), dmin = read_half(block + 82);
  const uint8_t* qs = block + 16;
  for (int v = 0; v < 256; ++v) {
    const uint8_t sc = block[v / 16];
    const float step = d * float(sc & 15), offset = dmin * float(sc >> 4);
    const int q = (qs[32 * (v / 128) + v % 32] >> (2 * (v % 128 / 32))) & 3;
    y[v] = step * float(q) - offset;
  }
}

void dequantize_q3_k(const uint8_t* block, float* y) {
  uint8_t q[256];
  int16_t scale[16], min[16];
  low_bit_k_values<DType::Q3_K>(block, q, scale, min);
  const float d = read_half(block + 108);
  for (int v = 0; v < 256; ++v) y[v] = d * float(scale[v / 16]) * float(int(q[v]) - 4);
}

}  // namespace

void q4_k_pack_scales_mins(const int* scales, const int* mins, uint8_t* packed) {
  for (int j = 0; j < 4; ++j) {
    packed[j] = uint8_t((scales[j] & 63) | ((scales[j + 4] >> 4) << 6));
    packed[j + 4] = uint8_t((mins[j] & 63) | ((mins[j + 4] >> 4) << 6));
    packed[j + 8] = uint8_t((scales[j + 4] & 15) | ((mins[j + 4] & 15) << 4));
  }
}

namespace {

// value = float(D * scale[j]) * q (quant.hpp: ggml's floats).
void dequantize_codebook_block(DType type, const uint8_t* block, float* out) {
  int8_t q[256];
  int16_t scale[16];
  if (!is_codebook_block(type)) throw Error("not a codebook type: " + dtype_name(type));
  const float factor = with_codebook_type(type, [&]<DType kType>() { return codebook_block_values<kType>(block, q, scale); });
  for (int j = 0; j < 16; ++j) {
    const float step = factor * float(scale[j]);
    for (int i = 0; i < 16; ++i) out[16 * j + i] = step * float(q[16 * j + i]);
  }
}

}  // namespace

void quantize_row(DType type, const float* x, int64_t n, void* out) {
  require(dtype_block(type) > 1, "cannot quantize to " + dtype_name(type));
  require(!is_codebook_block(type), "crossmoe reads " + dtype_name(type) +
                                        " but does not write it (ggml's quantizer searches its codebook against an "
                                        "importance matrix: make such files with llama-quantize --imatrix)");
  dtype_row_bytes(type, n);  // throws unless n is whole blocks
  const int64_t block = dtype_block(type), blocks = n / block;
  const size_t block_bytes = dtype_row_bytes(type, block);
  check_finite(x, n, dtype_name(type).c_str());
  auto* o = static_cast<uint8_t*>(out);
  for (int64_t b = 0; b < blocks; ++b) {
    if (type == DType::Q8_0) quantize_q8_0(x + b * block, o + b * block_bytes);
    else if (type == DType::Q4_0 || type == DType::Q5_0) quantize_small_block(type, x + b * block, o + b * block_bytes);
    else if (has_block_min(type)) quantize_small_block_with_min(type, x + b * block, o + b * block_bytes);
    else if (type == DType::IQ4_NL) quantize_iq4_nl(x + b * block, o + b * block_bytes);
    else if (type == DType::MXFP4) quantize_mxfp4(x + b * block, o + b * block_bytes);
    else if (type == DType::IQ4_XS) quantize_iq4_xs(x + b * block, o + b * block_bytes);
    else if (type == DType::Q2_K) quantize_q2_k(x + b * block, o + b * block_bytes);
    else if (type == DType::Q3_K) quantize_q3_k(x + b * block, o + b * block_bytes);
    else if (type == DType::Q4_K) quantize_q4_k(x + b * block, o + b * block_bytes);
    else if (type == DType::Q5_K) quantize_q5_k(x + b * block, o + b * block_bytes);
    else quantize_q6_k(x + b * block, o + b * block_bytes);
  }
}

void dequantize_row(DType type, const void* in, int64_t n, float* out) {
  require(dtype_block(type) > 1, "cannot dequantize " + dtype_name(type));
  dtype_row_bytes(type, n);  // throws unless n is whole blocks
  const int64_t block = dtype_block(type), blocks = n / block;
  const size_t block_bytes = dtype_row_bytes(type, block);
  const auto* p = static_cast<const uint8_t*>(in);
  for (int64_t b = 0; b < blocks; ++b) {
    if (type == DType::Q8_0) dequantize_q8_0(p + b * block_bytes, out + b * block);
    else if (type == DType::Q4_0) dequantize_small_block<DType::Q4_0>(p + b * block_bytes, out + b * block);
    else if (type == DType::Q5_0) dequantize_small_block<DType::Q5_0>(p + b * block_bytes, out + b * block);
    else if (type == DType::Q4_1) dequantize_small_block<DType::Q4_1>(p + b * block_bytes, out + b * block);
    else if (type == DType::Q5_1) dequantize_small_block<DType::Q5_1>(p + b * block_bytes, out + b * block);
    else if (type == DType::IQ4_NL) dequantize_small_block<DType::IQ4_NL>(p + b * block_bytes, out + b * block);
    else if (type == DType::MXFP4) dequantize_small_block<DType::MXFP4>(p + b * block_bytes, out + b * block);
    else if (type == DType::IQ4_XS) dequantize_iq4_xs(p + b * block_bytes, out + b * block);
    else if (type == DType::Q2_K) dequantize_q2_k(p + b * block_bytes, out + b * block);
    else if (type == DType::Q3_K) dequantize_q3_k(p + b * block_bytes, out + b * block);
    else if (type == DType::Q4_K) dequantize_q4_k(p + b * block_bytes, out + b * block);
    else if (type == DType::Q5_K) dequantize_q5_k(p + b * block_bytes, out + b * block);
    else if (type == DType::Q6_K) dequantize_q6_k(p + b * block_bytes, out + b * block);
    else dequantize_codebook_block(type, p + b * block_bytes, out + b * block);
  }
}

namespace {

// The interleaved layouts' quant bytes (quant.hpp): 32 bytes per row and span (a Q8_0 block's q, a
// Q4_K or Q5_K pair of sub-blocks, Q5_K's qh, a Q6_K run of 32 bytes of ql or qh), 256 per group, byte n of row r at 64 * (n / 8) + kSlot[r] * 8 + n % 8.
// kSlot: rows 0, 1, 4, 5 first, then 2, 3, 6, 7. It swaps 2 <-> 4 and 3 <-> 5, so it is its own
// inverse: the row in slot s is kSlot[s] too.
constexpr int kSlot[8] = {0, 1, 4, 5, 2, 3, 6, 7};
size_t span_offset(int row, int n) { return size_t(64 * (n / 8) + kSlot[row] * 8 + n % 8); }

// Units of the Q4_K layout's 96 bytes of scales and mins, word by word.
void store_unit(const uint8_t* unit, int u, uint8_t* out) {
  for (int w = 0; w < 3; ++w) std::memcpy(out + 32 * w + 4 * u, unit + 4 * w, 4);
}
void load_unit(const uint8_t* in, int u, uint8_t* unit) {
  for (int w = 0; w < 3; ++w) std::memcpy(unit + 4 * w, in + 32 * w + 4 * u, 4);
}
// The row of min slot s of unit u, and which of the pair m[2q], m[2q + 1] it holds (the scales'
// slots hold rows in kSlot's order).
int min_row(int u, int s) { return 4 * (u % 2) + s / 2; }
int min_sub_block(int u, int s) { return 2 * (u / 2) + s % 2; }

}  // namespace

void interleave8_block(DType type, const void* rows, size_t stride, void* out) {
  const auto* in = static_cast<const uint8_t*>(rows);
  auto* o = static_cast<uint8_t*>(out);
  const auto row = [&](int r) { return in + size_t(r) * stride; };
  if (is_nibble_block(type)) {
    const int64_t high = small_group_high_bits(type), nibbles = small_group_nibbles(type);
    const int scale = small_block_scale_bytes(type), header = scale + (has_block_min(type) ? 2 : 0),
              qs = header + (has_fifth_bit(type) ? 4 : 0);
    for (int r = 0; r < 8; ++r) {
      std::memcpy(o + scale * r, row(r), scale);
      if (has_block_min(type)) std::memcpy(o + 16 + 2 * r, row(r) + 2, 2);
      if (has_fifth_bit(type))
        for (int k = 0; k < 4; ++k) o[high + 8 * k + kSlot[r]] = row(r)[header + k];
      for (int k = 0; k < 2; ++k) std::memcpy(o + nibbles + span_offset(r, 8 * k), row(r) + qs + 8 * k, 8);
    }
    return;
  }
  if (type == DType::IQ4_XS) {
    for (int r = 0; r < 8; ++r) {
      std::memcpy(o + 2 * r, row(r), 2);
      std::memcpy(o + kIq4XsHighScales + 2 * r, row(r) + 2, 2);
      std::memcpy(o + kIq4XsLowScales + 4 * r, row(r) + 4, 4);
      for (int j = 0; j < 8; ++j)
        for (int k = 0; k < 2; ++k)
          std::memcpy(o + kIq4XsNibbles + 128 * j + span_offset(r, 8 * k), row(r) + 8 + 16 * j + 8 * k, 8);
    }
    return;
  }
  if (type == DType::Q2_K) {
    for (int r = 0; r < 8; ++r) {
      for (int span = 0; span < 2; ++span)  // qs's 2 spans of 32 bytes
        for (int k = 0; k < 4; ++k) std::memcpy(o + 256 * span + span_offset(r, 8 * k), row(r) + 16 + 32 * span + 8 * k, 8);
      for (int j = 0; j < 16; ++j) o[kQ2_KScales + 8 * j + kSlot[r]] = row(r)[j];
      std::memcpy(o + kQ2_KSteps + 2 * r, row(r) + 80, 2);
      std::memcpy(o + kQ2_KMinSteps + 2 * r, row(r) + 82, 2);
    }
    return;
  }
  if (type == DType::Q3_K) {
    for (int r = 0; r < 8; ++r) {
      for (int span = 0; span < 2; ++span)  // qs's 2 spans of 32 bytes, then hmask's one
        for (int k = 0; k < 4; ++k) std::memcpy(o + 256 * span + span_offset(r, 8 * k), row(r) + 32 + 32 * span + 8 * k, 8);
      for (int k = 0; k < 4; ++k) std::memcpy(o + kQ3_KHighBits + span_offset(r, 8 * k), row(r) + 8 * k, 8);
      for (int w = 0; w < 3; ++w) std::memcpy(o + kQ3_KScales + 32 * w + 4 * kSlot[r], row(r) + 96 + 4 * w, 4);
      std::memcpy(o + kQ3_KSteps + 2 * r, row(r) + 108, 2);
    }
    return;
  }
  if (type == DType::Q6_K) {
    for (int r = 0; r < 8; ++r) {
      for (int span = 0; span < 6; ++span)  // ql's 4 spans of 32 bytes, then qh's 2: one run of 192 bytes
        for (int k = 0; k < 4; ++k) std::memcpy(o + 256 * span + span_offset(r, 8 * k), row(r) + 32 * span + 8 * k, 8);
      for (int j = 0; j < 16; ++j) o[kQ6_KScales + 8 * j + kSlot[r]] = row(r)[192 + j];
      std::memcpy(o + kQ6_KSteps + 2 * r, row(r) + 208, 2);
    }
    return;
  }
  const bool q8 = type == DType::Q8_0, q5 = type == DType::Q5_K;
  if (!q8 && !q5 && type != DType::Q4_K) throw Error("cannot interleave " + dtype_name(type));
  const int spans = q8 ? 1 : 4;
  // Q5_K is Q4_K with its 32 bytes of qh between the scales and the nibbles: the nibbles start 32
  // bytes later in the row, and qh goes after Q4_K's group as a fifth span.
  const size_t quants = q8 ? 16 : 128, row_quants = q8 ? 2 : q5 ? 48 : 16;
  for (int r = 0; r < 8; ++r) {
    std::memcpy(o + 2 * r, row(r), 2);
    for (int span = 0; span < spans; ++span)
      for (int k = 0; k < 4; ++k)
        std::memcpy(o + quants + 256 * span + span_offset(r, 8 * k), row(r) + row_quants + 32 * span + 8 * k, 8);
    if (q5)
      for (int k = 0; k < 4; ++k) std::memcpy(o + kQ5_KHighBits + span_offset(r, 8 * k), row(r) + 16 + 8 * k, 8);
  }
  if (q8) return;
  uint8_t scales[8][8], mins[8][8];  // [row][sub-block]
  for (int r = 0; r < 8; ++r) {
    std::memcpy(o + 16 + 2 * r, row(r) + 2, 2);
    q4_k_scales_mins(row(r) + 4, scales[r], mins[r]);
  }
  for (int u = 0; u < 8; ++u) {
    int unit_scales[8], unit_mins[8];
    for (int s = 0; s < 8; ++s) {
      unit_scales[s] = scales[kSlot[s]][u];
      unit_mins[s] = mins[min_row(u, s)][min_sub_block(u, s)];
    }
    uint8_t unit[12];
    q4_k_pack_scales_mins(unit_scales, unit_mins, unit);
    store_unit(unit, u, o + 32);
  }
}

void deinterleave8_block(DType type, const void* in, void* out) {
  const auto* g = static_cast<const uint8_t*>(in);
  auto* o = static_cast<uint8_t*>(out);
  if (is_nibble_block(type)) {
    const int64_t high = small_group_high_bits(type), nibbles = small_group_nibbles(type);
    const int scale = small_block_scale_bytes(type), header = scale + (has_block_min(type) ? 2 : 0),
              qs = header + (has_fifth_bit(type) ? 4 : 0);
    for (int r = 0; r < 8; ++r) {
      uint8_t* b = o + (qs + 16) * r;
      std::memcpy(b, g + scale * r, scale);
      if (has_block_min(type)) std::memcpy(b + 2, g + 16 + 2 * r, 2);
      if (has_fifth_bit(type))
        for (int k = 0; k < 4; ++k) b[header + k] = g[high + 8 * k + kSlot[r]];
      for (int k = 0; k < 2; ++k) std::memcpy(b + qs + 8 * k, g + nibbles + span_offset(r, 8 * k), 8);
    }
    return;
  }
  if (type == DType::IQ4_XS) {
    for (int r = 0; r < 8; ++r) {
      uint8_t* b = o + 136 * r;
      std::memcpy(b, g + 2 * r, 2);
      std::memcpy(b + 2, g + kIq4XsHighScales + 2 * r, 2);
      std::memcpy(b + 4, g + kIq4XsLowScales + 4 * r, 4);
      for (int j = 0; j < 8; ++j)
        for (int k = 0; k < 2; ++k)
          std::memcpy(b + 8 + 16 * j + 8 * k, g + kIq4XsNibbles + 128 * j + span_offset(r, 8 * k), 8);
    }
    return;
  }
  if (type == DType::Q2_K) {
    for (int r = 0; r < 8; ++r) {
      uint8_t* b = o + 84 * r;
      for (int span = 0; span < 2; ++span)
        for (int k = 0; k < 4; ++k) std::memcpy(b + 16 + 32 * span + 8 * k, g + 256 * span + span_offset(r, 8 * k), 8);
      for (int j = 0; j < 16; ++j) b[j] = g[kQ2_KScales + 8 * j + kSlot[r]];
      std::memcpy(b + 80, g + kQ2_KSteps + 2 * r, 2);
      std::memcpy(b + 82, g + kQ2_KMinSteps + 2 * r, 2);
    }
    return;
  }
  if (type == DType::Q3_K) {
    for (int r = 0; r < 8; ++r) {
      uint8_t* b = o + 110 * r;
      for (int span = 0; span < 2; ++span)
        for (int k = 0; k < 4; ++k) std::memcpy(b + 32 + 32 * span + 8 * k, g + 256 * span + span_offset(r, 8 * k), 8);
      for (int k = 0; k < 4; ++k) std::memcpy(b + 8 * k, g + kQ3_KHighBits + span_offset(r, 8 * k), 8);
      for (int w = 0; w < 3; ++w) std::memcpy(b + 96 + 4 * w, g + kQ3_KScales + 32 * w + 4 * kSlot[r], 4);
      std::memcpy(b + 108, g + kQ3_KSteps + 2 * r, 2);
    }
    return;
  }
  if (type == DType::Q6_K) {
    for (int r = 0; r < 8; ++r) {
      uint8_t* b = o + 210 * r;
      for (int span = 0; span < 6; ++span)
        for (int k = 0; k < 4; ++k) std::memcpy(b + 32 * span + 8 * k, g + 256 * span + span_offset(r, 8 * k), 8);
      for (int j = 0; j < 16; ++j) b[192 + j] = g[kQ6_KScales + 8 * j + kSlot[r]];
      std::memcpy(b + 208, g + kQ6_KSteps + 2 * r, 2);
    }
    return;
  }
  const bool q8 = type == DType::Q8_0, q5 = type == DType::Q5_K;
  if (!q8 && !q5 && type != DType::Q4_K) throw Error("cannot deinterleave " + dtype_name(type));  // (per block: no message built)
  const size_t block = q8 ? 34 : q5 ? 176 : 144, quants = q8 ? 16 : 128, row_quants = q8 ? 2 : q5 ? 48 : 16;
  const int spans = q8 ? 1 : 4;
  for (int r = 0; r < 8; ++r) {
    std::memcpy(o + block * r, g + 2 * r, 2);
    for (int span = 0; span < spans; ++span)
      for (int k = 0; k < 4; ++k)
        std::memcpy(o + block * r + row_quants + 32 * span + 8 * k, g + quants + 256 * span + span_offset(r, 8 * k), 8);
    if (q5)
      for (int k = 0; k < 4; ++k) std::memcpy(o + block * r + 16 + 8 * k, g + kQ5_KHighBits + span_offset(r, 8 * k), 8);
  }
  if (q8) return;
  uint8_t scales[8][8], mins[8][8];  // [row][sub-block]
  for (int u = 0; u < 8; ++u) {
    uint8_t unit[12], unit_scales[8], unit_mins[8];
    load_unit(g + 32, u, unit);
    q4_k_scales_mins(unit, unit_scales, unit_mins);
    for (int s = 0; s < 8; ++s) {
      scales[kSlot[s]][u] = unit_scales[s];
      mins[min_row(u, s)][min_sub_block(u, s)] = unit_mins[s];
    }
  }
  for (int r = 0; r < 8; ++r) {
    uint8_t* b = o + block * r;
    std::memcpy(b + 2, g + 16 + 2 * r, 2);
    int sc[8], m[8];
    for (int j = 0; j < 8; ++j) sc[j] = scales[r][j], m[j] = mins[r][j];
    q4_k_pack_scales_mins(sc, m, b + 4);
  }
}

}  // namespace crossmoe::quant
