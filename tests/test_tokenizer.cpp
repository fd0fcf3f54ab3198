// The byte-level tokenizer crossmoe init writes, and streaming UTF-8 decode.
#include <gtest/gtest.h>

#include <filesystem>

#include "tokenizer/byte_tokenizer.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

using namespace crossmoe;

namespace {

ByteTokenizer make() {
  const auto path = std::filesystem::temp_directory_path() / "crossmoe_tok.json";
  write_json_file(path, ByteTokenizer::make_json({"<|endoftext|>", "<|im_start|>"}));
  return ByteTokenizer::load(path);
}

TEST(ByteTokenizer, EncodesBytesAndSpecialTokens) {
  const ByteTokenizer t = make();
  const std::string text = "Hi 你好 🙂<|im_start|>x<|endoftext|>";
  const std::vector<int> ids = t.encode(text);
  EXPECT_EQ(ids[0], 'H');
  EXPECT_EQ(ids[3], 0xe4);  // first byte of 你
  EXPECT_EQ(ids[ids.size() - 3], 257);
  EXPECT_EQ(ids.back(), 256);
  EXPECT_EQ(t.decode(ids), "Hi 你好 🙂x");  // specials are skipped on decode
  EXPECT_EQ(t.special_id("<|im_start|>"), 257);
}

TEST(ByteTokenizer, MapsBytesThroughGpt2Characters) {
  const nlohmann::json j = ByteTokenizer::make_json({});
  EXPECT_EQ(j["model"]["vocab"]["A"], 65);
  EXPECT_EQ(j["model"]["vocab"]["\xc4\xa0"], 32);  // space is U+0120 'Ġ'
  EXPECT_EQ(j["model"]["vocab"]["\xc4\x80"], 0);   // byte 0 is U+0100
  EXPECT_EQ(j["model"]["vocab"].size(), 256u);
}

TEST(ByteTokenizer, RejectsWhatItCannotRead) {
  const auto path = std::filesystem::temp_directory_path() / "crossmoe_tok_bad.json";
  nlohmann::json j = ByteTokenizer::make_json({});
  j["model"]["merges"] = {"a b"};
  write_json_file(path, j);
  EXPECT_THROW(ByteTokenizer::load(path), Error);
  j["model"]["type"] = "Unigram";
  write_json_file(path, j);
  EXPECT_THROW(ByteTokenizer::load(path), Error);
}

TEST(ByteTokenizer, MatchesHuggingFaceTokenizersOnItsOwnFile) {
  // The tokenizers library read the tokenizer.json that crossmoe init wrote and encoded these
  // strings (fixtures/check_init_with_transformers.py).
  const std::string dir = std::string(CROSSMOE_FIXTURES) + "/crossmoe_init/dense";
  const ByteTokenizer t = ByteTokenizer::load(dir + "/tokenizer.json");
  const auto golden = read_json_file(dir + "/reference.json")["tokenizer"];
  ASSERT_GE(golden.size(), 5u);
  for (const auto& [text, ids] : golden.items()) EXPECT_EQ(t.encode(text), ids.get<std::vector<int>>()) << text;
}

TEST(Utf8Stream, HoldsBackIncompleteCharacters) {
  Utf8Stream s;
  const std::string smile = "🙂";  // 4 bytes
  EXPECT_EQ(s.push("a"), "a");
  EXPECT_EQ(s.push(smile.substr(0, 1)), "");
  EXPECT_EQ(s.push(smile.substr(1, 2)), "");
  EXPECT_EQ(s.push(smile.substr(3) + "b"), smile + "b");
  EXPECT_EQ(s.push("\xe4"), "");
  EXPECT_EQ(s.flush(), "\xe4");
}

}  // namespace
