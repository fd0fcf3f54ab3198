#include "runtime/forward.hpp"

#include <algorithm>
#include <cmath>

#include "kernels/thread_pool.hpp"
#include "util/error.hpp"

namespace crossmoe {

namespace k = kernels;

InferenceSession::InferenceSession(const Model& model, int context_length, int chunk)
    : model_(model), c_(model.config()), context_(context_length), chunk_(std::max(1, chunk)),
      rope_(c_.rope, c_.head_dim, c_.max_position_embeddings) {
  require(context_length > 0, "context length must be positive");
  const size_t kvw = size_t(c_.num_kv_heads) * c_.head_dim;
  k_cache_.resize(size_t(c_.num_layers) * context_length * kvw);
  v_cache_.resize(k_cache_.size());
  const size_t T = chunk_, d = c_.hidden_size, qw = size_t(c_.num_heads) * c_.head_dim;
  // FFN scratch: a dense FFN, or K routed experts per token plus the shared experts.
  const size_t ffn_width = std::max<size_t>(
      c_.intermediate_size, size_t(c_.moe.top_k) * c_.moe.expert_intermediate_size + c_.moe.shared_intermediate_size);
  size_t candidates = 0;
  for (const auto& plan : c_.layers) candidates = std::max(candidates, plan.candidates.size());
  for (auto* b : {&x_, &xn_, &u_, &u_prev_, &ffn_, &tmp_}) b->resize(T * d);
  rows_in_.resize(T * std::max(1, c_.moe.top_k) * d);
  rows_out_.resize(rows_in_.size());
  q_.resize(T * qw);
  att_.resize(T * qw);
  k_.resize(T * kvw);
  v_.resize(T * kvw);
  h1_.resize(T * ffn_width);
  h2_.resize(T * ffn_width);
  router_.resize(T * candidates);
  k::start_worker_threads();  // so that the first forward (a timed prefill) does not start them
}

void InferenceSession::rewind(int position) {
  require(position >= 0 && position <= position_, "cannot rewind the KV cache from " + std::to_string(position_) +
                                                      " to " + std::to_string(position) + " tokens");
  position_ = position;
}

const std::vector<float>& InferenceSession::forward(const std::vector<int>& tokens, bool all_logits) {
  const int n = static_cast<int>(tokens.size());
  require(n > 0, "forward needs at least one token");
  require(position_ + n <= context_, std::to_string(position_ + n) + " tokens exceed the context length of " +
                                         std::to_string(context_));
  for (int t : tokens)
    require(t >= 0 && t < c_.vocab_size, "token id " + std::to_string(t) + " is outside the vocabulary of " +
                                             std::to_string(c_.vocab_size));
  const size_t V = c_.vocab_size;
  logits_.assign((all_logits ? n : 1) * V, 0.0f);
  for (int start = 0; start < n; start += chunk_) {
    const int T = std::min(chunk_, n - start);
    const bool last = start + T == n;
    if (all_logits) run_chunk(tokens.data() + start, T, true, logits_.data() + size_t(start) * V);
    else run_chunk(tokens.data() + start, T, false, last ? logits_.data() : nullptr);
  }
  return logits_;
}

void InferenceSession::run_chunk(const int* tokens, int T, bool all_logits, float* logits) {
  const ModelWeights& w = model_.weights();
  const int d = c_.hidden_size;
  const float eps = float(c_.rms_norm_eps);
  for (int t = 0; t < T; ++t) {
    const size_t row_bytes = dtype_row_bytes(w.embed.dtype, d);
    k::to_f32(static_cast<const std::byte*>(w.embed.data) + size_t(tokens[t]) * row_bytes, w.embed.dtype, d,
              x_.data() + size_t(t) * d);
  }
  for (int l = 0; l < c_.num_layers; ++l) {
    const LayerWeights& L = w.layers[l];
    for (int t = 0; t < T; ++t) k::rmsnorm(&x_[size_t(t) * d], L.input_norm.data(), d, eps, &xn_[size_t(t) * d]);
    attention(l, T);
    k::matmul(L.o, att_.data(), T, tmp_.data());
    for (size_t i = 0; i < size_t(T) * d; ++i) x_[i] += tmp_[i];

    for (int t = 0; t < T; ++t) k::rmsnorm(&x_[size_t(t) * d], L.post_attention_norm.data(), d, eps, &u_[size_t(t) * d]);
    if (c_.layers[l].is_moe) {
      // Pre-gated routers read the previous layer's FFN input.
      const bool pre = c_.moe.pre_gated && l > 0;
      moe(l, pre ? u_prev_.data() : u_.data(), T);
    } else {
      swiglu({{&L.dense, u_.data(), T, ffn_.data()}});
    }
    for (size_t i = 0; i < size_t(T) * d; ++i) x_[i] += ffn_[i];
    std::swap(u_, u_prev_);
  }
  if (logits) {
    const int first = all_logits ? 0 : T - 1;
    for (int t = first; t < T; ++t)
      k::rmsnorm(&x_[size_t(t) * d], w.final_norm.data(), d, eps, &xn_[size_t(t - first) * d]);
    k::matmul(w.lm_head, xn_.data(), T - first, logits);
  }
  position_ += T;
}

void InferenceSession::attention(int l, int T) {
  const LayerWeights& L = model_.weights().layers[l];
  const int hd = c_.head_dim, Hq = c_.num_heads, Hkv = c_.num_kv_heads;
  const int qw = Hq * hd, kvw = Hkv * hd;
  const float eps = float(c_.rms_norm_eps);
  const k::MatmulJob qkv[] = {{L.q, xn_.data(), T, q_.data()}, {L.k, xn_.data(), T, k_.data()},
                              {L.v, xn_.data(), T, v_.data()}};
  k::matmul_batch(qkv, 3);
  std::vector<float> cos(hd / 2), sin(hd / 2);
  for (int t = 0; t < T; ++t) {
    float* q = &q_[size_t(t) * qw];
    float* kk = &k_[size_t(t) * kvw];
    float* v = &v_[size_t(t) * kvw];
    if (!L.q_bias.empty()) {
      for (int i = 0; i < qw; ++i) q[i] += L.q_bias[i];
      for (int i = 0; i < kvw; ++i) kk[i] += L.k_bias[i], v[i] += L.v_bias[i];
    }
    if (c_.clip_qkv) {
      const float c = float(*c_.clip_qkv);
      for (float* p : {q, kk, v})
        for (int i = 0, n = p == q ? qw : kvw; i < n; ++i) p[i] = std::clamp(p[i], -c, c);
    }
    if (c_.qk_norm == QkNorm::PerHead) {
      for (int h = 0; h < Hq; ++h) k::rmsnorm(q + h * hd, L.q_norm.data(), hd, eps, q + h * hd);
      for (int h = 0; h < Hkv; ++h) k::rmsnorm(kk + h * hd, L.k_norm.data(), hd, eps, kk + h * hd);
    } else if (c_.qk_norm == QkNorm::Full) {
      k::rmsnorm(q, L.q_norm.data(), qw, eps, q);
      k::rmsnorm(kk, L.k_norm.data(), kvw, eps, kk);
    }
    const int pos = position_ + t;
    rope_.at(pos, position_ + T, cos.data(), sin.data());
    k::rope(q, Hq, hd, cos.data(), sin.data());
    k::rope(kk, Hkv, hd, cos.data(), sin.data());
    // Keys per head in position order; values per head transposed ([dim][position]), so that
    // both products below are plain matrix products over the cache.
    for (int g = 0; g < Hkv; ++g) {
      const size_t head = size_t(l) * Hkv + size_t(g);
      std::copy(kk + g * hd, kk + (g + 1) * hd, &k_cache_[(head * context_ + size_t(pos)) * size_t(hd)]);
      for (int d = 0; d < hd; ++d) v_cache_[(head * size_t(hd) + size_t(d)) * context_ + size_t(pos)] = v[g * hd + d];
    }
  }
  // Per head, for blocks of queries: scores = Q K^T (scaled, causal, windowed), softmax, out = P V.
  constexpr int kQueryBlock = 32;
  const float scale = 1.0f / std::sqrt(float(hd));
  const int group = Hq / Hkv;
  const int length = position_ + T;
  const int query_blocks = (T + kQueryBlock - 1) / kQueryBlock;
  const auto attend = [&](int64_t item) {
    // Scratch per thread, kept between calls.
    thread_local std::vector<float> q, scores, out;
    q.resize(size_t(kQueryBlock) * hd);
    scores.resize(size_t(kQueryBlock) * length);
    out.resize(size_t(kQueryBlock) * hd);
    const int h = int(item / query_blocks), t0 = int(item % query_blocks) * kQueryBlock;
    const int tn = std::min(kQueryBlock, T - t0);
    const size_t head = size_t(l) * Hkv + size_t(h / group);
    for (int t = 0; t < tn; ++t)
      std::copy_n(&q_[size_t(t0 + t) * qw + size_t(h) * hd], hd, &q[size_t(t) * hd]);
    const k::Matrix keys{&k_cache_[head * context_ * size_t(hd)], DType::F32, length, hd, hd};
    k::matmul(keys, q.data(), tn, scores.data());
    for (int t = 0; t < tn; ++t) {
      float* row = &scores[size_t(t) * length];
      const int pos = position_ + t0 + t;
      const int begin = c_.sliding_window > 0 ? std::max(0, pos - c_.sliding_window + 1) : 0;
      float m = -INFINITY;
      for (int j = begin; j <= pos; ++j) m = std::max(m, row[j] *= scale);
      float sum = 0.0f;
      for (int j = begin; j <= pos; ++j) sum += (row[j] = std::exp(row[j] - m));
      const float inv = 1.0f / sum;
      for (int j = begin; j <= pos; ++j) row[j] *= inv;
      std::fill(row, row + begin, 0.0f);
      std::fill(row + pos + 1, row + length, 0.0f);
    }
    const k::Matrix values{&v_cache_[head * size_t(hd) * context_], DType::F32, hd, length, int64_t(context_)};
    k::matmul(values, scores.data(), tn, out.data());
    for (int t = 0; t < tn; ++t)
      std::copy_n(&out[size_t(t) * hd], hd, &att_[size_t(t0 + t) * qw + size_t(h) * hd]);
  };
  const int64_t items = int64_t(Hq) * query_blocks;
  if (int64_t(Hq) * T * length * hd >= (1 << 15)) {  // as matmul: small work stays on one thread
    k::parallel_for(items, attend);
  } else {
    for (int64_t item = 0; item < items; ++item) attend(item);
  }
}

void InferenceSession::swiglu(const std::vector<SwiGluRun>& runs) {
  std::vector<k::MatmulJob> jobs;
  std::vector<size_t> offsets;
  size_t offset = 0;
  for (const SwiGluRun& r : runs) {
    offsets.push_back(offset);
    jobs.push_back({r.weights->gate, r.in, r.tokens, &h1_[offset]});
    jobs.push_back({r.weights->up, r.in, r.tokens, &h2_[offset]});
    offset += size_t(r.tokens) * r.weights->width();
  }
  k::matmul_batch(jobs.data(), int(jobs.size()));
  k::silu_mul(h1_.data(), h2_.data(), int(offset));
  jobs.clear();
  for (size_t i = 0; i < runs.size(); ++i) jobs.push_back({runs[i].weights->down, &h1_[offsets[i]], runs[i].tokens, runs[i].out});
  k::matmul_batch(jobs.data(), int(jobs.size()));
}

void InferenceSession::moe(int l, const float* router_in, int T) {
  const LayerWeights& L = model_.weights().layers[l];
  const LayerPlan& plan = c_.layers[l];
  const int d = c_.hidden_size;
  const int n = static_cast<int>(plan.candidates.size());
  k::matmul(L.router, router_in, T, router_.data());

  // Route every token, then bucket tokens by the candidate they chose.
  std::vector<std::vector<std::pair<int, float>>> chosen_by(n);
  Route route;
  for (int t = 0; t < T; ++t) {
    route_token(c_.moe, &router_[size_t(t) * n], n, L.router_bias.empty() ? nullptr : L.router_bias.data(), route);
    for (size_t i = 0; i < route.candidates.size(); ++i) chosen_by[route.candidates[i]].push_back({t, route.weights[i]});
    if (trace_) {
      RoutingRecord rec{position_ + t, l, {}, route.weights};
      for (int cand : route.candidates) rec.experts.push_back(plan.candidates[cand]);
      trace_->push_back(std::move(rec));
    }
  }

  // Each chosen expert runs once on the rows of the tokens that chose it; the shared experts
  // run on every token, straight into the output.
  std::vector<SwiGluRun> runs;
  std::vector<int> chosen;
  size_t row = 0;
  for (int cand = 0; cand < n; ++cand) {
    const auto& tokens = chosen_by[cand];
    if (tokens.empty()) continue;
    for (size_t i = 0; i < tokens.size(); ++i)
      std::copy_n(&u_[size_t(tokens[i].first) * d], d, &rows_in_[(row + i) * d]);
    runs.push_back({&model_.weights().expert(plan.candidates[cand]), &rows_in_[row * d], int(tokens.size()),
                    &rows_out_[row * d]});
    chosen.push_back(cand);
    row += tokens.size();
  }
  const bool shared = L.shared.gate.rows > 0;
  if (shared) runs.push_back({&L.shared, u_.data(), T, ffn_.data()});
  swiglu(runs);
  if (!shared) std::fill(ffn_.begin(), ffn_.begin() + size_t(T) * d, 0.0f);
  row = 0;
  for (int cand : chosen)
    for (const auto& [t, weight] : chosen_by[cand]) k::axpy(weight, &rows_out_[row++ * d], &ffn_[size_t(t) * d], d);
}

}  // namespace crossmoe
