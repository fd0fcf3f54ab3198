#pragma once
// GGUF files as models: llama.cpp's metadata keys and tensor names mapped onto the one model
// description (config.hpp) and the Hugging Face tensor names of tensor_names.hpp, in both
// directions. Architectures: llama (dense, and with experts as Mixtral), qwen3, qwen3moe, olmoe,
// deepseek2.
//
// Facts taken from llama.cpp (src/llama-arch.cpp's key and tensor tables, src/models/*.cpp, and
// convert_hf_to_gguf.py):
//   - keys are "<arch>.block_count", "<arch>.attention.head_count", ... ; tensors
//     "token_embd.weight", "blk.N.attn_q.weight", "blk.N.ffn_gate_exps.weight" (all experts of a
//     layer in one [E, rows, cols] tensor), ...
//   - for the llama architecture the converter reorders the rows of attn_q and attn_k (weights and
//     biases) within each head, because llama.cpp rotates adjacent pairs of a head where
//     transformers rotates its two halves: HF row h*D + j*D/2 + i is stored at h*D + 2*i + j
//     (D the head size, j in {0, 1}, i < D/2; heads of K counted with the KV head count).
//     Reading undoes exactly that; writing does it.
//   - routed weights: qwen3moe and llama (Mixtral) always renormalise the top-k weights, olmoe
//     never; softmax routers throughout.
//   - deepseek2 (DeepSeek-V2 / V3; src/models/deepseek2.cpp, conversion/deepseek.py): the converter
//     writes latent attention as one key-value head (attention.key_length = kv_lora_rank + rope
//     dims, value_length = kv_lora_rank) with the per-head widths in key_length_mla /
//     value_length_mla, and splits kv_b_proj per head into attn_k_b ([heads, kv_lora_rank,
//     qk_nope], k's rows transposed) and attn_v_b ([heads, v, kv_lora_rank]); reading joins them
//     back. RoPE on adjacent pairs; every norm, the latent ones too, takes the file's epsilon.
//     Routing: expert_gating_func (1 softmax, 2 sigmoid; absent: softmax, but sigmoid for
//     GLM-4.7-Flash's shape), exp_probs_b biases the choice, groups score as the sum of their best
//     two, expert_weights_norm renormalises and expert_weights_scale scales. YaRN: the
//     converter's yarn_log_multiplier is 0.1 * mscale_all_dim; llama.cpp then leaves the rotation
//     unscaled and multiplies the softmax scale by (1 + 0.1 * mscale_all_dim * ln factor)^2.
//     Writing does the same backwards, attention.q_lora_rank written as 0 without a q projection
//     (llama.cpp requires the key unless the layer count is DeepSeek-V2-Lite's).
#include <cstddef>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "model/config.hpp"
#include "model/gguf.hpp"
#include "model/safetensors.hpp"

namespace crossmoe {

// The description a GGUF file's metadata and tensor shapes give; throws Error naming the file and
// the key or tensor for anything crossmoe cannot run exactly.
ModelConfig gguf_model_config(const GgufFile& file);

// The file's tensors under their Hugging Face names and shapes (experts split out of the merged
// tensors, Q/K rows of llama put back in transformers' order: those are copied into `owned`, the
// rest point into the file). Every tensor must have a place in the description.
std::vector<TensorView> gguf_tensor_views(const GgufFile& file, const ModelConfig& config,
                                          std::vector<std::unique_ptr<std::byte[]>>& owned);
// The file's tensors of which `keep` (over Hugging Face names) wants none: those GgufFile::
// copy_into_memory leaves in the file (a layer's merged routed experts, for the expert cache).
std::set<std::string> gguf_tensors_left_out(const GgufFile& file, const ModelConfig& config,
                                            const std::function<bool(const std::string&)>& keep);

// The llama.cpp architecture a description is written as; throws naming what no shared
// architecture expresses (shared experts, cross-layer pools, sigmoid routers, ...).
std::string gguf_architecture(const ModelConfig& config);
// The GGUF tensor name of a Hugging Face one, and whether its rows are permuted (llama Q/K) with
// how many heads; experts map to the merged tensor's name. Empty when the name has no GGUF place.
struct GgufName {
  std::string name;
  int permute_heads = 0;  // 0: rows as they are
  int expert = -1;        // index inside a merged experts tensor
};
GgufName gguf_name_of(const ModelConfig& config, const std::string& arch, const std::string& hf_name);
// Reorders rows within heads as convert_hf_to_gguf.py's permute does (to_gguf) or back.
void permute_head_rows(const std::byte* in, std::byte* out, int64_t rows, size_t row_bytes, int heads, bool to_gguf);
// The rope_freqs tensor's values (LLaMA-3 scaling as divisors per frequency); empty when none.
std::vector<float> gguf_rope_freq_factors(const ModelConfig& config);
// The metadata keys of the description (general.*, <arch>.*), without tokenizer keys.
void add_gguf_model_metadata(GgufWriter& writer, const ModelConfig& config, const std::string& name);

// tokenizer.ggml.eos/eot/bos_token_id: the tokens generation ends on and the BOS (also in files
// without a vocabulary; add_bos_token / add_eos_token go with the tokenizer's metadata).
void add_gguf_special_tokens(GgufWriter& writer, const ModelConfig& config);

}  // namespace crossmoe
