#include "train/sft_data.hpp"

#include <fstream>

#include "tokenizer/chat_template.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

namespace crossmoe::train {

namespace fs = std::filesystem;

ChatEncoder ChatEncoder::load(const fs::path& model_dir) {
  const fs::path config_path = model_dir / "tokenizer_config.json", tokenizer_path = model_dir / "tokenizer.json";
  require(fs::is_regular_file(tokenizer_path), model_dir.string() + " has no tokenizer.json: SFT needs the model's tokenizer");
  require(fs::is_regular_file(config_path), model_dir.string() + " has no tokenizer_config.json with a chat template");
  nlohmann::json config = read_json_file(config_path);
  require(config.is_object() && config.contains("chat_template"),
          config_path.string() + " has no chat_template: SFT renders conversations through the model's chat template");
  return ChatEncoder{std::move(config), Tokenizer::load(tokenizer_path)};
}

SftExample ChatEncoder::encode(const nlohmann::ordered_json& messages) {
  require(messages.is_array() && !messages.empty(), "\"messages\" must be a non-empty list");
  for (const auto& m : messages)
    require(m.is_object() && m.contains("role") && m["role"].is_string() && m.contains("content") &&
                m["content"].is_string(),
            "every message needs a string \"role\" and a string \"content\"");
  auto render = [&](size_t count, bool generation_prompt) {
    ChatRequest request;
    request.messages = nlohmann::ordered_json(messages.begin(), messages.begin() + std::ptrdiff_t(count));
    request.add_generation_prompt = generation_prompt;
    return apply_chat_template(tokenizer_config, request);
  };
  std::string end_marker;
  if (tokenizer_config.contains("eos_token")) {
    const auto& eos = tokenizer_config["eos_token"];
    end_marker = eos.is_string() ? eos.get<std::string>() : eos.is_object() ? eos.value("content", "") : "";
  }
  const std::string full = render(messages.size(), false);
  auto prefix_length = [&](const std::string& text, size_t turn) {
    require(full.compare(0, text.size(), text) == 0,
            "the chat template does not render message " + std::to_string(turn + 1) +
                " as a prefix of the whole conversation, so its assistant tokens cannot be located");
    return text.size();
  };
  // Cut points: [begin, end) of every assistant reply, in order.
  std::vector<std::pair<size_t, size_t>> replies;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i]["role"] != "assistant") continue;
    const size_t begin = prefix_length(render(i, true), i), after = prefix_length(render(i + 1, false), i);
    require(begin <= after && (replies.empty() || replies.back().second <= begin),
            "the chat template renders assistant message " + std::to_string(i + 1) + " out of order");
    size_t end = after;
    if (!end_marker.empty()) {
      const size_t marker = full.find(end_marker, begin);
      if (marker != std::string::npos && marker + end_marker.size() <= after) end = marker + end_marker.size();
    }
    replies.push_back({begin, end});
  }
  require(!replies.empty(), "the conversation has no assistant message to train on");
  SftExample example;
  auto append = [&](size_t from, size_t to, bool trained) {
    if (from >= to) return;
    for (int id : tokenizer.encode(std::string_view(full).substr(from, to - from))) {
      example.tokens.push_back(uint32_t(id));
      example.trained.push_back(trained ? 1 : 0);
    }
  };
  size_t at = 0;
  for (const auto& [begin, end] : replies) {
    append(at, begin, false);
    append(begin, end, true);
    at = end;
  }
  append(at, full.size(), false);
  if (!example.trained.empty()) example.trained[0] = 0;  // nothing precedes the first token to predict it
  return example;
}

std::vector<SftExample> read_sft_file(const fs::path& path, ChatEncoder& encoder) {
  std::ifstream in(path, std::ios::binary);
  require(in.good() && fs::is_regular_file(path), "cannot open SFT data " + path.string());
  std::vector<SftExample> examples;
  int line_number = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path.string() + ":" + std::to_string(line_number) + ": ";
    nlohmann::ordered_json conversation;
    try {
      conversation = nlohmann::ordered_json::parse(line);
    } catch (const nlohmann::json::exception&) {
      throw Error(where + "not a JSON object");
    }
    require(conversation.is_object() && conversation.contains("messages"), where + "expected {\"messages\": [...]}");
    try {
      examples.push_back(encoder.encode(conversation["messages"]));
    } catch (const Error& e) {
      throw Error(where + e.what());
    }
  }
  require(!examples.empty(), path.string() + " has no conversations");
  return examples;
}

}  // namespace crossmoe::train
