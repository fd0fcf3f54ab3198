// crossmoe quantize: the model it writes loads with its matrices bound as stored, stays close to
// the original, and the command fails cleanly.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_run.hpp"
#include "model/init.hpp"
#include "model/safetensors.hpp"
#include "runtime/expert_cache.hpp"
#include "runtime/forward.hpp"
#include "runtime/generate.hpp"
#include "runtime/quantize.hpp"
#include "small_models.hpp"
#include "temp_dir.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

using namespace crossmoe;
namespace fs = std::filesystem;

namespace {

// Small models of a layout with 256-wide rows, so that Q4_K applies to every matrix: "megrez2"
// (shared pool, shared expert, dense first layer) and "dense".
ModelConfig q4_friendly_config(const std::string& layout) {
  ModelConfig c = testing_models::small(layout);
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.moe.expert_intermediate_size = 256;
  c.moe.shared_intermediate_size = 256;
  c.num_heads = 4;
  c.head_dim = 64;
  c.finalize();
  return c;
}

struct Models {
  fs::path root = testing_paths::temp_path("quantized_model");
  fs::path original = root / "bf16", dense = root / "dense_bf16";
  Models() {
    fs::remove_all(root);
    fs::create_directories(root);
    write_random_model(q4_friendly_config("megrez2"), original, InitOptions{.seed = 7, .dtype = DType::BF16});
    write_random_model(q4_friendly_config("dense"), dense, InitOptions{.seed = 7, .dtype = DType::BF16});
  }
  ~Models() { fs::remove_all(root); }
  fs::path quantized(QuantScheme s, const fs::path& model = {}) {
    const fs::path from = model.empty() ? original : model;
    const fs::path out = root / (from.filename().string() + "_" + quant_scheme_name(s));
    if (!fs::exists(out)) quantize_model(from, out, s);
    return out;
  }
};

Models& models() {
  static Models m;
  return m;
}

std::vector<float> logits(const fs::path& dir, const std::vector<int>& tokens) {
  const Model model(dir);
  InferenceSession session(model, 64);
  return session.forward(tokens, true);
}

const std::vector<int> kPrompt = {5, 17, 42, 99, 3, 250, 7, 64, 128, 11, 200, 33};

}  // namespace

TEST(QuantizedModel, MatricesBindAsStoredAndNormsStayAsTheyWere) {
  const Model mixed(models().quantized(QuantScheme::Mixed));
  const ModelWeights& w = mixed.weights();
  EXPECT_EQ(w.embed.dtype, DType::Q8_0);
  EXPECT_EQ(w.lm_head.dtype, DType::Q8_0);
  const LayerWeights& moe = w.layers[1];
  ASSERT_FALSE(moe.experts.empty());
  EXPECT_EQ(moe.q.dtype, DType::Q8_0);
  EXPECT_EQ(moe.router.dtype, DType::Q8_0);
  EXPECT_EQ(moe.shared.gate.dtype, DType::Q8_0);
  EXPECT_EQ(moe.experts[0].gate.dtype, DType::Q4_K);
  EXPECT_EQ(moe.experts[0].down.dtype, DType::Q4_K);
  EXPECT_EQ(w.layers[0].dense.up.dtype, DType::Q8_0);
  const Model original(models().original);
  EXPECT_EQ(w.final_norm, original.weights().final_norm);
  EXPECT_EQ(moe.input_norm, original.weights().layers[1].input_norm);
  EXPECT_LT(mixed.bytes_per_token(), 0.6 * original.bytes_per_token());

  // Another reader sees U8 tensors of the wrong shape and a quantization method it cannot load.
  const fs::path file = models().quantized(QuantScheme::Q4_K) / "model.safetensors";
  std::ifstream in(file, std::ios::binary);
  uint64_t len = 0;
  in.read(reinterpret_cast<char*>(&len), 8);
  std::string header(len, '\0');
  in.read(header.data(), std::streamsize(len));
  const auto h = nlohmann::json::parse(header);
  const auto& q = h.at("model.layers.1.self_attn.q_proj.weight");
  EXPECT_EQ(q.at("dtype"), "U8");
  EXPECT_EQ(q.at("shape"), nlohmann::json::array({256, 144}));
  EXPECT_EQ(h.at("__metadata__").at("crossmoe.dtype.model.layers.1.self_attn.q_proj.weight"), "Q4_K");
  const auto config = read_json_file(models().quantized(QuantScheme::Q4_K) / "config.json");
  EXPECT_EQ(config.at("quantization_config").at("quant_method"), "crossmoe");
  EXPECT_TRUE(fs::exists(models().quantized(QuantScheme::Q4_K) / "generation_config.json"));
}

// What bench holds decode against, counted independently from the files: every matrix of the
// safetensors header (its data_offsets' extent, so the stored bytes of Q8_0 / Q4_K blocks too)
// except the embedding table, of which a token reads one row, and the routed experts, of which
// each MoE layer reads top_k (all experts of a model have one shape and dtype: the mean expert);
// vectors (norms, biases) are left out as the model leaves them out. The KV cache from
// config.json's fields: f32 keys and values per layer and kv head for each position attended to.
TEST(QuantizedModel, BytesPerTokenMatchTheFilesTensorSizes) {
  const auto header_of = [](const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    uint64_t len = 0;
    in.read(reinterpret_cast<char*>(&len), 8);
    std::string header(len, '\0');
    in.read(header.data(), std::streamsize(len));
    return nlohmann::json::parse(header);
  };
  for (const fs::path& dir : {models().original, models().dense, models().quantized(QuantScheme::Q8_0),
                              models().quantized(QuantScheme::Q4_K), models().quantized(QuantScheme::Mixed),
                              models().quantized(QuantScheme::Q4_K, models().dense)}) {
    const Model model(dir);
    const nlohmann::json config = read_json_file(dir / "config.json");
    double others = 0, experts = 0, embed = 0;
    int expert_matrices = 0;
    bool lm_head = false;
    const nlohmann::json header = header_of(dir / "model.safetensors");
    for (const auto& [name, t] : header.items()) {
      if (name == "__metadata__" || t.at("shape").size() < 2) continue;
      const double bytes = double(t.at("data_offsets")[1].get<uint64_t>() - t.at("data_offsets")[0].get<uint64_t>());
      if (name.find("embed_tokens") != std::string::npos) {
        embed = bytes;
      } else if (name.find(".experts.") != std::string::npos) {
        experts += bytes;
        ++expert_matrices;
      } else {
        lm_head = lm_head || name == "lm_head.weight";
        others += bytes;
      }
    }
    int moe_layers = 0;
    for (const LayerPlan& plan : model.config().layers) moe_layers += plan.is_moe;
    const int64_t vocab = config.at("vocab_size");
    double expected = others + embed / double(vocab) + (lm_head ? 0.0 : embed);
    if (expert_matrices > 0) expected += moe_layers * model.config().moe.top_k * experts / (expert_matrices / 3);
    EXPECT_NEAR(model.weight_bytes_per_token(), expected, 1e-9 * expected) << dir;

    const int64_t layers = config.at("num_hidden_layers"), kv_heads = config.at("num_key_value_heads");
    const int64_t head_dim = config.contains("head_dim") ? config.at("head_dim").get<int64_t>()
                                                         : config.at("hidden_size").get<int64_t>() /
                                                               config.at("num_attention_heads").get<int64_t>();
    const double kv_per_position = 2.0 * double(layers * kv_heads * head_dim) * sizeof(float);
    EXPECT_EQ(model.kv_bytes_read(0), 0.0);
    EXPECT_DOUBLE_EQ(model.kv_bytes_read(528.5), 528.5 * kv_per_position) << dir;
    EXPECT_DOUBLE_EQ(model.bytes_per_token(100), model.weight_bytes_per_token() + 100 * kv_per_position) << dir;
  }
}

double relative_rms_change(const std::vector<float>& ref, const std::vector<float>& got) {
  double ref_ss = 0, diff_ss = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    ref_ss += double(ref[i]) * ref[i];
    diff_ss += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
  }
  return std::sqrt(diff_ss / ref_ss);
}

// How far the logits may move (RMS of the change over RMS of the logits). A weight errs by at most
// half a step, uniformly in RMS step / sqrt(12): for Q8_0 with step max|w| / 127 over 32 roughly
// Gaussian weights (max ~ 2.5 sigma) about 0.6% of the weights' spread, and as much again from
// the 8-bit activations, so each product's output moves by ~1%; Q4_K's step is the sub-block's
// range / 15 (~4.5 sigma / 15), ~9% per product. In the dense model, 9 products in sequence
// (q/k/v, o, gate/up, down per layer, and the LM head) add up in quadrature to ~3% for Q8_0 and
// ~27% for Q4_K: the bounds are 5% and 40% (measured 2.4% and 28%). In the MoE, a routing
// decision near a tie flips to another expert under any perturbation and moves its token's
// logits by a whole expert's output: bounds 15% and 60% (measured 4.7%, 35%, mixed 7.5%). A
// wrong kernel or format moves them by 100%.
TEST(QuantizedModel, LogitsStayCloseToTheOriginal) {
  struct Case {
    fs::path model;
    QuantScheme scheme;
    double bound;
  };
  const Case cases[] = {{models().dense, QuantScheme::Q8_0, 0.05},    {models().dense, QuantScheme::Q4_K, 0.4},
                        {models().original, QuantScheme::Q8_0, 0.15}, {models().original, QuantScheme::Q4_K, 0.6},
                        {models().original, QuantScheme::Mixed, 0.4}};
  for (const Case& c : cases) {
    const std::vector<float> ref = logits(c.model, kPrompt), got = logits(models().quantized(c.scheme, c.model), kPrompt);
    ASSERT_EQ(got.size(), ref.size());
    const double change = relative_rms_change(ref, got);
    std::printf("%s %s: relative RMS change of the logits %.4f (bound %.2f)\n", c.model.filename().c_str(),
                quant_scheme_name(c.scheme).c_str(), change, c.bound);
    EXPECT_LT(change, c.bound) << c.model << " " << quant_scheme_name(c.scheme);
    EXPECT_GT(change, 0.0) << "the quantized model must really be quantized";
  }
}

// Multi-head latent attention's matrices are ordinary matrices: those of whole blocks quantize
// (q_a and kv_a, 64 columns), the narrow ones keep their dtype (q_b 24 columns, kv_b 16, o 48),
// and the model runs. Per position the logits move as the MoE's above do, except where a
// router's near tie flips (measured: the last prompt position, where layer 1 picks expert 6 for
// 7, moves by the logits' whole size, and the greedy tokens part from transformers' from the
// first). So the median position is held to the Q8_0 MoE's bound; a wrong kernel or format
// moves every position by 100%.
TEST(QuantizedModel, LatentAttentionQuantizes) {
  const fs::path fixture = fs::path(CROSSMOE_FIXTURES) / "hf/deepseek_v3";
  const fs::path out = models().root / "deepseek_v3_q8_0";
  quantize_model(fixture, out, QuantScheme::Q8_0);
  const Model model(out);
  const LayerWeights& L = model.weights().layers[1];
  for (const kernels::Matrix* m : {&L.q_a, &L.kv_a}) EXPECT_EQ(m->dtype, DType::Q8_0);
  for (const kernels::Matrix* m : {&L.q_b, &L.kv_b, &L.o}) EXPECT_EQ(m->dtype, DType::BF16);
  const std::vector<int> prompt = read_json_file(fixture / "reference.json")["prompt"].get<std::vector<int>>();
  const std::vector<float> ref = logits(fixture, prompt), got = logits(out, prompt);
  const size_t V = size_t(model.config().vocab_size);
  std::vector<double> changes;
  for (size_t t = 0; t < prompt.size(); ++t)
    changes.push_back(relative_rms_change(std::vector<float>(ref.begin() + t * V, ref.begin() + (t + 1) * V),
                                          std::vector<float>(got.begin() + t * V, got.begin() + (t + 1) * V)));
  std::printf("deepseek_v3 q8_0: relative RMS change of the logits per position:");
  for (double c : changes) std::printf(" %.3f", c);
  std::printf("\n");
  std::nth_element(changes.begin(), changes.begin() + changes.size() / 2, changes.end());
  EXPECT_LT(changes[changes.size() / 2], 0.15);
  EXPECT_GT(changes[changes.size() / 2], 0.0);
}

// Latent attention reads kv_b per head: k's rows transposed (k_up), v's as they are (v_up). In
// kv_b's own dtype where it is f32 / bf16 / f16 (the same values: v's rows are kv_b's own), widened
// to f32 where it is block-quantized (k's transpose crosses its blocks), in both cases from the
// rows as stored, not as the in-memory model interleaves them.
TEST(QuantizedModel, LatentUpMatricesKeepKvBsDtypeOrWidenItsBlocks) {
  // hf/deepseek_v3 (bf16) with a latent of 32, so that kv_b's rows are whole Q8_0 blocks.
  const fs::path fixture = fs::path(CROSSMOE_FIXTURES) / "hf/deepseek_v3";
  const fs::path wide = models().root / "deepseek_v3_latent32", q8 = models().root / "deepseek_v3_latent32_q8_0";
  nlohmann::json config = read_json_file(fixture / "config.json");
  const int kvl = 32, rope = config.at("qk_rope_head_dim"), d = config.at("hidden_size");
  const int heads = config.at("num_attention_heads"), nope = config.at("qk_nope_head_dim"), vd = config.at("v_head_dim");
  config["kv_lora_rank"] = kvl;
  fs::create_directories(wide);
  std::ofstream(wide / "config.json") << config.dump();
  const SafetensorsFile original(fixture / "model.safetensors");
  std::vector<TensorToWrite> tensors;
  std::vector<std::vector<uint16_t>> made;
  for (const auto& [name, t] : original.tensors()) {
    std::vector<int64_t> shape = t.shape;
    if (name.find("kv_a_proj_with_mqa") != std::string::npos) shape = {kvl + rope, d};
    else if (name.find("kv_a_layernorm") != std::string::npos) shape = {kvl};
    else if (name.find("kv_b_proj") != std::string::npos) shape = {heads * (nope + vd), kvl};
    if (shape == t.shape) {
      tensors.push_back({name, t.dtype, shape, t.data});
      continue;
    }
    made.emplace_back(size_t(shape.size() == 1 ? shape[0] : shape[0] * shape[1]));
    for (size_t i = 0; i < made.back().size(); ++i)  // bf16 of 1 + sin(i) / 4 (norms) or sin(i) / 4
      made.back()[i] = uint16_t(std::bit_cast<uint32_t>(float(shape.size() == 1) + std::sin(float(i)) / 4) >> 16);
    tensors.push_back({name, DType::BF16, shape, made.back().data()});
  }
  write_safetensors(wide / "model.safetensors", tensors);
  quantize_model(wide, q8, QuantScheme::Q8_0);
  for (const fs::path& dir : {fixture, fs::path(CROSSMOE_FIXTURES) / "hf/deepseek_v3_q_proj", wide, q8})
    for (const WeightResidency residency : {WeightResidency::Mapped, WeightResidency::InMemory}) {
      SCOPED_TRACE(dir.filename().string() + (residency == WeightResidency::Mapped ? " mapped" : " in memory"));
      const Model model(dir, residency);
      const SafetensorsFile file(dir / "model.safetensors");
      const LatentAttention& a = *model.config().latent_attention;
      for (int l = 0; l < model.config().num_layers; ++l) {
        const LayerWeights& L = model.weights().layers[l];
        const TensorView& kv_b = file.tensors().at("model.layers." + std::to_string(l) + ".self_attn.kv_b_proj.weight");
        const bool quantized = kv_b.dtype == DType::Q8_0;
        EXPECT_EQ(quantized, dir == q8);
        const DType up = quantized ? DType::F32 : kv_b.dtype;
        const size_t row_bytes = dtype_row_bytes(kv_b.dtype, a.kv_lora_rank);
        std::vector<float> row(size_t(a.kv_lora_rank)), got(size_t(a.kv_lora_rank));
        for (int h = 0; h < heads; ++h) {
          const kernels::Matrix &k = L.k_up[size_t(h)], &v = L.v_up[size_t(h)];
          ASSERT_EQ(k.dtype, up);
          ASSERT_EQ(v.dtype, up);
          ASSERT_TRUE(k.rows == a.kv_lora_rank && k.cols == a.qk_nope_head_dim && k.row_stride() == k.cols);
          ASSERT_TRUE(v.rows == a.v_head_dim && v.cols == a.kv_lora_rank && v.row_stride() == v.cols);
          for (int i = 0; i < a.qk_nope_head_dim + a.v_head_dim; ++i) {
            kernels::to_f32(kv_b.data + size_t(h * (a.qk_nope_head_dim + a.v_head_dim) + i) * row_bytes, kv_b.dtype,
                            a.kv_lora_rank, row.data());
            const int vi = i - a.qk_nope_head_dim;
            for (int j = 0; j < a.kv_lora_rank; ++j) {
              const size_t e = dtype_size(up);
              if (vi < 0) kernels::to_f32(static_cast<const std::byte*>(k.data) + (size_t(j) * k.cols + i) * e, up, 1, &got[j]);
              else kernels::to_f32(static_cast<const std::byte*>(v.data) + (size_t(vi) * v.cols + j) * e, up, 1, &got[j]);
            }
            ASSERT_EQ(got, row) << "layer " << l << " head " << h << " kv_b row " << i;
          }
        }
      }
    }
  // And the widened model runs close to the one it was quantized from (kv_a, q_a and the experts
  // are Q8_0 too): within the Q8_0 MoE's bound on the median position, as above.
  const std::vector<int> prompt = read_json_file(fixture / "reference.json")["prompt"].get<std::vector<int>>();
  const std::vector<float> ref = logits(wide, prompt), got = logits(q8, prompt);
  const size_t V = size_t(config.at("vocab_size").get<int>());
  std::vector<double> changes;
  for (size_t t = 0; t < prompt.size(); ++t)
    changes.push_back(relative_rms_change(std::vector<float>(ref.begin() + t * V, ref.begin() + (t + 1) * V),
                                          std::vector<float>(got.begin() + t * V, got.begin() + (t + 1) * V)));
  std::nth_element(changes.begin(), changes.begin() + changes.size() / 2, changes.end());
  EXPECT_LT(changes[changes.size() / 2], 0.15);
}

// Quantized matrices in memory are interleaved 8 rows at a time (kernels::interleave_rows8), the
// embedding table excepted (it is read by rows); a mapped model reads the files' rows as they are.
// The two layouts add the same exact integer sums in another float order: a few units of 2^-24
// per product (measured 1.3e-7 to 1.6e-7 of the logits' RMS with AVX2 and portable kernels). But
// each product's input is quantized again to 8 bits, and an activation that lands next to a
// rounding midpoint may round the other way in one layout: one element moves by a whole step
// (max|x| / 127 of its block of 32), which the later products carry on. Measured 0.0024 with the
// AVX-512 kernels on this test's prompt. The bound, 1e-2, is under half the Q8_0 model's own
// distance from the original (LogitsStayCloseToTheOriginal); rows read in a wrong order or from
// a wrong place move the logits by their whole size. The expert cache interleaves the experts it
// reads as the resident ones are, so a budget gives the same bits (checked exactly below).
TEST(QuantizedModel, WeightsInMemoryAndCachedExpertsAreInterleaved) {
  const fs::path dense = models().quantized(QuantScheme::Mixed, models().dense);
  const Model resident(dense, WeightResidency::InMemory), mapped(dense, WeightResidency::Mapped);
  const ModelWeights& w = resident.weights();
  EXPECT_EQ(w.embed.layout, kernels::Layout::Rows);
  EXPECT_EQ(w.lm_head.layout, resident.config().tie_word_embeddings ? kernels::Layout::Rows : kernels::Layout::Interleaved8);
  for (const kernels::Matrix* m : {&w.layers[0].q, &w.layers[0].o, &w.layers[0].dense.down})
    EXPECT_EQ(m->layout, kernels::Layout::Interleaved8);
  EXPECT_EQ(mapped.weights().layers[0].q.layout, kernels::Layout::Rows);
  const auto forward = [](const Model& model) {
    InferenceSession session(model, 64);
    return session.forward(kPrompt, true);
  };
  const double change = relative_rms_change(forward(mapped), forward(resident));
  std::printf("interleaved against rows: relative RMS change of the logits %.3g (bound 1e-2)\n", change);
  EXPECT_LT(change, 1e-2);

  const fs::path moe = models().quantized(QuantScheme::Mixed);
  const Model all_in_memory(moe, WeightResidency::InMemory);
  ExpertCacheOptions options;
  options.budget = parse_memory_budget("50%");
  const Model cached(moe, options);
  ASSERT_TRUE(cached.expert_cache());
  EXPECT_EQ(forward(cached), forward(all_in_memory));
  const ExpertRef first = cached.config().layers[1].candidates[0];
  const SwiGluWeights& expert = cached.expert_cache()->acquire(first);
  EXPECT_EQ(expert.gate.dtype, DType::Q4_K);
  for (const kernels::Matrix* m : {&expert.gate, &expert.up, &expert.down}) EXPECT_EQ(m->layout, kernels::Layout::Interleaved8);
  cached.expert_cache()->release_all();
  EXPECT_EQ(all_in_memory.weights().expert(first).gate.layout, kernels::Layout::Interleaved8);
}

TEST(QuantizedModel, Q8_0GivesTheOriginalsGreedyTokens) {
  Sampler greedy(SamplingParams{});
  const Model original(models().dense), q8(models().quantized(QuantScheme::Q8_0, models().dense));
  InferenceSession a(original, 64), b(q8, 64);
  const auto ta = generate(a, kPrompt, 32, greedy, {}).tokens;
  const auto tb = generate(b, kPrompt, 32, greedy, {}).tokens;
  EXPECT_EQ(ta, tb);
}

TEST(QuantizedModel, RefusesAnExistingOutputAndLeavesNothingWhenItFails) {
  const fs::path root = models().root;
  EXPECT_THROW(quantize_model(models().original, models().original, QuantScheme::Q8_0), Error);
  // A NaN weight fails mid-write: no OUT, no temporary directory left behind.
  const fs::path broken = root / "broken";
  fs::remove_all(broken);
  fs::copy(models().original, broken);
  // Locate the tensor's bytes in the file through the header, then write a bf16 NaN there.
  std::fstream io(broken / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
  uint64_t len = 0;
  io.read(reinterpret_cast<char*>(&len), 8);
  std::string header(len, '\0');
  io.read(header.data(), std::streamsize(len));
  const uint64_t begin = nlohmann::json::parse(header).at("model.layers.1.mlp.shared_experts.up_proj.weight")
                             .at("data_offsets")[0].get<uint64_t>();
  io.seekp(std::streamoff(8 + len + begin + 20));
  const uint16_t nan_bf16 = 0x7fc0;
  io.write(reinterpret_cast<const char*>(&nan_bf16), 2);
  io.close();
  const fs::path out = root / "from_broken";
  try {
    quantize_model(broken, out, QuantScheme::Q8_0);
    FAIL() << "a NaN weight must fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("shared_experts.up_proj.weight"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out));
  for (const auto& entry : fs::directory_iterator(root))
    EXPECT_EQ(entry.path().filename().string().find(".partial"), std::string::npos) << entry.path();
}

TEST(QuantizedModel, BadMetadataIsAClearError) {
  const fs::path dir = models().root / "metadata";
  fs::create_directories(dir);
  const std::vector<uint8_t> bytes(2 * 34, 0);
  const auto expect_error = [&](const std::map<std::string, std::string>& meta, const std::string& shape_note,
                                std::vector<int64_t> shape, const std::string& needle) {
    const fs::path f = dir / "t.safetensors";
    write_safetensors(f, {{"w", DType::U8, shape, bytes.data()}}, meta);
    try {
      SafetensorsFile file(f);
      FAIL() << shape_note;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error({{"crossmoe.dtype.v", "Q8_0"}}, "names a missing tensor", {2, 34}, "names no tensor");
  expect_error({{"crossmoe.dtype.w", "Q8_K"}}, "unknown type", {2, 34}, "unknown block type 'Q8_K'");
  expect_error({{"crossmoe.dtype.w", "Q8_0"}}, "rows not whole blocks", {4, 17}, "multiple of 34");
  expect_error({{"crossmoe.dtype.w", "Q8_0"}}, "not a matrix", {68}, "stored as U8 [rows");
  // And the good case reads back as [rows, cols] of Q8_0.
  write_safetensors(dir / "ok.safetensors", {{"w", DType::Q8_0, {2, 32}, bytes.data()}});
  const SafetensorsFile ok(dir / "ok.safetensors");
  EXPECT_EQ(ok.tensors().at("w").dtype, DType::Q8_0);
  EXPECT_EQ(ok.tensors().at("w").shape, (std::vector<int64_t>{2, 32}));
}

TEST(QuantizedModel, CommandLine) {
  using testing_cli::run;
  const fs::path root = models().root, out = root / "cli_q8";
  const std::string model = models().original.string();
  auto r = run("quantize " + model + " " + (root / "x").string() + " --type iq2_xxs");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_EQ(r.out.rfind("error:", 0), 0u) << r.out;
  r = run("quantize " + (root / "missing").string() + " " + (root / "x").string() + " --type q8_0");
  EXPECT_EQ(r.code, 2) << r.out;
  r = run("quantize " + model + " " + model + " --type q8_0");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("error: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("exists"), std::string::npos) << r.out;
  r = run("quantize " + model + " " + out.string() + " --type mixed");
  ASSERT_EQ(r.code, 0) << r.out;
  r = run("generate " + out.string() + " --ids 1,2,3 -n 4");
  EXPECT_EQ(r.code, 0) << r.out;
  r = run("info " + out.string());
  EXPECT_EQ(r.code, 0) << r.out;
  r = run("bench " + out.string() + " --json --runs 1 --prompt-tokens 8 --gen-tokens 4");
  EXPECT_EQ(r.code, 0) << r.out;
}
