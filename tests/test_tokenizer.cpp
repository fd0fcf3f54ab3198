// Tokenizers: crossmoe's own byte-level files, BPE training, streaming decode, bad input.
#include <gtest/gtest.h>

#include "temp_dir.hpp"

#include <filesystem>
#include <fstream>

#include "tokenizer/bpe_trainer.hpp"
#include "tokenizer/tokenizer.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"
#include "util/replace_all.hpp"

using namespace crossmoe;

namespace {

// util/replace_all.hpp, which the tokenizer's Replace normalizer and Metaspace decoder use.
TEST(ReplaceAll, LeftToRightWithoutOverlapsInTheOriginal) {
  EXPECT_EQ(replace_all("a b  c", " ", "\u2581"), "a\u2581b\u2581\u2581c");
  EXPECT_EQ(replace_all("aaa", "aa", "b"), "ba");                 // no overlaps, from the left
  EXPECT_EQ(replace_all("(Play 0)", "Play", "Play card"), "(Play card 0)");  // `to` is not searched again
  EXPECT_EQ(replace_all("<answer>x</answer>", "<answer>", ""), "x</answer>");
  EXPECT_EQ(replace_all("abc", "", "x"), "abc");
  EXPECT_EQ(replace_all("", "a", "b"), "");
  EXPECT_EQ(replace_all("abc", "abc", ""), "");
}

TEST(ByteLevelTokenizer, EncodesBytesAndSpecialTokens) {
  Tokenizer t(BpeTrainer::tokenizer_json({}, {"<|endoftext|>", "<|im_start|>"}));
  const std::string text = "Hi 你好 🙂<|im_start|>x<|endoftext|>";
  const std::vector<int> ids = t.encode(text);
  EXPECT_EQ(ids[0], 'H');
  EXPECT_EQ(ids[3], 0xe4);  // first byte of 你
  EXPECT_EQ(ids[ids.size() - 3], 257);
  EXPECT_EQ(ids.back(), 256);
  EXPECT_EQ(t.decode(ids), text);
  EXPECT_EQ(t.decode(ids, true), "Hi 你好 🙂x");
  EXPECT_EQ(t.token_to_id("<|im_start|>"), 257);
  EXPECT_TRUE(t.is_special(256));
  // Invalid UTF-8 still round-trips through byte tokens.
  const std::string raw = "a\xff\xe4\xbd";
  EXPECT_EQ(t.encode(raw), (std::vector<int>{'a', 0xff, 0xe4, 0xbd}));
}

TEST(ByteLevelTokenizer, AddPrefixSpaceGivesAWordWithoutOneALeadingSpace) {
  // tokenizers' ByteLevel with add_prefix_space (GPT-2, RoBERTa files): "Hi" is encoded as " Hi",
  // and a word that starts with a space gets no second one.
  nlohmann::json j = BpeTrainer::tokenizer_json({}, {});
  nlohmann::json& byte_level = j["pre_tokenizer"]["pretokenizers"][1];
  ASSERT_EQ(byte_level["type"], "ByteLevel");
  byte_level["add_prefix_space"] = true;
  Tokenizer t(j);
  EXPECT_EQ(t.encode("Hi"), (std::vector<int>{' ', 'H', 'i'}));
  EXPECT_EQ(t.encode(" Hi"), (std::vector<int>{' ', 'H', 'i'}));
  EXPECT_EQ(Tokenizer(BpeTrainer::tokenizer_json({}, {})).encode("Hi"), (std::vector<int>{'H', 'i'}));
}

TEST(ByteLevelTokenizer, MatchesHuggingFaceTokenizersOnInitsFile) {
  // The tokenizers library read the tokenizer.json that crossmoe init wrote and encoded these
  // strings (fixtures/check_init_with_transformers.py).
  const std::string dir = std::string(CROSSMOE_FIXTURES) + "/crossmoe_init/dense";
  Tokenizer t = Tokenizer::load(dir + "/tokenizer.json");
  const auto golden = read_json_file(dir + "/reference.json")["tokenizer"];
  ASSERT_GE(golden.size(), 5u);
  for (const auto& [text, ids] : golden.items()) EXPECT_EQ(t.encode(text), ids.get<std::vector<int>>()) << text;
}

TEST(BpeTrainer, LearnsFrequentPairsAndRoundTrips) {
  BpeTrainingOptions options;
  options.vocab_size = 256 + 3 + 20;
  BpeTrainer trainer(options);
  for (int i = 0; i < 50; ++i) trainer.add_text("the cat sat on the mat with the hat. ");
  trainer.add_text("rare words appear once 你好");
  Tokenizer t(trainer.train());
  // At most 20 merges; fewer once every repeated word is a single token.
  EXPECT_LE(t.vocab_size(), 256 + 20 + 3);
  EXPECT_GT(t.vocab_size(), 256 + 10 + 3);
  const std::vector<int> the = t.encode(" the");
  EXPECT_EQ(the.size(), 1u);  // " the" is the most frequent word: fully merged
  const std::string text = "the hat sat on 你好 and zebras";
  EXPECT_EQ(t.decode(t.encode(text)), text);
  EXPECT_LT(t.encode("the cat sat on the mat").size(), std::string("the cat sat on the mat").size() / 2);
}

TEST(DecodeStream, EmitsOnlyCompleteCharacters) {
  Tokenizer t(BpeTrainer::tokenizer_json({}, {}));
  DecodeStream stream(t, false);
  std::string out;
  const std::string text = "a🙂b你";
  std::vector<std::string> pieces;
  for (int id : t.encode(text)) pieces.push_back(stream.push(id));
  for (const auto& p : pieces) out += p;
  EXPECT_EQ(out, text);
  EXPECT_EQ(pieces[1], "");  // first byte of the emoji: held back
  EXPECT_EQ(pieces[4], "🙂");
}

TEST(Tokenizer, RejectsWhatItCannotRead) {
  nlohmann::json j = BpeTrainer::tokenizer_json({}, {});
  j["model"]["type"] = "Unigram";
  EXPECT_THROW(Tokenizer{j}, Error);
  j = BpeTrainer::tokenizer_json({}, {});
  j["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  try {
    Tokenizer t{j};
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("BertPreTokenizer"), std::string::npos);
  }
  j = BpeTrainer::tokenizer_json({}, {});
  j["model"]["merges"] = {{"a", "zz"}};
  EXPECT_THROW(Tokenizer{j}, Error);
  j = BpeTrainer::tokenizer_json({}, {});
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  EXPECT_THROW(Tokenizer{j}, Error);
  const auto path = testing_paths::temp_path("bad_tokenizer.json");
  std::ofstream(path) << "{ not json";
  EXPECT_THROW(Tokenizer::load(path), Error);
  std::filesystem::remove(path);
}

}  // namespace
