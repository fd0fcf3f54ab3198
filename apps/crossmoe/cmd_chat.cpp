// crossmoe chat MODEL: an interactive conversation through the model's chat template.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>

#include "commands.hpp"
#include "sampling_options.hpp"
#include "runtime/generate.hpp"
#include "tokenizer/chat_template.hpp"
#include "tokenizer/tokenizer.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"
#include "util/progress.hpp"

namespace crossmoe::cli {

namespace {

struct ChatArgs {
  std::string model, system;
  int max_tokens = 512;
  int context = 0;
  bool render_only = false;
  bool no_thinking = false;
  SamplingOptions sampling;
};

void run_chat(const ChatArgs& a) {
  namespace fs = std::filesystem;
  const fs::path dir(a.model);
  const nlohmann::json config = read_json_file(dir / "tokenizer_config.json");
  Tokenizer tokenizer = Tokenizer::load(dir / "tokenizer.json");
  std::optional<Model> model;
  std::optional<InferenceSession> session;
  std::vector<int> stop;
  if (!a.render_only) {
    model.emplace(dir);
    stop = model->config().eos_token_ids;
    session.emplace(*model, a.context > 0 ? a.context : std::min(model->config().max_position_embeddings, 8192));
  }
  if (config.contains("eos_token") && config["eos_token"].is_string()) {
    const int eos = tokenizer.token_to_id(config["eos_token"].get<std::string>());
    if (eos >= 0) stop.push_back(eos);
  }
  ChatRequest request;
  if (!a.system.empty()) request.messages.push_back({{"role", "system"}, {"content", a.system}});
  if (a.no_thinking) request.extra["enable_thinking"] = false;
  Sampler sampler(a.sampling.resolve(dir));
  const bool interactive = isatty(fileno(stdin));
  if (interactive) log_info("chatting with " + a.model + " (/reset clears the conversation, /quit or Ctrl-D ends)");
  for (std::string line;;) {
    if (interactive) std::fputs("\nyou> ", stdout), std::fflush(stdout);
    if (!std::getline(std::cin, line) || line == "/quit") break;
    if (line == "/reset") {
      request.messages.erase(request.messages.begin() + (a.system.empty() ? 0 : 1), request.messages.end());
      continue;
    }
    if (line.empty()) continue;
    request.messages.push_back({{"role", "user"}, {"content", line}});
    const std::string prompt = apply_chat_template(config, request);
    if (a.render_only) {
      std::fputs(prompt.c_str(), stdout);
      std::fflush(stdout);
      request.messages.push_back({{"role", "assistant"}, {"content", ""}});
      continue;
    }
    // The whole conversation is re-encoded each turn: templates may rewrite earlier turns
    // (Qwen3 drops old reasoning), so the KV cache restarts from the rendered prompt.
    session->reset();
    const std::vector<int> ids = tokenizer.encode(prompt);
    DecodeStream stream(tokenizer, true);
    std::string reply;
    if (interactive) std::fputs("model> ", stdout);
    const GenerationResult r = generate(*session, ids, a.max_tokens, sampler, stop, [&](int token) {
      if (std::find(stop.begin(), stop.end(), token) != stop.end()) return false;
      const std::string piece = stream.push(token);
      reply += piece;
      std::fputs(piece.c_str(), stdout);
      std::fflush(stdout);
      return true;
    });
    std::fputs("\n", stdout);
    std::fflush(stdout);
    char stats[160];
    std::snprintf(stats, sizeof stats, "[%d prompt tokens, %d generated at %.1f tokens/s]", r.stats.prompt_tokens,
                  r.stats.generated_tokens, r.stats.decode_tokens_per_second());
    log_info(stats);
    request.messages.push_back({{"role", "assistant"}, {"content", reply}});
  }
}

}  // namespace

void add_chat(CLI::App& app) {
  auto a = std::make_shared<ChatArgs>();
  CLI::App* cmd = app.add_subcommand("chat", "Chat with a model through its chat template (reads lines from stdin)");
  cmd->add_option("model", a->model, "Model directory (tokenizer.json, tokenizer_config.json)")->required();
  cmd->add_option("--system", a->system, "System prompt");
  cmd->add_option("-n,--max-tokens", a->max_tokens, "Tokens per reply")->capture_default_str()->check(positive());
  cmd->add_option("--ctx", a->context, "Context length (default: the model's, at most 8192)");
  a->sampling.add_to(*cmd);
  cmd->add_flag("--render", a->render_only, "Print the rendered prompt of each turn instead of generating");
  cmd->add_flag("--no-thinking", a->no_thinking, "Pass enable_thinking=false to the template (Qwen3)");
  add_threads_option(*cmd);
  cmd->callback([a] { run_chat(*a); });
}

}  // namespace crossmoe::cli
