#pragma once
// Continuous batching for the server: HTTP threads submit requests; one scheduler thread owns the
// BatchSession and, step after step, admits waiting requests while the KV pool has room for their
// prompts, runs one token of every decoding request together with prefill chunks of new ones,
// samples, and streams text back through each request's channel. Decoding takes KV blocks as it
// goes; when the pool runs out, the request admitted last is preempted: its blocks go back, and it
// waits at the head of the queue to run its tokens so far again (mostly from the prefix cache)
// and go on where it stopped. Cancelled (disconnected) and timed-out requests are dropped between
// steps and their blocks freed at once.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "runtime/forward.hpp"
#include "runtime/sampler.hpp"
#include "tokenizer/tokenizer.hpp"

namespace crossmoe::serve {

// A generated token's log-probability under the model (the log-softmax of its logits, before
// temperature, penalties or top-p), with the most likely tokens at that step.
struct TokenLogprob {
  std::string token;  // the token's own text (bytes; a piece of a UTF-8 character is possible)
  double logprob = 0;
  std::vector<std::pair<std::string, double>> top;  // most likely first
};

// What a request streams back: text pieces, then one final event.
struct Event {
  std::string text;
  std::vector<TokenLogprob> logprobs;  // of the tokens generated since the last event, when asked
  bool final = false;
  std::string finish_reason;  // on the final event: stop, length, or empty with `error`
  std::string error;          // on the final event when the request failed (timeout)
  int prompt_tokens = 0, completion_tokens = 0;
};

struct Request {
  std::vector<int> prompt;
  int max_tokens = 0;
  SamplingParams sampling;
  std::vector<int> stop_tokens;
  std::vector<std::string> stop_strings;
  int top_logprobs = -1;  // -1: no log-probabilities; N >= 0: each token's and its N most likely alternatives
  // Ids whose text the generated text continues (a completion's prompt end; empty for a chat
  // reply): DecodeStream's context, so that a SentencePiece tokenizer keeps the first word's space.
  std::vector<int> text_context;
  std::chrono::steady_clock::time_point deadline;

  // The channel: the scheduler pushes, the HTTP thread pops.
  std::mutex mutex;
  std::condition_variable ready;
  std::deque<Event> events;
  std::atomic<bool> cancelled{false};
  // Waits up to `wait` for the next event.
  std::optional<Event> next(std::chrono::milliseconds wait);
  void push(Event e);
};

// Prometheus histogram with fixed buckets (seconds).
struct Histogram {
  std::vector<double> bounds;
  std::vector<uint64_t> counts;  // per bucket, not cumulative; one more for +Inf
  double sum = 0;
  uint64_t count = 0;
  explicit Histogram(std::vector<double> b) : bounds(std::move(b)), counts(bounds.size() + 1, 0) {}
  void observe(double v);
  std::string text(const std::string& name, const std::string& help) const;
};

struct EngineOptions {
  int block_size = 16;
  int blocks = 0;          // KV pool size
  int chunk = 128;         // tokens per step
  int max_running = 32;    // sequences decoding at once
  int max_queue = 64;      // waiting requests before new ones are refused
};

class Engine {
 public:
  Engine(const Model& model, const Tokenizer& tokenizer, const EngineOptions& options);
  ~Engine();
  // Queues a request; false when the queue is full (the caller answers 503).
  bool submit(const std::shared_ptr<Request>& request);
  // Blocks the whole pool holds, so a request needing more can never run.
  int pool_blocks() const { return options_.blocks; }
  int blocks_for(int tokens) const { return (tokens + options_.block_size - 1) / options_.block_size; }
  std::string metrics();  // Prometheus text

 private:
  struct Active;
  void loop();
  bool admit(Active& a);
  void preempt(std::unique_ptr<Active> a);
  void finish(Active& a, const std::string& reason, const std::string& error = "");
  void emit_token(Active& a, int token);
  TokenLogprob logprob_of(const float* logits, int token, int top) const;

  const Model& model_;
  const Tokenizer& tokenizer_;
  EngineOptions options_;
  BatchSession session_;
  std::mutex mutex_;  // guards incoming_, stop_ and the metrics below
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Request>> incoming_;
  bool stop_ = false;
  std::vector<std::unique_ptr<Active>> waiting_, running_;  // the scheduler thread's own
  // Metrics.
  uint64_t requests_ = 0, rejected_ = 0, prompt_tokens_ = 0, completion_tokens_ = 0, reused_tokens_ = 0,
           preemptions_ = 0;
  int running_count_ = 0, queued_count_ = 0, blocks_in_use_ = 0;
  Histogram ttft_, itl_;
  std::thread thread_;
};

}  // namespace crossmoe::serve
