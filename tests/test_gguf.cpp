// GGUF: the file format, import of files llama.cpp's own converter wrote, export, tokenizers.
//
// tests/fixtures/gguf/*.gguf were written by llama.cpp's convert_hf_to_gguf.py (run by
// tests/fixtures/make_gguf_goldens.py on the transformers checkpoints of tests/fixtures/hf): the
// tensor names, merged experts, LLaMA's Q/K row permutation, rope_freqs and metadata in them are
// llama.cpp's, not ours. Nothing here needs llama.cpp at test time.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>

#include "cli_run.hpp"
#include "model/checkpoint.hpp"
#include "model/gguf_model.hpp"
#include "model/gguf_tokenizer.hpp"
#include "model/hf_config.hpp"
#include "model/init.hpp"
#include "model/tensor_names.hpp"
#include "kernels/kernels.hpp"
#include "runtime/generate.hpp"
#include "runtime/gguf_export.hpp"
#include "runtime/model_files.hpp"
#include "runtime/quantize.hpp"
#include "small_models.hpp"
#include "temp_dir.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"
#include "util/quant.hpp"

using namespace crossmoe;
namespace fs = std::filesystem;

namespace {

const std::string kFixtures = CROSSMOE_FIXTURES;

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name) : path(testing_paths::temp_path(name)) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::vector<std::byte> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(chars.size());
  std::memcpy(out.data(), chars.data(), chars.size());
  return out;
}

std::vector<float> to_floats(const TensorView& t) {
  std::vector<float> out(size_t(t.numel()));
  if (dtype_block(t.dtype) > 1) {
    const int64_t cols = t.shape.back(), rows = t.numel() / cols;
    const size_t row_bytes = dtype_row_bytes(t.dtype, cols);
    for (int64_t r = 0; r < rows; ++r) quant::dequantize_row(t.dtype, t.data + r * row_bytes, cols, out.data() + r * cols);
  } else {
    kernels::to_f32(t.data, t.dtype, t.numel(), out.data());
  }
  return out;
}

std::vector<float> prompt_logits(const fs::path& model_path, const std::vector<int>& prompt) {
  const Model model(model_path);
  InferenceSession session(model, 64);
  return session.forward(prompt, true);
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) d = std::max(d, double(std::fabs(a[i] - b[i])));
  return d;
}

double max_abs(const std::vector<float>& a) {
  double m = 0;
  for (float x : a) m = std::max(m, double(std::fabs(x)));
  return m;
}

std::vector<int> greedy(const fs::path& model_path, const std::vector<int>& prompt, int n) {
  const Model model(model_path);
  InferenceSession session(model, 64);
  Sampler sampler(SamplingParams{});
  return generate(session, prompt, n, sampler, {}).tokens;
}

const std::vector<int> kPrompt = {5, 17, 42, 99, 3, 250, 7, 64, 128, 11, 200, 33};

ModelConfig olmoe_like() {
  ModelConfig c = testing_models::small("moe");
  c.qk_norm = QkNorm::Full;
  c.num_kv_heads = c.num_heads;
  c.clip_qkv = 4.0;
  c.moe.shared_intermediate_size = 0;
  c.moe.norm_topk_prob = false;
  c.layer_is_moe.assign(c.num_layers, true);
  c.moe.group_start_layer = -1;
  c.finalize();
  return c;
}

// ------------------------------------------------------------------ the file format

TEST(GgufFormat, WriterAndReaderAgreeOnEveryValueType) {
  TempDir dir("gguf_format");
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_u32("a.u32", 4000000000u);
  w.add_f32("a.f32", 0.25f);
  w.add_bool("a.bool", true);
  w.add_strings("a.strings", {"x", "", "\xce\xbb"});
  w.add_i32s("a.ints", {-5, 7});
  w.add_f32s("a.floats", {1.5, -2});
  const std::vector<float> m = {1, 2, 3, 4, 5, 6};
  w.add_tensor("m", DType::F32, {3, 2}, [&](std::byte* out) { std::memcpy(out, m.data(), 24); });
  std::vector<uint8_t> q(34, 7);
  w.add_tensor("q", DType::Q8_0, {32}, [&](std::byte* out) { std::memcpy(out, q.data(), 34); });
  w.write(dir.path / "x.gguf");
  ASSERT_TRUE(is_gguf_file(dir.path / "x.gguf"));
  GgufFile f(dir.path / "x.gguf");
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.string("general.architecture"), "llama");
  EXPECT_EQ(f.integer("a.u32"), 4000000000LL);
  EXPECT_EQ(f.real("a.f32", 0), 0.25);
  EXPECT_TRUE(f.boolean("a.bool", false));
  EXPECT_EQ(f.find("a.strings")->texts, (std::vector<std::string>{"x", "", "\xce\xbb"}));
  EXPECT_EQ(f.find("a.ints")->integers, (std::vector<int64_t>{-5, 7}));
  EXPECT_EQ(f.find("a.floats")->reals, (std::vector<double>{1.5, -2}));
  ASSERT_EQ(f.tensors().size(), 2u);
  const GgufTensor* t = f.find_tensor("m");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->ne, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(std::memcmp(t->data, m.data(), 24), 0);
  EXPECT_EQ(f.find_tensor("q")->dtype, DType::Q8_0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f.find_tensor("q")->data) % 32, 0u);  // data aligned to 32 in the file
  EXPECT_THROW(f.integer("a.f32"), Error);
  EXPECT_THROW(f.string("missing"), Error);
}

// Q4_0 (ggml type 2) and Q5_0 (6) are read and written as they are; a type this reader does not
// take is refused by its ggml name: the same file with Q4_0's type number made Q8_K's (15: ggml's
// activation blocks, never a weight type in a GGUF file).
TEST(GgufFormat, Q4_0AndQ5_0AreReadAndOtherTypesRefusedByName) {
  TempDir dir("gguf_q4_0");
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  std::vector<uint8_t> q4(18, 0x5a), q5(22, 0xa5);
  w.add_tensor("q", DType::Q4_0, {32}, [&](std::byte* out) { std::memcpy(out, q4.data(), 18); });
  w.add_tensor("r", DType::Q5_0, {32}, [&](std::byte* out) { std::memcpy(out, q5.data(), 22); });
  w.write(dir.path / "x.gguf");
  std::vector<std::byte> bytes = read_bytes(dir.path / "x.gguf");
  {
    const GgufFile f(bytes.data(), bytes.size(), "x");
    EXPECT_EQ(f.find_tensor("q")->dtype, DType::Q4_0);
    EXPECT_EQ(f.find_tensor("r")->dtype, DType::Q5_0);
    EXPECT_EQ(std::memcmp(f.find_tensor("q")->data, q4.data(), 18), 0);
    EXPECT_EQ(std::memcmp(f.find_tensor("r")->data, q5.data(), 22), 0);
  }
  // Tensor "q"'s entry: name length (u64 1), 'q', dimension count (u32 1), ne (u64 32), type (u32).
  const uint8_t entry[] = {1, 0, 0, 0, 0, 0, 0, 0, 'q', 1, 0, 0, 0, 32, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0};
  const auto* begin = reinterpret_cast<const uint8_t*>(bytes.data());
  const auto* at = std::search(begin, begin + bytes.size(), std::begin(entry), std::end(entry));
  ASSERT_NE(at, begin + bytes.size());
  bytes[size_t(at - begin) + sizeof entry - 4] = std::byte{15};
  try {
    GgufFile(bytes.data(), bytes.size(), "x");
    ADD_FAILURE() << "Q8_K accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ggml type Q8_K (15) is not supported"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("Q4_0, Q5_0"), std::string::npos) << e.what();
  }
}

// A file's weights copied into memory keep their bytes, each tensor on a cache line
// (kTensorAlignment) although GGUF aligns tensors to 32 bytes only; tensors left out take none.
TEST(GgufFormat, TensorsCopiedIntoMemoryStartOnCacheLines) {
  const fs::path path = kFixtures + "/gguf/dense-q4_k_m.gguf";
  for (const bool leave_one_out : {false, true}) {
    GgufFile f(path);
    std::map<std::string, std::vector<std::byte>> bytes;
    int off_line = 0;
    for (const GgufTensor& t : f.tensors()) {
      bytes[t.name].assign(t.data, t.data + t.nbytes);
      off_line += t.file_offset % kTensorAlignment != 0;
    }
    EXPECT_GT(off_line, 0) << "the fixture should hold tensors off a cache line";
    const std::string left = f.tensors().front().name;
    f.copy_into_memory(leave_one_out ? std::set<std::string>{left} : std::set<std::string>{});
    for (const GgufTensor& t : f.tensors()) {
      if (leave_one_out && t.name == left) {
        EXPECT_EQ(t.data, nullptr);
        continue;
      }
      ASSERT_NE(t.data, nullptr) << t.name;
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % kTensorAlignment, 0u) << t.name;
      EXPECT_EQ(std::memcmp(t.data, bytes[t.name].data(), t.nbytes), 0) << t.name;
    }
  }
}

TEST(GgufFormat, EveryTruncationAndDamagedHeaderIsAnError) {
  const std::vector<std::byte> bytes = read_bytes(kFixtures + "/gguf/llama-q8_0.gguf");
  ASSERT_GT(bytes.size(), 1000u);
  // Every cut of the header region and a spread of cuts through the data.
  for (size_t cut = 0; cut < bytes.size(); cut += cut < 8192 ? 1 : 997) {
    std::vector<std::byte> part(bytes.begin(), bytes.begin() + cut);
    EXPECT_THROW(GgufFile(part.data(), part.size(), "cut"), Error) << "cut at " << cut;
  }
  std::vector<std::byte> bad = bytes;
  bad[4] = std::byte{9};  // version 9
  try {
    GgufFile(bad.data(), bad.size(), "bad");
    ADD_FAILURE() << "version 9 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("version 9"), std::string::npos) << e.what();
  }
}

// ------------------------------------------------------------------ files llama.cpp's converter wrote

struct Golden {
  const char* file;  // in fixtures/gguf
  const char* hf;    // the checkpoint it was converted from, in fixtures/hf
};

class LlamaCppGolden : public ::testing::TestWithParam<Golden> {};

// Every tensor crossmoe reads from the GGUF, under its Hugging Face name, is the checkpoint's
// tensor as the converter's type stores it: the same floats (F32), rounded to bf16 / f16 (exact),
// or within Q8_0's half step of the block's scale (llama.cpp's own quantizer).
TEST_P(LlamaCppGolden, TensorsAreTheCheckpointsUnderTheirHfNames) {
  const fs::path gguf = kFixtures + "/gguf/" + GetParam().file, hf = kFixtures + "/hf/" + GetParam().hf;
  const ModelConfig from_gguf = read_model_config(gguf), from_hf = read_model_config(hf);
  EXPECT_EQ(from_gguf.model_type, from_hf.model_type);
  EXPECT_EQ(from_gguf.num_layers, from_hf.num_layers);
  EXPECT_EQ(from_gguf.num_heads, from_hf.num_heads);
  EXPECT_EQ(from_gguf.num_kv_heads, from_hf.num_kv_heads);
  EXPECT_EQ(from_gguf.head_dim, from_hf.head_dim);
  EXPECT_EQ(from_gguf.qk_norm, from_hf.qk_norm);
  EXPECT_EQ(from_gguf.tie_word_embeddings, from_hf.tie_word_embeddings);
  EXPECT_EQ(from_gguf.moe.num_experts, from_hf.moe.num_experts);
  EXPECT_EQ(from_gguf.moe.top_k, from_hf.moe.top_k);
  EXPECT_EQ(from_gguf.moe.norm_topk_prob, from_hf.moe.norm_topk_prob);
  EXPECT_EQ(from_gguf.clip_qkv, from_hf.clip_qkv);
  // llama.cpp's converter writes OLMoE's epsilon as 1e-5 whatever config.json says (the published
  // OLMoE's value; the fixture's is 1e-6): crossmoe reads what the file says.
  EXPECT_NEAR(from_gguf.rms_norm_eps, from_hf.model_type == "olmoe" ? 1e-5 : from_hf.rms_norm_eps, 1e-12);
  EXPECT_NEAR(from_gguf.rope.theta, from_hf.rope.theta, 1e-3);

  const Checkpoint g(gguf), h(hf);
  check_weights_match(g, from_gguf);
  // The same tensors in the same order; Mixtral's names differ (block_sparse_moe.experts.j.w1 in the
  // checkpoint, crossmoe's Hugging Face names for a GGUF).
  std::vector<TensorSpec> gguf_specs = expected_tensors(from_gguf);
  const std::vector<TensorSpec> hf_specs = expected_tensors(from_hf);
  if (from_gguf.moe.score_correction_bias && !from_hf.moe.score_correction_bias) {
    // A grouped deepseek2 file without exp_probs_b (DeepSeek-V2's) is read with zero correction
    // biases: llama.cpp scores groups by their best two experts, as crossmoe does with a bias.
    EXPECT_GT(from_gguf.moe.n_group, 1);
    std::erase_if(gguf_specs, [&](const TensorSpec& spec) {
      if (spec.name.find("e_score_correction_bias") == std::string::npos) return false;
      for (float x : to_floats(g.get(spec.name, spec.shape))) EXPECT_EQ(x, 0.0f) << spec.name;
      return true;
    });
  }
  ASSERT_EQ(gguf_specs.size(), hf_specs.size());
  for (size_t k = 0; k < hf_specs.size(); ++k) {
    const TensorSpec& spec = hf_specs[k];
    const TensorView& a = g.get(gguf_specs[k].name, spec.shape);
    const std::vector<float> want = to_floats(h.get(spec.name, spec.shape)), got = to_floats(a);
    ASSERT_EQ(got.size(), want.size());
    double worst = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      float expected = want[i];
      if (a.dtype == DType::BF16) expected = bf16_to_f32(f32_to_bf16(want[i]));
      if (a.dtype == DType::F16) expected = f16_to_f32(f32_to_f16(want[i]));
      if (a.dtype != DType::Q8_0) {
        ASSERT_EQ(got[i], expected) << spec.name << " element " << i << " (" << dtype_name(a.dtype) << ")";
        continue;
      }
      // Q8_0: the converter rounds x / d to the nearest integer with d = max|x| / 127, then stores d
      // as f16 (a relative change of at most 2^-11, times |q| <= 127): |x - value| <= d (1/2 + 127 / 2^11).
      const size_t block = i / 32 * 32;
      float amax = 0;
      for (size_t j = block; j < block + 32; ++j) amax = std::max(amax, std::fabs(want[j]));
      worst = std::max(worst, std::fabs(got[i] - want[i]) / (amax / 127.0 * (0.5 + 127.0 / 2048) * 1.001 + 1e-12));
    }
    EXPECT_LE(worst, 1.0) << spec.name;
  }
}

TEST_P(LlamaCppGolden, LogitsFollowTheCheckpoints) {
  const fs::path gguf = kFixtures + "/gguf/" + GetParam().file, hf = kFixtures + "/hf/" + GetParam().hf;
  const GgufFile f(gguf);
  if (f.string("general.architecture") == "deepseek2")
    GTEST_SKIP() << "deepseek2 files are held to transformers' logits (LlamaCppDeepSeek2)";
  const std::vector<int> prompt(kPrompt.begin(), kPrompt.begin() + 8);
  const std::vector<float> a = prompt_logits(gguf, prompt), b = prompt_logits(hf, prompt);
  const DType type = f.find_tensor("blk.0.attn_output.weight")->dtype;
  // F32 is the checkpoint itself; bf16 / f16 / Q8_0 weights move the logits by their rounding.
  const double tolerance = type == DType::F32 ? 1e-5 : type == DType::F16 ? 2e-3 : 5e-2;
  EXPECT_LT(max_abs_diff(a, b), tolerance * std::max(1.0, max_abs(b))) << dtype_name(type);
  if (type == DType::F32) EXPECT_EQ(greedy(gguf, prompt, 8), greedy(hf, prompt, 8));
}

INSTANTIATE_TEST_SUITE_P(Converted, LlamaCppGolden,
                         ::testing::Values(Golden{"llama-f32.gguf", "llama"}, Golden{"llama-q8_0.gguf", "llama"},
                                           Golden{"mixtral-q8_0.gguf", "mixtral"}, Golden{"qwen3-bf16.gguf", "qwen3"},
                                           Golden{"olmoe-f16.gguf", "olmoe"},
                                           Golden{"deepseek_v3-bf16.gguf", "deepseek_v3"},
                                           Golden{"deepseek_v3_q_proj-f32.gguf", "deepseek_v3_q_proj"},
                                           Golden{"deepseek_v2-q8_0.gguf", "deepseek_v2"},
                                           Golden{"deepseek_v2_group-f32.gguf", "deepseek_v2_group"}),
                         [](const auto& info) {
                           std::string n = info.param.file;
                           for (char& c : n) if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

// llama.cpp's deepseek2: latent attention with kv_b_proj split into attn_k_b / attn_v_b, the
// router's function in expert_gating_func, groups, shared experts, leading dense layers. The files
// were converted from checkpoints whose config.json names scoring_func as the published ones do
// (make_gguf_goldens.py). Their logits against transformers' own (reference.json): files holding
// the checkpoint's values (F32, and BF16 of a BF16 checkpoint) within the bound test_hf_reference
// holds the directories to, with transformers' greedy tokens. Q8_0 moves the logits by its
// rounding, measured per prompt position against transformers: 0.06-0.18 in crossmoe (0.06-0.20
// in llama.cpp), max |logit| 4.7, except where a router's choice flips (crossmoe: position 3,
// 0.53), so the median position is held to 5e-2 and every position to 0.15 of max |logit|. Its
// greedy tokens part from transformers' at the first (crossmoe) or third (llama.cpp): Q8_0's own
// direction, the same tokens as `crossmoe quantize --type q8_0` of the checkpoint; not compared.
struct DeepSeekGolden {
  const char* file;
  const char* hf;
  double bound;           // max |logit difference| / max(1, max |logit|) of the median position
  double worst_bound;     // ... of every position
  size_t greedy_prefix;   // greedy tokens that must be transformers'
};

class LlamaCppDeepSeek2 : public ::testing::TestWithParam<DeepSeekGolden> {};

TEST_P(LlamaCppDeepSeek2, LogitsAndGreedyTokensAreTransformers) {
  const fs::path gguf = kFixtures + "/gguf/" + GetParam().file;
  const auto ref = read_json_file(kFixtures + "/hf/" + GetParam().hf + "/reference.json");
  const std::vector<int> prompt = ref["prompt"].get<std::vector<int>>();
  const auto expected = ref["logits"].get<std::vector<std::vector<float>>>();
  const Model model(gguf);
  EXPECT_EQ(model.config().model_type, ref["model_type"].get<std::string>());
  ASSERT_TRUE(model.config().latent_attention.has_value());
  const int V = model.config().vocab_size;
  InferenceSession session(model, 64, 5);
  const std::vector<float>& logits = session.forward(prompt, true);
  ASSERT_EQ(logits.size(), prompt.size() * V);
  std::vector<double> diffs(prompt.size(), 0.0);
  double max_ref = 0;
  for (size_t t = 0; t < prompt.size(); ++t)
    for (int v = 0; v < V; ++v) {
      diffs[t] = std::max(diffs[t], double(std::fabs(logits[t * V + v] - expected[t][v])));
      max_ref = std::max(max_ref, double(std::fabs(expected[t][v])));
    }
  const double scale = std::max(1.0, max_ref);
  EXPECT_LT(*std::max_element(diffs.begin(), diffs.end()), GetParam().worst_bound * scale) << "max |logit| " << max_ref;
  std::nth_element(diffs.begin(), diffs.begin() + std::ptrdiff_t(diffs.size() / 2), diffs.end());
  EXPECT_LT(diffs[diffs.size() / 2], GetParam().bound * scale) << "max |logit| " << max_ref;
  session.reset();
  Sampler sampler(SamplingParams{});
  const std::vector<int> tokens = generate(session, prompt, int(ref["greedy"].size()), sampler, {}).tokens;
  const std::vector<int> want = ref["greedy"].get<std::vector<int>>();
  ASSERT_GE(tokens.size(), GetParam().greedy_prefix);
  EXPECT_EQ(std::vector<int>(tokens.begin(), tokens.begin() + std::ptrdiff_t(GetParam().greedy_prefix)),
            std::vector<int>(want.begin(), want.begin() + std::ptrdiff_t(GetParam().greedy_prefix)));
}

INSTANTIATE_TEST_SUITE_P(Converted, LlamaCppDeepSeek2,
                         ::testing::Values(DeepSeekGolden{"deepseek_v3-bf16.gguf", "deepseek_v3", 1e-4, 1e-4, 8},
                                           DeepSeekGolden{"deepseek_v3_q_proj-f32.gguf", "deepseek_v3_q_proj", 1e-4, 1e-4, 8},
                                           DeepSeekGolden{"deepseek_v2-q8_0.gguf", "deepseek_v2", 5e-2, 0.15, 0},
                                           DeepSeekGolden{"deepseek_v2_group-f32.gguf", "deepseek_v2_group", 1e-4, 1e-4, 8}),
                         [](const auto& info) {
                           std::string n = info.param.file;
                           for (char& c : n) if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

// A copy of a GGUF file with its metadata edited (tensors as they are).
void rewrite_gguf(const fs::path& from, const fs::path& to,
                  const std::function<void(std::map<std::string, GgufValue>&)>& edit) {
  const GgufFile in(from);
  std::map<std::string, GgufValue> metadata = in.metadata();
  edit(metadata);
  GgufWriter w;
  for (const auto& [key, value] : metadata) w.add(key, value);
  for (const GgufTensor& t : in.tensors())
    w.add_tensor(t.name, t.dtype, t.ne, [&t](std::byte* out) { std::memcpy(out, t.data, t.nbytes); });
  w.write(to);
}

GgufValue u32_value(int64_t x) {
  GgufValue v;
  v.type = GgufType::U32;
  v.integer = x;
  return v;
}

// llama.cpp routes a deepseek2 file without expert_gating_func by softmax (src/models/deepseek2.cpp:
// files of DeepSeek-V2 from before the key), and so does crossmoe: DeepSeek-V3's file without the
// key is another model, whose logits llama.cpp's and crossmoe's agree on (docs/references.md).
TEST(GgufDeepSeek2, WithoutGatingFuncTheRouterIsSoftmax) {
  TempDir dir("gguf_deepseek2_gating");
  const fs::path original = kFixtures + "/gguf/deepseek_v3-bf16.gguf", stripped = dir.path / "no_gating.gguf";
  rewrite_gguf(original, stripped, [](auto& m) { ASSERT_EQ(m.erase("deepseek2.expert_gating_func"), 1u); });
  const ModelConfig a = read_model_config(original), b = read_model_config(stripped);
  EXPECT_EQ(a.moe.scoring, Scoring::Sigmoid);
  EXPECT_EQ(b.moe.scoring, Scoring::Softmax);
  EXPECT_TRUE(b.moe.score_correction_bias) << "exp_probs_b still biases the choice, as in llama.cpp's graph";
  const std::vector<float> x = prompt_logits(original, kPrompt), y = prompt_logits(stripped, kPrompt);
  EXPECT_GT(max_abs_diff(x, y), 0.1 * max_abs(x));
}

// What llama.cpp's deepseek2 reads but crossmoe does not run is refused in one line naming it.
TEST(GgufDeepSeek2, WhatDoesNotMapIsRefusedInOneLine) {
  TempDir dir("gguf_deepseek2_refuse");
  const fs::path original = kFixtures + "/gguf/deepseek_v3-bf16.gguf";
  const std::vector<std::pair<std::function<void(std::map<std::string, GgufValue>&)>, std::string>> cases = {
      {[](auto& m) { m["deepseek2.expert_gating_func"] = u32_value(4); }, "expert_gating_func"},
      {[](auto& m) { m.erase("deepseek2.attention.key_length_mla"); }, "attn_kv_b"},
      {[](auto& m) { m.erase("deepseek2.expert_shared_count"); }, "expert_shared_count"},
      {[](auto& m) { m["deepseek2.attention.head_count_kv"] = u32_value(4); }, "head_count_kv"},
      {[](auto& m) { m["deepseek2.nextn_predict_layers"] = u32_value(1); }, "nextn_predict_layers"},
      {[](auto& m) { m["deepseek2.expert_group_used_count"] = u32_value(2); }, "expert_group_used_count"},
      {[](auto& m) { m["deepseek2.attention.key_length"] = u32_value(20); }, "key_length"},
      {[](auto& m) {
         GgufValue per_layer;
         per_layer.type = GgufType::Array;
         per_layer.element = GgufType::U32;
         per_layer.integers = {32, 32, 16};
         m["deepseek2.expert_feed_forward_length"] = per_layer;
       },
       "differs between layers"},
  };
  for (const auto& [edit, word] : cases) {
    const fs::path file = dir.path / "x.gguf";
    rewrite_gguf(original, file, edit);
    try {
      (void)Checkpoint(file);
      ADD_FAILURE() << "accepted; expected an error naming " << word;
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(word), std::string::npos) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    }
  }
  // A damaged split: attn_k_b of the wrong shape.
  {
    const GgufFile in(original);
    GgufWriter w;
    for (const auto& [key, value] : in.metadata()) w.add(key, value);
    for (const GgufTensor& t : in.tensors()) {
      std::vector<int64_t> ne = t.ne;
      if (t.name == "blk.1.attn_k_b.weight") std::swap(ne[1], ne[2]);  // [kv_lora_rank, heads, qk_nope]
      w.add_tensor(t.name, t.dtype, ne, [&t](std::byte* out) { std::memcpy(out, t.data, t.nbytes); });
    }
    w.write(dir.path / "k_b.gguf");
    try {
      (void)Checkpoint(dir.path / "k_b.gguf");
      ADD_FAILURE() << "a transposed attn_k_b accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("attn_k_b"), std::string::npos) << e.what();
    }
  }
}

// crossmoe's export of the llama checkpoint is llama.cpp's converter output, tensor for tensor
// (names, shapes, types, bytes: the Q/K permutation and rope_freqs included), with the same
// values for every model key both write.
TEST(GgufExport, LlamaEqualsLlamaCppsConverterByteForByte) {
  TempDir dir("gguf_export_llama");
  const fs::path out = dir.path / "llama.gguf";
  export_gguf(kFixtures + "/hf/llama", out);
  const GgufFile ours(out), theirs(kFixtures + "/gguf/llama-f32.gguf");
  ASSERT_EQ(ours.tensors().size(), theirs.tensors().size());
  for (const GgufTensor& t : theirs.tensors()) {
    const GgufTensor* o = ours.find_tensor(t.name);
    ASSERT_NE(o, nullptr) << t.name;
    EXPECT_EQ(o->ne, t.ne) << t.name;
    ASSERT_EQ(o->dtype, t.dtype) << t.name;
    ASSERT_EQ(o->nbytes, t.nbytes) << t.name;
    EXPECT_EQ(std::memcmp(o->data, t.data, t.nbytes), 0) << t.name;
  }
  int compared = 0;
  for (const auto& [key, value] : ours.metadata()) {
    if (key.rfind("llama.", 0) != 0 || !theirs.has(key)) continue;
    const GgufValue& v = *theirs.find(key);
    EXPECT_EQ(value.integer, v.integer) << key;
    EXPECT_EQ(float(value.real), float(v.real)) << key;
    ++compared;
  }
  EXPECT_GE(compared, 9);
}

class GgufRoundTrip : public ::testing::TestWithParam<std::string> {};

// Directory -> GGUF -> the runtime: the same logits (to float rounding: llama's LLaMA-3 RoPE is
// stored as per-frequency divisors) and the same greedy tokens.
TEST_P(GgufRoundTrip, ExportedModelRunsLikeTheDirectory) {
  TempDir dir("gguf_round_trip");
  fs::path model = kFixtures + "/" + GetParam();
  if (GetParam() == "olmoe") {  // as llama.cpp's olmoe takes it: full q/k norms over the hidden size, no GQA
    model = dir.path / "olmoe";
    write_random_model(olmoe_like(), model, InitOptions{.seed = 5, .dtype = DType::F32});
  }
  const fs::path out = dir.path / "m.gguf";
  export_gguf(model, out);
  const std::vector<float> a = prompt_logits(out, kPrompt), b = prompt_logits(model, kPrompt);
  EXPECT_LT(max_abs_diff(a, b), 1e-5 * std::max(1.0, max_abs(b)));
  EXPECT_EQ(greedy(out, kPrompt, 10), greedy(model, kPrompt, 10));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GgufRoundTrip,
                         ::testing::Values("hf/llama", "hf/qwen3", "hf/mixtral", "crossmoe_init/dense",
                                           "crossmoe_init/moe", "olmoe"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

// crossmoe-quantized matrices go into GGUF as they are (their blocks are ggml's bytes) and come
// back bit for bit.
TEST(GgufExport, QuantizedModelsKeepTheirBlocks) {
  TempDir dir("gguf_quantized");
  ModelConfig c = testing_models::small("dense");
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.num_heads = 4;
  c.head_dim = 64;
  c.finalize();
  write_random_model(c, dir.path / "bf16", InitOptions{.seed = 3, .dtype = DType::BF16});
  for (QuantScheme s : {QuantScheme::Q8_0, QuantScheme::Q4_0, QuantScheme::Q5_0, QuantScheme::Q4_K, QuantScheme::Q5_K,
                        QuantScheme::Q6_K}) {
    const fs::path q = dir.path / quant_scheme_name(s), out = dir.path / (quant_scheme_name(s) + ".gguf");
    quantize_model(dir.path / "bf16", q, s);
    export_gguf(q, out);
    const Checkpoint a(q), b(out);
    for (const TensorSpec& spec : expected_tensors(c)) {
      const TensorView &x = a.get(spec.name, spec.shape), &y = b.get(spec.name, spec.shape);
      if (spec.role == TensorRole::Weight) {
        ASSERT_EQ(x.dtype, y.dtype) << spec.name;
        ASSERT_EQ(x.nbytes, y.nbytes);
        EXPECT_EQ(std::memcmp(x.data, y.data, x.nbytes), 0) << spec.name;
      }
    }
    EXPECT_EQ(prompt_logits(out, kPrompt), prompt_logits(q, kPrompt)) << quant_scheme_name(s);
  }
}

// A block-quantized kv_b_proj (kv_lora_rank a multiple of 32) goes out as F32 attn_k_b / attn_v_b
// holding its dequantized values (attn_k_b's rows are its columns); the other matrices keep their
// blocks, and the file runs as the quantized directory does.
TEST(DeepSeek2Export, QuantizedKvBIsWrittenAsItsValues) {
  TempDir dir("gguf_deepseek2_q8_0");
  // The deepseek_v3 fixture's config with kv_lora_rank 32, and weights of those shapes.
  const fs::path bf16 = dir.path / "bf16";
  fs::create_directories(bf16);
  nlohmann::json config_json = read_json_file(kFixtures + "/hf/deepseek_v3/config.json");
  config_json["kv_lora_rank"] = 32;
  std::ofstream(bf16 / "config.json") << config_json.dump(1);
  const ModelConfig c = read_model_config(bf16);
  std::vector<TensorToWrite> tensors;
  std::vector<std::vector<uint16_t>> values;
  uint64_t state = 7;
  for (const TensorSpec& spec : expected_tensors(c)) {
    std::vector<uint16_t>& v = values.emplace_back();
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    for (int64_t i = 0; i < n; ++i) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      const float noise = float(int64_t(state >> 40) % 2001 - 1000) / 1000.0f;  // in [-1, 1]
      const float x = spec.role == TensorRole::Norm ? 1.0f + 0.1f * noise : spec.role == TensorRole::Weight ? 0.15f * noise : 0.05f * noise;
      v.push_back(f32_to_bf16(x));
    }
    tensors.push_back({spec.name, DType::BF16, spec.shape, v.data()});
  }
  write_safetensors(bf16 / "model.safetensors", tensors);
  quantize_model(bf16, dir.path / "q8_0", QuantScheme::Q8_0);
  const fs::path out = dir.path / "q8_0.gguf";
  export_gguf(dir.path / "q8_0", out);
  const GgufFile f(out);
  const Checkpoint q(dir.path / "q8_0"), back(out);
  const std::string kv_b = tensor_names::latent_attn(1, LatentPart::KvB);
  const TensorView* found = q.find(kv_b);
  ASSERT_NE(found, nullptr);
  const TensorView& original = *found;
  ASSERT_EQ(original.dtype, DType::Q8_0);
  EXPECT_EQ(f.find_tensor("blk.1.attn_k_b.weight")->dtype, DType::F32);
  EXPECT_EQ(f.find_tensor("blk.1.attn_v_b.weight")->dtype, DType::F32);
  EXPECT_EQ(f.find_tensor("blk.1.attn_q_a.weight")->dtype, DType::Q8_0);
  EXPECT_EQ(to_floats(back.get(kv_b, original.shape)), to_floats(original));
  const std::vector<float> a = prompt_logits(out, kPrompt), b = prompt_logits(dir.path / "q8_0", kPrompt);
  EXPECT_LT(max_abs_diff(a, b), 1e-5 * std::max(1.0, max_abs(b)));
  EXPECT_EQ(greedy(out, kPrompt, 8), greedy(dir.path / "q8_0", kPrompt, 8));
}

// llama.cpp running crossmoe's deepseek2 exports (tests/fixtures/gguf/deepseek2_export_llama_cpp.json,
// made by make_deepseek2_export_goldens.py with a program against llama.h): crossmoe on the same
// file, exported again here, gives llama.cpp's prompt tokens (the tokenizer case: llama.cpp's
// own tokenization of the text, BOS added), its 8 greedy tokens and its logits (every 16th id of
// every position). F32 files: within 1e-4 of max |logit| (5e-6 measured: the two sum in other
// orders) and each position's argmax. BF16 files: llama.cpp rounds the activations to bf16 for
// its products, crossmoe keeps them f32: up to 2.2% of max |logit| measured, 3% allowed; one
// position's argmax parts at a near-tie in two of the three files, the greedy tokens do not.
// Q8_0 (crossmoe quantize; kv_b stays BF16, its rows of 16 being no whole block): both quantize
// activations in their own blocks; 0.04 at the first three positions, up to 2.4 from the fourth
// on (max |logit| 2.3), where a router's choice can part as for the imported V2 Q8_0 file; the
// median position is held to 15% of max |logit| (8% measured) and the first 7 greedy tokens (the
// 8th parts).
TEST(DeepSeek2Export, RunsAsLlamaCppRunsTheFile) {
  TempDir dir("gguf_deepseek2_llama_cpp");
  const nlohmann::json golden = read_json_file(kFixtures + "/gguf/deepseek2_export_llama_cpp.json");
  const size_t stride = golden["logit_stride"].get<size_t>();
  ASSERT_GE(golden["cases"].size(), 7u);
  for (const nlohmann::json& k : golden["cases"]) {
    const std::string name = k["name"].get<std::string>();
    fs::path model = kFixtures + "/" + k["model"].get<std::string>();
    const std::string matrices = k["matrices"].get<std::string>();
    if (matrices == "q8_0") {
      quantize_model(model, dir.path / name, QuantScheme::Q8_0);
      model = dir.path / name;
    }
    if (k["tokenizer"].get<bool>()) {
      const fs::path copy = dir.path / (name + "_model");
      fs::copy(model, copy);
      for (const char* file : {"tokenizer.json", "tokenizer_config.json"})
        fs::copy_file(kFixtures + "/crossmoe_init/dense/" + file, copy / file);
      model = copy;
    }
    const fs::path out = dir.path / (name + ".gguf");
    std::optional<DType> type;
    if (!k["type"].is_null()) type = k["type"].get<std::string>() == "f32" ? DType::F32 : DType::BF16;
    const GgufExportSummary summary = export_gguf(model, out, type);
    EXPECT_EQ(summary.tokenizer, k["tokenizer"].get<bool>()) << name;
    const std::vector<int> prompt = k["prompt"].get<std::vector<int>>();
    if (summary.tokenizer) {
      Tokenizer tokenizer = *load_model_tokenizer(out);
      // As `crossmoe generate` encodes a text: with the post-processor's special tokens (this
      // byte-level tokenizer's: none, so no BOS, as llama.cpp reads add_bos_token).
      EXPECT_EQ(tokenizer.encode(golden["text"].get<std::string>(), true), prompt) << name << ": llama.cpp's tokens of the text";
    } else {
      EXPECT_EQ(prompt, golden["prompt_ids"].get<std::vector<int>>()) << name;
    }
    const std::vector<float> logits = prompt_logits(out, prompt);
    const auto expected = k["logits"].get<std::vector<std::vector<float>>>();
    const auto argmax = k["argmax"].get<std::vector<int>>();
    ASSERT_EQ(expected.size(), prompt.size()) << name;
    const size_t V = logits.size() / prompt.size();
    std::vector<double> diffs(prompt.size(), 0.0);  // max |logit difference| per position
    double largest = 0;
    for (size_t p = 0; p < prompt.size(); ++p) {
      const float* row = logits.data() + p * V;
      ASSERT_EQ(expected[p].size(), (V + stride - 1) / stride) << name;
      for (size_t j = 0; j < expected[p].size(); ++j) {
        diffs[p] = std::max(diffs[p], double(std::fabs(row[j * stride] - expected[p][j])));
        largest = std::max(largest, double(std::fabs(expected[p][j])));
      }
      if (matrices == "f32") EXPECT_EQ(int(std::max_element(row, row + V) - row), argmax[p]) << name << " position " << p;
    }
    std::vector<double> sorted = diffs;
    std::sort(sorted.begin(), sorted.end());
    if (matrices == "q8_0") EXPECT_LT(sorted[sorted.size() / 2], 0.15 * largest) << name << ": the median position";
    else EXPECT_LT(sorted.back(), (matrices == "f32" ? 1e-4 : 3e-2) * std::max(1.0, largest)) << name;
    std::vector<int> expected_greedy = k["greedy"].get<std::vector<int>>();
    if (matrices == "q8_0") expected_greedy.resize(7);
    EXPECT_EQ(greedy(out, prompt, int(expected_greedy.size())), expected_greedy) << name;
  }
}

// ------------------------------------------------------------------ llama.cpp's K-quants

// tests/fixtures/gguf/dense-q4_k_m.gguf and dense-q6_k.gguf: llama-quantize's Q4_K_M (Q4_K, with
// Q6_K for output, attn_v and ffn_down, as the Hub's Q4_K_M files hold them) and --pure Q6_K of
// a random 1-layer qwen3 model whose rows are whole 256-blocks (tests/fixtures/make_llama_quantize_goldens.sh);
// likewise its Q5_K_M, Q3_K_M and Q2_K (each its own mix of K-quants) and --pure IQ4_XS, the --pure legacy
// Q4_0 / Q5_0 / Q4_1 / Q5_1 / IQ4_NL and MXFP4 files of a smaller model, and MXFP4_MOE of a 1-layer
// qwen3moe model (MXFP4 experts, Q8_0 elsewhere), and --pure IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S,
// IQ1_S, IQ1_M, TQ1_0 and TQ2_0 of the first model (made with an importance matrix).
// Their *.dequant.json: the FNV-1a 64-bit hash of ggml's own to_float floats of every tensor.
uint64_t fnv1a(const std::vector<float>& v, uint64_t h = 1469598103934665603ull) {
  const auto* p = reinterpret_cast<const uint8_t*>(v.data());
  for (size_t k = 0; k < v.size() * 4; ++k) h = (h ^ p[k]) * 1099511628211ull;
  return h;
}

class LlamaQuantized : public ::testing::TestWithParam<std::string> {};

// Every tensor dequantizes to ggml's floats, bit for bit.
TEST_P(LlamaQuantized, TensorsDequantizeToGgmlsFloats) {
  const fs::path gguf = kFixtures + "/gguf/" + GetParam() + ".gguf";
  const nlohmann::json golden = read_json_file(kFixtures + "/gguf/" + GetParam() + ".dequant.json");
  const GgufFile f(gguf);
  ASSERT_EQ(golden.size(), f.tensors().size());
  std::map<DType, int> types;
  for (const GgufTensor& t : f.tensors()) {
    const int64_t cols = t.ne[0], rows = int64_t(t.nbytes / dtype_row_bytes(t.dtype, cols));
    std::vector<float> row(static_cast<size_t>(cols));
    uint64_t h = 1469598103934665603ull;
    for (int64_t r = 0; r < rows; ++r) {
      kernels::to_f32(t.data + size_t(r) * dtype_row_bytes(t.dtype, cols), t.dtype, cols, row.data());
      h = fnv1a(row, h);
    }
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
    EXPECT_EQ(hex, golden.at(t.name).at("fnv1a64").get<std::string>()) << t.name << " " << dtype_name(t.dtype);
    ++types[t.dtype];
  }
  if (GetParam() == "dense-q4_k_m" || GetParam() == "dense-q5_k_m" || GetParam() == "dense-q6_k")
    EXPECT_GE(types[DType::Q6_K], GetParam() == "dense-q6_k" ? 8 : 3) << "output, attn_v, ffn_down at least";
  if (GetParam() == "dense-q3_k_m" || GetParam() == "dense-q2_k") EXPECT_EQ(types[DType::Q6_K], 1) << "output";
  if (GetParam() == "dense-q4_k_m") EXPECT_GE(types[DType::Q4_K], 5);
  if (GetParam() == "dense-q5_k_m") EXPECT_GE(types[DType::Q5_K], 5);
  if (GetParam() == "dense-q4_0") EXPECT_EQ(types[DType::Q4_0], 9) << "--pure: every matrix";
  if (GetParam() == "dense-q5_0") EXPECT_EQ(types[DType::Q5_0], 9) << "--pure: every matrix";
  if (GetParam() == "dense-q4_1") EXPECT_EQ(types[DType::Q4_1], 9) << "--pure: every matrix";
  if (GetParam() == "dense-q5_1") EXPECT_EQ(types[DType::Q5_1], 9) << "--pure: every matrix";
  if (GetParam() == "dense-iq4_nl") EXPECT_EQ(types[DType::IQ4_NL], 9) << "--pure: every matrix";
  if (GetParam() == "dense-iq4_xs") EXPECT_EQ(types[DType::IQ4_XS], 9) << "--pure: every matrix";
  if (GetParam() == "dense-mxfp4") EXPECT_EQ(types[DType::MXFP4], 9) << "--pure: every matrix";
  for (const char* codebook : {"IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0"}) {
    DType type;
    ASSERT_TRUE(parse_block_dtype(codebook, &type));
    std::string name = std::string("dense-") + codebook;
    for (char& c : name) c = char(std::tolower(static_cast<unsigned char>(c)));
    if (GetParam() == name) EXPECT_EQ(types[type], 9) << "--pure: every matrix";
  }
  if (GetParam() == "moe-mxfp4_moe") {
    EXPECT_EQ(types[DType::MXFP4], 3) << "the merged gate, up and down experts";
    EXPECT_GE(types[DType::Q8_0], 5) << "every other matrix";
  }
  if (GetParam() == "dense-q3_k_m") EXPECT_GE(types[DType::Q3_K], 3);
  if (GetParam() == "dense-q2_k") EXPECT_GE(types[DType::Q2_K], 3);
}

// The file runs as its dequantized values do (the same file with every matrix widened to F32):
// the only difference is the products' 8-bit activations (one step per 256 columns, each within
// half a step: up to 0.4% of a group's largest value), which move these logits (3.6 at most)
// by 1.8% (Q4_K_M), 2.2% (Q5_K_M, last position) and 2.1% (Q6_K) of the largest (5% allowed, as for the Q8_0
// goldens above). The greedy tokens stay the same, or part only at a near tie: Q5_K_M's third
// token, where the widened file's top two are 0.002 apart and the logits 0.056 (measured).
TEST_P(LlamaQuantized, RunsAsItsDequantizedValues) {
  TempDir dir("gguf_llama_quantized");
  const fs::path gguf = kFixtures + "/gguf/" + GetParam() + ".gguf", widened = dir.path / "f32.gguf";
  const GgufFile f(gguf);
  GgufWriter w;
  for (const auto& [key, value] : f.metadata()) w.add(key, value);
  for (const GgufTensor& t : f.tensors())
    w.add_tensor(t.name, DType::F32, t.ne, [&t](std::byte* out) {
      const int64_t cols = t.ne[0], rows = int64_t(t.nbytes / dtype_row_bytes(t.dtype, cols));
      for (int64_t r = 0; r < rows; ++r)
        kernels::to_f32(t.data + size_t(r) * dtype_row_bytes(t.dtype, cols), t.dtype, cols,
                        reinterpret_cast<float*>(out) + r * cols);
    });
  w.write(widened);
  const std::vector<float> a = prompt_logits(gguf, kPrompt), b = prompt_logits(widened, kPrompt);
  EXPECT_LT(max_abs_diff(a, b), 5e-2 * max_abs(b));
  const std::vector<int> tokens = greedy(gguf, kPrompt, 8), widened_tokens = greedy(widened, kPrompt, 8);
  size_t same = 0;
  while (same < tokens.size() && tokens[same] == widened_tokens[same]) ++same;
  if (same < tokens.size()) {
    // Where they part, the widened file's top two were a near tie: its logits of the two tokens
    // closer than the two files' logits are apart at that position.
    std::vector<int> context = kPrompt;
    context.insert(context.end(), tokens.begin(), tokens.begin() + std::ptrdiff_t(same));
    const std::vector<float> x = prompt_logits(gguf, context), y = prompt_logits(widened, context);
    const size_t last = y.size() - (y.size() / context.size());
    const float gap = y[last + size_t(widened_tokens[same])] - y[last + size_t(tokens[same])];
    EXPECT_LT(gap, max_abs_diff(x, y)) << "greedy tokens part at " << same << " by " << gap;
  }
}

INSTANTIATE_TEST_SUITE_P(LlamaQuantize, LlamaQuantized, ::testing::Values("dense-q4_k_m", "dense-q5_k_m", "dense-q3_k_m", "dense-q2_k", "dense-q6_k",
                                                           "dense-q4_0", "dense-q5_0", "dense-q4_1", "dense-q5_1", "dense-iq4_nl", "dense-iq4_xs",
                                                           "dense-mxfp4", "moe-mxfp4_moe", "dense-iq2_xxs", "dense-iq2_xs", "dense-iq2_s",
                                                           "dense-iq3_xxs", "dense-iq3_s", "dense-iq1_s", "dense-iq1_m", "dense-tq1_0",
                                                           "dense-tq2_0"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

TEST(GgufExport, LayoutsNoLlamaCppArchitectureExpressesAreRefused) {
  TempDir dir("gguf_refuse");
  ModelConfig megrez2 = testing_models::small("megrez2");
  megrez2.finalize();
  write_random_model(megrez2, dir.path / "megrez2", InitOptions{.seed = 1});
  try {
    export_gguf(dir.path / "megrez2", dir.path / "x.gguf");
    ADD_FAILURE() << "megrez2 exported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no llama.cpp architecture"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir.path / "x.gguf"));
  // transformers' qwen3_moe fixture has a dense layer among MoE layers, which llama.cpp's qwen3moe
  // lacks; its olmoe fixture has grouped KV heads, which llama.cpp's olmoe cannot load.
  EXPECT_THROW(export_gguf(kFixtures + "/hf/qwen3_moe", dir.path / "y.gguf"), Error);
  EXPECT_THROW(export_gguf(kFixtures + "/hf/olmoe", dir.path / "y.gguf"), Error);
  // Latent attention that llama.cpp's deepseek2 does not run, each refused naming what.
  const auto refused = [&](const std::string& name, const std::function<void(nlohmann::json&)>& edit, const std::string& what) {
    const fs::path model = dir.path / name;
    fs::create_directories(model);
    for (const char* file : {"config.json", "model.safetensors"}) fs::copy_file(kFixtures + "/hf/deepseek_v3/" + file, model / file);
    nlohmann::json config = read_json_file(model / "config.json");
    edit(config);
    std::ofstream(model / "config.json") << config.dump(1);
    try {
      export_gguf(model, dir.path / "z.gguf");
      ADD_FAILURE() << name << " exported";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(dir.path / "z.gguf")) << name;
  };
  refused("halves", [](nlohmann::json& c) { c["rope_interleave"] = false; }, "rope_interleave false");
  refused("eps", [](nlohmann::json& c) { c["rms_norm_eps"] = 1e-5; }, "one epsilon for every norm");
  refused("no_shared", [](nlohmann::json& c) { c["n_shared_experts"] = 0; }, "shared experts");
  refused("scale", [](nlohmann::json& c) { c["rope_parameters"]["mscale"] = 0.5; }, "YaRN with a rotation factor");
  try {  // DeepSeek-V2's group_limited_greedy: a group scores as its best expert
    export_gguf(kFixtures + "/hf/deepseek_v2_group", dir.path / "z.gguf");
    ADD_FAILURE() << "deepseek_v2_group exported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("group_limited_greedy"), std::string::npos) << e.what();
  }
}

// ------------------------------------------------------------------ deepseek2 written

// crossmoe's deepseek2 export read back: the metadata llama.cpp's deepseek2 reads, kv_b_proj's
// split, and the same description and logits as the directory (stored type and --type f32: the
// same values; --type bf16 of an F32 checkpoint: every matrix bf16's rounding of the original).
struct DeepSeekExport {
  const char* hf;
  std::optional<DType> type;
};

class DeepSeek2Export : public ::testing::TestWithParam<DeepSeekExport> {};

TEST_P(DeepSeek2Export, ReadsBackAsTheDirectory) {
  TempDir dir("gguf_deepseek2_export");
  const fs::path model = kFixtures + "/" + GetParam().hf, out = dir.path / "m.gguf";
  const GgufExportSummary summary = export_gguf(model, out, GetParam().type);
  EXPECT_EQ(summary.architecture, "deepseek2");
  const ModelConfig a = read_model_config(model);
  const GgufFile f(out);
  const LatentAttention& la = *a.latent_attention;
  EXPECT_EQ(f.integer("deepseek2.attention.q_lora_rank"), la.q_lora_rank) << "written also when 0";
  EXPECT_EQ(f.integer("deepseek2.attention.head_count_kv"), 1);
  EXPECT_EQ(f.integer("deepseek2.attention.key_length"), la.kv_lora_rank + la.qk_rope_head_dim);
  EXPECT_EQ(f.integer("deepseek2.attention.value_length_mla"), la.v_head_dim);
  EXPECT_EQ(f.integer("deepseek2.leading_dense_block_count"), 1);
  EXPECT_EQ(f.integer("deepseek2.expert_gating_func"), a.moe.scoring == Scoring::Sigmoid ? 2 : 1);
  EXPECT_EQ(f.integer("deepseek2.expert_shared_count"), a.moe.shared_intermediate_size / a.moe.expert_intermediate_size);
  EXPECT_EQ(f.real("deepseek2.expert_weights_scale", 0), a.moe.routed_scaling_factor);
  EXPECT_EQ(f.has("deepseek2.expert_group_count"), a.moe.n_group > 1);
  EXPECT_EQ(f.has("deepseek2.rope.scaling.yarn_log_multiplier"), a.rope.type == RopeType::Yarn);
  EXPECT_EQ(f.find_tensor("blk.0.attn_kv_b.weight"), nullptr);
  if (GetParam().type)  // every matrix, the merged experts and attn_k_b / attn_v_b included
    for (const GgufTensor& t : f.tensors())
      if (t.ne.size() > 1) EXPECT_EQ(t.dtype, *GetParam().type) << t.name;
  const std::string last = "blk." + std::to_string(a.num_layers - 1) + ".attn_k_b.weight";
  ASSERT_NE(f.find_tensor(last), nullptr);
  EXPECT_EQ(f.find_tensor(last)->ne, (std::vector<int64_t>{la.qk_nope_head_dim, la.kv_lora_rank, a.num_heads}));

  const ModelConfig b = gguf_model_config(f);
  EXPECT_EQ(b.model_type, a.model_type);
  EXPECT_EQ(b.layer_is_moe, a.layer_is_moe);
  EXPECT_EQ(b.moe.scoring, a.moe.scoring);
  EXPECT_EQ(b.moe.norm_topk_prob, a.moe.norm_topk_prob);
  EXPECT_EQ(b.moe.n_group, a.moe.n_group);
  EXPECT_EQ(b.moe.topk_group, a.moe.topk_group);
  EXPECT_EQ(b.moe.shared_intermediate_size, a.moe.shared_intermediate_size);
  EXPECT_NEAR(b.attention_scale_factor, a.attention_scale_factor, 1e-6 * a.attention_scale_factor);

  const Checkpoint original(model), back(out);
  for (const TensorSpec& spec : expected_tensors(a)) {
    const std::vector<float> x = to_floats(original.get(spec.name, spec.shape)), y = to_floats(back.get(spec.name, spec.shape));
    ASSERT_EQ(x.size(), y.size()) << spec.name;
    const bool rounded = GetParam().type == DType::BF16 && spec.role == TensorRole::Weight;
    for (size_t i = 0; i < x.size(); ++i)
      ASSERT_EQ(y[i], rounded ? bf16_to_f32(f32_to_bf16(x[i])) : x[i]) << spec.name << " [" << i << "]";
  }
  if (GetParam().type != DType::BF16) {
    const std::vector<float> p = prompt_logits(out, kPrompt), q = prompt_logits(model, kPrompt);
    EXPECT_LT(max_abs_diff(p, q), 1e-5 * std::max(1.0, max_abs(q)));
    EXPECT_EQ(greedy(out, kPrompt, 8), greedy(model, kPrompt, 8));
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, DeepSeek2Export,
                         ::testing::Values(DeepSeekExport{"hf/deepseek_v3", std::nullopt},
                                           DeepSeekExport{"hf/deepseek_v3", DType::F32},
                                           DeepSeekExport{"hf/deepseek_v2", std::nullopt},
                                           DeepSeekExport{"hf/deepseek_v3_q_proj", std::nullopt},
                                           DeepSeekExport{"hf/deepseek_v3_q_proj", DType::BF16}),
                         [](const auto& info) {
                           std::string n = std::string(info.param.hf).substr(3) + "_" +
                                           (info.param.type ? dtype_name(*info.param.type) : std::string("stored"));
                           for (char& c : n) if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

// ------------------------------------------------------------------ tokenizers

// A tokenizer written as tokenizer.ggml.* and read back encodes and decodes as the original.
TEST(GgufTokenizer, ExportedTokenizersEncodeAsTheOriginal) {
  TempDir dir("gguf_tokenizer");
  const std::vector<std::string> texts = {"Hello world, it's 2024!", "  spaces\n\nand lines\t", "caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd",
                                          "<|im_start|>user\nhi<|im_end|>", "don't stop 1234567"};
  // The byte-level tokenizer crossmoe init writes (GPT-2's pre-tokenizer) and a trained one (Qwen2's).
  for (const std::string& tokenizer : {"crossmoe_init/dense/tokenizer.json", "trained_bpe/tokenizer.json"}) {
    const nlohmann::json tj = read_json_file(kFixtures + "/" + tokenizer);
    Tokenizer original(tj);
    ModelConfig c = testing_models::small("dense");
    c.vocab_size = (original.vocab_size() + 63) / 64 * 64;
    c.eos_token_ids = {original.token_to_id("<|endoftext|>")};
    c.finalize();
    GgufWriter w;
    add_gguf_model_metadata(w, c, "t");
    add_gguf_tokenizer_metadata(w, c, tj, nlohmann::json{{"chat_template", "{{ messages }}"}});
    w.write(dir.path / "t.gguf");
    const GgufFile f(dir.path / "t.gguf");
    EXPECT_EQ(f.find("tokenizer.ggml.tokens")->texts.size(), size_t(c.vocab_size)) << "padded to the model's vocabulary";
    const std::optional<nlohmann::json> back = gguf_tokenizer_json(f);
    ASSERT_TRUE(back.has_value());
    Tokenizer read(*back);
    for (const std::string& text : texts) {
      const std::vector<int> ids = original.encode(text);
      EXPECT_EQ(read.encode(text), ids) << tokenizer << ": " << text;
      EXPECT_EQ(read.decode(ids), original.decode(ids)) << tokenizer;
    }
    EXPECT_EQ(gguf_tokenizer_config(f).value("chat_template", ""), "{{ messages }}");
  }
}

TEST(GgufTokenizer, NoVocabFilesHaveNoTokenizer) {
  EXPECT_FALSE(load_model_tokenizer(kFixtures + "/gguf/llama-q8_0.gguf").has_value());
}

// ------------------------------------------------------------------ the command line

TEST(GgufCli, ConvertThenEveryCommandTakesTheFile) {
  using testing_cli::run;
  TempDir dir("gguf_cli");
  const std::string model = kFixtures + "/crossmoe_init/dense", out = (dir.path / "dense.gguf").string();
  const auto convert = run("convert " + model + " " + out);
  ASSERT_EQ(convert.code, 0) << convert.out;
  const auto a = run("generate " + model + " -p 'Once upon' -n 8", false);
  const auto b = run("generate " + out + " -p 'Once upon' -n 8", false);
  EXPECT_EQ(a.code, 0);
  EXPECT_EQ(a.out, b.out);
  EXPECT_EQ(run("tokenize " + model + " 'Hello there' --json", false).out, run("tokenize " + out + " 'Hello there' --json", false).out);
  const auto info = run("info " + out);
  EXPECT_EQ(info.code, 0) << info.out;
  EXPECT_NE(info.out.find("qwen3"), std::string::npos) << info.out;
  const auto ids = run("generate " + (kFixtures + "/gguf/llama-f32.gguf") + " --ids 1,2,3 -n 4", false);
  EXPECT_EQ(ids.code, 0) << ids.out;
  const auto text = run("generate " + (kFixtures + "/gguf/llama-f32.gguf") + " -p hi -n 4");
  EXPECT_EQ(text.code, 1);
  EXPECT_NE(text.out.find("error: "), std::string::npos);
  EXPECT_NE(text.out.find("--ids"), std::string::npos) << text.out;
  // A damaged file: one error line, exit 1.
  const std::vector<std::byte> bytes = read_bytes(out);
  std::ofstream(dir.path / "cut.gguf", std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size() / 2));
  const auto cut = run("generate " + (dir.path / "cut.gguf").string() + " --ids 1,2 -n 2");
  EXPECT_EQ(cut.code, 1);
  EXPECT_EQ(cut.out.rfind("error: ", 0), 0u) << cut.out;
}

}  // namespace
