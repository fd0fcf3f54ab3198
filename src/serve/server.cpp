#include "runtime/model_files.hpp"
#include "serve/server.hpp"

#include <httplib.h>
#include <pthread.h>
#include <signal.h>

#include <cmath>
#include <ctime>

#include "tokenizer/chat_template.hpp"
#include "util/atomic_file.hpp"
#include "util/error.hpp"
#include "util/progress.hpp"

namespace crossmoe::serve {

extern const char kChatPage[];  // chat_page.html, embedded by src/CMakeLists.txt

namespace {

using Json = nlohmann::json;

// A request the server refuses: HTTP status and OpenAI's error fields.
struct HttpError {
  int status;
  std::string message, type, param, code;
  HttpError(int s, std::string m, std::string t = "invalid_request_error", std::string p = "", std::string c = "")
      : status(s), message(std::move(m)), type(std::move(t)), param(std::move(p)), code(std::move(c)) {}
};

void send_error(httplib::Response& res, const HttpError& e) {
  res.status = e.status;
  Json error = {{"message", e.message}, {"type", e.type}, {"param", nullptr}, {"code", nullptr}};
  if (!e.param.empty()) error["param"] = e.param;
  if (!e.code.empty()) error["code"] = e.code;
  res.set_content(Json{{"error", error}}.dump(-1, ' ', false, Json::error_handler_t::replace), "application/json");
}

HttpError bad_request(const std::string& message, const std::string& param = "") { return {400, message, "invalid_request_error", param}; }

// Optional typed fields of the request body; a field of the wrong type or range is a 400.
std::optional<double> number_field(const Json& body, const char* key, double lo, double hi) {
  if (!body.contains(key) || body[key].is_null()) return std::nullopt;
  const Json& v = body[key];
  if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < lo || v.get<double>() > hi)
    throw bad_request("'" + std::string(key) + "' must be a number in [" + Json(lo).dump() + ", " + Json(hi).dump() + "]",
                      key);
  return v.get<double>();
}
std::optional<int64_t> integer_field(const Json& body, const char* key, int64_t lo, int64_t hi) {
  if (!body.contains(key) || body[key].is_null()) return std::nullopt;
  const Json& v = body[key];
  if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)) ||
      v.get<int64_t>() < lo || v.get<int64_t>() > hi)
    throw bad_request("'" + std::string(key) + "' must be an integer in [" + std::to_string(lo) + ", " +
                          std::to_string(hi) + "]",
                      key);
  return v.get<int64_t>();
}
constexpr int kMaxTopLogprobs = 20;  // OpenAI's limit for chat

Json bytes_of(const std::string& text) {
  Json out = Json::array();
  for (unsigned char c : text) out.push_back(int(c));
  return out;
}

// Log-probabilities in OpenAI's shapes: chat's {"content": [...]} and the completions API's
// parallel lists; `offset` is where the first token's text starts in the completion.
Json chat_logprobs(const std::vector<TokenLogprob>& tokens) {
  Json content = Json::array();
  for (const TokenLogprob& t : tokens) {
    Json top = Json::array();
    for (const auto& [text, logprob] : t.top) top.push_back({{"token", text}, {"logprob", logprob}, {"bytes", bytes_of(text)}});
    content.push_back({{"token", t.token}, {"logprob", t.logprob}, {"bytes", bytes_of(t.token)}, {"top_logprobs", top}});
  }
  return {{"content", content}, {"refusal", nullptr}};
}
Json completion_logprobs(const std::vector<TokenLogprob>& tokens, size_t offset) {
  Json out = {{"tokens", Json::array()}, {"token_logprobs", Json::array()}, {"top_logprobs", Json::array()},
              {"text_offset", Json::array()}};
  for (const TokenLogprob& t : tokens) {
    // A map by text: of tokens that read the same, the most likely one.
    Json top = Json::object();
    for (const auto& [text, logprob] : t.top)
      if (!top.contains(text)) top[text] = logprob;
    out["tokens"].push_back(t.token);
    out["token_logprobs"].push_back(t.logprob);
    out["top_logprobs"].push_back(top);
    out["text_offset"].push_back(offset);
    offset += t.token.size();
  }
  return out;
}

bool bool_field(const Json& body, const char* key) {
  if (!body.contains(key) || body[key].is_null()) return false;
  if (!body[key].is_boolean()) throw bad_request("'" + std::string(key) + "' must be true or false", key);
  return body[key].get<bool>();
}

class Server {
 public:
  Server(const std::filesystem::path& dir, const ServerOptions& options)
      : options_(options), name_(std::filesystem::absolute(dir).lexically_normal().filename().string()),
        model_(dir, options.expert_cache), tokenizer_(load_tokenizer(dir)), decoder_(load_tokenizer(dir)),
        tokenizer_config_(model_tokenizer_config(dir).value_or(Json::object())),
        context_(options.context > 0 ? options.context : std::min(model_.config().max_position_embeddings, 8192)),
        sampling_defaults_(generation_defaults(dir)), engine_(model_, decoder_, engine_options(options, model_.config())) {
    if (name_.empty()) name_ = "model";
    require(context_ <= model_.config().max_position_embeddings,
            "--ctx " + std::to_string(context_) + " is more than the model's context of " +
                std::to_string(model_.config().max_position_embeddings) + " tokens");
    completion_stops_ = model_.config().eos_token_ids;
    chat_stops_ = completion_stops_;
    if (tokenizer_config_.contains("eos_token") && tokenizer_config_["eos_token"].is_string()) {
      const int eos = tokenizer_.token_to_id(tokenizer_config_["eos_token"].get<std::string>());
      if (eos >= 0) chat_stops_.push_back(eos);
    }
  }

  void routes(httplib::Server& http) {
    http.set_payload_max_length(options_.max_body_bytes);
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      // The page and /health hold nothing secret; the page sends the key the user types.
      if (options_.api_key.empty() || req.path == "/health" || req.path == "/")
        return httplib::Server::HandlerResponse::Unhandled;
      const std::string auth = req.get_header_value("Authorization");
      const std::string prefix = "Bearer ";
      if (auth.rfind(prefix, 0) == 0 && same_secret(auth.substr(prefix.size()), options_.api_key))
        return httplib::Server::HandlerResponse::Unhandled;
      send_error(res, {401, "invalid or missing API key (Authorization: Bearer KEY)", "invalid_request_error", "",
                       "invalid_api_key"});
      return httplib::Server::HandlerResponse::Handled;
    });
    http.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      const std::string message = res.status == 404   ? "no route " + req.method + " " + req.path
                                  : res.status == 413 ? "the request body is too large"
                                                      : "HTTP " + std::to_string(res.status);
      send_error(res, {res.status, message});
      return httplib::Server::HandlerResponse::Handled;
    }));
    http.Get("/", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(kChatPage, "text/html; charset=utf-8");
    });
    http.Get("/health", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(R"({"status":"ok"})", "application/json");
    });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(engine_.metrics(), "text/plain; version=0.0.4");
    });
    http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      const Json model = {{"id", name_}, {"object", "model"}, {"created", 0}, {"owned_by", "crossmoe"}};
      res.set_content(Json{{"object", "list"}, {"data", {model}}}.dump(), "application/json");
    });
    http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      handle(req, res, true);
    });
    http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) { handle(req, res, false); });
  }

 private:
  static Tokenizer load_tokenizer(const std::filesystem::path& dir) {
    return require_model_tokenizer(dir, "serve needs one");
  }

  static EngineOptions engine_options(const ServerOptions& o, const ModelConfig& c) {
    EngineOptions e = o.engine;
    const int64_t blocks = KvPool::blocks_for_bytes(c, e.block_size, o.kv_bytes);
    require(blocks >= 1, "--kv-memory holds no KV block of " + std::to_string(e.block_size) + " tokens (one needs " +
                             std::to_string(KvPool::bytes_per_block(c, e.block_size)) + " bytes)");
    e.blocks = int(std::min<int64_t>(blocks, INT32_MAX));
    return e;
  }

  // The request body as a generation request; throws HttpError.
  std::shared_ptr<Request> parse(const Json& body, bool chat) {
    auto r = std::make_shared<Request>();
    std::string text;
    if (chat) {
      if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty())
        throw bad_request("'messages' must be a non-empty array", "messages");
      if (!tokenizer_config_.contains("chat_template"))
        throw bad_request("the model has no chat template; use /v1/completions");
      ChatRequest chat_request;
      for (const Json& m : body["messages"]) {
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
          throw bad_request("each message must be an object with a string 'role'", "messages");
        nlohmann::ordered_json message = nlohmann::ordered_json::parse(m.dump());
        // Content as a list of parts: their text, joined (other parts are not supported).
        if (m.contains("content") && m["content"].is_array()) {
          std::string joined;
          for (const Json& part : m["content"]) {
            if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
              throw bad_request("message content parts must be {\"type\": \"text\", \"text\": ...}", "messages");
            joined += part["text"].get<std::string>();
          }
          message["content"] = joined;
        } else if (m.contains("content") && !m["content"].is_string() && !m["content"].is_null()) {
          throw bad_request("message 'content' must be a string or a list of text parts", "messages");
        }
        chat_request.messages.push_back(std::move(message));
      }
      try {
        text = apply_chat_template(tokenizer_config_, chat_request);
      } catch (const Error& e) {
        throw bad_request(std::string("the chat template cannot render these messages: ") + e.what(), "messages");
      }
    } else {
      if (!body.contains("prompt") || !body["prompt"].is_string()) throw bad_request("'prompt' must be a string", "prompt");
      text = body["prompt"].get<std::string>();
      if (text.empty()) throw bad_request("'prompt' is empty", "prompt");
    }
    {
      std::lock_guard lock(tokenizer_mutex_);
      try {
        // A completion's text as `crossmoe generate` encodes it (with its post-processor's special
        // tokens); a rendered chat holds its own.
        r->prompt = tokenizer_.encode(text, /*add_special_tokens=*/!chat);
      } catch (const Error& e) {
        throw bad_request(std::string("the prompt cannot be tokenized: ") + e.what());
      }
    }
    if (r->prompt.empty()) throw bad_request("the prompt is empty");
    if (!chat) r->text_context.assign(r->prompt.end() - std::min<std::ptrdiff_t>(std::ptrdiff_t(r->prompt.size()), 4), r->prompt.end());

    SamplingParams& s = r->sampling;
    s = sampling_defaults_;
    if (auto v = number_field(body, "temperature", 0, 2)) s.temperature = float(*v);
    if (auto v = number_field(body, "top_p", 0, 1)) {
      if (*v == 0) throw bad_request("'top_p' must be more than 0", "top_p");
      s.top_p = float(*v);
    }
    if (auto v = number_field(body, "presence_penalty", -2, 2)) s.presence_penalty = float(*v);
    if (auto v = number_field(body, "frequency_penalty", -2, 2)) s.frequency_penalty = float(*v);
    if (auto v = integer_field(body, "seed", INT64_MIN, INT64_MAX)) s.seed = uint64_t(*v);
    if (auto v = integer_field(body, "n", 1, 1)) (void)v;
    // Chat: logprobs true, top_logprobs N; completions: logprobs N (OpenAI's two spellings).
    if (chat) {
      const auto top = integer_field(body, "top_logprobs", 0, kMaxTopLogprobs);
      if (bool_field(body, "logprobs")) r->top_logprobs = int(top.value_or(0));
      else if (top) throw bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs");
    } else if (auto top = integer_field(body, "logprobs", 0, kMaxTopLogprobs)) {
      r->top_logprobs = int(*top);
    }
    if (body.contains("stop") && !body["stop"].is_null()) {
      const Json& stop = body["stop"];
      const bool ok = stop.is_string() || (stop.is_array() && stop.size() <= 4 &&
                                           std::all_of(stop.begin(), stop.end(), [](const Json& x) { return x.is_string(); }));
      if (!ok) throw bad_request("'stop' must be a string or an array of at most 4 strings", "stop");
      if (stop.is_string()) r->stop_strings.push_back(stop.get<std::string>());
      else for (const Json& x : stop) r->stop_strings.push_back(x.get<std::string>());
    }
    r->stop_tokens = chat ? chat_stops_ : completion_stops_;

    const int prompt = int(r->prompt.size());
    auto asked = integer_field(body, "max_completion_tokens", 1, INT32_MAX);
    if (!asked) asked = integer_field(body, "max_tokens", 1, INT32_MAX);
    if (prompt >= context_)
      throw HttpError{400, "the prompt has " + std::to_string(prompt) + " tokens; the context holds " +
                               std::to_string(context_) + " with room to generate",
                      "invalid_request_error", chat ? "messages" : "prompt", "context_length_exceeded"};
    if (asked && prompt + *asked > context_)
      throw HttpError{400, "the prompt (" + std::to_string(prompt) + " tokens) and max_tokens (" +
                               std::to_string(*asked) + ") exceed the context of " + std::to_string(context_) + " tokens",
                      "invalid_request_error", "max_tokens", "context_length_exceeded"};
    // Without max_tokens, as much as the cap, the context and the whole KV pool allow.
    const int pool_tokens = engine_.pool_blocks() * options_.engine.block_size;
    r->max_tokens = int(std::min<int64_t>(asked.value_or(INT32_MAX), options_.max_tokens_cap));
    r->max_tokens = std::min({r->max_tokens, context_ - prompt, asked ? INT32_MAX : pool_tokens - prompt + 1});
    if (r->max_tokens < 1 || engine_.blocks_for(prompt + r->max_tokens - 1) > engine_.pool_blocks())
      throw HttpError{400, "the prompt and max_tokens need more KV cache than the server has (--kv-memory)",
                      "invalid_request_error", "max_tokens", "context_length_exceeded"};
    r->deadline = std::chrono::steady_clock::now() +
                  std::chrono::milliseconds(int64_t(std::min(options_.timeout_seconds, 1e9) * 1000));
    return r;
  }

  void handle(const httplib::Request& req, httplib::Response& res, bool chat) {
    try {
      const Json body = Json::parse(req.body, nullptr, false);
      if (body.is_discarded()) throw bad_request("the body is not valid JSON");
      if (!body.is_object()) throw bad_request("the body must be a JSON object");
      const bool stream = bool_field(body, "stream");
      const bool include_usage = stream && body.contains("stream_options") && body["stream_options"].is_object() &&
                                 body["stream_options"].value("include_usage", false);
      std::shared_ptr<Request> r = parse(body, chat);
      if (!engine_.submit(r)) {
        res.set_header("Retry-After", "1");
        throw HttpError{503, "the server is busy: too many requests are waiting; retry later", "server_overloaded"};
      }
      const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(++ids_);
      const Json head = {{"id", id},
                         {"object", chat ? (stream ? "chat.completion.chunk" : "chat.completion") : "text_completion"},
                         {"created", int64_t(std::time(nullptr))},
                         {"model", name_}};
      if (stream) return respond_streaming(res, r, head, chat, include_usage);
      std::string text;
      std::vector<TokenLogprob> logprobs;
      for (;;) {
        const std::optional<Event> e = r->next(std::chrono::milliseconds(100));
        if (!e) continue;
        text += e->text;
        logprobs.insert(logprobs.end(), e->logprobs.begin(), e->logprobs.end());
        if (!e->final) continue;
        if (!e->error.empty()) throw HttpError{504, e->error, "timeout"};
        Json out = head;
        Json choice = {{"index", 0}, {"finish_reason", e->finish_reason}, {"logprobs", nullptr}};
        if (r->top_logprobs >= 0) choice["logprobs"] = chat ? chat_logprobs(logprobs) : completion_logprobs(logprobs, 0);
        if (chat) choice["message"] = {{"role", "assistant"}, {"content", text}};
        else choice["text"] = text;
        out["choices"] = {choice};
        out["usage"] = usage(*e);
        res.set_content(out.dump(-1, ' ', false, Json::error_handler_t::replace), "application/json");
        return;
      }
    } catch (const HttpError& e) {
      send_error(res, e);
    }
  }

  static Json usage(const Event& e) {
    return {{"prompt_tokens", e.prompt_tokens},
            {"completion_tokens", e.completion_tokens},
            {"total_tokens", e.prompt_tokens + e.completion_tokens}};
  }

  // Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`. A client that goes
  // away cancels the request, which frees its KV blocks at the next step.
  void respond_streaming(httplib::Response& res, std::shared_ptr<Request> r, Json head, bool chat, bool include_usage) {
    auto first = std::make_shared<bool>(true);
    auto offset = std::make_shared<size_t>(0);  // of the next token's text, for the completions API's text_offset
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [r, head, chat, include_usage, first, offset](size_t, httplib::DataSink& sink) {
          const auto send = [&](const Json& j) {
            const std::string line = "data: " + j.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n\n";
            return sink.write(line.data(), line.size());
          };
          const auto chunk = [&](const std::string& text, const Json& finish, const std::vector<TokenLogprob>& logprobs) {
            Json out = head;
            Json choice = {{"index", 0}, {"finish_reason", finish}, {"logprobs", nullptr}};
            if (!logprobs.empty()) {
              choice["logprobs"] = chat ? chat_logprobs(logprobs) : completion_logprobs(logprobs, *offset);
              for (const TokenLogprob& t : logprobs) *offset += t.token.size();
            }
            if (chat) {
              choice["delta"] = finish.is_null() ? Json{{"content", text}} : Json::object();
              if (*first) choice["delta"]["role"] = "assistant";
            } else {
              choice["text"] = text;
            }
            *first = false;
            out["choices"] = {choice};
            if (include_usage) out["usage"] = nullptr;
            return send(out);
          };
          const std::optional<Event> e = r->next(std::chrono::milliseconds(100));
          if (!e) {
            if (sink.is_writable()) return true;
            r->cancelled = true;
            return false;
          }
          bool ok = true;
          if (!e->text.empty() || !e->logprobs.empty() || (*first && !e->final)) ok = chunk(e->text, nullptr, e->logprobs);
          if (ok && e->final) {
            if (!e->error.empty()) {
              ok = send({{"error", {{"message", e->error}, {"type", "timeout"}, {"param", nullptr}, {"code", nullptr}}}});
            } else {
              ok = chunk("", e->finish_reason, {});
              if (ok && include_usage) {
                Json out = head;
                out["choices"] = Json::array();
                out["usage"] = usage(*e);
                ok = send(out);
              }
            }
            static const std::string done = "data: [DONE]\n\n";
            if (ok) ok = sink.write(done.data(), done.size());
            if (ok) sink.done();
          }
          if (!ok) r->cancelled = true;
          return ok;
        },
        [r](bool success) {
          if (!success) r->cancelled = true;
        });
  }

  ServerOptions options_;
  std::string name_;
  Model model_;
  Tokenizer tokenizer_;  // encodes prompts (under tokenizer_mutex_)
  Tokenizer decoder_;    // the engine's, for streamed text
  std::mutex tokenizer_mutex_;
  Json tokenizer_config_;
  int context_;
  SamplingParams sampling_defaults_;
  std::vector<int> completion_stops_, chat_stops_;
  Engine engine_;
  std::atomic<uint64_t> ids_{0};
};

}  // namespace

bool same_secret(const std::string& given, const std::string& secret) {
  unsigned char diff = given.size() != secret.size();
  for (size_t i = 0; i < given.size(); ++i)
    diff |= static_cast<unsigned char>(given[i] ^ (secret.empty() ? 0 : secret[i % secret.size()]));
  return diff == 0;
}

void run_server(const std::filesystem::path& model_dir, ServerOptions options) {
  // SIGINT and SIGTERM go to one thread that stops the server; every other thread blocks them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  Server server(model_dir, options);
  httplib::Server http;
  const int threads = options.engine.max_queue + options.engine.max_running + 8;
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server.routes(http);
  int port = options.port;
  if (port == 0) port = http.bind_to_any_port(options.host);
  else if (!http.bind_to_port(options.host, port)) port = -1;
  require(port > 0, "cannot listen on " + options.host + ":" + std::to_string(options.port) +
                        " (--host, --port: the address may be in use or not this machine's)");
  if (!options.port_file.empty()) write_file_atomically(options.port_file, [port](std::ostream& out) { out << port << "\n"; });
  std::thread([&http, signals] {
    int signal = 0;
    sigwait(&signals, &signal);
    http.stop();
  }).detach();
  log_info("serving on http://" + options.host + ":" + std::to_string(port) + " (Ctrl-C stops)");
  http.listen_after_bind();
}

}  // namespace crossmoe::serve
