// crossmoe chat MODEL: a conversation through the model's chat template, or (--render) the
// template's rendering of a conversation.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>

#ifdef CROSSMOE_LIBEDIT
#include <editline/readline.h>
#endif

#include "commands.hpp"
#include "memory_budget_options.hpp"
#include "runtime/generate.hpp"
#include "sampling_options.hpp"
#include "tokenizer/chat_template.hpp"
#include "tokenizer/tokenizer.hpp"
#include "util/error.hpp"
#include "util/progress.hpp"

namespace crossmoe::cli {

namespace {

using Json = nlohmann::ordered_json;

struct ChatArgs {
  std::string model, system, messages_file;
  int max_tokens = 512;
  int context = 0;
  bool render_only = false;
  bool no_thinking = false;
  SamplingOptions sampling;
  MemoryBudgetArgs memory;
};

const char* const kHelp =
    "/help            this list\n"
    "/reset           start the conversation again (the system prompt stays)\n"
    "/undo            forget the last message you sent and the reply to it\n"
    "/system TEXT     replace the system prompt\n"
    "/exit, /quit     end the chat (as Ctrl-D does)\n"
    "//TEXT           send TEXT starting with '/'\n"
    "Ctrl-C stops a reply and keeps the conversation; at the prompt it ends the chat.";

// Ctrl-C while a reply is generated stops the reply; anywhere else it ends the program as usual.
std::atomic<bool> g_generating{false};
std::atomic<bool> g_interrupted{false};
static_assert(std::atomic<bool>::is_always_lock_free, "used from a signal handler");

void on_sigint(int) {
  if (g_generating) {
    g_interrupted = true;
    return;
  }
  std::signal(SIGINT, SIG_DFL);
  std::raise(SIGINT);
}

// Lines from stdin; on a terminal with line editing and history (libedit) when it was built in.
class LineReader {
 public:
  explicit LineReader(bool terminal) : terminal_(terminal) {}
  std::optional<std::string> read(const char* prompt) {
#ifdef CROSSMOE_LIBEDIT
    if (terminal_) {
      char* raw = readline(prompt);
      if (!raw) return std::nullopt;
      std::string line(raw);
      std::free(raw);
      if (!line.empty()) add_history(line.c_str());
      return line;
    }
#endif
    if (terminal_) std::fputs(prompt, stdout), std::fflush(stdout);
    std::string line;
    if (!std::getline(std::cin, line)) return std::nullopt;
    return line;
  }

 private:
  bool terminal_;
};

// The system messages at the start of a conversation: kept when old turns are dropped.
size_t leading_system_messages(const Json& messages) {
  size_t n = 0;
  while (n < messages.size() && messages[n].value("role", "") == "system") ++n;
  return n;
}

// Removes the oldest turn after the system messages: a user message and everything up to the
// next one. Returns how many messages went; 0 when the newest turn is the only one left.
size_t drop_oldest_turn(Json& messages) {
  const size_t from = leading_system_messages(messages);
  size_t to = from + 1;
  while (to < messages.size() && messages[to].value("role", "") != "user") ++to;
  if (to >= messages.size()) return 0;
  messages.erase(messages.begin() + std::ptrdiff_t(from), messages.begin() + std::ptrdiff_t(to));
  return to - from;
}

// The conversation and its slash commands; what a message gets in return is the subclass's.
class Conversation {
 public:
  Conversation(const nlohmann::json& config, ChatRequest request, bool piped)
      : config_(config), request_(std::move(request)), piped_(piped) {}
  virtual ~Conversation() = default;

  void run() {
    LineReader input(!piped_);
    while (const auto line = input.read("you> ")) {
      if (!command(*line)) break;
    }
  }

 protected:
  virtual void reply() = 0;
  virtual void forget_all() {}

  // Status lines go to stderr, so that stdout holds only replies.
  static void notice(const std::string& text) {
    std::fputs((text + "\n").c_str(), stderr);
    std::fflush(stderr);
  }

  nlohmann::json config_;
  ChatRequest request_;
  bool piped_;

 private:
  // Handles one input line; false ends the chat.
  bool command(const std::string& line) {
    if (line.empty()) return true;
    if (line[0] != '/' || line.rfind("//", 0) == 0) {
      request_.messages.push_back({{"role", "user"}, {"content", line[0] == '/' ? line.substr(1) : line}});
      reply();
      return true;
    }
    const std::string name = line.substr(0, line.find(' '));
    const std::string rest = line.size() > name.size() ? line.substr(name.size() + 1) : "";
    Json& messages = request_.messages;
    if (name == "/exit" || name == "/quit") return false;
    if (name == "/help") {
      notice(kHelp);
    } else if (name == "/reset") {
      messages.erase(messages.begin() + std::ptrdiff_t(leading_system_messages(messages)), messages.end());
      forget_all();
      notice("the conversation starts again");
    } else if (name == "/undo") {
      size_t last_user = messages.size();
      while (last_user > 0 && messages[last_user - 1].value("role", "") != "user") --last_user;
      if (last_user == 0) {
        notice("nothing to undo");
      } else {
        messages.erase(messages.begin() + std::ptrdiff_t(last_user - 1), messages.end());
        notice("forgot the last message and its reply");
      }
    } else if (name == "/system") {
      messages.erase(messages.begin(), messages.begin() + std::ptrdiff_t(leading_system_messages(messages)));
      if (!rest.empty()) messages.insert(messages.begin(), Json{{"role", "system"}, {"content", rest}});
      notice(rest.empty() ? "no system prompt" : "system prompt replaced");
    } else {
      notice("unknown command " + name + " (/help lists the commands)");
    }
    return true;
  }
};

// --render: the prompt of each turn instead of a reply.
class RenderedTurns : public Conversation {
 public:
  using Conversation::Conversation;

 private:
  void reply() override {
    std::fputs(apply_chat_template(config_, request_).c_str(), stdout);
    std::fflush(stdout);
    request_.messages.push_back({{"role", "assistant"}, {"content", ""}});
  }
};

class Chat : public Conversation {
 public:
  Chat(const ChatArgs& a, const nlohmann::json& config, ChatRequest request)
      : Conversation(config, std::move(request), !isatty(fileno(stdin))),
        a_(a),
        dir_(a.model),
        tokenizer_(Tokenizer::load(dir_ / "tokenizer.json")),
        model_(dir_, a.memory.resolve()),
        session_(model_, a.context > 0 ? a.context : std::min(model_.config().max_position_embeddings, 8192)),
        cache_(session_),
        sampler_(a.sampling.resolve(dir_)) {
    stop_ = model_.config().eos_token_ids;
    if (config.contains("eos_token") && config["eos_token"].is_string()) {
      const int eos = tokenizer_.token_to_id(config["eos_token"].get<std::string>());
      if (eos >= 0) stop_.push_back(eos);
    }
    // Room kept for a reply when old turns are dropped: --max-tokens, at most half the context.
    reply_room_ = std::min(a.max_tokens, session_.context_length() / 2);
  }

  void start() {
    std::signal(SIGINT, on_sigint);
    if (!piped_) log_info("chatting with " + a_.model + " (/help lists the commands, Ctrl-D ends)");
    const Json& messages = request_.messages;
    if (!messages.empty() && messages.back().value("role", "") == "user") reply();
    run();
  }

 private:
  void forget_all() override { cache_.clear(); }

  // The conversation's tokens, the oldest turns dropped until the prompt and a reply fit the
  // context; nullopt (and the newest message taken back) when even the newest turn does not fit.
  std::optional<std::vector<int>> fit_prompt() {
    size_t dropped = 0;
    for (;;) {
      std::vector<int> ids = tokenizer_.encode(apply_chat_template(config_, request_));
      if (int(ids.size()) + reply_room_ <= session_.context_length()) {
        if (dropped > 0)
          notice("the conversation outgrew the context of " + std::to_string(session_.context_length()) +
                 " tokens: dropped the " + std::to_string(dropped) + " oldest messages");
        return ids;
      }
      const size_t n = drop_oldest_turn(request_.messages);
      if (n == 0) {
        request_.messages.erase(request_.messages.end() - 1);
        const std::string error = "the message makes a prompt of " + std::to_string(ids.size()) +
                                  " tokens, which with " + std::to_string(reply_room_) +
                                  " for the reply does not fit the context of " +
                                  std::to_string(session_.context_length()) + " tokens (--ctx, --max-tokens)";
        if (piped_) std::printf("%s\n", Json{{"error", error}}.dump().c_str()), std::fflush(stdout);
        else notice("error: " + error);
        return std::nullopt;
      }
      dropped += n;
    }
  }

  void reply() override {
    const auto ids = fit_prompt();
    if (!ids) return;
    const std::vector<int> suffix = cache_.rewind_to(*ids);
    DecodeStream stream(tokenizer_, true);
    std::string text;
    if (!piped_) std::fputs("model> ", stdout), std::fflush(stdout);
    g_interrupted = false;
    g_generating = true;
    const int room = session_.context_length() - int(ids->size());
    const GenerationResult r = generate(session_, suffix, std::min(a_.max_tokens, room), sampler_, stop_, [&](int token) {
      if (g_interrupted || std::find(stop_.begin(), stop_.end(), token) != stop_.end()) return false;
      const std::string piece = stream.push(token);
      text += piece;
      if (!piped_) std::fputs(piece.c_str(), stdout), std::fflush(stdout);
      return true;
    });
    g_generating = false;
    cache_.record(suffix, r);
    const bool stopped = !r.tokens.empty() && std::find(stop_.begin(), stop_.end(), r.tokens.back()) != stop_.end();
    const char* finish = g_interrupted ? "interrupted" : stopped ? "stop" : "length";
    request_.messages.push_back({{"role", "assistant"}, {"content", text}});
    if (piped_) {
      // One JSON object per reply and line, so that a script can read replies that span lines.
      const Json out = {{"role", "assistant"},          {"content", text},
                        {"finish_reason", finish},      {"prompt_tokens", int(ids->size())},
                        {"reused_tokens", cache_.reused()}, {"completion_tokens", r.stats.generated_tokens}};
      std::printf("%s\n", out.dump(-1, ' ', false, Json::error_handler_t::replace).c_str());
      std::fflush(stdout);
      return;
    }
    std::fputs(g_interrupted ? " [stopped]\n" : "\n", stdout);
    std::fflush(stdout);
    char stats[200];
    std::snprintf(stats, sizeof stats, "[%zu prompt tokens (%d reused), %d generated at %.1f tokens/s]", ids->size(),
                  cache_.reused(), r.stats.generated_tokens, r.stats.decode_tokens_per_second());
    log_info(stats);
    if (model_.expert_cache()) log_info(expert_cache_summary(*model_.expert_cache(), 0));
  }

  const ChatArgs& a_;
  std::filesystem::path dir_;
  Tokenizer tokenizer_;
  Model model_;
  InferenceSession session_;
  ConversationCache cache_;
  Sampler sampler_;
  std::vector<int> stop_;
  int reply_room_ = 0;
};

void run_chat(const ChatArgs& a) {
  const nlohmann::json config = read_tokenizer_config(a.model);
  ChatRequest request;
  if (!a.messages_file.empty()) {
    request = read_chat_request(a.messages_file);
    if (a.render_only) {
      if (a.no_thinking) request.extra["enable_thinking"] = false;
      std::fputs(apply_chat_template(config, request).c_str(), stdout);
      return;
    }
    require(!request.continue_final_message, a.messages_file + ": continue_final_message is only for --render");
    require(a.system.empty(), "--system: give the system prompt in " + a.messages_file + " instead");
    request.add_generation_prompt = true;
  }
  if (!a.system.empty()) request.messages.push_back({{"role", "system"}, {"content", a.system}});
  if (a.no_thinking) request.extra["enable_thinking"] = false;
  if (a.render_only) return RenderedTurns(config, std::move(request), !isatty(fileno(stdin))).run();
  Chat(a, config, std::move(request)).start();
}

}  // namespace

void add_chat(CLI::App& app) {
  auto a = std::make_shared<ChatArgs>();
  CLI::App* cmd = app.add_subcommand(
      "chat",
      "Chat with a model through its chat template. On a terminal: line editing, history and /help. "
      "With stdin piped, each line is a message and each reply one JSON line on stdout "
      "({\"role\", \"content\", \"finish_reason\", token counts}). When the conversation outgrows the "
      "context the oldest turns are dropped; the KV cache is kept across turns");
  cmd->add_option("model", a->model, "Model directory (tokenizer.json, tokenizer_config.json or chat_template.jinja)")
      ->required();
  cmd->add_option("--system", a->system, "System prompt");
  cmd->add_option("--messages", a->messages_file,
                  "A conversation as JSON, as transformers' apply_chat_template takes it: {\"messages\": [...], "
                  "\"tools\": [...], \"add_generation_prompt\": bool, ...} (other keys are template variables). "
                  "With --render its rendering is printed; otherwise the chat goes on from it")
      ->check(CLI::ExistingFile);
  cmd->add_option("-n,--max-tokens", a->max_tokens, "Tokens per reply")->capture_default_str()->check(positive());
  cmd->add_option("--ctx", a->context, "Context length (default: the model's, at most 8192)")->check(positive());
  a->sampling.add_to(*cmd);
  a->memory.add_to(*cmd);
  cmd->add_flag("--render", a->render_only,
                "Print the rendered prompt (of --messages, or of each turn read from stdin) instead of generating");
  cmd->add_flag("--no-thinking", a->no_thinking, "Pass enable_thinking=false to the template (Qwen3)");
  add_threads_option(*cmd);
  cmd->callback([a] { run_chat(*a); });
}

}  // namespace crossmoe::cli
