#pragma once
// crossmoe's own chat format, for the tokenizers it trains and the models it makes: ChatML, as
// Qwen models use it. A turn is "<|im_start|>ROLE\nCONTENT<|im_end|>\n" and a reply ends with
// <|im_end|>; <|endoftext|> separates documents in pre-training data. The three are added,
// special tokens of every tokenizer `crossmoe tokenizer train` writes.
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace crossmoe {

// <|endoftext|>, <|im_start|>, <|im_end|>.
const std::vector<std::string>& chatml_special_tokens();

// A tokenizer_config.json with the ChatML chat_template, eos <|im_end|> and pad <|endoftext|>.
nlohmann::json chatml_tokenizer_config(int model_max_length);

}  // namespace crossmoe
