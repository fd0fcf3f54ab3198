#pragma once
// Element types of stored tensors and the scalar conversions between them.
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace crossmoe {

// The safetensors dtypes, then the block-quantized weight formats (util/quant.hpp). The runtime
// computes with F32, F16, BF16 and every block type; the other element types are recognised so
// that a file holding them is read (and rejected only where used).
enum class DType { F32, F16, BF16, F64, I64, I32, I16, I8, U64, U32, U16, U8, BOOL, F8_E4M3, F8_E5M2, Q8_0, Q4_K, Q5_K, Q6_K,
                  Q4_0, Q5_0, Q4_1, Q5_1, Q2_K, Q3_K, IQ4_NL, IQ4_XS, MXFP4,
                  IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, TQ1_0, TQ2_0 };

// Bytes per element of an element-wise type; 0 for the block types (use dtype_row_bytes).
size_t dtype_size(DType t);
std::string dtype_name(DType t);          // "F32", "BF16", ... as safetensors writes them; "Q8_0", "Q4_0", ...
// Safetensors dtype names only: a block type never appears as a safetensors dtype.
bool parse_dtype(const std::string& name, DType* out);
// The block types: "Q8_0", "Q4_0", "Q5_0", "Q4_1", "Q5_1", "IQ4_NL", "MXFP4", "IQ4_XS", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
// "Q6_K", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "TQ1_0" or "TQ2_0" (any case).
bool parse_block_dtype(const std::string& name, DType* out);

// Elements per block: 1 for element-wise types, 32 for Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, IQ4_NL and MXFP4, 256 for the
// others (the K-quants, IQ4_XS, the codebook i-quants and the ternary types). A row of a block type
// holds whole blocks only.
int64_t dtype_block(DType t);
// Bytes of n elements (n a multiple of dtype_block(t); throws otherwise, naming the type).
size_t dtype_row_bytes(DType t, int64_t n);

inline float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }

// Round to nearest even, as torch does; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

}  // namespace crossmoe
