#include "tokenizer/chatml.hpp"

namespace crossmoe {

const std::vector<std::string>& chatml_special_tokens() {
  static const std::vector<std::string> tokens{"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  return tokens;
}

nlohmann::json chatml_tokenizer_config(int model_max_length) {
  const char* chatml =
      "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
      "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
  return {{"tokenizer_class", "PreTrainedTokenizerFast"}, {"eos_token", "<|im_end|>"},
          {"pad_token", "<|endoftext|>"},                 {"bos_token", nullptr},
          {"model_max_length", model_max_length},         {"chat_template", chatml}};
}

}  // namespace crossmoe
