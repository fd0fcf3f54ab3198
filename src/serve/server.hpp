#pragma once
// crossmoe serve: an OpenAI-compatible HTTP server (cpp-httplib) in front of the batching engine.
// POST /v1/chat/completions and /v1/completions (streamed as server-sent events or not),
// GET /v1/models, /health, /metrics (Prometheus text) and a chat page at /. Errors are OpenAI's
// error JSON.
#include <filesystem>
#include <string>

#include "runtime/expert_cache.hpp"
#include "serve/engine.hpp"

namespace crossmoe::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;             // 0: any free port
  std::string port_file;       // written with the port once bound
  std::string api_key;         // empty: no key needed
  size_t max_body_bytes = size_t(1) << 20;
  int max_tokens_cap = 4096;   // the most tokens one request may generate
  int context = 0;             // tokens per sequence; 0: the model's, at most 8192
  double timeout_seconds = 600;
  int64_t kv_bytes = int64_t(512) << 20;
  EngineOptions engine;        // blocks are derived from kv_bytes
  ExpertCacheOptions expert_cache;  // --memory-budget: routed experts read on demand
};

// Serves until SIGINT or SIGTERM.
void run_server(const std::filesystem::path& model_dir, ServerOptions options);

// Equal strings, in time that depends on the length of `given` only.
bool same_secret(const std::string& given, const std::string& secret);

}  // namespace crossmoe::serve
