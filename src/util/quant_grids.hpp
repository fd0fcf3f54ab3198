#pragma once
// The codebooks of ggml's i-quants (llama.cpp's ggml-common.h: iq2xxs_grid, iq2xs_grid, iq2s_grid,
// iq3xxs_grid, iq3s_grid, iq1s_grid), which their GGUF blocks index: each grid point is 8 (IQ2_*,
// IQ1_*) or 4 (IQ3_*) byte values, stored as ggml stores them (byte k of an entry is value k).
// IQ2: values 8, 25, 43 (magnitudes; signs come from the block); IQ3_XXS: 4, 12, ..., 52, 62;
// IQ3_S: 1, 3, ..., 15; IQ1_S / IQ1_M: -1, 0, 1 as int8.
#include <array>
#include <cstdint>

namespace crossmoe::quant {

extern const std::array<uint64_t, 256> kIq2XxsGrid;
extern const std::array<uint64_t, 512> kIq2XsGrid;
extern const std::array<uint64_t, 1024> kIq2SGrid;
extern const std::array<uint32_t, 256> kIq3XxsGrid;
extern const std::array<uint32_t, 512> kIq3SGrid;
extern const std::array<uint64_t, 2048> kIq1SGrid;

// The IQ2_XXS / IQ2_XS / IQ3_XXS blocks store 7 of 8 sign bits: the eighth makes the count of
// minus signs even (ggml's ksigns_iq2xs).
constexpr uint8_t even_signs(unsigned seven) { return uint8_t(seven | (__builtin_popcount(seven) & 1) << 7); }
// For each 7 stored sign bits, the 8 values' signs as bytes +1 or -1 (0x01, 0xff; byte j -1 where
// bit j of even_signs is set), applied to the magnitudes by a byte-wise sign operation: one load
// per 8 values.
extern const std::array<uint64_t, 128> kEvenSignBytes;

}  // namespace crossmoe::quant
