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
