#include "rl/rollout.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "util/error.hpp"
#include "util/progress.hpp"

namespace crossmoe::rl {

RolloutEngine::RolloutEngine(const train::TorchModel& model, int sequences, int capacity,
                             torch::ScalarType compute_dtype, int max_batch_tokens)
    : model_(model), compute_(compute_dtype), max_batch_tokens_(max_batch_tokens),
      decode_experts_(train::GroupedExperts::Auto),
      decode_steps_(model.device().is_cuda() ? DecodeSteps::Bucketed : DecodeSteps::Ragged),
      cache_(model.new_cache(sequences, capacity + 1, compute_dtype)), tokens_(size_t(sequences)) {
  require(sequences > 0 && capacity > 1, "rollout: needs at least one sequence of two tokens");
  graphs_ = std::make_unique<DecodeGraphs>(model, cache_, compute_dtype);
}

torch::Tensor RolloutEngine::decode(const std::vector<int>& rows, const std::vector<int>& tokens) {
  if (decode_steps_ == DecodeSteps::Bucketed) {
    ++stats_.graph_steps;
    return graphs_->step(rows, tokens);
  }
  std::vector<std::vector<int>> one_each;
  for (const int t : tokens) one_each.push_back({t});
  return append(rows, one_each);
}

void RolloutEngine::reset() {
  std::fill(cache_.lengths.begin(), cache_.lengths.end(), 0);
  for (auto& t : tokens_) t.clear();
}

torch::Tensor RolloutEngine::append(const std::vector<int>& rows, const std::vector<std::vector<int>>& tokens) {
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  train::ForwardOptions fo;
  fo.compute_dtype = compute_;
  std::vector<torch::Tensor> logits;
  // Rows in groups whose padded size stays within max_batch_tokens (a long prefill, alone).
  for (size_t first = 0; first < rows.size();) {
    size_t last = first;
    int64_t longest = 0;
    while (last < rows.size()) {
      const int64_t next = std::max<int64_t>(longest, int64_t(tokens[last].size()));
      if (last > first && next * int64_t(last - first + 1) > max_batch_tokens_) break;
      longest = next;
      ++last;
    }
    const int64_t R = int64_t(last - first);
    fo.grouped_experts = longest == 1 ? decode_experts_ : train::GroupedExperts::Auto;
    torch::Tensor batch = torch::zeros({R, longest}, i64);
    int64_t* p = batch.data_ptr<int64_t>();
    std::vector<int64_t> counts, cache_rows;
    for (size_t i = first; i < last; ++i) {
      std::copy(tokens[i].begin(), tokens[i].end(), p + int64_t(i - first) * longest);
      counts.push_back(int64_t(tokens[i].size()));
      cache_rows.push_back(rows[i]);
    }
    const train::ForwardResult r =
        model_.forward_cached(batch.to(model_.device()), counts, cache_rows, cache_, fo, /*last_only=*/true);
    logits.push_back(r.logits.squeeze(1));
    first = last;
  }
  return logits.size() == 1 ? logits[0] : torch::cat(logits);
}

int sample_candidate(const float* sorted, int count, const SamplingOptions& s, std::mt19937_64& rng) {
  if (s.temperature <= 0) return 0;
  std::vector<double> p(static_cast<size_t>(count));
  double total = 0;
  for (int i = 0; i < count; ++i) total += p[size_t(i)] = std::exp((double(sorted[i]) - sorted[0]) / s.temperature);
  // top-p: keep the most likely tokens until their mass reaches top_p (at least one).
  int keep = count;
  if (s.top_p < 1.0) {
    double mass = 0;
    for (int i = 0; i < count; ++i) {
      mass += p[size_t(i)] / total;
      if (mass >= s.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0;
  for (int i = 0; i < keep; ++i) kept += p[size_t(i)];
  double u = std::uniform_real_distribution<double>(0.0, kept)(rng);
  for (int i = 0; i < keep; ++i) {
    u -= p[size_t(i)];
    if (u < 0) return i;
  }
  return keep - 1;
}

std::vector<Generation> RolloutEngine::generate(const std::vector<GenerationRequest>& requests,
                                                const std::vector<int>& stop_tokens, const SamplingOptions& sampling,
                                                std::mt19937_64& rng) {
  torch::NoGradGuard no_grad;
  Stopwatch watch;
  std::vector<Generation> out(requests.size());
  if (requests.empty()) return out;
  std::vector<int> rows;
  std::vector<std::vector<int>> first_tokens;
  for (const auto& r : requests) {
    require(r.sequence >= 0 && r.sequence < sequences(), "rollout: no sequence " + std::to_string(r.sequence));
    require(!r.append.empty() && r.max_new_tokens >= 1, "rollout: a request needs tokens to append and room to answer");
    require(int(r.append.size()) + r.max_new_tokens <= free_space(r.sequence),
            "rollout: sequence " + std::to_string(r.sequence) + " has no room for the request");
    require(std::find(rows.begin(), rows.end(), r.sequence) == rows.end(), "rollout: a sequence is requested twice");
    rows.push_back(r.sequence);
    // The previous answer's last token is in the sequence but not yet in the cache: feed it first.
    std::vector<int>& seq = tokens_[size_t(r.sequence)];
    std::vector<int> feed(seq.begin() + cache_.lengths[size_t(r.sequence)], seq.end());
    feed.insert(feed.end(), r.append.begin(), r.append.end());
    seq.insert(seq.end(), r.append.begin(), r.append.end());
    first_tokens.push_back(std::move(feed));
    stats_.prefill_tokens += int64_t(first_tokens.back().size());
  }
  const int vocab = int(model_.config().vocab_size);
  const int k = sampling.temperature <= 0 ? 1 : sampling.top_k > 0 ? std::min(sampling.top_k, vocab) : vocab;
  std::vector<size_t> active(requests.size());
  std::iota(active.begin(), active.end(), 0);
  torch::Tensor logits = append(rows, first_tokens);
  bool prefill = true;
  while (!active.empty()) {
    // Candidates and the log-normaliser on the device; the draw on the host (seeded, the same on
    // every device).
    const auto top = logits.topk(k, -1);
    const torch::Tensor values = std::get<0>(top).to(torch::kCPU, torch::kFloat32).contiguous();
    const torch::Tensor ids = std::get<1>(top).to(torch::kCPU, torch::kInt64).contiguous();
    const torch::Tensor lse = logits.logsumexp(-1).to(torch::kCPU, torch::kFloat32).contiguous();
    // The copies to the host waited for the step: its time is measured.
    if (prefill) stats_.prefill_seconds += watch.seconds();
    prefill = false;
    std::vector<size_t> still;
    std::vector<int> next_rows, next_tokens;
    for (size_t a = 0; a < active.size(); ++a) {
      const size_t i = active[a];
      const float* v = values.data_ptr<float>() + int64_t(a) * k;
      const int pick = sample_candidate(v, k, sampling, rng);
      const int token = int(ids.data_ptr<int64_t>()[int64_t(a) * k + pick]);
      Generation& g = out[i];
      g.tokens.push_back(token);
      g.log_probs.push_back(v[pick] - lse.data_ptr<float>()[a]);
      ++stats_.generated_tokens;
      g.stopped = std::find(stop_tokens.begin(), stop_tokens.end(), token) != stop_tokens.end();
      // The last token joins the sequence now and the cache with the next request.
      tokens_[size_t(requests[i].sequence)].push_back(token);
      if (g.stopped || int(g.tokens.size()) >= requests[i].max_new_tokens) continue;
      still.push_back(i);
      next_rows.push_back(requests[i].sequence);
      next_tokens.push_back(token);
    }
    active = std::move(still);
    if (active.empty()) break;
    logits = decode(next_rows, next_tokens);
    ++stats_.decode_steps;
    stats_.decode_rows += int64_t(next_rows.size());
  }
  stats_.seconds += watch.seconds();
  return out;
}

}  // namespace crossmoe::rl
