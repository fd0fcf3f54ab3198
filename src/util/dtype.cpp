#include "util/dtype.hpp"

#include <cctype>
#include <cmath>
#include <iterator>

#include "util/error.hpp"

namespace crossmoe {

namespace {
struct DTypeInfo {
  DType type;
  const char* name;
  size_t block_bytes;  // bytes of one block
  int64_t block = 1;   // elements of one block
};
// The block types are ggml's blocks of those names (util/quant.hpp spells out the bytes).
constexpr DTypeInfo kDTypes[] = {
    {DType::F32, "F32", 4},   {DType::F16, "F16", 2},   {DType::BF16, "BF16", 2},
    {DType::F64, "F64", 8},   {DType::I64, "I64", 8},   {DType::I32, "I32", 4},
    {DType::I16, "I16", 2},   {DType::I8, "I8", 1},     {DType::U64, "U64", 8},
    {DType::U32, "U32", 4},   {DType::U16, "U16", 2},   {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1}, {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E5M2, "F8_E5M2", 1},
    {DType::Q8_0, "Q8_0", 34, 32}, {DType::Q4_K, "Q4_K", 144, 256},
    {DType::Q5_K, "Q5_K", 176, 256}, {DType::Q6_K, "Q6_K", 210, 256},
    {DType::Q4_0, "Q4_0", 18, 32},  {DType::Q5_0, "Q5_0", 22, 32},
    {DType::Q4_1, "Q4_1", 20, 32},  {DType::Q5_1, "Q5_1", 24, 32},
    {DType::Q2_K, "Q2_K", 84, 256}, {DType::Q3_K, "Q3_K", 110, 256},
    {DType::IQ4_NL, "IQ4_NL", 18, 32}, {DType::IQ4_XS, "IQ4_XS", 136, 256},
    {DType::MXFP4, "MXFP4", 17, 32},
    {DType::IQ2_XXS, "IQ2_XXS", 66, 256}, {DType::IQ2_XS, "IQ2_XS", 74, 256}, {DType::IQ2_S, "IQ2_S", 82, 256},
    {DType::IQ3_XXS, "IQ3_XXS", 98, 256}, {DType::IQ3_S, "IQ3_S", 110, 256},
    {DType::IQ1_S, "IQ1_S", 50, 256},  {DType::IQ1_M, "IQ1_M", 56, 256},
    {DType::TQ1_0, "TQ1_0", 54, 256},  {DType::TQ2_0, "TQ2_0", 66, 256}};

// The table lists the types in the enum's order, so a type's entry is found by its value (the
// kernels ask for row sizes per block of rows, in decode).
constexpr bool in_enum_order() {
  for (size_t i = 0; i < std::size(kDTypes); ++i)
    if (size_t(kDTypes[i].type) != i) return false;
  return true;
}
static_assert(in_enum_order(), "kDTypes must list the dtypes in DType's order");

const DTypeInfo& info(DType t) {
  if (size_t(t) >= std::size(kDTypes)) throw Error("unknown dtype");
  return kDTypes[size_t(t)];
}
}  // namespace

size_t dtype_size(DType t) { return info(t).block == 1 ? info(t).block_bytes : 0; }

int64_t dtype_block(DType t) { return info(t).block; }

size_t dtype_row_bytes(DType t, int64_t n) {
  const DTypeInfo& d = info(t);
  // The message is built only on failure: the kernels call this per block of rows, in decode.
  if (n < 0 || n % d.block != 0)
    throw Error(std::string(d.name) + " stores rows in blocks of " + std::to_string(d.block) + " elements; a row of " +
                std::to_string(n) + " does not divide");
  return size_t(n / d.block) * d.block_bytes;
}

std::string dtype_name(DType t) {
  for (const auto& d : kDTypes)
    if (d.type == t) return d.name;
  return "?";
}

bool parse_dtype(const std::string& name, DType* out) {
  for (const auto& d : kDTypes)
    if (d.block == 1 && name == d.name) {
      *out = d.type;
      return true;
    }
  return false;
}

bool parse_block_dtype(const std::string& name, DType* out) {
  std::string upper = name;
  for (char& ch : upper) ch = char(std::toupper(static_cast<unsigned char>(ch)));
  for (const auto& d : kDTypes)
    if (d.block > 1 && upper == d.name) {
      *out = d.type;
      return true;
    }
  return false;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    const float v = std::ldexp(float(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t f32_to_f16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000);
  const float a = std::fabs(f);
  if (std::isnan(f)) return sign | 0x7e00;
  if (a >= 65520.0f) return sign | 0x7c00;  // rounds to infinity
  if (a < 6.103515625e-05f) {               // subnormal: round a * 2^24 to nearest even
    return sign | uint16_t(std::nearbyint(a * 16777216.0f));
  }
  uint32_t abs = u & 0x7fffffffu;
  abs += 0xfffu + ((abs >> 13) & 1u);  // round mantissa to 10 bits, nearest even
  return sign | uint16_t(((abs >> 23) - 112) << 10 | ((abs >> 13) & 0x3ff));
}

}  // namespace crossmoe
