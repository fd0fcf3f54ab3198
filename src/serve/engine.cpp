#include "serve/engine.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "runtime/stop_strings.hpp"
#include "util/error.hpp"
#include "util/progress.hpp"

namespace crossmoe::serve {

using Clock = std::chrono::steady_clock;

std::optional<Event> Request::next(std::chrono::milliseconds wait) {
  std::unique_lock lock(mutex);
  if (!ready.wait_for(lock, wait, [&] { return !events.empty(); })) return std::nullopt;
  Event e = std::move(events.front());
  events.pop_front();
  return e;
}

void Request::push(Event e) {
  {
    std::lock_guard lock(mutex);
    events.push_back(std::move(e));
  }
  ready.notify_all();
}

void Histogram::observe(double v) {
  ++counts[std::upper_bound(bounds.begin(), bounds.end(), v, [](double x, double b) { return x <= b; }) -
           bounds.begin()];
  sum += v;
  ++count;
}

std::string Histogram::text(const std::string& name, const std::string& help) const {
  std::string out = "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  uint64_t cumulative = 0;
  char line[160];
  for (size_t i = 0; i <= bounds.size(); ++i) {
    cumulative += counts[i];
    if (i < bounds.size()) std::snprintf(line, sizeof line, "%s_bucket{le=\"%g\"} %llu\n", name.c_str(), bounds[i],
                                         (unsigned long long)cumulative);
    else std::snprintf(line, sizeof line, "%s_bucket{le=\"+Inf\"} %llu\n", name.c_str(), (unsigned long long)cumulative);
    out += line;
  }
  std::snprintf(line, sizeof line, "%s_sum %.6f\n%s_count %llu\n", name.c_str(), sum, name.c_str(),
                (unsigned long long)count);
  return out + line;
}

// A request the scheduler holds: its sequence in the session and its decoding state.
struct Engine::Active {
  std::shared_ptr<Request> r;
  int sequence = -1;
  // What runs before decoding: the prompt, or after a preemption the prompt and every token
  // generated so far (run again, mostly from cached blocks, to give the next token's logits).
  std::vector<int> input;
  size_t prefilled = 0;      // tokens of `input` in the cache
  bool counted = false;      // its prompt is in the metrics (a preempted request is not counted twice)
  std::vector<int> history;  // prompt and generated tokens, for the penalties
  std::vector<float> logits;
  Sampler sampler;
  DecodeStream text;
  StopStrings stops;
  int generated = 0;
  int next_token = -1;  // sampled, to be run by the next step
  bool done = false;
  Clock::time_point submitted, last_token;
  Active(std::shared_ptr<Request> request, const Tokenizer& tokenizer, int vocab)
      : r(std::move(request)), input(r->prompt), history(r->prompt), logits(vocab), sampler(r->sampling), text(tokenizer, true, r->text_context),
        stops(r->stop_strings), submitted(Clock::now()) {}
};

Engine::Engine(const Model& model, const Tokenizer& tokenizer, const EngineOptions& options)
    : model_(model), tokenizer_(tokenizer), options_(options),
      session_(model, options.block_size, options.blocks, std::max(options.chunk, options.max_running)),
      ttft_({0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
      itl_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}) {
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

bool Engine::submit(const std::shared_ptr<Request>& request) {
  {
    std::lock_guard lock(mutex_);
    if (int(incoming_.size()) + queued_count_ >= options_.max_queue) {
      ++rejected_;
      return false;
    }
    ++requests_;
    incoming_.push_back(request);
  }
  wake_.notify_all();
  return true;
}

bool Engine::admit(Active& a) {
  a.sequence = session_.open();
  a.prefilled = size_t(session_.reuse_prefix(a.sequence, a.input));
  // Room for the input; decoding takes blocks as it goes (loop() preempts when there are none).
  if (!session_.reserve(a.sequence, int(a.input.size() - a.prefilled))) {
    session_.close(a.sequence);
    a.sequence = -1;
    return false;
  }
  std::lock_guard lock(mutex_);
  reused_tokens_ += a.prefilled;
  if (!a.counted) prompt_tokens_ += a.r->prompt.size();
  a.counted = true;
  return true;
}

void Engine::preempt(std::unique_ptr<Active> a) {
  session_.close(a->sequence);  // its full blocks stay cached for the prefix reuse on return
  a->sequence = -1;
  a->input = a->history;
  a->prefilled = 0;
  waiting_.insert(waiting_.begin(), std::move(a));
  std::lock_guard lock(mutex_);
  ++preemptions_;
}

void Engine::finish(Active& a, const std::string& reason, const std::string& error) {
  if (!a.done) {
    Event e;
    e.text = reason == "length" ? a.stops.flush() : "";
    e.final = true;
    e.finish_reason = reason;
    e.error = error;
    e.prompt_tokens = int(a.r->prompt.size());
    e.completion_tokens = a.generated;
    a.r->push(std::move(e));
  }
  a.done = true;
  if (a.sequence >= 0) session_.close(a.sequence);
  a.sequence = -1;
}

void Engine::emit_token(Active& a, int token) {
  const auto now = Clock::now();
  {
    std::lock_guard lock(mutex_);
    ++completion_tokens_;
    if (a.generated == 0) ttft_.observe(std::chrono::duration<double>(now - a.submitted).count());
    else itl_.observe(std::chrono::duration<double>(now - a.last_token).count());
  }
  a.last_token = now;
  ++a.generated;
  a.history.push_back(token);
  if (std::find(a.r->stop_tokens.begin(), a.r->stop_tokens.end(), token) != a.r->stop_tokens.end())
    return finish(a, "stop");
  Event e;
  e.text = a.stops.push(a.text.push(token));
  if (a.r->top_logprobs >= 0) e.logprobs.push_back(logprob_of(a.logits.data(), token, a.r->top_logprobs));
  if (!e.text.empty() || !e.logprobs.empty()) a.r->push(std::move(e));
  if (a.stops.stopped()) return finish(a, "stop");
  if (a.generated >= a.r->max_tokens) return finish(a, "length");
  a.next_token = token;
}

TokenLogprob Engine::logprob_of(const float* logits, int token, int top) const {
  const int vocab = model_.config().vocab_size;
  const float max = *std::max_element(logits, logits + vocab);
  double sum = 0;
  for (int i = 0; i < vocab; ++i) sum += std::exp(double(logits[i]) - max);
  const double log_z = max + std::log(sum);
  TokenLogprob out{tokenizer_.decode({token}), double(logits[token]) - log_z, {}};
  std::vector<int> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  top = std::min(top, vocab);
  // Ties go to the lower id, so the list does not depend on the sort.
  std::partial_sort(order.begin(), order.begin() + top, order.end(),
                    [&](int x, int y) { return logits[x] > logits[y] || (logits[x] == logits[y] && x < y); });
  for (int i = 0; i < top; ++i) out.top.push_back({tokenizer_.decode({order[i]}), double(logits[order[i]]) - log_z});
  return out;
}

void Engine::loop() {
  const int vocab = model_.config().vocab_size;
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      // Idle, wake now and then to drop cancelled waiting requests. A waiting request with
      // nothing running is admitted at once (every request fits the empty pool); waiting for
      // the timeout there held the one-at-a-time server idle 50 ms between requests.
      const bool idle = running_.empty() && waiting_.empty();
      wake_.wait_for(lock, std::chrono::milliseconds(idle ? 50 : 0),
                     [&] { return stop_ || !incoming_.empty() || !running_.empty() || !waiting_.empty(); });
      if (stop_) break;
      while (!incoming_.empty()) {
        waiting_.push_back(std::make_unique<Active>(std::move(incoming_.front()), tokenizer_, vocab));
        incoming_.pop_front();
      }
    }
    // Requests whose client left or whose time ran out give their blocks back now.
    const auto now = Clock::now();
    for (auto* list : {&waiting_, &running_})
      for (auto& a : *list) {
        if (a->r->cancelled) finish(*a, "cancelled");
        else if (now > a->r->deadline) finish(*a, "", "the request ran past its time limit");
      }
    const auto drop_done = [](std::vector<std::unique_ptr<Active>>& list) {
      list.erase(std::remove_if(list.begin(), list.end(), [](const auto& a) { return a->done; }), list.end());
    };
    drop_done(waiting_);
    drop_done(running_);
    // First come, first served: a request that does not fit holds back those behind it.
    while (!waiting_.empty() && int(running_.size()) < options_.max_running && admit(*waiting_.front())) {
      running_.push_back(std::move(waiting_.front()));
      waiting_.erase(waiting_.begin());
    }
    // A decoding request needs room for one more token. When the pool has none, the request
    // admitted last gives its blocks back and waits at the head of the queue (it runs again
    // from its tokens so far); a request always fits the pool alone, so one of them advances.
    for (size_t i = 0; i < running_.size(); ++i) {
      Active& a = *running_[i];
      if (a.prefilled < a.input.size()) continue;
      while (!session_.reserve(a.sequence, 1)) {
        if (running_.size() == 1) {
          finish(a, "", "the KV cache pool has no room for this request");
          break;
        }
        const bool self = &a == running_.back().get();
        preempt(std::move(running_.back()));
        running_.pop_back();
        if (self) break;
      }
    }
    drop_done(running_);
    // Every decoding request advances one token; prefill chunks fill the rest of the step.
    std::vector<StepPiece> pieces;
    std::vector<Active*> owners;
    int budget = session_.chunk();
    for (auto& a : running_)
      if (a->prefilled == a->input.size()) {
        pieces.push_back({a->sequence, &a->next_token, 1, a->logits.data()});
        owners.push_back(a.get());
        --budget;
      }
    for (auto& a : running_)
      if (a->prefilled < a->input.size() && budget > 0) {
        const int n = std::min(budget, int(a->input.size() - a->prefilled));
        const bool last = a->prefilled + n == a->input.size();
        pieces.push_back({a->sequence, &a->input[a->prefilled], n, last ? a->logits.data() : nullptr});
        owners.push_back(a.get());
        budget -= n;
      }
    if (!pieces.empty()) {
      try {
        session_.step(pieces);
        for (size_t p = 0; p < pieces.size(); ++p) {
          Active& a = *owners[p];
          if (a.prefilled < a.input.size()) a.prefilled += pieces[p].count;
          if (pieces[p].logits) emit_token(a, a.sampler.sample(a.logits.data(), vocab, a.history));
        }
      } catch (const std::exception& e) {
        log_info(std::string("serve: a step failed: ") + e.what());
        for (Active* a : owners) finish(*a, "", e.what());
      }
      drop_done(running_);
    }
    std::lock_guard lock(mutex_);
    running_count_ = int(running_.size());
    queued_count_ = int(waiting_.size());
    blocks_in_use_ = session_.pool().in_use();
  }
  for (auto* list : {&waiting_, &running_})
    for (auto& a : *list) finish(*a, "", "the server is shutting down");
}

std::string Engine::metrics() {
  std::lock_guard lock(mutex_);
  std::string out;
  // Built as a string, not in a fixed buffer: the longest help text left a 200-byte line room for
  // only 5 digits of its value.
  const auto metric = [&](const char* name, const char* type, const char* help, double value) {
    char digits[32];  // the shortest text that reads back as the same double
    const auto end = std::to_chars(digits, digits + sizeof digits, value).ptr;
    out.append("# HELP ").append(name).append(" ").append(help).append("\n# TYPE ").append(name).append(" ");
    out.append(type).append("\n").append(name).append(" ").append(digits, end).append("\n");
  };
  metric("crossmoe_requests_total", "counter", "Generation requests accepted", double(requests_));
  metric("crossmoe_requests_rejected_total", "counter", "Requests refused because the queue was full", double(rejected_));
  metric("crossmoe_prompt_tokens_total", "counter", "Prompt tokens of admitted requests", double(prompt_tokens_));
  metric("crossmoe_prompt_tokens_reused_total", "counter", "Prompt tokens taken from cached KV blocks",
         double(reused_tokens_));
  metric("crossmoe_preemptions_total", "counter",
         "Running requests that gave their KV blocks back when the pool ran out, to run again later", double(preemptions_));
  metric("crossmoe_generation_tokens_total", "counter", "Tokens generated", double(completion_tokens_));
  metric("crossmoe_running_sequences", "gauge", "Sequences in the batch", running_count_);
  metric("crossmoe_queued_sequences", "gauge", "Requests waiting for KV blocks or a batch slot",
         queued_count_ + double(incoming_.size()));
  metric("crossmoe_kv_blocks_in_use", "gauge", "KV cache blocks held by sequences", blocks_in_use_);
  metric("crossmoe_kv_blocks_total", "gauge", "KV cache blocks in the pool", options_.blocks);
  out += ttft_.text("crossmoe_time_to_first_token_seconds", "From the request's arrival to its first token");
  out += itl_.text("crossmoe_inter_token_latency_seconds", "Between consecutive tokens of one request");
  return out;
}

}  // namespace crossmoe::serve
