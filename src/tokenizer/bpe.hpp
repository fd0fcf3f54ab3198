#pragma once
// The BPE model of tokenizer.json: a vocabulary, merges ranked by priority, and what to do
// with characters the vocabulary lacks (byte fallback to <0xXX> tokens, or an unknown token).
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace crossmoe {

class Bpe {
 public:
  explicit Bpe(const nlohmann::json& model);  // the "model" object of tokenizer.json

  // Token ids of one pre-tokenized piece (already byte-level mapped where the model expects it).
  void encode_piece(std::string_view piece, std::vector<int>& out);

  int token_to_id(std::string_view token) const;  // -1 when absent
  const std::string& id_to_token(int id) const;    // "" when absent
  int vocab_size() const { return static_cast<int>(id_to_token_.size()); }

 private:
  void merge(std::vector<int>& symbols) const;
  std::unordered_map<std::string, int> vocab_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<uint64_t, std::pair<int, int>> merges_;  // (left, right) -> (rank, merged id)
  std::vector<int> byte_tokens_;                              // <0xXX> ids, when byte_fallback
  int unk_ = -1;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  std::string prefix_, suffix_;  // continuing_subword_prefix, end_of_word_suffix
  std::unordered_map<std::string, std::vector<int>> cache_;
};

}  // namespace crossmoe
