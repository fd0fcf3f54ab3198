#pragma once
// `crossmoe convert MODEL OUT.gguf`: a model (directory or GGUF) written as a GGUF file that
// llama.cpp loads (model/gguf_model.hpp: architecture, keys, tensor names, llama's Q/K row order).
// Matrices keep their stored type (F32, F16, BF16, and crossmoe quantize's Q8_0 / Q4_K, whose
// blocks are ggml's bytes); norms and biases are written as F32, as llama.cpp's converter does.
// Latent attention's kv_b_proj goes out as deepseek2's attn_k_b / attn_v_b, in its own element
// type, or F32 when it is block-quantized (attn_k_b's rows are its columns).
// The tokenizer goes along as tokenizer.ggml.* when the model has one, else the file says
// "no_vocab".
#include <filesystem>
#include <optional>
#include <string>

#include "util/dtype.hpp"

namespace crossmoe {

struct GgufExportSummary {
  std::string architecture;
  size_t tensors = 0;
  bool tokenizer = false;
};

// `matrix_type`: F32, F16 or BF16 converts the element-wise matrices to that type (block-quantized
// ones stay as they are); nullopt keeps every matrix's stored type.
GgufExportSummary export_gguf(const std::filesystem::path& model, const std::filesystem::path& out,
                              std::optional<DType> matrix_type = std::nullopt);

}  // namespace crossmoe
