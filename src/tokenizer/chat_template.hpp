#pragma once
// Chat templates: the Jinja subset that real tokenizer_config.json templates use, rendered as
// transformers' apply_chat_template renders them (Jinja with trim_blocks and lstrip_blocks, a
// tojson filter that writes like Python's json.dumps, Python string methods and printing).
//
// Supported: {{ }}, {% if/elif/else %}, {% for a[, b] in x [if c] %} with loop.* and else,
// {% set x = ... %} and {% set ns.x = ... %}, {# #}, whitespace control (- and +); literals,
// lists, dicts, attribute / item / slice access, arithmetic, comparisons, and/or/not, in,
// a if c else b, ~; tests defined undefined none string number integer mapping sequence
// iterable boolean true false even odd; filters trim tojson length count upper lower first last
// join default string int list items reverse replace capitalize title safe unique;
// string / dict methods (startswith endswith split strip lstrip rstrip upper lower replace
// title items keys values get); globals namespace range raise_exception strftime_now.
// Known difference: a tuple literal is a list here, so {{ (1, 2) }} prints [1, 2], not (1, 2).
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace crossmoe {

class ChatTemplate {
 public:
  explicit ChatTemplate(const std::string& source);  // throws Error naming the line
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  std::string render(const nlohmann::ordered_json& variables) const;

  struct Node;

 private:
  std::unique_ptr<Node> root_;
};

struct ChatRequest {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  nlohmann::ordered_json tools;                                     // null when none
  bool add_generation_prompt = true;
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();  // e.g. enable_thinking
};

// Renders the chat_template of a tokenizer_config.json with its special tokens as variables
// (bos_token, eos_token, ...), as transformers does.
std::string apply_chat_template(const nlohmann::json& tokenizer_config, const ChatRequest& request);

}  // namespace crossmoe
