#pragma once
// Byte-level BPE training: count the words of a corpus (split by a Qwen2/LLaMA-3 style regex),
// then repeatedly merge the most frequent adjacent pair. The result is a tokenizer.json that
// Hugging Face's tokenizers library loads and encodes exactly as Tokenizer does.
#include <cstdint>
#include <functional>
#include <string_view>
#include <unordered_map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace crossmoe {

struct BpeTrainingOptions {
  int vocab_size = 4096;                 // bytes + merges + special tokens
  int min_frequency = 2;                 // a pair must occur this often to be merged
  std::vector<std::string> special_tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  std::function<void(int learned, int wanted)> progress;  // tokens learned so far; called now and then
};

class BpeTrainer {
 public:
  explicit BpeTrainer(const BpeTrainingOptions& options);
  // Adds text to the corpus (any size; call repeatedly for many files).
  void add_text(std::string_view text);
  // Learns the merges and returns the tokenizer.json.
  nlohmann::json train();
  // A byte-level tokenizer.json with the given merges (none: one token per byte).
  static nlohmann::json tokenizer_json(const std::vector<std::pair<std::string, std::string>>& merges,
                                       const std::vector<std::string>& special_tokens);

 private:
  BpeTrainingOptions options_;
  std::unordered_map<std::string, int64_t> word_counts_;
};

}  // namespace crossmoe
