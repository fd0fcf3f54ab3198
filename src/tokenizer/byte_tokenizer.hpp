#pragma once
// A byte-level tokenizer: tokenizer.json files whose BPE model has one token per byte (GPT-2's
// byte-to-character map) and no merges, plus added special tokens. This is what `crossmoe init`
// writes and what Hugging Face's tokenizers library reads as an ordinary ByteLevel BPE. Full BPE
// with merges is the tokenizer issue's work; such files are rejected here with a clear error.
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace crossmoe {

class ByteTokenizer {
 public:
  static ByteTokenizer load(const std::filesystem::path& tokenizer_json);
  // The tokenizer.json for byte tokens 0..255 followed by `specials` (ids 256, 257, ...).
  static nlohmann::json make_json(const std::vector<std::string>& specials);

  std::vector<int> encode(const std::string& text) const;  // special tokens are matched first
  std::string token_bytes(int id) const;                     // raw bytes; "" for special tokens
  std::string decode(const std::vector<int>& ids) const;     // special tokens skipped
  int special_id(const std::string& content) const;          // -1 when absent
  int vocab_size() const { return static_cast<int>(id_to_byte_.size()); }

 private:
  std::vector<int> id_to_byte_;            // -1 for special tokens
  std::vector<int> byte_to_id_ = std::vector<int>(256, -1);
  std::map<std::string, int> specials_;
};

// Streaming decode: bytes in, text out only when UTF-8 characters are complete.
class Utf8Stream {
 public:
  std::string push(const std::string& bytes);
  std::string flush();  // whatever is left, even if incomplete

 private:
  std::string pending_;
};

}  // namespace crossmoe
