#pragma once
// Supervised fine-tuning data: chat conversations as token ids with a loss mask that trains the
// assistant's tokens only. No libtorch here, so that tools which write or check SFT data (games
// transcripts, RL rollouts) use the same encoding as the trainer.
//
// How a conversation becomes tokens and a mask (transformers' "assistant tokens" idea, computed
// by rendering prefixes, so it works with any chat template):
//   full  = render(messages, add_generation_prompt = false)
//   for each assistant message i:
//     begin_i = length of render(messages[0..i), add_generation_prompt = true)   (the prompt)
//     after_i = length of render(messages[0..i], add_generation_prompt = false)
//     end_i   = just past the first end marker (the config's eos_token, e.g. <|im_end|>) at or
//               after begin_i and before after_i; after_i when the template writes none
//   Each rendering must be a prefix of `full` (else the template is not prefix-stable: error).
//   The text is cut at every begin_i and end_i and each piece is encoded separately, so that a
//   reply starts and ends on a token boundary exactly as at inference, where the prompt is
//   encoded and the reply generated. Tokens of the pieces [begin_i, end_i) are trained: the
//   reply's content and its end marker, not the "<|im_start|>assistant\n" header nor the
//   newline the template writes after the marker.
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.hpp"

namespace crossmoe::train {

struct SftExample {
  std::vector<uint32_t> tokens;
  // Per token: 1 when the loss trains the prediction of this token (an assistant token), else 0.
  // As targets of next-token prediction: position t of the model's input predicts tokens[t + 1],
  // and counts when trained[t + 1] is 1. trained[0] is always 0.
  std::vector<uint8_t> trained;
};

// The chat template that renders conversations: a model directory's tokenizer_config.json
// (its chat_template and special tokens) and tokenizer.json.
struct ChatEncoder {
  nlohmann::json tokenizer_config;
  Tokenizer tokenizer;
  // Loads both files of a model directory; a clear error when either is missing or when the
  // config has no chat_template.
  static ChatEncoder load(const std::filesystem::path& model_dir);
  // messages: [{"role": ..., "content": ...}, ...] with at least one assistant message.
  SftExample encode(const nlohmann::ordered_json& messages);
};

// A jsonl file with one {"messages": [...]} conversation per line (blank lines skipped). Errors
// name the file and line.
std::vector<SftExample> read_sft_file(const std::filesystem::path& path, ChatEncoder& encoder);

}  // namespace crossmoe::train
