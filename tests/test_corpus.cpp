// Training data: Brown corpus tags, the document split, token files.
#include <gtest/gtest.h>

#include "temp_dir.hpp"

#include <filesystem>
#include <fstream>

#include "tokenizer/bpe_trainer.hpp"
#include "train/corpus.hpp"
#include "util/error.hpp"

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
