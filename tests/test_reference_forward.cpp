// Megrez2 sharing and ReXMoE reuse, which transformers lacks, against a deliberately plain
// reference forward written here straight from the formulas in shared/notes/model-family.md and
// Megrez2's published inference code (vLLM's megrez_moe): double precision, no KV cache, no
// batching, and its own reading of config.json for which layers are MoE, which experts a router
// may choose and RoPE (it does not use ModelConfig::layers or ModelConfig::rope). Its products
// read their inputs as the active kernels do (rounded to bf16 against bf16 weights on avx512_bf16).
#include <gtest/gtest.h>

#include "temp_dir.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "kernels/kernels.hpp"
#include "model/init.hpp"
#include "model/tensor_names.hpp"
#include "runtime/generate.hpp"
#include "small_models.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

using namespace crossmoe;
namespace n = crossmoe::tensor_names;

namespace {

using Vec = std::vector<double>;

class PlainReference {
 public:
  PlainReference(const ModelConfig& c, const Checkpoint& ck, const nlohmann::json& raw)
      : c_(c), ck_(ck), raw_(raw) {
    first_dense_ = raw.value("first_k_dense_replace", 0);
    freq_ = raw.value("moe_layer_freq", 1);
    const bool megrez = raw.at("model_type") == "megrez_moe";
    r_ = megrez ? raw.value("experts_shared_frequency", 1) : raw.value("cross_layer_group_size", 1);
    mode_ = megrez ? (r_ > 1 ? "shared_pool" : "local") : raw.value("cross_layer_mode", "local");
    rope_inv_freq();
  }

  std::vector<Vec> logits(const std::vector<int>& tokens) const {
    const int T = int(tokens.size()), d = c_.hidden_size, hd = c_.head_dim;
    std::vector<Vec> x(T), u_prev(T);
    for (int t = 0; t < T; ++t) x[t] = row(n::embed(), tokens[t]);
    for (int l = 0; l < c_.num_layers; ++l) {
      // Attention.
      std::vector<Vec> q(T), k(T), v(T);
      for (int t = 0; t < T; ++t) {
        const Vec h = rmsnorm(x[t], tensor(n::input_norm(l)));
        q[t] = matvec(n::attn(l, 'q'), h);
        k[t] = matvec(n::attn(l, 'k'), h);
        v[t] = matvec(n::attn(l, 'v'), h);
        for (int head = 0; head < c_.num_heads; ++head) headwise(q[t], head, l, 'q', t);
        for (int head = 0; head < c_.num_kv_heads; ++head) headwise(k[t], head, l, 'k', t);
      }
      const int per_kv = c_.num_heads / c_.num_kv_heads;
      for (int t = 0; t < T; ++t) {
        Vec att(size_t(c_.num_heads) * hd, 0.0);
        for (int head = 0; head < c_.num_heads; ++head) {
          const int g = head / per_kv;
          Vec s(t + 1);
          for (int j = 0; j <= t; ++j) {
            double dot = 0;
            for (int i = 0; i < hd; ++i) dot += q[t][head * hd + i] * k[j][g * hd + i];
            s[j] = dot / std::sqrt(double(hd));
          }
          softmax(s);
          for (int j = 0; j <= t; ++j)
            for (int i = 0; i < hd; ++i) att[head * hd + i] += s[j] * v[j][g * hd + i];
        }
        add(x[t], matvec(n::attn(l, 'o'), att));
      }
      // FFN.
      const bool is_moe = layer_is_moe(l);
      std::vector<Vec> u(T);
      for (int t = 0; t < T; ++t) u[t] = rmsnorm(x[t], tensor(n::post_attention_norm(l)));
      for (int t = 0; t < T; ++t) {
        if (!is_moe) {
          add(x[t], swiglu([&](Proj p) { return n::dense_mlp(l, p); }, u[t]));
          continue;
        }
        const Vec& router_in = c_.moe.pre_gated && l > 0 ? u_prev[t] : u[t];
        add(x[t], moe(l, router_in, u[t]));
      }
      u_prev = u;
    }
    std::vector<Vec> out(T);
    const std::string head = c_.tie_word_embeddings ? n::embed() : n::lm_head();
    for (int t = 0; t < T; ++t) out[t] = matvec(head, rmsnorm(x[t], tensor(n::final_norm())));
    return out;
  }

 private:
  Vec tensor(const std::string& name) const {
    const TensorView* t = ck_.find(name);
    EXPECT_NE(t, nullptr) << name;
    std::vector<float> f(t->numel());
    kernels::to_f32(t->data, t->dtype, t->numel(), f.data());
    return Vec(f.begin(), f.end());
  }
  Vec row(const std::string& name, int r) const {
    const Vec all = tensor(name);
    const int d = c_.hidden_size;
    return Vec(all.begin() + size_t(r) * d, all.begin() + size_t(r + 1) * d);
  }
  // Against bf16 weights the avx512_bf16 kernels multiply activations rounded to bf16 (as
  // llama.cpp does); the other ISAs multiply them as they are.
  Vec matvec(const std::string& name, Vec x) const {
    if (ck_.find(name)->dtype == DType::BF16 && kernels::active_isa() == kernels::Isa::Avx512Bf16)
      for (double& v : x) v = bf16_to_f32(f32_to_bf16(float(v)));
    const Vec w = tensor(name);
    const size_t cols = x.size(), rows = w.size() / cols;
    Vec y(rows, 0.0);
    for (size_t r = 0; r < rows; ++r)
      for (size_t c = 0; c < cols; ++c) y[r] += w[r * cols + c] * x[c];
    return y;
  }
  Vec rmsnorm(const Vec& x, const Vec& g) const {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / x.size() + c_.rms_norm_eps);
    Vec y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * g[i];
    return y;
  }
  static void softmax(Vec& s) {
    const double m = *std::max_element(s.begin(), s.end());
    double sum = 0;
    for (double& v : s) sum += (v = std::exp(v - m));
    for (double& v : s) v /= sum;
  }
  static void add(Vec& x, const Vec& y) {
    for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
  }
  // RoPE frequencies: plain, or YaRN as Megrez2's code reads it (rope_scaling's factor as given,
  // a top-level original_max_position_embeddings first, attn_factor times 0.1 ln(factor) + 1).
  void rope_inv_freq() {
    const int hd = c_.head_dim;
    const double theta = raw_.value("rope_theta", 10000.0);
    for (int i = 0; i < hd / 2; ++i) inv_freq_.push_back(std::pow(theta, -2.0 * i / hd));
    if (!raw_.contains("rope_scaling") || raw_.at("rope_scaling").is_null()) return;
    const nlohmann::json& s = raw_.at("rope_scaling");
    EXPECT_EQ(s.value("type", s.value("rope_type", "")), "yarn") << "the reference knows YaRN only";
    const double factor = s.at("factor");
    const double original = raw_.contains("original_max_position_embeddings")
                                ? double(raw_.at("original_max_position_embeddings"))
                                : double(s.at("original_max_position_embeddings"));
    const auto dim_of = [&](double rotations) {
      return hd * std::log(original / (rotations * 2 * M_PI)) / (2 * std::log(theta));
    };
    const double low = std::max(std::floor(dim_of(s.value("beta_fast", 32.0))), 0.0);
    double high = std::min(std::ceil(dim_of(s.value("beta_slow", 1.0))), double(hd - 1));
    if (low == high) high += 0.001;
    for (int i = 0; i < hd / 2; ++i) {
      const double extrapolate = 1 - std::clamp((i - low) / (high - low), 0.0, 1.0);
      inv_freq_[i] = inv_freq_[i] / factor * (1 - extrapolate) + inv_freq_[i] * extrapolate;
    }
    rope_scale_ = (0.1 * std::log(factor) + 1.0) * s.value("attn_factor", 1.0);
  }
  // Per-head q/k norm, then RoPE on pairs (i, i + hd/2).
  void headwise(Vec& v, int head, int l, char which, int pos) const {
    const int hd = c_.head_dim;
    Vec h(v.begin() + head * hd, v.begin() + (head + 1) * hd);
    if (c_.qk_norm == QkNorm::PerHead) h = rmsnorm(h, tensor(n::qk_norm(l, which)));
    for (int i = 0; i < hd / 2; ++i) {
      const double angle = pos * inv_freq_[i];
      const double cos = std::cos(angle) * rope_scale_, sin = std::sin(angle) * rope_scale_;
      const double a = h[i], b = h[i + hd / 2];
      h[i] = a * cos - b * sin;
      h[i + hd / 2] = b * cos + a * sin;
    }
    std::copy(h.begin(), h.end(), v.begin() + head * hd);
  }
  template <class Names>
  Vec swiglu(Names name_of, const Vec& u) const {
    Vec g = matvec(name_of(Proj::Gate), u);
    const Vec up = matvec(name_of(Proj::Up), u);
    for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1 + std::exp(-g[i])) * up[i];
    return matvec(name_of(Proj::Down), g);
  }
  bool layer_is_moe(int l) const {
    return raw_.contains("n_routed_experts") && l >= first_dense_ && l % freq_ == 0;
  }
  // MoE layer l is in group (l - first_k_dense_replace) / r by layer index; a shared pool is
  // owned by the group's first layer, first_k_dense_replace + group * r.
  std::vector<int> pools(int l) const {
    const int group = (l - first_dense_) / r_;
    if (mode_ == "shared_pool") return {first_dense_ + group * r_};
    if (mode_ == "local") return {l};
    std::vector<int> members;
    for (int layer = 0; layer < c_.num_layers; ++layer)
      if (layer_is_moe(layer) && (layer - first_dense_) / r_ == group) members.push_back(layer);
    return members;
  }
  Vec moe(int l, const Vec& router_in, const Vec& u) const {
    const MoeConfig& m = c_.moe;
    const std::vector<int> owners = pools(l);
    const Vec s = matvec(n::router(c_, l), router_in);
    const int N = int(s.size());
    EXPECT_EQ(N, int(owners.size()) * m.num_experts);
    Vec p = s;
    if (m.scoring == Scoring::Softmax) softmax(p);
    else for (double& v : p) v = 1 / (1 + std::exp(-v));
    Vec choice = p;
    if (m.score_correction_bias) add(choice, tensor(n::router_bias(c_, l)));
    if (m.n_group > 1) {  // keep the topk_group groups with the best sum of their top two
      const int per = N / m.n_group;  // (with a correction bias), or with the best expert (without)
      std::vector<std::pair<double, int>> groups;
      for (int g = 0; g < m.n_group; ++g) {
        Vec members(choice.begin() + g * per, choice.begin() + (g + 1) * per);
        std::sort(members.rbegin(), members.rend());
        groups.push_back({m.score_correction_bias ? members[0] + members[1] : members[0], g});
      }
      std::sort(groups.begin(), groups.end(), [](auto a, auto b) { return a.first > b.first; });
      for (int i = m.topk_group; i < m.n_group; ++i)
        for (int j = 0; j < per; ++j) choice[groups[i].second * per + j] = -1e300;
    }
    std::vector<int> order(N);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return choice[a] > choice[b]; });
    double sum = 0;
    for (int i = 0; i < m.top_k; ++i) sum += p[order[i]];
    Vec out(u.size(), 0.0);
    for (int i = 0; i < m.top_k; ++i) {
      const int cand = order[i];
      const int owner = owners[cand / m.num_experts], expert = cand % m.num_experts;
      double w = p[cand] * m.routed_scaling_factor;
      if (m.norm_topk_prob) w /= sum;
      const Vec y = swiglu([&](Proj pr) { return n::expert(c_, owner, expert, pr); }, u);
      for (size_t j = 0; j < out.size(); ++j) out[j] += w * y[j];
    }
    if (m.shared_intermediate_size > 0) add(out, swiglu([&](Proj pr) { return n::shared_expert(l, pr); }, u));
    return out;
  }

  const ModelConfig& c_;
  const Checkpoint& ck_;
  const nlohmann::json& raw_;
  int first_dense_ = 0, freq_ = 1, r_ = 1;
  std::string mode_;
  std::vector<double> inv_freq_;
  double rope_scale_ = 1.0;
};

using testing_models::small;

struct Layout {
  std::string name;
  ModelConfig config;
  // Non-null: config.json is rewritten as a Megrez2 (megrez_moe) config with these keys added.
  nlohmann::json megrez = nullptr;
};

// crossmoe's config.json for the same weights, spelled as Megrez2's published configs spell it.
void rewrite_as_megrez(const std::filesystem::path& dir, const nlohmann::json& extra) {
  nlohmann::json j = read_json_file(dir / "config.json");
  j["model_type"] = "megrez_moe";
  j["experts_shared_frequency"] = j["cross_layer_group_size"];
  j["hidden_act"] = "silu";
  for (const char* key : {"cross_layer_mode", "cross_layer_group_size", "qk_norm"}) j.erase(key);
  j.update(extra);
  write_json_file(dir / "config.json", j);
}

// A Megrez2-shaped model without q/k norms (Megrez2 uses LLaMA attention).
ModelConfig small_megrez() {
  ModelConfig m = small("megrez2");
  m.qk_norm = QkNorm::None;
  return m;
}

std::vector<Layout> layouts() {
  std::vector<Layout> out;
  out.push_back({"dense", small("dense")});
  out.push_back({"layer_local", small("moe")});
  out.push_back({"megrez2_pregated", small("megrez2")});
  ModelConfig m = small("megrez2");
  m.moe.pre_gated = false;
  m.moe.n_group = 4;
  m.moe.topk_group = 2;
  m.moe.routed_scaling_factor = 2.5;
  m.tie_word_embeddings = true;
  out.push_back({"megrez2_grouped_topk", m});
  out.push_back({"rexmoe_r2", small("rexmoe")});
  ModelConfig r4 = small("rexmoe");
  r4.moe.group_size = 4;  // 6 MoE layers: groups of 4 and 2 (the last group is shorter)
  r4.moe.scoring = Scoring::Sigmoid;
  r4.moe.score_correction_bias = true;
  r4.moe.pre_gated = true;
  r4.moe.shared_intermediate_size = 64;
  out.push_back({"rexmoe_r4_sigmoid_pregated", r4});
  // Megrez2 checkpoints read with its published semantics. moe_layer_freq 2: MoE layers 2, 4, 6,
  // 8, groups by layer index {2, 4} and {6, 8} (by position among MoE layers all four would share).
  ModelConfig freq2 = small_megrez();
  freq2.num_layers = 9;
  freq2.layer_is_moe.assign(9, false);
  for (int l = 2; l < 9; l += 2) freq2.layer_is_moe[l] = true;
  freq2.moe.group_start_layer = 2;
  freq2.moe.group_size = 4;
  out.push_back({"megrez_moe_layer_freq2", freq2, nlohmann::json::object()});
  // YaRN with a factor unlike the ratio of the lengths, and a top-level original length that
  // overrides rope_scaling's.
  out.push_back({"megrez_moe_yarn", small_megrez(),
                 {{"rope_scaling", {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 48},
                                    {"beta_fast", 32}, {"beta_slow", 1}, {"attn_factor", 1.2}}},
                  {"original_max_position_embeddings", 96}}});
  // Grouped top-k without a correction bias: a group scores as its best expert.
  ModelConfig no_bias = small_megrez();
  no_bias.moe.score_correction_bias = false;
  no_bias.moe.n_group = 4;
  no_bias.moe.topk_group = 2;
  out.push_back({"megrez_moe_grouped_no_bias", no_bias, nlohmann::json::object()});
  for (auto& l : out) l.config.finalize();
  return out;
}

void PrintTo(const Layout& layout, std::ostream* os) { *os << layout.name; }

class ReferenceForward : public ::testing::TestWithParam<Layout> {};

TEST_P(ReferenceForward, FastPathMatchesPlainDoubleReference) {
  const ModelConfig& config = GetParam().config;
  const auto dir = testing_paths::temp_path("ref_" + GetParam().name);
  InitOptions options;
  options.seed = 7;
  options.norm_noise = 0.2f;
  write_random_model(config, dir, options);
  if (!GetParam().megrez.is_null()) rewrite_as_megrez(dir, GetParam().megrez);
  // The reference reads the files: a model's copy in memory lies in its kernels' layouts
  // (kernels::arrange_for_matmul: bf16 in the tile unit's order on AMX machines).
  const Checkpoint ck(dir);

  const std::vector<int> tokens = {5, 77, 123, 9, 250, 31, 64, 199, 2, 18, 42};
  const nlohmann::json raw = read_json_file(dir / "config.json");
  const int V = config.vocab_size;
  // The active ISA (f32 activations; avx512_bf16 only when asked for) is held to 2e-4. Where the
  // CPU has it, the opt-in avx512_bf16 is checked too: it multiplies bf16 weights by activations
  // rounded to bf16 (8 significant bits, as llama.cpp does), and so does the reference for it (a
  // routing decision near a tie would otherwise go another way). Even so one rounding that falls
  // the other way (the runtime's f32 against the reference's double) perturbs what follows and
  // tips later ones: measured up to 0.011 here (the dense and rexmoe_r2 layouts). So it is held
  // to 2^-6 of the largest logit, the bound test_hf_reference.cpp derives for bf16 activations.
  std::vector<kernels::Isa> isas = {kernels::active_isa()};
  if (isas[0] != kernels::Isa::Avx512Bf16 && kernels::isa_supported(kernels::Isa::Avx512Bf16))
    isas.push_back(kernels::Isa::Avx512Bf16);
  const kernels::Isa previous = kernels::active_isa();
  for (kernels::Isa isa : isas) {
    kernels::set_isa(isa);
    // avx512_bf16's products are those of bf16 matrices as rows (a model loaded with another ISA
    // active may hold them in the tile unit's order, multiplied on the tiles whatever the ISA).
    if (isa == kernels::Isa::Avx512Bf16) kernels::set_bf16_tiles(kernels::Bf16TilesUse::Never);
    const Model model(dir);
    const auto expected = PlainReference(model.config(), ck, raw).logits(tokens);
    double max_ref = 1;
    for (const auto& row : expected)
      for (double v : row) max_ref = std::max(max_ref, std::fabs(v));
    const double tolerance = isa == kernels::Isa::Avx512Bf16 ? std::ldexp(1.0, -6) * max_ref : 2e-4;
    for (int chunk : {1, 4, 64}) {
      InferenceSession session(model, 32, chunk);
      const std::vector<float>& logits = session.forward(tokens, true);
      double max_diff = 0;
      for (size_t t = 0; t < tokens.size(); ++t)
        for (int v = 0; v < V; ++v) max_diff = std::max(max_diff, std::fabs(logits[t * V + v] - expected[t][v]));
      EXPECT_LT(max_diff, tolerance) << kernels::isa_name(isa) << " chunk " << chunk << ", max |logit| " << max_ref;
    }
  }
  kernels::set_isa(previous);
  kernels::set_bf16_tiles(kernels::Bf16TilesUse::ByIsa);
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Layouts, ReferenceForward, ::testing::ValuesIn(layouts()),
                         [](const auto& info) { return info.param.name; });

TEST(ReferenceForward, PreGatingChangesTheRouterInput) {
  // Same weights, pre_gate on and off: the routing trace must differ, or the flag is ignored.
  ModelConfig c = small("megrez2");
  c.finalize();
  const auto dir = testing_paths::temp_path("pregate");
  write_random_model(c, dir, {});
  const Model on(dir);
  ModelConfig off_config = on.config();
  off_config.moe.pre_gated = false;
  std::vector<std::vector<RoutingRecord>> traces(2);
  {
    InferenceSession s(on, 16);
    s.set_trace(&traces[0]);
    s.forward({1, 2, 3, 4, 5, 6});
  }
  nlohmann::json cfg = read_json_file(dir / "config.json");
  cfg["pre_gate"] = false;
  write_json_file(dir / "config.json", cfg);
  const Model off(dir);
  {
    InferenceSession s(off, 16);
    s.set_trace(&traces[1]);
    s.forward({1, 2, 3, 4, 5, 6});
  }
  ASSERT_EQ(traces[0].size(), traces[1].size());
  int differing = 0;
  for (size_t i = 0; i < traces[0].size(); ++i) differing += traces[0][i].experts != traces[1][i].experts;
  EXPECT_GT(differing, 0);
  // Megrez2 followers route into their group leader's pool.
  for (const auto& r : traces[0])
    for (const auto& e : r.experts) EXPECT_EQ(e.owner_layer, on.config().group_layers(on.config().layers[r.layer].group).front());
  std::filesystem::remove_all(dir);
}

}  // namespace

namespace {

TEST(ReferenceForward, Megrez2RefusesACorrectionBiasItsRouterWouldIgnore) {
  ModelConfig c = small_megrez();  // sigmoid + e_score_correction_bias tensors
  c.finalize();
  const auto dir = testing_paths::temp_path("unused_bias");
  write_random_model(c, dir, {});
  rewrite_as_megrez(dir, {{"topk_method", "greedy"}});
  try {
    const Model model(dir);
    ADD_FAILURE() << "loaded a correction bias that routing ignores";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("e_score_correction_bias' is present"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
