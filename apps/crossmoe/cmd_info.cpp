// crossmoe info MODEL: layout, cross-layer groups, parameter counts and memory needed.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "commands.hpp"
#include "memory_budget_options.hpp"
#include "model/checkpoint.hpp"
#include "model/gguf.hpp"
#include "model/config.hpp"
#include "model/hf_config.hpp"
#include "runtime/expert_cache.hpp"
#include "runtime/kv_pool.hpp"
#include "util/error.hpp"

namespace crossmoe::cli {

namespace {

std::string human(double n, const char* unit) {
  const char* prefixes[] = {"", "K", "M", "G", "T"};
  int i = 0;
  while (n >= 1000 && i < 4) n /= 1000, ++i;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f %s%s", n, prefixes[i], unit);
  return buf;
}

// What a --memory-budget means for this model: how many routed experts fit, what stays resident.
void print_budget(const ModelConfig& c, const Checkpoint& ck, const std::string& budget_text) {
  const ExpertCachePlan plan = plan_expert_cache(c, ck, parse_memory_budget(budget_text));
  const double resident = double(ck.total_bytes()) - double(plan.routed_bytes);
  std::printf("budget       %s: %lld of %lld routed experts of up to %s (%.1f%% of their %s); one token needs %d\n",
              budget_text.c_str(), (long long)plan.slots, (long long)plan.experts,
              human(double(plan.expert_bytes), "B").c_str(), 100.0 * double(plan.slots) / double(plan.experts),
              human(double(plan.routed_bytes), "B").c_str(), plan.min_slots);
  std::printf("resident     %s of other weights (attention, norms, routers, embeddings, shared experts) + %s of "
              "expert cache (slots padded for direct I/O)\n",
              human(resident, "B").c_str(), human(double(plan.slots) * double(plan.slot_bytes), "B").c_str());
}

void run_info(const std::string& dir, int context, const std::string& budget) {
  const ModelConfig c = read_model_config(dir);
  const ParamCounts p = count_parameters(c);
  // The weights are checked before anything is printed, so a mismatch is the only output.
  std::optional<Checkpoint> ck;
  if (std::filesystem::exists(std::filesystem::path(dir) / "model.safetensors") ||
      std::filesystem::exists(std::filesystem::path(dir) / "model.safetensors.index.json") || is_gguf_file(dir)) {
    ck.emplace(dir);
    check_weights_match(*ck, c);
  }
  std::printf("model        %s (%s)\n", dir.c_str(), c.model_type.c_str());
  std::printf("shape        %d layers, hidden %d, %d heads / %d kv heads of %d, vocab %d\n", c.num_layers,
              c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size);
  if (const auto& a = c.latent_attention)
    std::printf("latent       q %s, kv latent %d + shared rope key %d; per head k %d + %d (rope%s), v %d; "
                "softmax scale x%g\n",
                a->q_lora_rank > 0 ? ("latent " + std::to_string(a->q_lora_rank)).c_str() : "projected directly",
                a->kv_lora_rank, a->qk_rope_head_dim, a->qk_nope_head_dim, a->qk_rope_head_dim,
                a->rope_interleave ? ", interleaved pairs" : "", a->v_head_dim, c.attention_scale_factor);
  std::printf("attention    q/k norm %s, rope %s theta %g%s%s\n", to_string(c.qk_norm).c_str(),
              to_string(c.rope.type).c_str(), c.rope.theta, c.tie_word_embeddings ? ", tied embeddings" : "",
              c.sliding_window ? (", sliding window " + std::to_string(c.sliding_window)).c_str() : "");
  int moe_layers = 0, groups = 0;
  for (const auto& plan : c.layers) moe_layers += plan.is_moe, groups = std::max(groups, plan.group + 1);
  if (moe_layers == 0) {
    std::printf("ffn          dense SwiGLU, width %d\n", c.intermediate_size);
  } else {
    const MoeConfig& m = c.moe;
    std::printf("moe          %d of %d layers; %d experts per pool of width %d, top-%d, shared width %d\n",
                moe_layers, c.num_layers, m.num_experts, m.expert_intermediate_size, m.top_k,
                m.shared_intermediate_size);
    std::printf("router       %s%s%s, scaling %g%s\n", to_string(m.scoring).c_str(),
                m.score_correction_bias ? " + correction bias" : "", m.norm_topk_prob ? ", renormalised" : "",
                m.routed_scaling_factor, m.pre_gated ? ", pre-gated (reads the previous layer)" : "");
    std::printf("cross-layer  %s, r = %d, %d groups\n", to_string(m.cross_layer).c_str(), m.group_size, groups);
    std::printf("layers       ");
    for (int l = 0; l < c.num_layers; ++l) {
      const LayerPlan& plan = c.layers[l];
      if (!plan.is_moe) std::printf("%d:dense ", l);
      else std::printf("%d:g%d%s/%zu ", l, plan.group, plan.owns_experts ? "*" : "", plan.candidates.size());
    }
    std::printf("  (* owns a pool, /N router candidates)\n");
  }
  std::printf("parameters   %s stored, %s active per token (%s / %s without embeddings)\n",
              human(double(p.stored), "").c_str(), human(double(p.active), "").c_str(),
              human(double(p.stored_non_embedding()), "").c_str(), human(double(p.active_non_embedding()), "").c_str());
  const double kv_bytes = double(KvPool::bytes_per_position(c)) * context;
  if (ck) {
    std::printf("memory       %s of weights in %zu tensors, + %s KV cache for %d tokens\n",
                human(double(ck->total_bytes()), "B").c_str(), ck->num_tensors(), human(kv_bytes, "B").c_str(), context);
    // The dtypes by bytes, largest first: what a GGUF file's mix (Q4_K_M, MXFP4_MOE, ...) holds.
    std::vector<std::pair<DType, std::pair<size_t, int>>> types;
    for (const auto& entry : ck->bytes_by_dtype()) types.push_back(entry);
    std::stable_sort(types.begin(), types.end(), [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
    std::string listed;
    for (const auto& [type, bytes_tensors] : types)
      listed += (listed.empty() ? "" : ", ") + dtype_name(type) + " " + human(double(bytes_tensors.first), "B") + " (" +
                std::to_string(bytes_tensors.second) + ")";
    std::printf("types        %s\n", listed.c_str());
  } else {
    std::printf("memory       %s of weights at bf16, + %s KV cache for %d tokens\n",
                human(2.0 * double(p.stored), "B").c_str(), human(kv_bytes, "B").c_str(), context);
  }
  if (!budget.empty()) {
    require(ck.has_value(), "--memory-budget needs the weights: no model.safetensors in " + dir);
    print_budget(c, *ck, budget);
  }
}

}  // namespace

void add_info(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  auto context = std::make_shared<int>(4096);
  auto budget = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("info", "Show a model's layout, parameters and memory needs; check the weights against config.json");
  cmd->add_option("model", *dir, "Model directory (config.json, safetensors) or GGUF file")->required();
  cmd->add_option("--ctx", *context, "Context length for the KV cache estimate")->capture_default_str()->check(positive());
  cmd->add_option("--memory-budget", *budget,
                  "Also say what this budget for routed experts holds (bytes such as 512M, or a percentage such as 25%)")
      ->check(memory_budget_check());
  cmd->callback([dir, context, budget] { run_info(*dir, *context, *budget); });
}

}  // namespace crossmoe::cli
