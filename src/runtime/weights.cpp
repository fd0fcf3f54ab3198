#include "runtime/weights.hpp"

#include <cstring>

#include <unistd.h>

#include "model/hf_config.hpp"
#include "runtime/expert_cache.hpp"
#include "runtime/kv_pool.hpp"
#include "model/tensor_names.hpp"
#include "util/error.hpp"

namespace crossmoe {

namespace {

namespace n = tensor_names;

class Binder {
 public:
  Binder(const ModelConfig& c, const Checkpoint& ck) : c_(c), ck_(ck) {}

  kernels::Matrix matrix(const std::string& name, int64_t rows, int64_t cols) const {
    const TensorView& t = ck_.get(name, {rows, cols});
    if (dtype_block(t.dtype) == 1) check_dtype(t);  // blocks are read unaligned
    return kernels::Matrix{t.data, t.dtype, rows, cols};
  }
  std::vector<float> vector(const std::string& name, int64_t size) const {
    const TensorView& t = ck_.get(name, {size});
    check_dtype(t);
    std::vector<float> out(size);
    kernels::to_f32(t.data, t.dtype, size, out.data());
    return out;
  }
  SwiGluWeights swiglu(auto name_of, int64_t width) const {
    const int64_t d = c_.hidden_size;
    return {matrix(name_of(Proj::Gate), width, d), matrix(name_of(Proj::Up), width, d),
            matrix(name_of(Proj::Down), d, width)};
  }

 private:
  static void check_dtype(const TensorView& t) {
    require(t.dtype == DType::F32 || t.dtype == DType::BF16 || t.dtype == DType::F16,
            "tensor '" + t.name + "' has dtype " + dtype_name(t.dtype) +
                "; supported: F32, BF16, F16, and the block types (Q8_0, Q4_K, IQ2_XXS, ...: util/quant.hpp) for matrices");
    require(reinterpret_cast<uintptr_t>(t.data) % dtype_size(t.dtype) == 0,
            "tensor '" + t.name + "' is not aligned to its element size (re-save the checkpoint)");
  }
  const ModelConfig& c_;
  const Checkpoint& ck_;
};

// kv_b split per head (LayerWeights::k_up, v_up), taken before any interleaving. In kv_b's own
// dtype where it is F32, BF16 or F16: v's rows are read where they are, k's transposed into
// latent_up (the same values, moved). A block-quantized kv_b (any block type) is widened to f32, k's
// rows and v's: its blocks run along kv_lora_rank, which k's transpose crosses, and its own
// products would round the activations to 8 bits where f32 rows multiply them as they are.
void split_latent_up(const LatentAttention& a, int heads, LayerWeights& L) {
  const int64_t nope = a.qk_nope_head_dim, vd = a.v_head_dim, kvl = a.kv_lora_rank;
  const DType stored = L.kv_b.dtype;
  const bool widen = stored != DType::F32 && stored != DType::BF16 && stored != DType::F16;
  const DType up = widen ? DType::F32 : stored;
  const size_t element = dtype_size(up), row_bytes = dtype_row_bytes(stored, kvl);
  const auto kv_row = [&](int64_t r) { return static_cast<const std::byte*>(L.kv_b.data) + size_t(r) * row_bytes; };
  const size_t k_bytes = size_t(kvl) * size_t(nope) * element, v_bytes = size_t(vd) * size_t(kvl) * sizeof(float);
  auto storage = std::make_shared<std::vector<std::byte>>(size_t(heads) * (k_bytes + (widen ? v_bytes : 0)));
  std::vector<float> row(static_cast<size_t>(kvl));
  for (int h = 0; h < heads; ++h) {
    std::byte* k = storage->data() + size_t(h) * k_bytes;
    for (int64_t i = 0; i < nope; ++i) {
      const std::byte* from = kv_row(h * (nope + vd) + i);
      if (widen) {
        kernels::to_f32(from, stored, kvl, row.data());
        from = reinterpret_cast<const std::byte*>(row.data());
      }
      for (int64_t j = 0; j < kvl; ++j) std::memcpy(k + size_t(j * nope + i) * element, from + size_t(j) * element, element);
    }
    L.k_up.push_back(kernels::Matrix{k, up, kvl, nope});
    const std::byte* v = kv_row(h * (nope + vd) + nope);
    if (widen) {
      float* wide = reinterpret_cast<float*>(storage->data() + size_t(heads) * k_bytes + size_t(h) * v_bytes);
      for (int64_t i = 0; i < vd; ++i) kernels::to_f32(kv_row(h * (nope + vd) + nope + i), stored, kvl, wide + i * kvl);
      v = reinterpret_cast<const std::byte*>(wide);
    }
    L.v_up.push_back(kernels::Matrix{v, up, vd, kvl});
  }
  L.latent_up = std::move(storage);
}

// The matrices in memory of the model's own (Checkpoint::load_into_memory's writable copies),
// rewritten into the layout the kernels read fastest (kernels::arrange_for_matmul). The embedding
// table is read by rows (one per token), so it and an LM head tied to it keep theirs; matrices
// left in the files (a mapped model, the expert cache's experts) are not touched here.
void arrange_in_memory(ModelWeights& w) {
  const auto arrange = [&](kernels::Matrix& m) {
    if (m.data && m.data != w.embed.data) kernels::arrange_for_matmul(m, const_cast<void*>(m.data));
  };
  const auto arrange_swiglu = [&](SwiGluWeights& s) {
    arrange(s.gate);
    arrange(s.up);
    arrange(s.down);
  };
  arrange(w.lm_head);
  for (LayerWeights& L : w.layers) {
    for (kernels::Matrix* m : L.attention_matrices())
      if (!(m == &L.kv_b && L.latent_up)) arrange(*m);  // v_up may read kv_b's rows where they lie
    arrange(L.router);
    arrange_swiglu(L.dense);
    arrange_swiglu(L.shared);
    for (SwiGluWeights& e : L.experts) arrange_swiglu(e);
  }
}

}  // namespace

std::vector<kernels::Matrix*> LayerWeights::attention_matrices() {
  std::vector<kernels::Matrix*> out;
  for (kernels::Matrix* m : {&q, &k, &v, &o, &q_a, &q_b, &kv_a, &kv_b})
    if (m->rows > 0) out.push_back(m);
  return out;
}

std::vector<const kernels::Matrix*> LayerWeights::attention_matrices() const {
  std::vector<const kernels::Matrix*> out;
  for (kernels::Matrix* m : const_cast<LayerWeights*>(this)->attention_matrices()) out.push_back(m);
  return out;
}

size_t SwiGluWeights::bytes() const {
  const auto b = [](const kernels::Matrix& m) { return size_t(m.rows) * dtype_row_bytes(m.dtype, m.cols); };
  return b(gate) + b(up) + b(down);
}

ModelWeights bind_weights(const ModelConfig& c, const Checkpoint& ck) {
  const Binder b(c, ck);
  const int64_t d = c.hidden_size, V = c.vocab_size;
  const int64_t qw = int64_t(c.num_heads) * c.head_dim, kvw = int64_t(c.num_kv_heads) * c.head_dim;
  ModelWeights w;
  w.embed = b.matrix(n::embed(), V, d);
  w.lm_head = c.tie_word_embeddings ? w.embed : b.matrix(n::lm_head(), V, d);
  w.final_norm = b.vector(n::final_norm(), d);
  w.layers.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights& L = w.layers[l];
    const LayerPlan& plan = c.layers[l];
    L.input_norm = b.vector(n::input_norm(l), d);
    L.post_attention_norm = b.vector(n::post_attention_norm(l), d);
    if (c.latent_attention) {
      const LatentAttention& a = *c.latent_attention;
      const int64_t H = c.num_heads;
      if (a.q_lora_rank > 0) {
        L.q_a = b.matrix(n::latent_attn(l, LatentPart::QA), a.q_lora_rank, d);
        L.q_a_norm = b.vector(n::latent_attn(l, LatentPart::QANorm), a.q_lora_rank);
        L.q_b = b.matrix(n::latent_attn(l, LatentPart::QB), qw, a.q_lora_rank);
      } else {
        L.q = b.matrix(n::attn(l, 'q'), qw, d);
      }
      L.kv_a = b.matrix(n::latent_attn(l, LatentPart::KvA), a.kv_lora_rank + a.qk_rope_head_dim, d);
      L.kv_a_norm = b.vector(n::latent_attn(l, LatentPart::KvANorm), a.kv_lora_rank);
      L.kv_b = b.matrix(n::latent_attn(l, LatentPart::KvB), H * (a.qk_nope_head_dim + a.v_head_dim), a.kv_lora_rank);
      L.o = b.matrix(n::attn(l, 'o'), d, H * a.v_head_dim);
      split_latent_up(a, int(H), L);
    } else {
      L.q = b.matrix(n::attn(l, 'q'), qw, d);
      L.k = b.matrix(n::attn(l, 'k'), kvw, d);
      L.v = b.matrix(n::attn(l, 'v'), kvw, d);
      L.o = b.matrix(n::attn(l, 'o'), d, qw);
    }
    if (c.attention_bias) {
      L.q_bias = b.vector(n::attn_bias(l, 'q'), qw);
      L.k_bias = b.vector(n::attn_bias(l, 'k'), kvw);
      L.v_bias = b.vector(n::attn_bias(l, 'v'), kvw);
    }
    if (c.qk_norm != QkNorm::None) {
      const bool full = c.qk_norm == QkNorm::Full;
      L.q_norm = b.vector(n::qk_norm(l, 'q'), full ? qw : c.head_dim);
      L.k_norm = b.vector(n::qk_norm(l, 'k'), full ? kvw : c.head_dim);
    }
    if (!plan.is_moe) {
      L.dense = b.swiglu([&](Proj p) { return n::dense_mlp(l, p); }, c.intermediate_size);
      continue;
    }
    L.router = b.matrix(n::router(c, l), static_cast<int64_t>(plan.candidates.size()), d);
    if (c.moe.score_correction_bias)
      L.router_bias = b.vector(n::router_bias(c, l), static_cast<int64_t>(plan.candidates.size()));
    else  // A correction bias that routing would ignore means the config and the weights disagree.
      require(!ck.find(n::router_bias(c, l)),
              "tensor '" + n::router_bias(c, l) +
                  "' is present but the router uses no correction bias (topk_method is not noaux_tc)");
    if (plan.owns_experts)
      for (int j = 0; j < c.moe.num_experts; ++j)
        L.experts.push_back(b.swiglu([&](Proj p) { return n::expert(c, l, j, p); }, c.moe.expert_intermediate_size));
    if (c.moe.shared_intermediate_size > 0)
      L.shared = b.swiglu([&](Proj p) { return n::shared_expert(l, p); }, c.moe.shared_intermediate_size);
  }
  return w;
}

Model::Model(const std::filesystem::path& dir, WeightResidency residency)
    : dir_(dir), config_(read_model_config(dir)), checkpoint_(dir) {
  load(residency);
}

Model::Model(const std::filesystem::path& dir, const ExpertCacheOptions& options)
    : dir_(dir), config_(read_model_config(dir)), checkpoint_(dir) {
  if (!options.budget.set()) {
    load(WeightResidency::Auto);
    return;
  }
  // The plan first: a budget too small is an error before anything is read.
  const ExpertCachePlan plan = plan_expert_cache(config_, checkpoint_, options.budget);
  const std::set<std::string> routed = routed_expert_tensors(config_);
  checkpoint_.load_into_memory([&](const std::string& name) { return !routed.count(name); });
  weights_ = bind_weights(config_, checkpoint_);
  arrange_in_memory(weights_);
  expert_cache_ = std::make_unique<ExpertCache>(config_, checkpoint_, weights_, plan, options);
}

void Model::load(WeightResidency residency) {
  if (residency == WeightResidency::Auto) {
    const double available = double(sysconf(_SC_AVPHYS_PAGES)) * double(sysconf(_SC_PAGESIZE));
    residency = double(checkpoint_.total_bytes()) < 0.5 * available ? WeightResidency::InMemory
                                                                     : WeightResidency::Mapped;
  }
  if (residency == WeightResidency::InMemory) checkpoint_.load_into_memory();
  weights_ = bind_weights(config_, checkpoint_);
  if (residency == WeightResidency::InMemory) arrange_in_memory(weights_);
}

Model::~Model() = default;

double Model::weight_bytes_per_token() const {
  const auto bytes = [](const kernels::Matrix& m) { return double(m.rows) * double(dtype_row_bytes(m.dtype, m.cols)); };
  const ModelWeights& w = weights_;
  double total = bytes(w.lm_head) + bytes(w.embed) / double(w.embed.rows);  // one embedding row
  for (int l = 0; l < config_.num_layers; ++l) {
    const LayerWeights& L = w.layers[l];
    for (const kernels::Matrix* m : L.attention_matrices()) total += bytes(*m);
    if (L.latent_up) {  // kv_b is read as k_up and v_up
      total -= bytes(L.kv_b);
      for (const auto* ups : {&L.k_up, &L.v_up})
        for (const kernels::Matrix& m : *ups) total += bytes(m);
    }
    if (!config_.layers[l].is_moe) {
      total += L.dense.bytes();
      continue;
    }
    // K routed experts (all experts of a model have one shape and dtype), the router, the shared ones.
    total += bytes(L.router) + config_.moe.top_k * w.expert(config_.layers[l].candidates[0]).bytes();
    if (L.shared.gate.rows > 0) total += L.shared.bytes();
  }
  return total;
}

double Model::kv_bytes_read(double context) const { return context * double(KvPool::bytes_per_position(config_)); }

}  // namespace crossmoe
