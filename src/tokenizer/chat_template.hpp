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
//
// Templates come from downloaded files, so rendering is bounded as Jinja's sandbox bounds it:
// see chat_template_limits. Every failure, a limit included, is an Error naming what failed.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace crossmoe {

namespace chat_template_limits {
// Nested blocks, and nested expression levels within one tag ((((x)))), not not x, 1+1+...+1):
// parsing, evaluating and freeing recurse once per level.
inline constexpr int kMaxNesting = 100;
// Nested lists and mappings in a value, from the conversation or built by the template.
inline constexpr int kMaxValueDepth = 500;
// Items of one range(), as Jinja's sandbox (MAX_RANGE).
inline constexpr int64_t kMaxRange = 100000;
// Work for one rendering: a unit per expression evaluated, four per loop iteration, one per list
// or mapping entry made, copied or compared, and one per 16 bytes of text made or scanned.
// Qwen3's template needs about 170 units per message (350,000 for 2,000 messages); this stops an
// endless loop within seconds and caps the memory a rendering can fill to a few hundred MB.
inline constexpr int64_t kMaxWorkUnits = 4'000'000;
// The rendered text, and any one string a template builds.
inline constexpr size_t kMaxOutputBytes = size_t(32) << 20;
}  // namespace chat_template_limits

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

// The arguments of transformers' apply_chat_template.
struct ChatRequest {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  nlohmann::ordered_json tools;                                     // null when none
  bool add_generation_prompt = true;
  bool continue_final_message = false;  // end the text inside the last message, for the model to go on
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();  // e.g. enable_thinking, documents
};

// Renders the chat_template of a tokenizer_config.json with its special tokens as variables
// (bos_token, eos_token, ...), as transformers does.
std::string apply_chat_template(const nlohmann::json& tokenizer_config, const ChatRequest& request);

// DIR/tokenizer_config.json, its chat_template replaced by DIR/chat_template.jinja when that
// exists: recent checkpoints keep the template there, and transformers prefers it.
nlohmann::json read_tokenizer_config(const std::filesystem::path& dir);

// A conversation as apply_chat_template takes it: {"messages": [...], "tools": [...],
// "add_generation_prompt": bool, "continue_final_message": bool, ...}; any other key is a template
// variable (documents, enable_thinking). add_generation_prompt defaults to false, as in
// transformers. `source` names the input in errors.
ChatRequest chat_request_from_json(const nlohmann::ordered_json& conversation, const std::string& source);
ChatRequest read_chat_request(const std::filesystem::path& path);

}  // namespace crossmoe
