#include "train/torch_model.hpp"

#include <torch/version.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <mutex>
#include <numeric>

#include "model/checkpoint.hpp"
#include "model/hf_config.hpp"
#include "model/init.hpp"
#include "model/safetensors.hpp"
#include "model/tensor_names.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

namespace crossmoe::train {

namespace tn = tensor_names;

int psr_pool_size(int experts, int r, int64_t step, const PsrSchedule& s) {
  if (!s.enabled() || step >= s.end) return r * experts;
  if (step < s.start) return experts;
  const double progress = double(step - s.start) / double(s.end - s.start);
  return static_cast<int>(std::floor((1.0 + (r - 1) * progress) * experts));
}

namespace {

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
// Keeps scaled_dot_product_attention off cuDNN's kernel while it lives. cuDNN builds an execution
// plan for every new shape, and the cached path's shapes (rows, keys) change at every decode step:
// on an H200 its attention took 0.5 ms a call on average in `rl bench --profile`, and self-play
// decoded at a third of a warm benchmark's speed. The other kernels take masks without plans.
class NoCudnnAttention {
 public:
  NoCudnnAttention() : was_(at::globalContext().userEnabledCuDNNSDP()) { at::globalContext().setSDPUseCuDNN(false); }
  ~NoCudnnAttention() { at::globalContext().setSDPUseCuDNN(was_); }
  NoCudnnAttention(const NoCudnnAttention&) = delete;
  NoCudnnAttention& operator=(const NoCudnnAttention&) = delete;

 private:
  bool was_;
};
#else
struct NoCudnnAttention {};  // no cuDNN attention before libtorch 2.3
#endif

torch::ScalarType torch_type(DType dtype) {
  switch (dtype) {
    case DType::F32: return torch::kFloat32;
    case DType::BF16: return torch::kBFloat16;
    case DType::F16: return torch::kFloat16;
    default: throw Error("trainer: unsupported dtype " + dtype_name(dtype));
  }
}

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight, torch::ScalarType compute) {
  return at::linear(x.to(compute), weight.to(compute));
}

// Norms, softmax, residuals and the loss run in float32, or in double when everything is double
// (the gradient check).
torch::ScalarType accumulate_type(torch::ScalarType compute) {
  return compute == torch::kDouble ? torch::kDouble : torch::kFloat32;
}

// On CUDA with fused kernels allowed, libtorch's RMSNorm (one fused kernel forward and one backward
// where the libtorch has them, instead of five elementwise and reduction kernels each way over the
// float32 activations); the same function, to float rounding.
torch::Tensor rmsnorm(const torch::Tensor& x, const torch::Tensor& weight, double eps, bool fused) {
  const torch::Tensor xf = x.to(accumulate_type(weight.scalar_type()));
#ifdef CROSSMOE_HAVE_RMS_NORM
  if (fused && xf.is_cuda() && weight.scalar_type() == xf.scalar_type()) return at::rms_norm(xf, {xf.size(-1)}, weight, eps);
#else
  (void)fused;
#endif
  return xf * torch::rsqrt(xf.pow(2).mean(-1, true) + eps) * weight.to(xf.scalar_type());
}

// HF's rotate_half convention: dims i and i + hd/2 form a pair, (a, b) -> (a cos - b sin, b cos + a sin).
// Written as x * [cos, cos] + [b, a] * [-sin, sin] (rope_tables): the same operations on the same
// values, so the same bits, in four kernels instead of seven.
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos2, const torch::Tensor& signed_sin2) {
  const int64_t half = x.size(-1) / 2;
  return x * cos2 + torch::cat({x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1) * signed_sin2;
}
std::pair<torch::Tensor, torch::Tensor> rope_tables(const torch::Tensor& cos, const torch::Tensor& sin) {
  return {torch::cat({cos, cos}, -1), torch::cat({-sin, sin}, -1)};
}

// A stack of expert weights [experts, out, in] in the compute type, as a function of the per-expert
// tensors that are its slices (TorchModel::ExpertStorage): the forward pass reads the stack itself
// (converted once, or as it is in its own type), the backward pass converts the stack's gradient once
// and hands each expert its slice. The same values and gradients as stacking the experts, without the
// stacking copy.
struct UseExpertStack : torch::autograd::Function<UseExpertStack> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& stack, at::TensorList experts,
                               torch::ScalarType compute) {
    ctx->saved_data["type"] = stack.scalar_type();
    ctx->saved_data["experts"] = int64_t(experts.size());
    return stack.to(compute);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const int64_t n = ctx->saved_data["experts"].toInt();
    torch::autograd::variable_list out(size_t(n + 2));  // the stack, each expert, the compute type
    if (!grads[0].defined()) return out;
    const torch::Tensor g =
        grads[0].to(ctx->saved_data["type"].toScalarType(), false, false, c10::MemoryFormat::Contiguous);
    for (int64_t i = 0; i < n; ++i) out[size_t(i + 1)] = g[i];
    return out;
  }
};

// Rows of x picked by `index` (x.index_select(0, index)), each row of x picked `per_row` times, at
// output rows back[r * per_row], ..., back[r * per_row + per_row - 1]: the gradient of x's row r is
// the sum of those rows of the output's gradient, gathered and summed in that order instead of
// scattered with an index_add (atomic adds on CUDA: float32, and not repeatable).
struct GatherRows : torch::autograd::Function<GatherRows> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& index,
                               const torch::Tensor& back, int64_t per_row) {
    ctx->saved_data["back"] = back;
    ctx->saved_data["per_row"] = per_row;
    ctx->saved_data["rows"] = x.size(0);
    return x.index_select(0, index);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list out(4);  // x, index, back, per_row
    if (!grads[0].defined()) return out;
    const int64_t per_row = ctx->saved_data["per_row"].toInt();
    const torch::Tensor picked = grads[0].index_select(0, ctx->saved_data["back"].toTensor());
    out[0] = per_row == 1 ? picked : picked.view({ctx->saved_data["rows"].toInt(), per_row, -1}).sum(1);
    return out;
  }
};

}  // namespace

struct TorchModel::ExpertStorage {
  struct List {
    std::vector<ExpertRef> experts;
    std::array<std::vector<std::string>, 3> names;  // by Proj: each expert's tensor name
    // By Proj: the experts this model holds (all, or an expert-parallel rank's share), in list order,
    // the tensors that are their slices of the stack, and the stack (undefined when it holds none).
    std::array<std::vector<ExpertRef>, 3> held;
    std::array<std::vector<torch::Tensor>, 3> members;
    std::array<torch::Tensor, 3> stack;
  };
  std::vector<List> lists;  // one per distinct candidate list of the model's MoE layers
  std::mutex mutex;
};

TorchModel::TorchModel(const ModelConfig& config, torch::Device device)
    : config_(config),
      device_(device),
      rope_(config.rope, config.head_dim, config.max_position_embeddings),
      expert_storage_(std::make_shared<ExpertStorage>()) {
  require(!config_.layers.empty(), "trainer: the model description is not finalized");
  require(!config_.latent_attention, "trainer: multi-head latent attention (" + config_.model_type +
                                         ") is not supported; the runtime runs such models, the trainer does not");
  for (const LayerPlan& plan : config_.layers) {
    if (plan.candidates.empty()) continue;
    std::vector<ExpertStorage::List>& lists = expert_storage_->lists;
    if (std::any_of(lists.begin(), lists.end(), [&](const auto& list) { return list.experts == plan.candidates; }))
      continue;
    ExpertStorage::List& list = lists.emplace_back();
    list.experts = plan.candidates;
    for (const Proj proj : {Proj::Gate, Proj::Up, Proj::Down})
      for (const ExpertRef& e : plan.candidates)
        list.names[size_t(proj)].push_back(tn::expert(config_, e.owner_layer, e.index, proj));
  }
}

void TorchModel::bind_expert_storage() const {
  ExpertStorage& storage = *expert_storage_;
  const std::lock_guard lock(storage.mutex);
  for (ExpertStorage::List& list : storage.lists)
    for (size_t p = 0; p < 3; ++p) {
      torch::Tensor& stack = list.stack[p];
      std::vector<torch::Tensor>& members = list.members[p];
      std::vector<torch::Tensor> now;
      std::vector<ExpertRef> held;
      for (size_t i = 0; i < list.names[p].size(); ++i) {
        const auto it = tensors_.find(list.names[p][i]);
        if (it == tensors_.end()) continue;  // another expert-parallel rank's
        now.push_back(it->second);
        held.push_back(list.experts[i]);
      }
      list.held[p] = held;
      if (now.empty()) {
        stack = torch::Tensor();
        members.clear();
        continue;
      }
      bool bound = stack.defined() && members.size() == now.size();
      for (size_t i = 0; bound && i < now.size(); ++i) {
        const torch::Tensor& t = now[i];
        bound = t.unsafeGetTensorImpl() == members[i].unsafeGetTensorImpl() && t.is_alias_of(stack) &&
                t.storage_offset() == stack.storage_offset() + int64_t(i) * stack.stride(0) &&
                t.sizes() == stack.sizes().slice(1) && t.strides() == stack.strides().slice(1);
      }
      if (bound) continue;
      torch::NoGradGuard no_grad;
      std::vector<torch::Tensor> values;
      for (const torch::Tensor& t : now) values.push_back(t.detach());
      stack = torch::stack(values);
      for (size_t i = 0; i < now.size(); ++i) {
        const torch::Tensor slice = stack[int64_t(i)];
        now[i].set_(stack.storage(), slice.storage_offset(), slice.sizes(), slice.strides());
      }
      members = now;
    }
}

TorchModel::TorchModel(const ModelConfig& config, uint64_t seed, torch::Device device, torch::ScalarType dtype)
    : TorchModel(config, device) {
  torch::manual_seed(seed);
  const double out_scale = 1.0 / std::sqrt(2.0 * config.num_layers);
  for (const TensorSpec& spec : expected_tensors(config)) {
    torch::Tensor t;
    const auto opts = torch::TensorOptions().dtype(torch::kFloat32);
    if (spec.role == TensorRole::Norm) {
      t = torch::ones(spec.shape, opts);
    } else if (spec.role == TensorRole::Bias) {
      t = torch::zeros(spec.shape, opts);
    } else {
      const bool output = spec.name.find("o_proj") != std::string::npos || spec.name.find("down_proj") != std::string::npos ||
                          spec.name.find(".w2.") != std::string::npos;
      t = torch::randn(spec.shape, opts) * (0.02 * (output ? out_scale : 1.0));
    }
    tensors_[spec.name] = t.to(device, dtype);
  }
  bind_expert_storage();
}

TorchModel TorchModel::load(const std::filesystem::path& model_dir, torch::Device device, torch::ScalarType dtype) {
  TorchModel model(read_model_config(model_dir), device);
  Checkpoint ckpt(model_dir);
  for (const TensorSpec& spec : expected_tensors(model.config_)) {
    const TensorView& v = ckpt.get(spec.name, spec.shape);
    torch::Tensor t = torch::from_blob(const_cast<std::byte*>(v.data), v.shape, torch::TensorOptions().dtype(torch_type(v.dtype)));
    model.tensors_[spec.name] = t.to(device, dtype, false, true);
  }
  model.bind_expert_storage();
  return model;
}

std::vector<std::string> TorchModel::trainable_names() const {
  std::vector<std::string> names;
  for (const auto& [name, t] : tensors_)
    if (name.find("e_score_correction_bias") == std::string::npos) names.push_back(name);
  return names;
}

ForwardResult TorchModel::forward(const torch::Tensor& tokens, const ForwardOptions& options) const {
  const ModelConfig& c = config_;
  require(tokens.dim() == 2, "trainer: tokens must be [batch, time]");
  const int64_t T = tokens.size(1);
  // cos/sin per position from the shared RoPE table (float32, as Hugging Face computes them),
  // copied into tensors that autograd may keep for the backward pass.
  const int64_t half = c.head_dim / 2;
  std::vector<float> cos(size_t(T * half)), sin(size_t(T * half));
  for (int64_t t = 0; t < T; ++t) rope_.at(int(t), int(T), &cos[size_t(t * half)], &sin[size_t(t * half)]);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  const torch::ScalarType acc = accumulate_type(options.compute_dtype);
  const torch::Tensor cos_t = torch::from_blob(cos.data(), {T, 1, half}, f32).to(device_, acc, false, true);
  const torch::Tensor sin_t = torch::from_blob(sin.data(), {T, 1, half}, f32).to(device_, acc, false, true);
  return run(tokens, cos_t, sin_t, options, nullptr);
}

struct TorchModel::CachedStep {
  KvCache* cache;
  torch::Tensor rows;          // [R] cache rows of the batch, on the device (undefined: all, in order)
  torch::Tensor write_row;     // [n] cache row of each real (non-padding) new token
  torch::Tensor write_pos;     // [n] its position
  torch::Tensor write_index;   // [n] its index in the flattened [R * S] batch
  torch::Tensor allowed;       // [R, 1, S, L] which cached keys each query sees
  int64_t keys = 0;            // L: keys visible to the batch (longest row after the step)
  torch::Tensor last_index;    // [R] flattened index of each row's last new token: logits only there
};

// Autograd sums the gradients of a stack's uses in the compute type before the one conversion back,
// as PyTorch's autocast does with the weight casts it caches for a forward pass.
struct TorchModel::ExpertStacks {
  std::map<std::pair<std::vector<std::pair<int, int>>, Proj>, torch::Tensor> made;  // (owner layer, index)s
};

KvCache TorchModel::new_cache(int64_t rows, int64_t capacity, torch::ScalarType compute_dtype) const {
  KvCache cache;
  cache.capacity = capacity;
  cache.lengths.assign(size_t(rows), 0);
  const auto opts = torch::TensorOptions().device(device_).dtype(compute_dtype);
  for (int l = 0; l < config_.num_layers; ++l) {
    cache.k.push_back(torch::zeros({rows, capacity, config_.num_kv_heads, config_.head_dim}, opts));
    cache.v.push_back(torch::zeros({rows, capacity, config_.num_kv_heads, config_.head_dim}, opts));
  }
  return cache;
}

ForwardResult TorchModel::forward_cached(const torch::Tensor& tokens, const std::vector<int64_t>& counts,
                                         const std::vector<int64_t>& rows, KvCache& cache,
                                         const ForwardOptions& options, bool last_only) const {
  const ModelConfig& c = config_;
  require(tokens.dim() == 2 && tokens.size(0) == int64_t(rows.size()) && counts.size() == rows.size(),
          "forward_cached: tokens must be [rows, time] with one count per row");
  const int64_t R = tokens.size(0), S = tokens.size(1), half = c.head_dim / 2;
  std::vector<float> cos(size_t(R * S * half)), sin(size_t(R * S * half));
  std::vector<int64_t> write_row, write_pos, write_index;
  std::vector<unsigned char> allowed;
  int64_t keys = 0;
  bool all_rows_in_order = R == int64_t(cache.lengths.size());
  for (int64_t r = 0; r < R; ++r) {
    const int64_t row = rows[size_t(r)], n = counts[size_t(r)];
    require(row >= 0 && row < int64_t(cache.lengths.size()), "forward_cached: no cache row " + std::to_string(row));
    require(n >= 1 && n <= S, "forward_cached: a row's token count is outside [1, time]");
    require(cache.lengths[size_t(row)] + n <= cache.capacity,
            "forward_cached: a sequence would exceed the cache's " + std::to_string(cache.capacity) + " tokens");
    all_rows_in_order = all_rows_in_order && row == r;
    keys = std::max(keys, cache.lengths[size_t(row)] + S);
  }
  keys = std::min(keys, cache.capacity);
  allowed.assign(size_t(R * S * keys), 0);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t row = rows[size_t(r)], start = cache.lengths[size_t(row)], n = counts[size_t(r)];
    for (int64_t j = 0; j < S; ++j) {
      // Padding queries take the last real position, so every query sees at least one key.
      const int64_t pos = start + std::min(j, n - 1);
      rope_.at(int(pos), int(start + n), &cos[size_t((r * S + j) * half)], &sin[size_t((r * S + j) * half)]);
      const int64_t first = c.sliding_window > 0 ? std::max<int64_t>(0, pos - c.sliding_window + 1) : 0;
      for (int64_t key = first; key <= pos; ++key) allowed[size_t((r * S + j) * keys + key)] = 1;
      if (j < n) write_row.push_back(row), write_pos.push_back(start + j), write_index.push_back(r * S + j);
    }
  }
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  const torch::ScalarType acc = accumulate_type(options.compute_dtype);
  const torch::Tensor cos_t = torch::from_blob(cos.data(), {R, S, 1, half}, f32).to(device_, acc);
  const torch::Tensor sin_t = torch::from_blob(sin.data(), {R, S, 1, half}, f32).to(device_, acc);
  CachedStep step;
  step.cache = &cache;
  if (!all_rows_in_order) step.rows = torch::tensor(rows, i64).to(device_);
  step.write_row = torch::tensor(write_row, i64).to(device_);
  step.write_pos = torch::tensor(write_pos, i64).to(device_);
  step.write_index = torch::tensor(write_index, i64).to(device_);
  step.allowed = torch::from_blob(allowed.data(), {R, 1, S, keys}, torch::TensorOptions().dtype(torch::kUInt8))
                     .to(device_, torch::kBool);
  step.keys = keys;
  if (last_only) {
    std::vector<int64_t> last(static_cast<size_t>(R));
    for (int64_t r = 0; r < R; ++r) last[size_t(r)] = r * S + counts[size_t(r)] - 1;
    step.last_index = torch::tensor(last, i64).to(device_);
  }
  ForwardResult result = run(tokens, cos_t, sin_t, options, &step);
  for (int64_t r = 0; r < R; ++r) cache.lengths[size_t(rows[size_t(r)])] += counts[size_t(r)];
  return result;
}

std::pair<torch::Tensor, torch::Tensor> TorchModel::decode_rope(const std::vector<int64_t>& positions) const {
  const int64_t R = int64_t(positions.size()), half = config_.head_dim / 2;
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  torch::Tensor cos = torch::empty({R, 1, 1, half}, f32), sin = torch::empty({R, 1, 1, half}, f32);
  for (int64_t r = 0; r < R; ++r) {
    const int pos = int(positions[size_t(r)]);
    rope_.at(pos, pos + 1, cos.data_ptr<float>() + r * half, sin.data_ptr<float>() + r * half);
  }
  return {cos, sin};
}

torch::Tensor TorchModel::decode_rows(const torch::Tensor& tokens, const torch::Tensor& rows, const torch::Tensor& positions,
                                      const torch::Tensor& cos, const torch::Tensor& sin, int64_t keys, KvCache& cache,
                                      const ForwardOptions& options) const {
  const int64_t R = tokens.size(0);
  require(tokens.dim() == 2 && tokens.size(1) == 1 && rows.size(0) == R && positions.size(0) == R && keys >= 1 &&
              keys <= cache.capacity,
          "decode_rows: tokens must be [rows, 1] with a cache row and a position each, and keys within the cache");
  CachedStep step;
  step.cache = &cache;
  step.rows = rows;
  step.write_row = rows;
  step.write_pos = positions;
  step.write_index = torch::arange(R, positions.options());
  // Each row sees the keys up to its own position (within the window), computed on the device.
  const torch::Tensor key = torch::arange(keys, positions.options()).unsqueeze(0);  // [1, L]
  const torch::Tensor pos = positions.unsqueeze(1);                                  // [R, 1]
  torch::Tensor allowed = key <= pos;
  if (config_.sliding_window > 0) allowed = allowed & (key > pos - config_.sliding_window);
  step.allowed = allowed.view({R, 1, 1, keys});
  step.keys = keys;
  return run(tokens, cos, sin, options, &step).logits.squeeze(1);
}

ForwardResult TorchModel::run(const torch::Tensor& tokens, const torch::Tensor& cos_t, const torch::Tensor& sin_t,
                              const ForwardOptions& options, CachedStep* step) const {
  const ModelConfig& c = config_;
  const int64_t B = tokens.size(0), T = tokens.size(1);
  const torch::ScalarType cd = options.compute_dtype, acc = accumulate_type(cd);
  ForwardResult result;
  // Tensor parallelism: a split block's input enters the split and its partial outputs are summed.
  const TensorParallel& tp = options.tensor_parallel;
  const auto enter = [&](const torch::Tensor& t) { return tp.ranks > 1 ? tp.enter(t) : t; };
  // Split blocks' partial outputs are summed in the accumulation type. Unsplit, the residual add takes
  // the compute-type output as it is: type promotion gives the same values as converting it first,
  // without the conversion's kernel and its gradient's.
  const auto reduce = [&](const torch::Tensor& t) { return tp.ranks > 1 ? tp.reduce(t.to(acc)) : t; };
  const auto [rope_cos, rope_sin] = rope_tables(cos_t, sin_t);
  bind_expert_storage();
  ExpertStacks stacks;
  const bool fused = options.fused_kernels;
  torch::Tensor x = w(tn::embed()).index_select(0, tokens.reshape(-1)).view({B, T, c.hidden_size}).to(acc);
  torch::Tensor aux = torch::zeros({}, torch::TensorOptions().device(device_).dtype(acc));
  int moe_layers = 0;
  torch::Tensor u_prev;
  result.expert_load.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    const torch::Tensor xn = rmsnorm(x, w(tn::input_norm(l)), c.rms_norm_eps, fused);
    x = x + reduce(linear(attention(l, enter(xn), rope_cos, rope_sin, options, step), w(tn::attn(l, 'o')), cd));
    const torch::Tensor u = rmsnorm(x, w(tn::post_attention_norm(l)), c.rms_norm_eps, fused);
    torch::Tensor ffn;
    if (c.layers[l].is_moe) {
      const bool pre = c.moe.pre_gated && l > 0;
      ffn = moe(l, u.view({B * T, -1}), (pre ? u_prev : u).view({B * T, -1}), options, stacks, aux,
                result.expert_load[l])
                .view({B, T, -1});
      ++moe_layers;
    } else {
      ffn = reduce(
          swiglu(enter(u), tn::dense_mlp(l, Proj::Gate), tn::dense_mlp(l, Proj::Up), tn::dense_mlp(l, Proj::Down), cd));
    }
    x = x + ffn;
    u_prev = u;
  }
  if (step && step->last_index.defined()) x = x.reshape({B * T, -1}).index_select(0, step->last_index).view({B, 1, -1});
  const torch::Tensor xn = rmsnorm(x, w(tn::final_norm()), c.rms_norm_eps, fused);
  result.logits = linear(xn, w(c.tie_word_embeddings ? tn::embed() : tn::lm_head()), cd).to(acc);
  result.aux_loss = moe_layers > 0 ? aux / moe_layers : aux;
  return result;
}

torch::Tensor TorchModel::attention(int l, const torch::Tensor& xn, const torch::Tensor& rope_cos, const torch::Tensor& rope_sin,
                                    const ForwardOptions& options, CachedStep* step) const {
  const ModelConfig& c = config_;
  // Under tensor parallelism this rank's heads only (its slices of q, k, v and their norms).
  const TensorParallel& tp = options.tensor_parallel;
  require(tp.ranks == 1 || !step, "trainer: tensor parallelism covers training passes, not cached decoding");
  const int64_t B = xn.size(0), T = xn.size(1), hd = c.head_dim, Hq = c.num_heads / tp.ranks,
                Hkv = c.num_kv_heads / tp.ranks;
  const torch::ScalarType cd = options.compute_dtype, acc = accumulate_type(cd);
  // A full-width q/k norm's mean square spans every rank's heads: the ranks' sums of squares are
  // summed, and each rank's gradient of that sum reaches every rank.
  const auto full_norm = [&](const torch::Tensor& x, const std::string& weight) {
    if (tp.ranks == 1) return rmsnorm(x, w(weight), c.rms_norm_eps, options.fused_kernels);
    const torch::Tensor xf = x.to(accumulate_type(w(weight).scalar_type()));
    const torch::Tensor squares = tp.enter(tp.reduce(xf.pow(2).sum(-1, true)));
    return xf * torch::rsqrt(squares / double(xf.size(-1) * tp.ranks) + c.rms_norm_eps) * w(weight).to(xf.scalar_type());
  };
  torch::Tensor q = linear(xn, w(tn::attn(l, 'q')), cd).to(acc);
  torch::Tensor k = linear(xn, w(tn::attn(l, 'k')), cd).to(acc);
  // v stays in the compute type unless a bias or clip changes it (the bias's sum is promoted to the
  // accumulation type): a round trip through float32 would give it back unchanged.
  torch::Tensor v = linear(xn, w(tn::attn(l, 'v')), cd);
  if (c.attention_bias) {
    q = q + w(tn::attn_bias(l, 'q'));
    k = k + w(tn::attn_bias(l, 'k'));
    v = v + w(tn::attn_bias(l, 'v'));
  }
  if (c.clip_qkv) {
    const double clip = *c.clip_qkv;
    q = q.clamp(-clip, clip), k = k.clamp(-clip, clip), v = v.clamp(-clip, clip);
  }
  if (c.qk_norm == QkNorm::Full) {
    q = full_norm(q, tn::qk_norm(l, 'q'));
    k = full_norm(k, tn::qk_norm(l, 'k'));
  }
  q = q.view({B, T, Hq, hd});
  k = k.view({B, T, Hkv, hd});
  v = v.view({B, T, Hkv, hd});
  if (c.qk_norm == QkNorm::PerHead) {
    // Replicated weights applied to this rank's heads only: they enter the split like an input.
    const auto head_norm = [&](const std::string& name) { return tp.ranks > 1 ? tp.enter(w(name)) : w(name); };
    q = rmsnorm(q, head_norm(tn::qk_norm(l, 'q')), c.rms_norm_eps, options.fused_kernels);
    k = rmsnorm(k, head_norm(tn::qk_norm(l, 'k')), c.rms_norm_eps, options.fused_kernels);
  }
  q = apply_rope(q, rope_cos, rope_sin).transpose(1, 2).to(cd);  // [B, Hq, T, hd]
  k = apply_rope(k, rope_cos, rope_sin).to(cd);
  v = v.to(cd);
  torch::Tensor allowed;  // cached path: which keys each query sees; otherwise causal
  if (step) {
    // Store the new tokens' keys and values, then attend over each row's cached prefix.
    torch::Tensor& kc = step->cache->k[size_t(l)];
    torch::Tensor& vc = step->cache->v[size_t(l)];
    kc.index_put_({step->write_row, step->write_pos}, k.reshape({B * T, Hkv, hd}).index_select(0, step->write_index));
    vc.index_put_({step->write_row, step->write_pos}, v.reshape({B * T, Hkv, hd}).index_select(0, step->write_index));
    k = kc.narrow(1, 0, step->keys);  // the visible keys first, so that only they are gathered
    v = vc.narrow(1, 0, step->keys);
    k = step->rows.defined() ? k.index_select(0, step->rows) : k;
    v = step->rows.defined() ? v.index_select(0, step->rows) : v;
    allowed = step->allowed;
  }
  k = k.transpose(1, 2);
  v = v.transpose(1, 2);
  if (Hq != Hkv) {
    k = k.repeat_interleave(Hq / Hkv, 1);
    v = v.repeat_interleave(Hq / Hkv, 1);
  }
  torch::Tensor out;
#if TORCH_VERSION_MAJOR >= 2
  if (allowed.defined()) {
    const NoCudnnAttention no_cudnn;
    out = at::scaled_dot_product_attention(q, k, v, allowed, 0.0, false);
  } else if (c.sliding_window == 0) out = at::scaled_dot_product_attention(q, k, v, {}, 0.0, true);
#endif
  if (!out.defined() && allowed.defined()) {
    torch::Tensor scores = torch::matmul(q, k.transpose(-2, -1)).to(acc) / std::sqrt(double(hd));
    scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity()).softmax(-1);
    out = torch::matmul(scores.to(cd), v);
  }
  if (!out.defined()) {
    // Causal (and windowed) softmax attention, written out for libtorch 1.x and sliding windows.
    const torch::Tensor pos = torch::arange(T, torch::TensorOptions().device(device_));
    torch::Tensor blocked = pos.unsqueeze(0) > pos.unsqueeze(1);  // key after query
    if (c.sliding_window > 0) blocked = blocked | (pos.unsqueeze(0) <= pos.unsqueeze(1) - c.sliding_window);
    torch::Tensor scores = torch::matmul(q, k.transpose(-2, -1)).to(acc) / std::sqrt(double(hd));
    scores = scores.masked_fill(blocked, -std::numeric_limits<float>::infinity()).softmax(-1);
    out = torch::matmul(scores.to(cd), v);
  }
  return out.transpose(1, 2).reshape({B, T, Hq * hd});
}

torch::Tensor TorchModel::swiglu(const torch::Tensor& u, const std::string& gate, const std::string& up,
                                 const std::string& down, torch::ScalarType cd) const {
  return linear(torch::silu(linear(u, w(gate), cd)) * linear(u, w(up), cd), w(down), cd);
}

torch::Tensor TorchModel::moe(int l, const torch::Tensor& u, const torch::Tensor& router_in, const ForwardOptions& options,
                              ExpertStacks& stacks,
                              torch::Tensor& aux, torch::Tensor& load) const {
  const ModelConfig& c = config_;
  const MoeConfig& m = c.moe;
  const LayerPlan& plan = c.layers[l];
  const int64_t N = u.size(0), C = int64_t(plan.candidates.size()), K = m.top_k;
  const torch::ScalarType cd = options.compute_dtype, acc = accumulate_type(cd);
  const double neg_inf = -std::numeric_limits<double>::infinity();

  torch::Tensor scores = linear(router_in, w(tn::router(c, l)), cd).to(acc);  // [N, C]
  const bool masked = l < int(options.allowed.size()) && options.allowed[l].defined();
  if (masked) scores = scores.masked_fill(options.allowed[l].logical_not(), neg_inf);
  // The candidates open to a token: a step's mask leaves fewer for the whole batch; a per-token
  // mask leaves every candidate open to an equal share of the tokens, as no mask does.
  const double open = masked && options.allowed[l].dim() == 1 ? options.allowed[l].sum().item<double>() : double(C);
  const torch::Tensor prob = m.scoring == Scoring::Softmax ? scores.softmax(-1) : scores.sigmoid();

  // The choice: top-K of p (+ bias), within the best topk_group groups when grouped. No gradient
  // flows through the choice; it flows through the weights gathered from p.
  torch::Tensor top;
  {
    torch::NoGradGuard no_grad;
    torch::Tensor choice = prob.detach();
    if (m.score_correction_bias) choice = choice + w(tn::router_bias(c, l));
    if (masked) choice = choice.masked_fill(options.allowed[l].logical_not(), neg_inf);
    if (m.n_group > 1) {
      const torch::Tensor grouped = choice.view({N, m.n_group, C / m.n_group});
      // As the runtime's route_token: best two with a correction bias, best one without.
      const int64_t best = m.score_correction_bias ? std::min<int64_t>(2, C / m.n_group) : 1;
      const torch::Tensor group_score = std::get<0>(grouped.topk(best, -1)).sum(-1);
      const torch::Tensor keep = torch::zeros({N, m.n_group}, torch::TensorOptions().dtype(torch::kBool).device(device_))
                                     .scatter(1, std::get<1>(group_score.topk(m.topk_group, -1)), true);
      choice = grouped.masked_fill(keep.logical_not().unsqueeze(-1), neg_inf).view({N, C});
    }
    top = std::get<1>(choice.topk(K, -1));  // [N, K]
  }
  torch::Tensor weight = prob.gather(1, top);
  if (m.norm_topk_prob) weight = weight / (weight.sum(-1, true) + 1e-20);
  weight = weight * m.routed_scaling_factor;
  // Tensor parallelism: the experts' input and weights enter the split (each rank runs its slice of
  // every expert's width); the shared and routed partial outputs are summed once, at the end.
  const TensorParallel& tp = options.tensor_parallel;
  const bool split = tp.ranks > 1;
  const torch::Tensor u_split = split ? tp.enter(u) : u, weight_split = split ? tp.enter(weight) : weight;

  const auto stacked = [&](Proj proj) { return stacked_experts(plan.candidates, proj, cd, stacks); };  // [C, out, in]
  torch::Tensor out = m.shared_intermediate_size > 0
                          ? swiglu(u_split, tn::shared_expert(l, Proj::Gate), tn::shared_expert(l, Proj::Up),
                                   tn::shared_expert(l, Proj::Down), cd)
                                .to(acc)
                          : torch::zeros_like(u, torch::TensorOptions().dtype(acc));
  const torch::Tensor flat = top.reshape(-1);
  // Not bincount: on CUDA it reads the largest index back to the host, which a CUDA graph cannot hold.
  const torch::Tensor counts = torch::zeros({C}, flat.options()).scatter_add_(0, flat, torch::ones_like(flat));
  load = counts.detach();
  if (options.grouped_experts == GroupedExperts::Dense) {
    const torch::Tensor x = u_split.to(cd);  // [N, d], broadcast over the C candidates
    const torch::Tensor h = torch::silu(torch::matmul(x, stacked(Proj::Gate).transpose(1, 2))) *
                            torch::matmul(x, stacked(Proj::Up).transpose(1, 2));  // [C, N, f]
    const torch::Tensor y = torch::bmm(h, stacked(Proj::Down).transpose(1, 2));     // [C, N, d]
    const torch::Tensor dense_weight = torch::zeros({N, C}, weight.options()).scatter(1, top, weight_split);  // [N, C]
    out = out + (y * dense_weight.t().unsqueeze(-1)).sum(0);  // compute type times float32: promoted
  } else {
    // Dispatch: sort the N*K (token, candidate) pairs by candidate, under expert parallelism by the
    // rank that holds the candidate first (each rank's rows contiguous); each expert runs once on its
    // rows, here or on its rank.
    const ExpertParallel& ep = options.expert_parallel;
    std::vector<int64_t> by_rank(static_cast<size_t>(C));  // candidates in the sort's order
    std::iota(by_rank.begin(), by_rank.end(), int64_t(0));
    torch::Tensor key = flat;
    if (ep.ranks > 1) {
      require(options.grouped_experts != GroupedExperts::Dense, "trainer: dense expert dispatch under expert parallelism");
      std::vector<int64_t> rank_of;
      for (const ExpertRef& e : plan.candidates) rank_of.push_back(expert_rank(c, e, ep.ranks));
      std::stable_sort(by_rank.begin(), by_rank.end(), [&](int64_t a, int64_t b) { return rank_of[size_t(a)] < rank_of[size_t(b)]; });
      key = torch::tensor(rank_of, flat.options()).index_select(0, flat) * C + flat;
    }
    const torch::Tensor order = std::get<1>(key.sort(c10::optional<bool>(true), 0));  // stable
    // (Under expert parallelism this rank may hold none of the candidates, so their width is looked
    // up last.)
    const bool grouped_mm =
        (options.grouped_experts == GroupedExperts::GroupedMM || options.grouped_experts == GroupedExperts::Auto) &&
        grouped_mm_available(device_) && cd == torch::kBFloat16 && ep.ranks == 1 && options.capacity_factor <= 0 &&
        u.size(1) % 8 == 0 &&
        w(tn::expert(c, plan.candidates[0].owner_layer, plan.candidates[0].index, Proj::Gate)).size(0) % 8 == 0;
    require(grouped_mm || options.grouped_experts != GroupedExperts::GroupedMM,
            "trainer: grouped expert products need libtorch 2.8 or later on CUDA, bf16, one expert-parallel rank, "
            "no capacity factor, and widths that are multiples of 8");
    // With every (token, candidate) pair kept, sorted row p is pair order[p] and pair i sits at row
    // position[i]: the experts' input rows are gathered from the tokens, and each token gathers its K
    // outputs back and sums them weighted (float32: the product promotes), gradients gathered too
    // (GatherRows). No scatter-add either way.
    // (index_put_ rather than scatter_: it has a deterministic mode in every libtorch.)
    const torch::Tensor position = torch::empty_like(order).index_put_({order}, torch::arange(N * K, order.options()));
    const auto dispatch = [&] { return GatherRows::apply(u_split, torch::div(order, K, "floor"), position, K); };
    const auto combine = [&](const torch::Tensor& y) {
      return (GatherRows::apply(y, position, order, 1).view({N, K, -1}) * weight_split.unsqueeze(-1)).sum(1);
    };
    if (grouped_mm) {
      // The rows' ends follow from `counts` on the device: nothing waits for the host.
      out = out + combine(run_experts_grouped_mm(dispatch(), counts.cumsum(0).to(torch::kInt32), plan.candidates, cd, stacks));
    } else {
      const torch::Tensor counts_cpu = counts.cpu();
      const int64_t* count = counts_cpu.data_ptr<int64_t>();
      const int64_t capacity = options.capacity_factor > 0
                                   ? int64_t(std::ceil(options.capacity_factor * double(N * K) / open))
                                   : N * K;
      // Each candidate keeps its first `capacity` rows.
      std::vector<int64_t> kept(static_cast<size_t>(C)), keep;
      bool dropped = false;
      for (int64_t i = 0, begin = 0; i < C; ++i) {
        const int64_t cand = by_rank[size_t(i)], n = std::min(count[cand], capacity);
        kept[size_t(cand)] = n;
        dropped |= n < count[cand];
        for (int64_t r = 0; r < n; ++r) keep.push_back(begin + r);
        begin += count[cand];
      }
      // Dropped pairs have no row: their tokens' outputs are scattered back instead.
      const torch::Tensor kept_order = dropped ? order.index_select(0, torch::tensor(keep, order.options())) : order;
      const torch::Tensor token_of = dropped ? torch::div(kept_order, K, "floor") : torch::Tensor();
      const torch::Tensor rows = dropped ? u_split.index_select(0, token_of) : dispatch();
      torch::Tensor y;
      if (ep.ranks > 1) {
        y = run_experts_across_ranks(l, rows, kept, options, stacks);
      } else {
        std::vector<ExpertRef> experts;
        for (const int64_t cand : by_rank) experts.push_back(plan.candidates[size_t(cand)]);
        std::vector<int64_t> sorted_counts;
        for (const int64_t cand : by_rank) sorted_counts.push_back(kept[size_t(cand)]);
        y = run_experts(rows, sorted_counts, experts, options, stacks);
      }
      if (dropped) {
        const torch::Tensor row_weight = weight_split.reshape(-1).index_select(0, kept_order).unsqueeze(1);
        out = out.index_add(0, token_of, y * row_weight);  // promoted to float32 by the product
      } else {
        out = out + combine(y);
      }
    }
  }
  if (split) out = tp.reduce(out);

  // Load-balancing loss over the candidates this step allows: f_i = share of the N*K picks,
  // P_i = mean routing probability (sigmoid scores normalised per token to sum 1).
  const torch::Tensor p_norm = m.scoring == Scoring::Softmax ? prob : prob / (prob.sum(-1, true) + 1e-20);
  if (!options.sum_over_ranks) {
    const torch::Tensor f = counts.to(acc) / double(N * K);
    aux = aux + open * (f * p_norm.mean(0)).sum();
  } else {
    // Data parallel: f and P over the global batch, as one process would see it. P's value is the
    // global mean; its gradient is this rank's tokens' share, times the rank count because the
    // trainer averages gradients over the ranks.
    const torch::Tensor p_sum = p_norm.sum(0);
    torch::Tensor stats = torch::cat({counts.to(acc), p_sum.detach(), torch::full({1}, double(N), p_sum.options())});
    options.sum_over_ranks(stats);
    const torch::Tensor tokens = stats[2 * C];
    const torch::Tensor f = stats.narrow(0, 0, C) / (tokens * double(K));
    const torch::Tensor P = (options.ranks * p_sum + (stats.narrow(0, C, C) - options.ranks * p_sum.detach())) / tokens;
    aux = aux + open * (f * P).sum();
  }
  return out;
}

bool grouped_mm_available(const torch::Device& device) {
#ifdef CROSSMOE_HAVE_GROUPED_MM
  if (!device.is_cuda()) return false;
  // Whether the kernel runs here is the GPU's matter (libtorch 2.8 has it for sm90 only), so it is
  // tried once per device on a tiny problem rather than decided from a list of architectures.
  static std::mutex mutex;
  static std::map<int, bool> works;
  const std::lock_guard lock(mutex);
  const auto known = works.find(device.index());
  if (known != works.end()) return known->second;
  bool ok = true;
  try {
    const auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16).device(device);
    const torch::Tensor ends = torch::tensor({8, 16}, torch::TensorOptions().dtype(torch::kInt32)).to(device);
    at::_grouped_mm(torch::ones({16, 16}, bf16), torch::ones({2, 16, 16}, bf16).transpose(1, 2), ends);
  } catch (const c10::Error&) {
    ok = false;
  }
  works[device.index()] = ok;
  return ok;
#else
  (void)device;
  return false;
#endif
}

bool fused_rms_norm_built() {
#ifdef CROSSMOE_HAVE_RMS_NORM
  return true;
#else
  return false;
#endif
}

torch::Tensor TorchModel::stacked_experts(const std::vector<ExpertRef>& experts, Proj proj, torch::ScalarType compute,
                                          ExpertStacks& stacks) const {
  std::vector<std::pair<int, int>> key;
  for (const ExpertRef& e : experts) key.emplace_back(e.owner_layer, e.index);
  torch::Tensor& made = stacks.made[{std::move(key), proj}];
  if (made.defined()) return made;
  for (const ExpertStorage::List& list : expert_storage_->lists)
    if (list.held[size_t(proj)] == experts && list.stack[size_t(proj)].defined())
      return made = UseExpertStack::apply(list.stack[size_t(proj)], at::TensorList(list.members[size_t(proj)]), compute);
  // Another order (not one the model routes over): stacked for this pass.
  std::vector<torch::Tensor> ws;
  for (const ExpertRef& e : experts) ws.push_back(w(tn::expert(config_, e.owner_layer, e.index, proj)));
  return made = torch::stack(ws).to(compute);
}

torch::Tensor TorchModel::run_experts_grouped_mm(const torch::Tensor& rows, const torch::Tensor& ends,
                                                 const std::vector<ExpertRef>& experts, torch::ScalarType compute,
                                                 ExpertStacks& stacks) const {
#ifdef CROSSMOE_HAVE_GROUPED_MM
  const torch::Tensor x = rows.to(compute);
  const auto product = [&](const torch::Tensor& in, Proj proj) {
    return at::_grouped_mm(in, stacked_experts(experts, proj, compute, stacks).transpose(1, 2), ends);
  };
  return product(torch::silu(product(x, Proj::Gate)) * product(x, Proj::Up), Proj::Down);
#else
  (void)rows, (void)ends, (void)experts, (void)compute, (void)stacks;
  throw Error("trainer: this build has no grouped matrix products (libtorch 2.8 or later)");
#endif
}

torch::Tensor TorchModel::run_experts(const torch::Tensor& rows, const std::vector<int64_t>& counts,
                                      const std::vector<ExpertRef>& experts, const ForwardOptions& options,
                                      ExpertStacks& stacks) const {
  const ModelConfig& c = config_;
  const torch::ScalarType cd = options.compute_dtype;
  const int64_t E = int64_t(experts.size());
  // No rows: the input itself (empty), so that the graph still runs through here on every rank.
  if (rows.size(0) == 0) return rows.to(cd);
  const bool grouped = options.grouped_experts == GroupedExperts::On ||
                       (options.grouped_experts == GroupedExperts::Auto && device_.is_cuda());
  if (grouped) {
    // All experts in three batched matrix products: expert i's rows go to slots i*M ... of a
    // [E, M, d] buffer padded to the busiest expert's M rows. Fewer, larger kernels than the loop.
    const int64_t M = *std::max_element(counts.begin(), counts.end());
    std::vector<int64_t> slot;
    for (int64_t i = 0; i < E; ++i)
      for (int64_t r = 0; r < counts[size_t(i)]; ++r) slot.push_back(i * M + r);
    const torch::Tensor slots = torch::tensor(slot, torch::TensorOptions().dtype(torch::kInt64)).to(device_);
    const auto stacked = [&](Proj proj) { return stacked_experts(experts, proj, cd, stacks); };  // [E, out, in]
    const torch::Tensor buffer = torch::zeros({E * M, rows.size(1)}, rows.options().dtype(cd)).index_copy(0, slots, rows.to(cd));
    const torch::Tensor x = buffer.view({E, M, -1});
    const torch::Tensor h = torch::silu(torch::bmm(x, stacked(Proj::Gate).transpose(1, 2))) *
                            torch::bmm(x, stacked(Proj::Up).transpose(1, 2));
    return torch::bmm(h, stacked(Proj::Down).transpose(1, 2)).reshape({E * M, -1}).index_select(0, slots);
  }
  std::vector<torch::Tensor> outputs;
  for (int64_t i = 0, begin = 0; i < E; ++i) {
    const int64_t n = counts[size_t(i)];
    if (n == 0) continue;
    const ExpertRef& e = experts[size_t(i)];
    outputs.push_back(swiglu(rows.narrow(0, begin, n), tn::expert(c, e.owner_layer, e.index, Proj::Gate),
                             tn::expert(c, e.owner_layer, e.index, Proj::Up),
                             tn::expert(c, e.owner_layer, e.index, Proj::Down), cd));
    begin += n;
  }
  return torch::cat(outputs);
}

torch::Tensor TorchModel::run_experts_across_ranks(int l, const torch::Tensor& rows, const std::vector<int64_t>& counts,
                                                   const ForwardOptions& options, ExpertStacks& stacks) const {
  const ModelConfig& c = config_;
  const ExpertParallel& ep = options.expert_parallel;
  const std::vector<ExpertRef>& candidates = c.layers[l].candidates;
  const int64_t C = int64_t(candidates.size()), R = ep.ranks;
  // Every rank's rows per candidate [R, C], so that each knows what it receives from whom: summed
  // on the device (the collectives' tensors live there), read on the host (the all-to-all's sizes).
  torch::Tensor all = torch::zeros({R, C}, torch::kInt64);
  std::copy(counts.begin(), counts.end(), all[ep.rank].data_ptr<int64_t>());
  all = all.to(device_);
  ep.sum(all);
  all = all.cpu();
  const int64_t* at = all.data_ptr<int64_t>();
  std::vector<int64_t> send(static_cast<size_t>(R), 0), recv(static_cast<size_t>(R), 0), mine, totals;
  for (int64_t cand = 0; cand < C; ++cand) {
    const int r = expert_rank(c, candidates[size_t(cand)], ep.ranks);
    send[size_t(r)] += counts[size_t(cand)];
    if (r != ep.rank) continue;
    mine.push_back(cand);
    totals.push_back(0);
    for (int64_t s = 0; s < R; ++s) recv[size_t(s)] += at[s * C + cand], totals.back() += at[s * C + cand];
  }
  const torch::Tensor received = ep.exchange(rows, send, recv);  // by source, then candidate
  // By candidate, then source: each expert runs once on all its rows.
  std::vector<int64_t> by_candidate;
  std::vector<int64_t> source_start(static_cast<size_t>(R), 0);
  for (int64_t s = 1; s < R; ++s) source_start[size_t(s)] = source_start[size_t(s - 1)] + recv[size_t(s - 1)];
  std::vector<int64_t> offset_in_source(static_cast<size_t>(R), 0);
  for (const int64_t cand : mine)
    for (int64_t s = 0; s < R; ++s) {
      const int64_t n = at[s * C + cand];
      for (int64_t r = 0; r < n; ++r) by_candidate.push_back(source_start[size_t(s)] + offset_in_source[size_t(s)] + r);
      offset_in_source[size_t(s)] += n;
    }
  std::vector<int64_t> back(by_candidate.size());
  for (size_t i = 0; i < by_candidate.size(); ++i) back[size_t(by_candidate[i])] = int64_t(i);
  const auto index = torch::TensorOptions().dtype(torch::kInt64);
  std::vector<ExpertRef> experts;
  for (const int64_t cand : mine) experts.push_back(candidates[size_t(cand)]);
  const torch::Tensor y = run_experts(received.index_select(0, torch::tensor(by_candidate, index).to(device_)), totals,
                                      experts, options, stacks);
  const torch::Tensor y_by_source = y.to(rows.scalar_type()).index_select(0, torch::tensor(back, index).to(device_));
  return ep.exchange(y_by_source, recv, send);
}

void check_expert_parallel(const ModelConfig& c, int ranks) {
  bool routed = false;
  for (const LayerPlan& plan : c.layers) routed |= !plan.candidates.empty();
  require(routed, "--ep: the model has no routed experts to split");
  require(c.moe.num_experts % ranks == 0, "--ep " + std::to_string(ranks) + " must divide the " +
                                              std::to_string(c.moe.num_experts) + " routed experts of each pool");
}

int expert_rank(const ModelConfig& c, const ExpertRef& e, int ranks) {
  return e.index / (c.moe.num_experts / ranks);
}

std::map<std::string, int> expert_tensor_ranks(const ModelConfig& c, int ranks) {
  std::map<std::string, int> out;  // a shared pool appears in several layers' candidates: once here
  for (int l = 0; l < c.num_layers; ++l)
    for (const ExpertRef& e : c.layers[l].candidates)
      for (Proj p : {Proj::Gate, Proj::Up, Proj::Down})
        out[tn::expert(c, e.owner_layer, e.index, p)] = expert_rank(c, e, ranks);
  return out;
}

std::vector<std::string> other_ranks_experts(const ModelConfig& c, int rank, int ranks) {
  std::vector<std::string> names;
  for (const auto& [name, r] : expert_tensor_ranks(c, ranks))
    if (r != rank) names.push_back(name);
  return names;
}

void check_tensor_parallel(const ModelConfig& c, int ranks) {
  const std::string flag = "--tp " + std::to_string(ranks);
  require(c.num_kv_heads % ranks == 0, flag + " must divide the model's " + std::to_string(c.num_kv_heads) +
                                           " kv heads (--kv-heads): each process takes whole heads");
  bool dense = false, moe = false;
  for (const LayerPlan& plan : c.layers) (plan.is_moe ? moe : dense) = true;
  if (dense)
    require(c.intermediate_size % ranks == 0, flag + " must divide the dense FFN width " +
                                                  std::to_string(c.intermediate_size) + " (--intermediate)");
  if (moe)
    require(c.moe.expert_intermediate_size % ranks == 0,
            flag + " must divide the routed experts' width " + std::to_string(c.moe.expert_intermediate_size) +
                " (--expert-size): each process takes a slice of every expert");
  if (moe && c.moe.shared_intermediate_size > 0)
    require(c.moe.shared_intermediate_size % ranks == 0, flag + " must divide the shared experts' width " +
                                                             std::to_string(c.moe.shared_intermediate_size) +
                                                             " (--shared-size)");
}

std::map<std::string, int> tensor_parallel_splits(const ModelConfig& c) {
  std::map<std::string, int> out;
  const auto ffn = [&](const std::string& gate, const std::string& up, const std::string& down) {
    out[gate] = out[up] = 0;
    out[down] = 1;
  };
  for (int l = 0; l < c.num_layers; ++l) {
    for (const char p : {'q', 'k', 'v'}) {
      out[tn::attn(l, p)] = 0;
      if (c.attention_bias) out[tn::attn_bias(l, p)] = 0;
    }
    if (c.qk_norm == QkNorm::Full) out[tn::qk_norm(l, 'q')] = out[tn::qk_norm(l, 'k')] = 0;
    out[tn::attn(l, 'o')] = 1;
    const LayerPlan& plan = c.layers[size_t(l)];
    if (!plan.is_moe) {
      ffn(tn::dense_mlp(l, Proj::Gate), tn::dense_mlp(l, Proj::Up), tn::dense_mlp(l, Proj::Down));
      continue;
    }
    if (c.moe.shared_intermediate_size > 0)
      ffn(tn::shared_expert(l, Proj::Gate), tn::shared_expert(l, Proj::Up), tn::shared_expert(l, Proj::Down));
    for (const ExpertRef& e : plan.candidates)  // a shared pool's experts: under their owner's names, once
      ffn(tn::expert(c, e.owner_layer, e.index, Proj::Gate), tn::expert(c, e.owner_layer, e.index, Proj::Up),
          tn::expert(c, e.owner_layer, e.index, Proj::Down));
  }
  return out;
}

torch::Tensor tensor_parallel_slice(const torch::Tensor& whole, int dim, int rank, int ranks) {
  const int64_t size = whole.size(dim) / ranks;
  return whole.detach().narrow(dim, rank * size, size).clone().set_requires_grad(whole.requires_grad());
}

void TorchModel::keep_tensor_parallel_slices(int rank, int ranks) {
  for (const auto& [name, dim] : tensor_parallel_splits(config_)) {
    const auto t = tensors_.find(name);
    if (t != tensors_.end()) t->second = tensor_parallel_slice(t->second, dim, rank, ranks);  // absent: another rank's expert
  }
  bind_expert_storage();  // the whole stacks go now, not at the next pass
}

void TorchModel::drop_tensors(const std::vector<std::string>& names) {
  for (const std::string& name : names) tensors_.erase(name);
  bind_expert_storage();  // the kept experts in a stack of their own: the whole one goes
}

void TorchModel::add_tensors(const std::map<std::string, torch::Tensor>& tensors) {
  for (const auto& [name, t] : tensors) tensors_[name] = t;
  bind_expert_storage();
}

void TorchModel::update_router_biases(const std::vector<torch::Tensor>& expert_load,
                                      const std::vector<torch::Tensor>& allowed, double rate) {
  if (!config_.moe.score_correction_bias || rate == 0.0) return;
  torch::NoGradGuard no_grad;
  for (int l = 0; l < config_.num_layers; ++l) {
    if (!config_.layers[l].is_moe || !expert_load[size_t(l)].defined()) continue;
    torch::Tensor load = expert_load[size_t(l)].to(torch::kFloat32);
    torch::Tensor step = torch::sign(load.mean() - load);
    if (l < int(allowed.size()) && allowed[size_t(l)].defined() && allowed[size_t(l)].dim() == 1) {
      const torch::Tensor on = allowed[size_t(l)];
      step = torch::sign(load.masked_select(on).mean() - load) * on.to(torch::kFloat32);
    }
    tensors_.at(tensor_names::router_bias(config_, l)).add_(step, rate);
  }
}

void save_tensors(const std::filesystem::path& path, const std::map<std::string, torch::Tensor>& tensors, DType dtype) {
  std::vector<torch::Tensor> host;
  std::vector<TensorToWrite> entries;
  for (const auto& [name, t] : tensors) {
    host.push_back(t.detach().to(torch::kCPU, torch_type(dtype)).contiguous());
    entries.push_back({name, dtype, host.back().sizes().vec(), host.back().data_ptr()});
  }
  write_safetensors(path, entries, {{"format", "pt"}});
}

std::map<std::string, torch::Tensor> load_tensors(const std::filesystem::path& path, torch::Device device) {
  SafetensorsFile file(path);
  std::map<std::string, torch::Tensor> out;
  for (const auto& [name, v] : file.tensors()) {
    const torch::Tensor t = torch::from_blob(const_cast<std::byte*>(v.data), v.shape,
                                             torch::TensorOptions().dtype(torch_type(v.dtype)));
    out[name] = t.to(device, torch::kFloat32, false, true);
  }
  return out;
}

void TorchModel::export_hf(const std::filesystem::path& dir, DType dtype) const {
  std::filesystem::create_directories(dir);
  save_tensors(dir / "model.safetensors", tensors_, dtype);
  write_config_files(config_, dir, dtype);
}

}  // namespace crossmoe::train
