#pragma once
// `crossmoe quantize`: a model directory rewritten with block-quantized matrices (Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, IQ4_NL, MXFP4, IQ4_XS, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K;
// util/quant.hpp), which the runtime binds as they are stored.
//
// OUT holds model.safetensors (block-type matrices as safetensors.hpp describes, norms and
// biases in their stored dtype, every tensor the description needs and nothing else), the other
// files of MODEL copied (tokenizer, generation config, chat template), and MODEL's config.json
// with a "quantization_config" whose quant_method "crossmoe" other loaders (transformers) refuse.
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "util/dtype.hpp"

namespace crossmoe {

enum class QuantScheme {
  Q8_0,   // every matrix Q8_0
  Q4_K,   // every matrix Q4_K
  Q5_K,   // every matrix Q5_K
  Q6_K,   // every matrix Q6_K
  Q4_0,   // every matrix Q4_0
  Q5_0,   // every matrix Q5_0
  Q4_1,   // every matrix Q4_1
  Q5_1,   // every matrix Q5_1
  IQ4_NL, // every matrix IQ4_NL
  MXFP4,  // every matrix MXFP4
  IQ4_XS, // every matrix IQ4_XS
  Q2_K,   // every matrix Q2_K
  Q3_K,   // every matrix Q3_K
  Mixed,  // routed experts Q4_K; attention, routers, shared experts, dense FFNs, embeddings, LM head Q8_0
};
bool parse_quant_scheme(const std::string& name, QuantScheme* out);  // "q8_0", "q4_0", "q5_0", "q4_1", "q5_1", "iq4_nl", "mxfp4", "iq4_xs", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "mixed"
std::string quant_scheme_name(QuantScheme scheme);

// The type a matrix of `cols` columns gets when `wanted` is asked: a row must be whole blocks,
// so an IQ4_XS / Q2_K / Q3_K / Q4_K / Q5_K / Q6_K matrix whose columns are not a multiple of 256 falls back to Q8_0 (as llama.cpp's
// quantizer falls back for such tensors), and one not a multiple of 32 keeps its stored dtype.
DType block_type_for(DType wanted, int64_t cols, DType stored);

// Counts of the matrices written per dtype, and the fallbacks taken ("tensor: Q4_K -> Q8_0").
struct QuantizeSummary {
  std::map<std::string, int> matrices_per_dtype;
  std::vector<std::string> fallbacks;
};

// Writes OUT atomically: everything goes into a sibling temporary directory renamed to OUT at
// the end, which is removed if anything fails. OUT must not exist.
QuantizeSummary quantize_model(const std::filesystem::path& model, const std::filesystem::path& out,
                               QuantScheme scheme);

}  // namespace crossmoe
