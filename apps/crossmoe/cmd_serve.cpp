// crossmoe serve MODEL: the OpenAI-compatible server (src/serve).
#include <memory>

#include "commands.hpp"
#include "memory_budget_options.hpp"
#include "serve/server.hpp"

namespace crossmoe::cli {

void add_serve(CLI::App& app) {
  auto a = std::make_shared<serve::ServerOptions>();
  auto model = std::make_shared<std::string>();
  auto kv_mib = std::make_shared<int>(512);
  auto body_kib = std::make_shared<int>(1024);
  auto memory = std::make_shared<MemoryBudgetArgs>();
  CLI::App* cmd = app.add_subcommand(
      "serve",
      "Serve the model over HTTP with OpenAI's API (POST /v1/chat/completions, /v1/completions; GET /v1/models, "
      "/health, /metrics), decoding concurrent requests together");
  cmd->add_option("model", *model, "Model directory (with tokenizer.json)")->required();
  cmd->add_option("--host", a->host, "Address to listen on (another than loopback exposes the server)")
      ->capture_default_str();
  cmd->add_option("--port", a->port, "Port; 0 picks a free one (see --port-file)")
      ->capture_default_str()
      ->check(whole_number(0, 65535));
  cmd->add_option("--port-file", a->port_file, "Write the port here once listening");
  cmd->add_option("--api-key", a->api_key,
                  "Require 'Authorization: Bearer KEY' on every route but /health (default: none)");
  cmd->add_option("--ctx", a->context, "Tokens per request, prompt and reply (default: the model's, at most 8192)")
      ->check(positive());
  cmd->add_option("--kv-memory", *kv_mib, "MiB of KV cache shared by all requests; requests wait when it is full")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--block-size", a->engine.block_size, "Tokens per KV cache block (prefix reuse is per block)")
      ->capture_default_str()
      ->check(whole_number(1, 4096));
  cmd->add_option("--max-batch", a->engine.max_running, "Requests decoded together at most")
      ->capture_default_str()
      ->check(whole_number(1, 4096));
  cmd->add_option("--max-queue", a->engine.max_queue, "Requests waiting at most; more get 503 with Retry-After")
      ->capture_default_str()
      ->check(whole_number(0, 100000));
  cmd->add_option("--max-tokens-cap", a->max_tokens_cap, "The most tokens one request may generate")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--max-body", *body_kib, "Largest request body in KiB (413 beyond)")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--timeout", a->timeout_seconds, "Seconds a request may take, queueing included")
      ->capture_default_str()
      ->check(positive_real());
  memory->add_to(*cmd);
  add_threads_option(*cmd);
  cmd->callback([a, model, kv_mib, body_kib, memory] {
    a->kv_bytes = int64_t(*kv_mib) << 20;
    a->expert_cache = memory->resolve();
    a->max_body_bytes = size_t(*body_kib) << 10;
    serve::run_server(*model, *a);
  });
}

}  // namespace crossmoe::cli
