// crossmoe perplexity: llama.cpp's chunking and scoring, against the same measure computed token
// by token here, and a case with a known answer.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "cli_run.hpp"
#include "model/init.hpp"
#include "model/safetensors.hpp"
#include "runtime/forward.hpp"
#include "runtime/perplexity.hpp"
#include "small_models.hpp"
#include "temp_dir.hpp"
#include "util/error.hpp"

using namespace crossmoe;
namespace fs = std::filesystem;

namespace {

struct PerplexityModel {
  fs::path dir = testing_paths::temp_path("perplexity");
  PerplexityModel() {
    fs::remove_all(dir);
    ModelConfig c = testing_models::small("moe");
    c.tie_word_embeddings = false;  // the uniform case zeroes the LM head alone
    c.finalize();
    write_random_model(c, dir, InitOptions{.seed = 3, .dtype = DType::F32, .norm_noise = 0.1f});
  }
  ~PerplexityModel() { fs::remove_all(dir); }
};

const fs::path& model_dir() {
  static PerplexityModel m;
  return m.dir;
}

std::vector<int> some_tokens(int n, int vocab) {
  std::vector<int> t(n);
  for (int i = 0; i < n; ++i) t[i] = (i * 37 + i / 3 * 11 + 5) % vocab;
  return t;
}

}  // namespace

// The reference decodes one token at a time (no batched prefill) and spells out which positions
// llama.cpp scores: in chunk c (tokens c * ctx .. c * ctx + ctx - 1, first replaced by BOS), the
// logits after position j for j = ctx / 2 .. ctx - 2 against the token at j + 1.
TEST(Perplexity, EqualsTheMeasureComputedTokenByToken) {
  const Model model(model_dir());
  const int ctx = 16, vocab = model.config().vocab_size, bos = 1;
  const std::vector<int> tokens = some_tokens(ctx * 5 / 2, vocab);  // 2.5 chunks: the half is dropped
  double nll = 0;
  int scored = 0;
  for (int c = 0; c < 2; ++c) {
    InferenceSession session(model, ctx);
    for (int j = 0; j < ctx - 1; ++j) {
      const int token = j == 0 ? bos : tokens[size_t(c * ctx + j)];
      const std::vector<float> logits = session.forward({token});
      if (j < ctx / 2) continue;
      double sum = 0;
      for (float v : logits) sum += std::exp(double(v));
      nll += std::log(sum) - logits[size_t(tokens[size_t(c * ctx + j + 1)])];
      ++scored;
    }
  }
  const PerplexityResult r = perplexity(model, tokens, ctx, bos);
  EXPECT_EQ(r.chunks, 2);
  EXPECT_EQ(r.scored_tokens, scored);
  EXPECT_EQ(scored, 2 * (ctx - ctx / 2 - 1));
  EXPECT_NEAR(r.perplexity, std::exp(nll / scored), 1e-4 * r.perplexity);
  EXPECT_GT(r.perplexity_error, 0.0);

  const PerplexityResult one = perplexity(model, tokens, ctx, bos, 1);
  EXPECT_EQ(one.chunks, 1);
  EXPECT_EQ(one.scored_tokens, ctx - ctx / 2 - 1);
  // Without a BOS the first token stays as it is, which changes what the chunk sees.
  EXPECT_NE(perplexity(model, tokens, ctx, std::nullopt).perplexity, r.perplexity);
}

TEST(Perplexity, AModelThatKnowsNothingScoresTheVocabularySize) {
  // LM head zero: every logit is 0, every token has probability 1 / vocab.
  const fs::path dir = model_dir().string() + "_uniform";
  fs::remove_all(dir);
  fs::copy(model_dir(), dir);
  {
    const SafetensorsFile f(model_dir() / "model.safetensors");
    std::vector<TensorToWrite> tensors;
    std::vector<float> zeros;
    for (const auto& [name, t] : f.tensors()) {
      if (name == "lm_head.weight") {
        zeros.assign(size_t(t.numel()), 0.0f);
        tensors.push_back({name, t.dtype, t.shape, zeros.data()});
      } else {
        tensors.push_back({name, t.dtype, t.shape, t.data});
      }
    }
    write_safetensors(dir / "model.safetensors", tensors);
  }
  const Model model(dir);
  const PerplexityResult r = perplexity(model, some_tokens(64, model.config().vocab_size), 32, std::nullopt);
  EXPECT_NEAR(r.perplexity, model.config().vocab_size, 1e-3);
  fs::remove_all(dir);
}

TEST(Perplexity, RefusesTooFewTokensAndBadContexts) {
  const Model model(model_dir());
  EXPECT_THROW(perplexity(model, some_tokens(31, 300), 16, std::nullopt), Error);
  EXPECT_THROW(perplexity(model, some_tokens(100, 300), 2, std::nullopt), Error);
  EXPECT_THROW(perplexity(model, some_tokens(100000, 300), 40000, std::nullopt), Error);
}

TEST(Perplexity, CommandLine) {
  using testing_cli::run;
  // `init` ships a byte-level tokenizer with the model; perplexity reads text through it.
  const fs::path model = model_dir().string() + "_cli", text = model_dir().string() + "_text.txt";
  fs::remove_all(model);
  ASSERT_EQ(run("init " + model.string() + " --layout moe --hidden 64 --layers 2").code, 0);
  {
    std::ofstream out(text);
    for (int i = 0; i < 40; ++i) out << "The quick brown fox jumps over the lazy dog. ";
  }
  auto r = run("perplexity " + model.string() + " " + text.string() + " -c 64", false);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out.rfind("perplexity ", 0), 0u) << r.out;
  EXPECT_GT(std::stod(r.out.substr(11)), 1.0) << r.out;
  r = run("perplexity " + model.string() + " " + text.string() + " -c 4096");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("error: "), std::string::npos) << r.out;
  r = run("perplexity " + model.string() + " " + text.string() + " -c 1");
  EXPECT_EQ(r.code, 2) << r.out;
  r = run("perplexity " + model.string() + " " + (model / "none.txt").string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("none.txt"), std::string::npos) << r.out;
  r = run("perplexity " + model_dir().string() + " " + text.string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("tokenizer.json"), std::string::npos) << r.out;
  fs::remove(text);
  fs::remove_all(model);
}
