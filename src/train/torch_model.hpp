#pragma once
// The model in libtorch, built from the same description (ModelConfig) as the runtime, for every
// layout. Parameters live in a map keyed by their Hugging Face tensor names (model/tensor_names),
// so loading a checkpoint, exporting one and the runtime all agree on names by construction.
//
// One MoE layer, for the N tokens of a batch (u = the layer's FFN input, u_prev = the previous
// layer's when the model is pre-gated):
//   s = W_router u_prev_or_u           [N, C] one logit per candidate (C = the group's pools)
//   masked candidates (progressive scaling routing) get s = -inf
//   p = softmax(s) or sigmoid(s);  pick top-K of p (+ correction bias; grouped top-k first)
//   w = p[top] (renormalised if norm_topk_prob) * routed_scaling_factor
//   out = sum_k w_k Expert_{top_k}(u) + Shared(u)
// Dispatch sorts the N*K (token, candidate) pairs by candidate and runs each expert once on its
// rows; nothing is dropped unless a capacity factor is given.
#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/config.hpp"
#include "model/rope.hpp"
#include "model/tensor_names.hpp"
#include "train/train_options.hpp"
#include "util/dtype.hpp"

namespace crossmoe::train {

// N_t for a pool of `experts` per layer and group size `r` (candidates = r * experts).
int psr_pool_size(int experts, int r, int64_t step, const PsrSchedule& schedule);

// How routed experts run: a loop over experts, each on its rows (best on CPU), or three batched
// products over all experts with rows padded to the busiest expert (fewer kernels: best on GPU).
// How a MoE layer runs its experts. Off: a loop over the experts that have tokens; On: three
// batched products over a [candidates, busiest, d] buffer. Both need the per-expert token counts
// on the host. Dense: every candidate on every token, weighted by the routing weights (zero for
// those not chosen): C/K times the arithmetic, but no host sync, for decode steps of a few tokens
// a row where the launches and the sync, not the arithmetic, take the time. GroupedMM: three
// grouped matrix products (at::_grouped_mm, libtorch 2.8 or later on CUDA, bf16) over the rows
// sorted by expert, each expert's rows ending at an offset computed on the device: no padding and
// no host sync (grouped_mm_available says whether this build and device have it). Auto: GroupedMM
// where it applies (see TorchModel::moe), else On on CUDA, Off on the CPU.
enum class GroupedExperts { Auto, On, Off, Dense, GroupedMM };
bool grouped_mm_available(const torch::Device& device);
// Whether this build has libtorch's RMSNorm (at::rms_norm, libtorch 2.4 or later, probed at build time),
// which ForwardOptions::fused_kernels uses on CUDA.
bool fused_rms_norm_built();

// Expert parallelism: the routed experts of every pool split across `ranks` processes, expert i of
// each pool on rank i / (E / ranks) (expert_rank), so that a Megrez2 pool shared by r layers lives
// once, split the same way, and a ReXMoE router over r pools reaches every rank. Each process holds
// its own experts only (TorchModel::drop_tensors); a MoE layer sends each (token, expert) row to its
// expert's rank and the expert's output back, through `exchange`.
struct ExpertParallel {
  int rank = 0, ranks = 1;
  // Sums a tensor on the model's device over the ranks, in place (the rows each rank sends to each expert).
  std::function<void(torch::Tensor&)> sum;
  // All-to-all, differentiable: rows [n, d] ordered by destination, send[r] of them for rank r;
  // returns the rows the ranks sent here, recv[s] from rank s, in rank order. Its gradient travels
  // back the same way.
  std::function<torch::Tensor(const torch::Tensor&, const std::vector<int64_t>& send, const std::vector<int64_t>& recv)>
      exchange;
};
// An Error unless `config` has routed experts whose count per pool `ranks` divides (--ep).
void check_expert_parallel(const ModelConfig& config, int ranks);
// The rank that holds a routed expert when they are split across `ranks` (which divides the experts per pool).
int expert_rank(const ModelConfig& config, const ExpertRef& expert, int ranks);
// Every routed expert's tensor names and the rank that holds them, and those that ranks other than
// `rank` hold.
std::map<std::string, int> expert_tensor_ranks(const ModelConfig& config, int ranks);
std::vector<std::string> other_ranks_experts(const ModelConfig& config, int rank, int ranks);

// Tensor parallelism (Megatron-LM's): every matrix product of attention and of the FFNs split
// across the `ranks` processes of a group, which all see the same tokens. Attention's heads are
// split (q, k, v by rows: rank i holds query heads i*Hq/N ... and the kv heads they read, so N must
// divide the kv heads; o by columns); each FFN (dense, shared experts, and every routed expert) is
// split along its intermediate width (gate and up by rows, down by columns). Routed experts are
// split rather than replicated so that their memory and arithmetic divide like the rest; the router,
// the choice of experts, norms, embeddings and the LM head are replicated (computed alike on every
// rank). A split block takes its replicated input through `enter` and its partial outputs leave
// through one `reduce` (attention's o product; the FFN's shared plus routed parts together).
// Replicated tensors used inside a split block enter the same way, so that their gradient gets every
// rank's share: a routed expert's weight in the token's output (the router's gradient), per-head
// q/k norm weights.
struct TensorParallel {
  int rank = 0, ranks = 1;
  // Identity forward; the backward pass sums the gradient over the ranks (Megatron's f).
  std::function<torch::Tensor(const torch::Tensor&)> enter;
  // Sums the ranks' partial results forward; the gradient passes through unchanged (Megatron's g).
  std::function<torch::Tensor(const torch::Tensor&)> reduce;
};
// An Error naming the --tp flag unless `ranks` divides the kv heads and every FFN width of `config`.
void check_tensor_parallel(const ModelConfig& config, int ranks);
// The tensors that tensor parallelism splits, with the dimension: 0 (rows: q, k, v, their biases and
// full-width q/k norms, gate and up) or 1 (columns: o, down). The rest are replicated. Rank i holds
// the i-th of `ranks` equal consecutive slices (tensor_parallel_slice); gathering is concatenating.
std::map<std::string, int> tensor_parallel_splits(const ModelConfig& config);
torch::Tensor tensor_parallel_slice(const torch::Tensor& whole, int dim, int rank, int ranks);

struct ForwardOptions {
  // Per layer: empty, or a bool tensor of the candidates a router may pick: [candidates] for every
  // token, or [tokens, candidates] per token (tokens in batch-major order).
  std::vector<torch::Tensor> allowed;
  // Matrix products run in this type (bf16 on GPU); norms, softmax and the loss stay in float32.
  torch::ScalarType compute_dtype = torch::kFloat32;
  // 0 = no cap; otherwise an expert takes at most ceil(factor * N * K / open) rows, the rest dropped,
  // open = the candidates a step's mask leaves (all C without one, or with per-token masks).
  double capacity_factor = 0.0;
  GroupedExperts grouped_experts = GroupedExperts::Auto;
  // Data parallelism: sums a tensor over the ranks in place, and their count; the balancing loss is
  // then that of the global batch (unset: this process's batch is the whole batch).
  std::function<void(torch::Tensor&)> sum_over_ranks;
  int ranks = 1;
  ExpertParallel expert_parallel;  // ranks > 1: this model holds only its rank's routed experts
  TensorParallel tensor_parallel;  // ranks > 1: this model holds its rank's slices (keep_tensor_parallel_slices)
  // On CUDA, libtorch's RMSNorm (at::rms_norm, fused kernels; built in where the libtorch has it); false:
  // the norm composed of elementwise kernels, as on the CPU (train --fused off, for comparison).
  bool fused_kernels = true;
};

// Keys and values of past tokens for incremental decoding: one row per sequence, each with its
// own length, so sequences of different lengths decode in one batch.
struct KvCache {
  std::vector<torch::Tensor> k, v;  // per layer [rows, capacity, kv_heads, head_dim], compute dtype
  std::vector<int64_t> lengths;     // tokens cached per row
  int64_t capacity = 0;
};

struct ForwardResult {
  torch::Tensor logits;                 // [B, T, vocab], float32
  torch::Tensor aux_loss;               // mean over MoE layers of C * sum_i f_i * P_i (0 without MoE)
  std::vector<torch::Tensor> expert_load;  // per layer: tokens routed to each candidate [C] (empty: dense)
};

class TorchModel {
 public:
  // Random initialisation: weights ~ N(0, 0.02), output projections scaled by 1/sqrt(2 layers),
  // norms 1, correction biases 0. Deterministic for a seed.
  TorchModel(const ModelConfig& config, uint64_t seed, torch::Device device, torch::ScalarType dtype = torch::kFloat32);
  // Weights from a Hugging Face model directory that the runtime can load.
  static TorchModel load(const std::filesystem::path& model_dir, torch::Device device,
                         torch::ScalarType dtype = torch::kFloat32);

  const ModelConfig& config() const { return config_; }
  torch::Device device() const { return device_; }

  // tokens: [B, T] int64. u_{l} of a pre-gated model is the previous layer's FFN input.
  ForwardResult forward(const torch::Tensor& tokens, const ForwardOptions& options = {}) const;

  // An empty cache of `rows` sequences of up to `capacity` tokens.
  KvCache new_cache(int64_t rows, int64_t capacity, torch::ScalarType compute_dtype = torch::kFloat32) const;
  // Appends tokens[i, :counts[i]] to row rows[i] of the cache (tokens [R, S] int64 on the model's
  // device, right-padded; 1 <= counts[i] <= S) and returns the logits of those positions [R, S, vocab]
  // (padding positions hold garbage), or with last_only [R, 1, vocab] at each row's last new token.
  // The same layers as forward(): one model, two attention paths.
  ForwardResult forward_cached(const torch::Tensor& tokens, const std::vector<int64_t>& counts,
                               const std::vector<int64_t>& rows, KvCache& cache, const ForwardOptions& options = {},
                               bool last_only = false) const;

  // One decode step of a token for each of R batch rows, from device tensors alone: no host work
  // and, with GroupedExperts::Dense, no host sync, so that a CUDA graph can capture it (the rollout
  // engine's DecodeGraphs). tokens [R, 1] int64; rows [R]: the cache row of each; positions [R]: the
  // slot each token takes and the last key it sees (padding rows point at a slot that no live row
  // reads); cos, sin: decode_rope(positions) on the model's device in the accumulation type. Keys
  // 0..keys-1 are read. Returns the logits [R, vocab]; the caller advances cache.lengths.
  torch::Tensor decode_rows(const torch::Tensor& tokens, const torch::Tensor& rows, const torch::Tensor& positions,
                            const torch::Tensor& cos, const torch::Tensor& sin, int64_t keys, KvCache& cache,
                            const ForwardOptions& options) const;
  // Rotary cos and sin [R, 1, 1, head_dim/2] (float32, on the host) of one new token at each position.
  std::pair<torch::Tensor, torch::Tensor> decode_rope(const std::vector<int64_t>& positions) const;

  // Trainable tensors (everything but the routers' correction biases), in name order.
  std::vector<std::string> trainable_names() const;
  // A tensor by its Hugging Face name. A routed expert's projection is a view into its pool's stack
  // (see ExpertStorage): assigning another tensor here is allowed, and the next forward pass copies
  // it into a fresh stack and makes it a view again (the same tensor object, so handles stay valid).
  torch::Tensor& tensor(const std::string& name) { return tensors_.at(name); }
  const std::map<std::string, torch::Tensor>& tensors() const { return tensors_; }
  // Expert parallelism: forget the tensors other ranks hold (other_ranks_experts), and take them
  // back (rank 0, gathered for a checkpoint or the export).
  void drop_tensors(const std::vector<std::string>& names);
  void add_tensors(const std::map<std::string, torch::Tensor>& tensors);
  // Tensor parallelism: every split tensor it holds replaced by rank `rank`'s slice of it.
  void keep_tensor_parallel_slices(int rank, int ranks);

  // Aux-loss-free balancing (DeepSeek-V3): b_i += rate * sign(mean load - load_i) over the
  // candidates allowed this step, for every router with a correction bias.
  void update_router_biases(const std::vector<torch::Tensor>& expert_load, const std::vector<torch::Tensor>& allowed,
                            double rate);

  // Writes config.json, generation_config.json and model.safetensors (tensors converted to dtype).
  void export_hf(const std::filesystem::path& dir, DType dtype) const;

 private:
  TorchModel(const ModelConfig& config, torch::Device device);
  struct CachedStep;  // where forward_cached's new tokens go and what they may attend to
  // The routed experts' weights, stored stacked: for each distinct candidate list (a layer's pool, a
  // Megrez2 group's shared pool, a ReXMoE group's r pools) and projection, one [candidates, out, in]
  // tensor, whose slices the per-expert tensors of tensors_ are (set_ onto its storage). The grouped
  // and padded products read the stack as it is, with no stacking copy in each forward pass; the
  // gradient reaches the per-expert tensors, which the optimizer, checkpoints, the export and the
  // parallel layouts keep handling by name.
  struct ExpertStorage;
  // Makes every stack current: a list whose held experts (all, or under expert parallelism this
  // rank's share) are not all views of its stack (a tensor replaced by a checkpoint's load, sliced by
  // tensor parallelism, dropped or taken back by expert parallelism) gets a fresh stack of the held
  // ones, holding their values; the old stack's memory goes with the last view of it.
  void bind_expert_storage() const;
  // Each set of experts' stacked weights in the compute type, taken once per forward pass (run) from
  // its ExpertStorage stack and shared by every layer that routes over the same experts: a Megrez2
  // group's r layers share one pool, a ReXMoE group's routers the same r pools, and all of a layer's
  // uses share its stacks.
  struct ExpertStacks;
  ForwardResult run(const torch::Tensor& tokens, const torch::Tensor& cos, const torch::Tensor& sin,
                    const ForwardOptions& options, CachedStep* step) const;
  // rope_cos, rope_sin: the rotary tables at full head width, [cos, cos] and [-sin, sin].
  torch::Tensor attention(int layer, const torch::Tensor& x, const torch::Tensor& rope_cos, const torch::Tensor& rope_sin,
                          const ForwardOptions& options, CachedStep* step) const;
  torch::Tensor swiglu(const torch::Tensor& u, const std::string& gate, const std::string& up, const std::string& down,
                       torch::ScalarType compute) const;
  torch::Tensor moe(int layer, const torch::Tensor& u, const torch::Tensor& router_in, const ForwardOptions& options,
                    ExpertStacks& stacks, torch::Tensor& aux, torch::Tensor& load) const;
  // The routed experts on rows sorted by expert: counts[i] rows for experts[i], in that order.
  // Returns their outputs [rows, d] in the same order (compute type).
  torch::Tensor run_experts(const torch::Tensor& rows, const std::vector<int64_t>& counts,
                            const std::vector<ExpertRef>& experts, const ForwardOptions& options,
                            ExpertStacks& stacks) const;
  // The same under expert parallelism: rows sorted by (rank, candidate), counts[c] rows for
  // candidate c; every rank runs its experts on the rows all ranks sent it, and the outputs come back.
  torch::Tensor run_experts_across_ranks(int layer, const torch::Tensor& rows, const std::vector<int64_t>& counts,
                                         const ForwardOptions& options, ExpertStacks& stacks) const;
  // GroupedExperts::GroupedMM: rows sorted by expert, experts[i]'s rows ending at ends[i] (int32,
  // on the device). Returns their outputs in the same order (compute type).
  torch::Tensor run_experts_grouped_mm(const torch::Tensor& rows, const torch::Tensor& ends,
                                       const std::vector<ExpertRef>& experts, torch::ScalarType compute,
                                       ExpertStacks& stacks) const;
  // One projection of every expert in `experts`, stacked: [experts, out, in], compute type; taken on
  // the first call of a forward pass (from the stored stack: no copy in its own type, one conversion
  // to another), the same tensor after that.
  torch::Tensor stacked_experts(const std::vector<ExpertRef>& experts, Proj proj, torch::ScalarType compute,
                                ExpertStacks& stacks) const;
  const torch::Tensor& w(const std::string& name) const { return tensors_.at(name); }

  ModelConfig config_;
  torch::Device device_;
  std::map<std::string, torch::Tensor> tensors_;
  RopeTable rope_;
  std::shared_ptr<ExpertStorage> expert_storage_;  // shared: a copied model shares its tensors too
};

// Writes name -> tensor maps as safetensors (float32, or converted to dtype); reads them back.
void save_tensors(const std::filesystem::path& path, const std::map<std::string, torch::Tensor>& tensors,
                  DType dtype = DType::F32);
std::map<std::string, torch::Tensor> load_tensors(const std::filesystem::path& path, torch::Device device);

}  // namespace crossmoe::train
