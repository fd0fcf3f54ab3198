#include "runtime/forward.hpp"

#include <algorithm>
#include <cmath>

#include "kernels/thread_pool.hpp"
#include "runtime/expert_cache.hpp"
#include "util/error.hpp"

namespace crossmoe {

namespace k = kernels;

BatchSession::BatchSession(const Model& model, int block_size, int blocks, int chunk)
    : model_(model), c_(model.config()), chunk_(std::max(1, chunk)),
      rope_(c_.rope, c_.rope_dim(), c_.max_position_embeddings), pool_(c_, block_size, blocks) {
  const size_t T = chunk_, d = c_.hidden_size, H = c_.num_heads, qw = H * c_.cache_key_dim();
  // Values kept in the keys (latent attention) need no rows of their own.
  const size_t kvw = size_t(c_.cache_heads()) * c_.cache_key_dim(),
               vw = c_.cache_values_in_keys() ? 0 : size_t(c_.cache_heads()) * c_.cache_value_dim();
  // FFN scratch: a dense FFN, or K routed experts per token plus the shared experts.
  const size_t ffn_width = std::max<size_t>(
      c_.intermediate_size, size_t(c_.moe.top_k) * c_.moe.expert_intermediate_size + c_.moe.shared_intermediate_size);
  size_t candidates = 0;
  for (const auto& plan : c_.layers) candidates = std::max(candidates, plan.candidates.size());
  for (auto* b : {&x_, &xn_, &u_, &u_prev_, &ffn_, &tmp_}) b->resize(T * d);
  rows_in_.resize(T * std::max(1, c_.moe.top_k) * d);
  rows_out_.resize(rows_in_.size());
  q_.resize(T * qw);
  att_.resize(T * H * c_.cache_value_dim());
  k_.resize(T * kvw);
  v_.resize(T * vw);
  if (const auto& a = c_.latent_attention) {
    q_latent_.resize(T * a->q_lora_rank);
    q_heads_.resize(T * H * c_.head_dim);
    kv_latent_.resize(T * (a->kv_lora_rank + a->qk_rope_head_dim));
    per_head_in_.resize(T * H * std::max(a->qk_nope_head_dim, a->kv_lora_rank));
    per_head_out_.resize(T * H * std::max(a->kv_lora_rank, a->v_head_dim));
    latent_out_.resize(T * H * a->v_head_dim);
  }
  h1_.resize(T * ffn_width);
  h2_.resize(T * ffn_width);
  router_.resize(T * candidates);
  if (model_.expert_cache() && model_.expert_cache()->prefetching()) predicted_router_.resize(T * candidates);
  row_position_.resize(T);
  k::start_worker_threads();  // so that the first forward (a timed prefill) does not start them
}

const BatchSession::Sequence& BatchSession::seq(int id) const {
  require(id >= 0 && id < int(sequences_.size()) && sequences_[id].open,
          "no open sequence " + std::to_string(id) + " in the batch session");
  return sequences_[id];
}

int BatchSession::open() {
  int id = 0;
  while (id < int(sequences_.size()) && sequences_[id].open) ++id;
  if (id == int(sequences_.size())) sequences_.emplace_back();
  sequences_[id].open = true;
  return id;
}

void BatchSession::close(int sequence) {
  Sequence& s = seq(sequence);
  for (int b : s.blocks) pool_.release(b);
  s = Sequence();
}

int BatchSession::reuse_prefix(int sequence, const std::vector<int>& prompt) {
  Sequence& s = seq(sequence);
  require(s.tokens.empty(), "prefix reuse needs an empty sequence");
  const int bs = pool_.block_size();
  int parent = -1;
  for (size_t start = 0; start + bs < prompt.size(); start += bs) {
    const int b = pool_.find(parent, &prompt[start]);
    if (b < 0) break;
    pool_.retain(b);
    s.blocks.push_back(b);
    s.tokens.insert(s.tokens.end(), prompt.begin() + std::ptrdiff_t(start), prompt.begin() + std::ptrdiff_t(start + bs));
    parent = b;
  }
  return int(s.tokens.size());
}

int BatchSession::blocks_needed(int sequence, int count) const {
  const Sequence& s = seq(sequence);
  const int bs = pool_.block_size();
  const int total = (int(s.tokens.size()) + count + bs - 1) / bs;
  return std::max(0, total - int(s.blocks.size()));
}

bool BatchSession::reserve(int sequence, int count) {
  const int need = blocks_needed(sequence, count);
  if (need > pool_.available()) return false;
  Sequence& s = seq(sequence);
  for (int i = 0; i < need; ++i) s.blocks.push_back(pool_.allocate());
  return true;
}

void BatchSession::rewind(int sequence, int length) {
  Sequence& s = seq(sequence);
  require(length >= 0 && length <= int(s.tokens.size()), "cannot rewind the KV cache from " +
                                                             std::to_string(s.tokens.size()) + " to " +
                                                             std::to_string(length) + " tokens");
  const int bs = pool_.block_size();
  const int keep = (length + bs - 1) / bs;
  while (int(s.blocks.size()) > keep) {
    pool_.release(s.blocks.back());
    s.blocks.pop_back();
  }
  s.tokens.resize(length);
  if (length % bs == 0) return;
  // The last block is about to be written past `length`: it must be this sequence's alone and
  // no longer published under its old content.
  int& last = s.blocks.back();
  if (pool_.refcount(last) > 1) {
    const int copy = pool_.allocate();
    require(copy >= 0, "the KV cache pool is full");
    for (int l = 0; l < c_.num_layers; ++l)
      for (int g = 0; g < c_.cache_heads(); ++g) {
        std::copy_n(pool_.keys(l, last, g), pool_.key_block_floats(), pool_.keys(l, copy, g));
        std::copy_n(pool_.values(l, last, g), pool_.value_block_floats(), pool_.values(l, copy, g));
      }
    pool_.release(last);
    last = copy;
  } else {
    pool_.unpublish(last);
  }
}

void BatchSession::step(const std::vector<StepPiece>& pieces) {
  const ModelWeights& w = model_.weights();
  const int d = c_.hidden_size;
  const size_t V = c_.vocab_size;
  const float eps = float(c_.rms_norm_eps);
  // Rows: each piece's tokens in order. starts[p] is piece p's first row.
  std::vector<int> starts;
  int T = 0;
  for (const StepPiece& p : pieces) {
    require(p.count > 0, "a step piece needs at least one token");
    for (const StepPiece& other : pieces)
      require(&other == &p || other.sequence != p.sequence, "a sequence appears twice in one step");
    for (int i = 0; i < p.count; ++i)
      require(p.tokens[i] >= 0 && p.tokens[i] < c_.vocab_size, "token id " + std::to_string(p.tokens[i]) +
                                                                   " is outside the vocabulary of " +
                                                                   std::to_string(c_.vocab_size));
    starts.push_back(T);
    T += p.count;
  }
  require(T > 0 && T <= chunk_, "a step runs 1 to " + std::to_string(chunk_) + " tokens, not " + std::to_string(T));
  for (size_t p = 0; p < pieces.size(); ++p) {
    require(reserve(pieces[p].sequence, pieces[p].count), "the KV cache pool is full");
    for (int i = 0; i < pieces[p].count; ++i) row_position_[starts[p] + i] = length(pieces[p].sequence) + i;
  }

  for (size_t p = 0; p < pieces.size(); ++p)
    for (int i = 0; i < pieces[p].count; ++i) {
      const size_t row_bytes = dtype_row_bytes(w.embed.dtype, d);
      k::to_f32(static_cast<const std::byte*>(w.embed.data) + size_t(pieces[p].tokens[i]) * row_bytes, w.embed.dtype,
                d, x_.data() + size_t(starts[p] + i) * d);
    }
  for (int l = 0; l < c_.num_layers; ++l) {
    const LayerWeights& L = w.layers[l];
    k::rmsnorm_rows(x_.data(), L.input_norm.data(), T, d, eps, xn_.data());
    attention(l, pieces, starts);
    k::matmul(L.o, c_.latent_attention ? latent_out_.data() : att_.data(), T, tmp_.data());
    for (size_t i = 0; i < size_t(T) * d; ++i) x_[i] += tmp_[i];

    k::rmsnorm_rows(x_.data(), L.post_attention_norm.data(), T, d, eps, u_.data());
    if (c_.layers[l].is_moe) {
      // Pre-gated routers read the previous layer's FFN input.
      const bool pre = c_.moe.pre_gated && l > 0;
      moe(l, pre ? u_prev_.data() : u_.data(), T);
    } else {
      // A dense layer before a MoE layer: the next router's input is known now (pre-gated: it is
      // this u_), so its experts are read while this FFN computes, not after it.
      ExpertCache* cache = model_.expert_cache();
      if (cache && cache->prefetching() && l + 1 < c_.num_layers && c_.layers[l + 1].is_moe)
        cache->expect(predict_next(l, T));
      swiglu({{&L.dense, u_.data(), T, ffn_.data()}});
    }
    for (size_t i = 0; i < size_t(T) * d; ++i) x_[i] += ffn_[i];
    std::swap(u_, u_prev_);
  }

  // Logits for the rows that asked: normed into consecutive rows of xn_, one LM-head pass.
  std::vector<const StepPiece*> wanting;
  int rows = 0;
  for (size_t p = 0; p < pieces.size(); ++p) {
    if (!pieces[p].logits) continue;
    wanting.push_back(&pieces[p]);
    const int first = pieces[p].all_logits ? 0 : pieces[p].count - 1;
    for (int t = starts[p] + first; t < starts[p] + pieces[p].count; ++t, ++rows)
      k::rmsnorm(&x_[size_t(t) * d], w.final_norm.data(), d, eps, &xn_[size_t(rows) * d]);
  }
  if (wanting.size() == 1) {
    k::matmul(w.lm_head, xn_.data(), rows, wanting[0]->logits);
  } else if (rows > 0) {
    logits_.resize(size_t(rows) * V);
    k::matmul(w.lm_head, xn_.data(), rows, logits_.data());
    size_t row = 0;
    for (const StepPiece* p : wanting) {
      const size_t n = p->all_logits ? p->count : 1;
      std::copy_n(&logits_[row * V], n * V, p->logits);
      row += n;
    }
  }

  // The tokens are in the cache now; blocks they filled are published for prefix reuse.
  const int bs = pool_.block_size();
  for (const StepPiece& p : pieces) {
    Sequence& s = seq(p.sequence);
    const int before = int(s.tokens.size());
    s.tokens.insert(s.tokens.end(), p.tokens, p.tokens + p.count);
    for (int b = before / bs; b < int(s.tokens.size()) / bs; ++b)
      pool_.publish(s.blocks[b], b > 0 ? s.blocks[b - 1] : -1, &s.tokens[size_t(b) * bs]);
  }
}

void BatchSession::latent_qkv(int l, int T) {
  const LayerWeights& L = model_.weights().layers[l];
  const LatentAttention& a = *c_.latent_attention;
  const int H = c_.num_heads, qk = c_.head_dim, nope = a.qk_nope_head_dim, rd = a.qk_rope_head_dim;
  const int ql = a.q_lora_rank, kvl = a.kv_lora_rank, key = kvl + rd;
  const float eps = float(a.latent_norm_eps);
  // q per head (from its latent under a q low-rank projection), and the kv latent with k_rope.
  const k::MatmulJob first[] = {{ql > 0 ? L.q_a : L.q, xn_.data(), T, ql > 0 ? q_latent_.data() : q_heads_.data()},
                                {L.kv_a, xn_.data(), T, kv_latent_.data()}};
  k::matmul_batch(first, 2);
  for (int t = 0; t < T; ++t) {
    if (ql > 0) k::rmsnorm(&q_latent_[size_t(t) * ql], L.q_a_norm.data(), ql, eps, &q_latent_[size_t(t) * ql]);
    // The cache's key [c | k_rope], whose c is the value too.
    const float* latent = &kv_latent_[size_t(t) * key];
    k::rmsnorm(latent, L.kv_a_norm.data(), kvl, eps, &k_[size_t(t) * key]);
    std::copy_n(latent + kvl, rd, &k_[size_t(t) * key + kvl]);
  }
  if (ql > 0) k::matmul(L.q_b, q_latent_.data(), T, q_heads_.data());
  // Each head's q_nope into the latent space (k_up), head by head on all T tokens:
  // q = [k_up[h] q_nope | q_rope] per head.
  through_heads(L.k_up, q_heads_.data(), qk, nope, T);
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < H; ++h) {
      float* q = &q_[(size_t(t) * H + h) * key];
      std::copy_n(&per_head_out_[(size_t(h) * T + t) * kvl], kvl, q);
      std::copy_n(&q_heads_[(size_t(t) * H + h) * qk + nope], rd, q + kvl);
    }
}

void BatchSession::through_heads(const std::vector<k::Matrix>& weights, const float* rows, int head_width, int in,
                                 int T) {
  const int H = int(weights.size());
  std::vector<k::MatmulJob> jobs;
  for (int h = 0; h < H; ++h) {
    float* gathered = &per_head_in_[size_t(h) * T * in];
    for (int t = 0; t < T; ++t)
      std::copy_n(&rows[(size_t(t) * H + h) * head_width], in, gathered + size_t(t) * in);
    jobs.push_back({weights[h], gathered, T, &per_head_out_[size_t(h) * T * size_t(weights[h].rows)]});
  }
  k::matmul_batch(jobs.data(), int(jobs.size()));
}

void BatchSession::latent_output(int l, int T) {
  const LayerWeights& L = model_.weights().layers[l];
  const LatentAttention& a = *c_.latent_attention;
  const int H = c_.num_heads, kvl = a.kv_lora_rank, vd = a.v_head_dim;
  through_heads(L.v_up, att_.data(), kvl, kvl, T);
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < H; ++h)
      std::copy_n(&per_head_out_[(size_t(h) * T + t) * vd], vd, &latent_out_[(size_t(t) * H + h) * vd]);
}

void BatchSession::attention(int l, const std::vector<StepPiece>& pieces, const std::vector<int>& starts) {
  const LayerWeights& L = model_.weights().layers[l];
  // Keys and values as attention reads them (latent attention: one head of [c | k_rope] and c, the
  // value stored in the key: values_in_keys, no rows of values).
  const int hd = c_.cache_key_dim(), vd = c_.cache_value_dim(), Hq = c_.num_heads, Hkv = c_.cache_heads();
  const bool values_in_keys = c_.cache_values_in_keys();
  const int qw = Hq * hd, kvw = Hkv * hd, vw = values_in_keys ? 0 : Hkv * vd, ow = Hq * vd;
  const int T = starts.back() + pieces.back().count;
  const int bs = pool_.block_size();
  const float eps = float(c_.rms_norm_eps);
  if (c_.latent_attention) {
    latent_qkv(l, T);
  } else {
    const k::MatmulJob qkv[] = {{L.q, xn_.data(), T, q_.data()}, {L.k, xn_.data(), T, k_.data()},
                                {L.v, xn_.data(), T, v_.data()}};
    k::matmul_batch(qkv, 3);
  }
  // RoPE turns the last rd dimensions of each query and key head. Pairs (2i, 2i+1) rotate
  // together when interleaved: gathered as [evens | odds] first (the same permutation for
  // queries and keys, so scores are unchanged), they rotate as halves (i, i + rd/2).
  const int rd = c_.rope_dim(), nope = hd - rd;
  const bool interleaved = c_.latent_attention && c_.latent_attention->rope_interleave;
  // Row t's biases, clipping, q/k norms and rotation, and its key and value into the cache: each
  // row's own work, spread over the threads for a prefill's rows (serial, it was several percent of
  // a two-thread prefill's time).
  const auto prepare_row = [&](int64_t t) {
    const int p = int(std::upper_bound(starts.begin(), starts.end(), int(t)) - starts.begin()) - 1;
    const Sequence& s = seq(pieces[p].sequence);
    const int length = int(s.tokens.size()) + pieces[p].count;
    thread_local std::vector<float> rope_buffer;
    rope_buffer.resize(size_t(2 * rd));  // cos, sin; then the interleaved pairs
    float *cos = rope_buffer.data(), *sin = cos + rd / 2, *pairs = sin + rd / 2;
    const auto rotate = [&](float* heads, int count) {
      for (int h = 0; h < count; ++h) {
        float* x = heads + size_t(h) * hd + nope;
        if (interleaved) {
          for (int i = 0; i < rd / 2; ++i) pairs[i] = x[2 * i], pairs[rd / 2 + i] = x[2 * i + 1];
          std::copy(pairs, pairs + rd, x);
        }
        k::rope(x, 1, rd, cos, sin);
      }
    };
    float* q = &q_[size_t(t) * qw];
    float* kk = &k_[size_t(t) * kvw];
    float* v = v_.data() + size_t(t) * vw;
    if (!L.q_bias.empty()) {
      for (int i = 0; i < qw; ++i) q[i] += L.q_bias[i];
      for (int i = 0; i < kvw; ++i) kk[i] += L.k_bias[i], v[i] += L.v_bias[i];  // vw == kvw with biases
    }
    if (c_.clip_qkv) {
      const float c = float(*c_.clip_qkv);
      for (float* ptr : {q, kk, v})
        for (int i = 0, n = ptr == q ? qw : kvw; i < n; ++i) ptr[i] = std::clamp(ptr[i], -c, c);
    }
    if (c_.qk_norm == QkNorm::PerHead) {
      for (int h = 0; h < Hq; ++h) k::rmsnorm(q + h * hd, L.q_norm.data(), hd, eps, q + h * hd);
      for (int h = 0; h < Hkv; ++h) k::rmsnorm(kk + h * hd, L.k_norm.data(), hd, eps, kk + h * hd);
    } else if (c_.qk_norm == QkNorm::Full) {
      k::rmsnorm(q, L.q_norm.data(), qw, eps, q);
      k::rmsnorm(kk, L.k_norm.data(), kvw, eps, kk);
    }
    const int pos = row_position_[size_t(t)];
    rope_.at(pos, length, cos, sin);
    rotate(q, Hq);
    rotate(kk, Hkv);
    // Keys per head in tiles of kKeyTile positions, [head_dim][kKeyTile] each; values
    // [block_size][value_head_dim] unless in the keys (KvPool).
    const int block = s.blocks[pos / bs], at = pos % bs;
    for (int g = 0; g < Hkv; ++g) {
      float* key = pool_.keys(l, block, g) + size_t(at / k::kKeyTile) * k::kKeyTile * hd + at % k::kKeyTile;
      for (int d = 0; d < hd; ++d) key[size_t(d) * k::kKeyTile] = kk[g * hd + d];
      if (!values_in_keys) std::copy(v + g * vd, v + (g + 1) * vd, pool_.values(l, block, g) + size_t(at) * vd);
    }
  };
  if (int64_t(T) * (qw + kvw) < k::kMinParallelWork)
    for (int t = 0; t < T; ++t) prepare_row(t);
  else
    k::parallel_for(T, prepare_row);
  // Per piece and kv head, for blocks of queries: scores = q K^T (scaled, causal, windowed),
  // softmax, out = P V. Each query's products are its own (kernels::attention_scores and
  // attention_values), so its result does not depend on the queries beside it. The query heads
  // that share a kv head go together (rows: head by head, each head's queries in order), and
  // the loops go over the cache block by block, every row in turn, so that each block of keys
  // and values is read once for all the item's heads and all the queries of a prefill chunk.
  // An item holds at most kQueryRows rows: kQueryRows / group tokens of each of the group's
  // heads, or one token of a part of them when there are more (latent attention's one kv head
  // serves every query head).
  constexpr int kQueryRows = 32;
  constexpr int kPositionTile = 128;  // 32 KiB of keys at a head size of 64
  static_assert(kPositionTile % k::kKeyTile == 0, "position tiles hold whole key tiles");
  const float scale = float(c_.attention_scale_factor) / std::sqrt(float(c_.head_dim));
  const int group = Hq / Hkv;
  int part_heads = std::min(group, kQueryRows);  // query heads of one item
  const int block_tokens = std::max(1, kQueryRows / part_heads);
  int64_t query_blocks_total = 0, work = 0;
  for (const StepPiece& piece : pieces) {
    const int length = int(seq(piece.sequence).tokens.size()) + piece.count;
    query_blocks_total += (piece.count + block_tokens - 1) / block_tokens;
    work += int64_t(Hq) * piece.count * length * hd;
  }
  // Fewer items than threads (a decode step with few kv heads: latent attention has one) split
  // the heads further, so that every thread has rows to score.
  const int64_t min_items = work >= k::kMinParallelWork ? k::thread_count() : 1;  // as matmul
  const int64_t blocks = query_blocks_total * Hkv;
  if (blocks * ((group + part_heads - 1) / part_heads) < min_items)
    part_heads = std::max(1, int(group / std::min<int64_t>(group, (min_items + blocks - 1) / blocks)));
  const int parts = (group + part_heads - 1) / part_heads;
  const int block_rows = block_tokens * part_heads;
  std::vector<int64_t> first_item{0};  // items of piece p: [first_item[p], first_item[p + 1])
  for (const StepPiece& piece : pieces)
    first_item.push_back(first_item.back() + int64_t(Hkv) * parts * ((piece.count + block_tokens - 1) / block_tokens));
  const auto attend = [&](int64_t item) {
    const int p = int(std::upper_bound(first_item.begin(), first_item.end(), item) - first_item.begin()) - 1;
    const Sequence& s = sequences_[pieces[p].sequence];
    const int count = pieces[p].count, length = int(s.tokens.size()) + count;
    const int query_blocks = (count + block_tokens - 1) / block_tokens;
    const int64_t local = item - first_item[p];
    const int g = int(local / (int64_t(parts) * query_blocks));
    const int h0 = g * group + int(local / query_blocks % parts) * part_heads;  // the item's first head
    const int heads = std::min(part_heads, (g + 1) * group - h0);
    const int t0 = int(local % query_blocks) * block_tokens;
    const int tn = std::min(block_tokens, count - t0);
    const int rn = tn * heads;  // row i: head h0 + i / tn, token t0 + i % tn
    const int row0 = starts[p] + t0;
    thread_local std::vector<float> scores;  // scratch per thread, kept between calls
    scores.resize(size_t(block_rows) * length);
    // Token t sees positions [begin[t], end[t]).
    int begin[kQueryRows], end[kQueryRows];  // tn <= block_tokens <= kQueryRows
    for (int t = 0; t < tn; ++t) {
      const int pos = row_position_[row0 + t];
      begin[t] = c_.sliding_window > 0 ? std::max(0, pos - c_.sliding_window + 1) : 0;
      end[t] = pos + 1;
    }
    const int last_block = (end[tn - 1] - 1) / bs;  // positions grow with t
    // Row i's query, and its output (heads of vd floats).
    const auto head_offset = [&](int i) { return size_t(row0 + i % tn) * qw + size_t(h0 + i / tn) * hd; };
    const auto out_offset = [&](int i) { return size_t(row0 + i % tn) * ow + size_t(h0 + i / tn) * vd; };
    // Positions go kPositionTile at a time (a grid aligned to the block's key tiles) through
    // every row, so that the kernels' passes over the rows, kQueries at a time, find the tile's
    // keys (values below) in L1 instead of reading a prefill's whole range again from L2 or
    // memory per group of rows. In each position tile, the positions every row sees,
    // [common_lo, common_hi), go through the kernels with all rn rows at once; each token's others
    // (a sliding window's start, the causal edge) with that token's group rows, before and after
    // them, so that every row meets its positions in order. The kernels' results do not depend on
    // how rows and positions are split over calls.
    thread_local std::vector<const float*> rows_in;
    thread_local std::vector<float*> rows_out;
    rows_in.resize(rn);
    rows_out.resize(rn);
    // call(j, first, count, step, lo, hi): rows first, first + step, ... (count of them) against
    // positions [lo, hi) of block j.
    const auto by_ranges = [&](const auto& call) {
      for (int j = begin[0] / bs; j <= last_block; ++j) {
        const int from = std::max(j * bs, begin[0]), to = std::min((j + 1) * bs, end[tn - 1]);
        for (int p0 = j * bs + (from - j * bs) / kPositionTile * kPositionTile; p0 < to; p0 += kPositionTile) {
          const int p1 = std::min({p0 + kPositionTile, (j + 1) * bs, end[tn - 1]});
          const auto each_token = [&](int a, int b) {  // the part of [a, b) each token sees
            for (int t = 0; t < tn; ++t) {
              const int lo = std::max(a, begin[t]), hi = std::min(b, end[t]);
              if (lo < hi) call(j, t, heads, tn, lo, hi);
            }
          };
          const int common_lo = std::max(p0, begin[tn - 1]), common_hi = std::min(p1, end[0]);
          if (common_lo >= common_hi) {
            each_token(p0, p1);
            continue;
          }
          each_token(p0, common_lo);
          call(j, 0, rn, 1, common_lo, common_hi);
          each_token(common_hi, p1);
        }
      }
    };
    by_ranges([&](int j, int first, int count, int step, int lo, int hi) {
      for (int r = 0; r < count; ++r) {
        const int i = first + r * step;
        rows_in[r] = &q_[head_offset(i)];
        rows_out[r] = &scores[size_t(i) * length + lo];
      }
      k::attention_scores(rows_in.data(), count, pool_.keys(l, s.blocks[j], g), lo - j * bs, hi - j * bs, hd,
                          rows_out.data());
    });
    // Softmax's numerators here, its division after P V (a row's hd outputs, not its positions).
    thread_local std::vector<float> inverse_sums;
    inverse_sums.resize(rn);
    for (int i = 0; i < rn; ++i) {
      const int t = i % tn;
      inverse_sums[i] = 1.0f / k::attention_softmax(&scores[size_t(i) * length + begin[t]], end[t] - begin[t], scale);
      std::fill_n(&att_[out_offset(i)], vd, 0.0f);
    }
    by_ranges([&](int j, int first, int count, int step, int lo, int hi) {
      for (int r = 0; r < count; ++r) {
        const int i = first + r * step;
        rows_in[r] = &scores[size_t(i) * length + lo];
        rows_out[r] = &att_[out_offset(i)];
      }
      if (values_in_keys)
        k::attention_values_in_keys(rows_in.data(), count, pool_.keys(l, s.blocks[j], g), lo - j * bs, hi - j * bs,
                                    hd, vd, rows_out.data());
      else
        k::attention_values(rows_in.data(), count, pool_.values(l, s.blocks[j], g) + size_t(lo - j * bs) * vd,
                            hi - lo, vd, rows_out.data());
    });
    for (int i = 0; i < rn; ++i) {
      float* out = &att_[out_offset(i)];
      for (int d = 0; d < vd; ++d) out[d] *= inverse_sums[i];
    }
  };
  if (min_items > 1) {
    k::parallel_for(first_item.back(), attend);
  } else {
    for (int64_t item = 0; item < first_item.back(); ++item) attend(item);
  }
  if (c_.latent_attention) latent_output(l, T);
}

void BatchSession::swiglu(const std::vector<SwiGluRun>& runs) {
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
  // On every thread: one exp per value, 5-6% of a batched server's samples when the calling
  // thread ran them alone while the others slept.
  constexpr size_t kSiluPiece = 8192;
  const int64_t pieces = int64_t((offset + kSiluPiece - 1) / kSiluPiece);
  k::parallel_for(pieces, [&](int64_t p) {
    const size_t begin = size_t(p) * kSiluPiece;
    k::silu_mul(h1_.data() + begin, h2_.data() + begin, int(std::min(kSiluPiece, offset - begin)));
  });
  jobs.clear();
  for (size_t i = 0; i < runs.size(); ++i) jobs.push_back({runs[i].weights->down, &h1_[offsets[i]], runs[i].tokens, runs[i].out});
  k::matmul_batch(jobs.data(), int(jobs.size()));
}

void BatchSession::moe(int l, const float* router_in, int T) {
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
      RoutingRecord rec{row_position_[t], l, {}, route.weights};
      for (int cand : route.candidates) rec.experts.push_back(plan.candidates[cand]);
      trace_->push_back(std::move(rec));
    }
  }

  // Each chosen expert runs once on the rows of the tokens that chose it; the shared experts
  // run on every token, straight into the output. Under a memory budget the routed experts come
  // from the expert cache, at most as many at once as it has slots: a step that chose more
  // (a prefill chunk) runs them in turns. Each expert's rows are the same either way, and the
  // sum below takes them in one order, so the result does not depend on the budget.
  ExpertCache* cache = model_.expert_cache();
  std::vector<int> chosen;
  std::vector<size_t> first_row;
  size_t row = 0;
  for (int cand = 0; cand < n; ++cand) {
    const auto& tokens = chosen_by[cand];
    if (tokens.empty()) continue;
    for (size_t i = 0; i < tokens.size(); ++i)
      std::copy_n(&u_[size_t(tokens[i].first) * d], d, &rows_in_[(row + i) * d]);
    chosen.push_back(cand);
    first_row.push_back(row);
    row += tokens.size();
  }
  const bool shared = L.shared.gate.rows > 0;
  const size_t turn = cache ? size_t(cache->slots()) : std::max<size_t>(1, chosen.size());
  std::vector<SwiGluRun> runs;
  std::vector<ExpertRef> refs;
  std::vector<const SwiGluWeights*> experts;
  // The next layer's experts go to the cache with this step's, so that they are read right
  // behind this step's misses and nothing evicts them meanwhile.
  const std::vector<ExpertRef> next = cache && cache->prefetching() ? predict_next(l, T) : std::vector<ExpertRef>();
  for (size_t first = 0; first == 0 || first < chosen.size(); first += turn) {
    const size_t end = std::min(chosen.size(), first + turn);
    refs.clear();
    for (size_t i = first; i < end; ++i) refs.push_back(plan.candidates[chosen[i]]);
    if (cache) {
      if (first == 0) cache->acquire(refs, experts, l, &next);
      else cache->acquire(refs, experts);
    } else {
      experts.clear();
      for (const ExpertRef& ref : refs) experts.push_back(&model_.weights().expert(ref));
    }
    runs.clear();
    for (size_t i = first; i < end; ++i)
      runs.push_back({experts[i - first], &rows_in_[first_row[i] * d], int(chosen_by[chosen[i]].size()),
                      &rows_out_[first_row[i] * d]});
    if (first == 0) {
      if (shared) runs.push_back({&L.shared, u_.data(), T, ffn_.data()});
    }
    swiglu(runs);
    if (cache) cache->release_all();
  }
  if (!shared) std::fill(ffn_.begin(), ffn_.begin() + size_t(T) * d, 0.0f);
  row = 0;
  for (int cand : chosen)
    for (const auto& [t, weight] : chosen_by[cand]) k::axpy(weight, &rows_out_[row++ * d], &ffn_[size_t(t) * d], d);
}

std::vector<ExpertRef> BatchSession::predict_next(int l, int T) {
  if (l + 1 >= c_.num_layers || !c_.layers[l + 1].is_moe) return {};
  const LayerWeights& next = model_.weights().layers[l + 1];
  const LayerPlan& plan = c_.layers[l + 1];
  const int n = int(plan.candidates.size());
  k::matmul(next.router, u_.data(), T, predicted_router_.data());
  std::vector<char> named(n, 0);
  Route route;
  for (int t = 0; t < T; ++t) {
    route_token(c_.moe, &predicted_router_[size_t(t) * n], n, next.router_bias.empty() ? nullptr : next.router_bias.data(),
                route);
    for (int cand : route.candidates) named[cand] = 1;
  }
  std::vector<ExpertRef> refs;
  for (int cand = 0; cand < n; ++cand)
    if (named[cand]) refs.push_back(plan.candidates[cand]);
  return refs;
}

InferenceSession::InferenceSession(const Model& model, int context_length, int chunk)
    : batch_(model, std::max(1, context_length), 1, chunk), sequence_(batch_.open()), context_(context_length) {
  require(context_length > 0, "context length must be positive");
}

void InferenceSession::rewind(int position) { batch_.rewind(sequence_, position); }

const std::vector<float>& InferenceSession::forward(const std::vector<int>& tokens, bool all_logits) {
  const int n = static_cast<int>(tokens.size());
  require(n > 0, "forward needs at least one token");
  require(position() + n <= context_, std::to_string(position() + n) + " tokens exceed the context length of " +
                                          std::to_string(context_));
  const size_t V = model().config().vocab_size;
  logits_.resize((all_logits ? n : 1) * V);
  for (int start = 0; start < n; start += batch_.chunk()) {
    const int T = std::min(batch_.chunk(), n - start);
    float* out = all_logits ? logits_.data() + size_t(start) * V : start + T == n ? logits_.data() : nullptr;
    batch_.step({{sequence_, tokens.data() + start, T, out, all_logits}});
  }
  return logits_;
}

}  // namespace crossmoe
