// Element-wise and per-vector operations: O(n) per token, so plain loops suffice.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/kernels.hpp"
#include "kernels/thread_pool.hpp"
#include "util/quant.hpp"

namespace crossmoe::kernels {

void rmsnorm(const float* x, const float* weight, int n, float eps, float* out) {
  // The squares summed in double, in 8 partial sums (element i into sum i % 8) added in a fixed
  // tree: one chain of n dependent additions cost as much as the rest of the norm several times.
  constexpr int kSums = 8;
  double partial[kSums] = {};
  int i = 0;
  for (; i + kSums <= n; i += kSums)
    for (int j = 0; j < kSums; ++j) partial[j] += double(x[i + j]) * x[i + j];
  for (int j = 0; i < n; ++i, ++j) partial[j] += double(x[i]) * x[i];
  for (int width = kSums / 2; width > 0; width /= 2)
    for (int j = 0; j < width; ++j) partial[j] += partial[j + width];
  const float inv = 1.0f / std::sqrt(float(partial[0] / n) + eps);
  for (i = 0; i < n; ++i) out[i] = x[i] * inv * weight[i];
}

void rmsnorm_rows(const float* x, const float* weight, int rows, int n, float eps, float* out) {
  const auto norm_row = [&](int64_t r) { rmsnorm(x + r * n, weight, n, eps, out + r * n); };
  if (int64_t(rows) * n < kMinParallelWork) {
    for (int r = 0; r < rows; ++r) norm_row(r);
    return;
  }
  parallel_for(rows, norm_row);
}

void softmax(float* x, int n) {
  const float m = *std::max_element(x, x + n);
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) sum += (x[i] = std::exp(x[i] - m));
  const float inv = 1.0f / sum;
  for (int i = 0; i < n; ++i) x[i] *= inv;
}

void silu_mul(float* gate, const float* up, int n) {
  // e^-gate through exp_floats (vector lanes, the same bits on every ISA) a piece at a time: the
  // C library's expf one value at a time was most of this function's time.
  constexpr int kPiece = 256;
  float e[kPiece];
  for (int begin = 0; begin < n; begin += kPiece) {
    const int m = std::min(kPiece, n - begin);
    float* g = gate + begin;
    for (int i = 0; i < m; ++i) e[i] = -g[i];
    exp_floats(e, m, e);
    for (int i = 0; i < m; ++i) g[i] = g[i] / (1.0f + e[i]) * up[begin + i];
  }
}

void rope(float* x, int heads, int dim, const float* cos, const float* sin) {
  const int half = dim / 2;
  for (int h = 0; h < heads; ++h) {
    float* v = x + h * dim;
    for (int i = 0; i < half; ++i) {
      const float a = v[i], b = v[i + half];
      v[i] = a * cos[i] - b * sin[i];
      v[i + half] = b * cos[i] + a * sin[i];
    }
  }
}

void to_f32(const void* src, DType dtype, int64_t n, float* dst) {
  const auto* h = static_cast<const uint16_t*>(src);
  switch (dtype) {
    case DType::F32: std::memcpy(dst, src, size_t(n) * 4); break;
    case DType::BF16: for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(h[i]); break;
    case DType::F16: for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(h[i]); break;
    default:  // the block types; the other dtypes are checked when weights are bound
      if (dtype_block(dtype) > 1) quant::dequantize_row(dtype, src, n, dst);
      break;
  }
}

void interleave_rows8(Matrix& m, void* data) {
  // Every block type has an Interleaved8 layout (util/quant.hpp); the element-wise types have none.
  if (!quant::has_interleaved_layout(m.dtype) || m.row_stride() != m.cols ||
      m.layout == Layout::Interleaved8 || m.rows < 8)
    return;
  const size_t row_bytes = dtype_row_bytes(m.dtype, m.cols);
  const size_t block_bytes = dtype_row_bytes(m.dtype, dtype_block(m.dtype));
  const int64_t blocks = m.cols / dtype_block(m.dtype);
  std::vector<uint8_t> group(8 * row_bytes);  // the group's rows as they were
  auto* rows = static_cast<uint8_t*>(data);
  for (int64_t r = 0; r + 8 <= m.rows; r += 8, rows += 8 * row_bytes) {
    std::memcpy(group.data(), rows, group.size());
    for (int64_t b = 0; b < blocks; ++b)
      quant::interleave8_block(m.dtype, group.data() + b * block_bytes, row_bytes, rows + b * 8 * block_bytes);
  }
  m.layout = Layout::Interleaved8;
}

void pack_bf16_tiles(Matrix& m, void* data) {
  if (m.dtype != DType::BF16 || m.layout != Layout::Rows || m.row_stride() != m.cols || m.cols % 32 || m.rows < 16)
    return;
  const int64_t cols = m.cols;
  auto* w = static_cast<uint16_t*>(data);
  parallel_for(m.rows / 16, [&](int64_t s) {
    thread_local std::vector<uint16_t> strip;  // the strip's rows as they were
    uint16_t* at = w + s * 16 * cols;
    strip.assign(at, at + 16 * cols);
    for (int64_t c = 0; c < cols / 32; ++c, at += 512)
      for (int k = 0; k < 16; ++k)
        for (int n = 0; n < 16; ++n)
          for (int i = 0; i < 2; ++i) at[32 * k + 2 * n + i] = strip[size_t(n * cols + 32 * c + 2 * k + i)];
  });
  m.layout = Layout::Bf16Tiles;
}

void arrange_for_matmul(Matrix& m, void* data) {
  if (dtype_block(m.dtype) > 1) interleave_rows8(m, data);
  else if (m.dtype == DType::BF16 && bf16_tiles_in_use()) pack_bf16_tiles(m, data);
}

void bf16_parts(const float* x, int tokens, int64_t cols, uint16_t* out) {
  for (int t = 0; t < tokens; ++t, x += cols, out += 3 * cols)
    for (int64_t c = 0; c < cols; ++c) {
      const uint16_t hi = f32_to_bf16(x[c]);
      const float rest = x[c] - bf16_to_f32(hi);  // exact: hi is x to 8 significant bits
      const uint16_t mid = f32_to_bf16(rest);
      out[c] = hi, out[cols + c] = mid, out[2 * cols + c] = f32_to_bf16(rest - bf16_to_f32(mid));
    }
}

int64_t activation_group(DType weights) {
  // IQ4_XS's sub-blocks have float steps (d * (ls - 32)), taken per sub-block as IQ4_NL's.
  if (weights == DType::IQ4_XS) return 32;
  return dtype_block(weights);  // a block (32) or a super-block (256)
}

void quantize_activations(const float* x, int64_t n, int64_t group, ActivationBlock* out) {
  for (int64_t g = 0; g < n / group; ++g, x += group) {
    float amax = 0.0f;
    for (int64_t i = 0; i < group; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int64_t b = 0; b < group / 32; ++b) {
      ActivationBlock& a = *out++;
      a.d = amax / 127.0f;
      a.sum = 0;
      for (int i = 0; i < 32; ++i) {
        a.q[i] = int8_t(std::clamp(std::nearbyint(x[b * 32 + i] * inverse), -127.0f, 127.0f));
        a.sum += a.q[i];
      }
    }
  }
}

void activation_sums(const ActivationBlock* x, int64_t n, int16_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = int16_t(x[i].sum);
}

void activation_half_sums(const ActivationBlock* x, int64_t n, int16_t* out) {
  for (int64_t i = 0; i < n; ++i)
    for (int h = 0; h < 2; ++h) {
      int sum = 0;
      for (int k = 0; k < 16; ++k) sum += x[i].q[16 * h + k];
      out[2 * i + h] = int16_t(sum);
    }
}

int activation_sums_per_block(DType weights) {
  // (The codebook and ternary types get Q4_K's sums: IQ1_S and the ternary types read them, and
  // matmul_batch shares one prepared input among the jobs of a kind, a codebook matrix's with a
  // Q4_K one's.)
  if (activation_group(weights) != 256) return 0;
  return weights == DType::Q2_K || weights == DType::Q3_K ? 2 : 1;
}

void activation_sums_for(DType weights, const ActivationBlock* x, int64_t n, int16_t* out) {
  if (activation_sums_per_block(weights) == 2) activation_half_sums(x, n, out);
  else if (activation_sums_per_block(weights) == 1) activation_sums(x, n, out);
}

}  // namespace crossmoe::kernels
