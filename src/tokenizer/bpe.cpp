#include "tokenizer/bpe.hpp"

#include <nlohmann/json.hpp>
#include <queue>

#include "tokenizer/unicode.hpp"
#include "util/error.hpp"

namespace crossmoe {

namespace {
uint64_t pair_key(int a, int b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
constexpr size_t kCacheLimit = 1 << 16;
constexpr size_t kCacheablePiece = 256;  // bytes; longer pieces are rare and not worth keeping
}  // namespace

Bpe::Bpe(const nlohmann::json& m) {
  require(m.contains("vocab") && m["vocab"].is_object(), "tokenizer.json: BPE model lacks 'vocab'");
  for (const auto& [token, id] : m["vocab"].items()) {
    require(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < (1 << 30),
            "tokenizer.json: bad id for vocabulary entry '" + token + "'");
    const int i = id.get<int>();
    vocab_[token] = i;
    if (int(id_to_token_.size()) <= i) id_to_token_.resize(i + 1);
    id_to_token_[i] = token;
  }
  const auto str = [&](const char* key) {
    return m.contains(key) && m[key].is_string() ? m[key].get<std::string>() : std::string();
  };
  prefix_ = str("continuing_subword_prefix");
  suffix_ = str("end_of_word_suffix");
  if (!str("unk_token").empty()) unk_ = token_to_id(str("unk_token"));
  fuse_unk_ = m.value("fuse_unk", false);
  ignore_merges_ = m.value("ignore_merges", false);
  require(m.value("dropout", nlohmann::json()).is_null(), "tokenizer.json: BPE dropout is not supported");
  if (m.value("byte_fallback", false)) {
    byte_tokens_.assign(256, -1);
    char name[8];
    for (int b = 0; b < 256; ++b) {
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      byte_tokens_[b] = token_to_id(name);
    }
  }
  // Merges are "left right" strings (older files) or [left, right] pairs (newer ones).
  const auto& merges = m.contains("merges") ? m["merges"] : nlohmann::json::array();
  require(merges.is_array(), "tokenizer.json: BPE 'merges' must be a list");
  int rank = 0;
  for (const auto& merge : merges) {
    std::string left, right;
    if (merge.is_string()) {
      const std::string s = merge.get<std::string>();
      const size_t space = s.find(' ', 1);
      require(space != std::string::npos, "tokenizer.json: merge '" + s + "' is not 'left right'");
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else {
      require(merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string(),
              "tokenizer.json: a merge must be a string or a pair of strings");
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    }
    const int a = token_to_id(left), b = token_to_id(right);
    std::string joined = left + (prefix_.empty() || right.rfind(prefix_, 0) != 0 ? right : right.substr(prefix_.size()));
    const int merged = token_to_id(joined);
    require(a >= 0 && b >= 0 && merged >= 0, "tokenizer.json: merge '" + left + " " + right +
                                                  "' uses a token missing from the vocabulary");
    merges_.try_emplace(pair_key(a, b), rank++, merged);
  }
}

int Bpe::token_to_id(std::string_view token) const {
  auto it = vocab_.find(std::string(token));
  return it == vocab_.end() ? -1 : it->second;
}

const std::string& Bpe::id_to_token(int id) const {
  static const std::string empty;
  return id >= 0 && id < int(id_to_token_.size()) ? id_to_token_[id] : empty;
}

void Bpe::encode_piece(std::string_view piece, std::vector<int>& out) {
  if (piece.empty()) return;
  if (ignore_merges_) {
    const int whole = token_to_id(piece);
    if (whole >= 0) {
      out.push_back(whole);
      return;
    }
  }
  const bool cacheable = piece.size() <= kCacheablePiece;
  std::string key;
  if (cacheable) {
    key.assign(piece);
    auto hit = cache_.find(key);
    if (hit != cache_.end()) {
      out.insert(out.end(), hit->second.begin(), hit->second.end());
      return;
    }
  }
  // One symbol per character; characters outside the vocabulary become byte tokens or unk.
  std::vector<int> symbols;
  bool last_was_unk = false;
  for (size_t i = 0; i < piece.size();) {
    size_t len = unicode::valid_sequence_length(piece, i);
    if (len == 0) len = 1;
    std::string ch(piece.substr(i, len));
    if (i > 0 && !prefix_.empty()) ch = prefix_ + ch;
    if (i + len == piece.size() && !suffix_.empty()) ch += suffix_;
    i += len;
    const int id = token_to_id(ch);
    if (id >= 0) {
      symbols.push_back(id);
      last_was_unk = false;
      continue;
    }
    if (!byte_tokens_.empty()) {
      bool all = true;
      for (size_t k = i - len; k < i; ++k) all &= byte_tokens_[static_cast<unsigned char>(piece[k])] >= 0;
      if (all) {
        for (size_t k = i - len; k < i; ++k) symbols.push_back(byte_tokens_[static_cast<unsigned char>(piece[k])]);
        last_was_unk = false;
        continue;
      }
    }
    if (unk_ >= 0 && !(fuse_unk_ && last_was_unk)) symbols.push_back(unk_);
    last_was_unk = unk_ >= 0;  // without an unk token the character is dropped, as in tokenizers
  }
  merge(symbols);
  if (cacheable) {
    if (cache_.size() >= kCacheLimit) cache_.clear();
    cache_.emplace(std::move(key), symbols);
  }
  out.insert(out.end(), symbols.begin(), symbols.end());
}

// Applies merges lowest rank first (leftmost first among equal ranks) until none applies.
void Bpe::merge(std::vector<int>& symbols) const {
  const int n = static_cast<int>(symbols.size());
  if (n < 2) return;
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;
  struct Candidate {
    int rank, left, left_id, right_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  const auto consider = [&](int left) {
    const int right = next[left];
    if (left < 0 || right < 0) return;
    auto it = merges_.find(pair_key(symbols[left], symbols[right]));
    if (it != merges_.end()) queue.push({it->second.first, left, symbols[left], symbols[right]});
  };
  for (int i = 0; i + 1 < n; ++i) consider(i);
  std::vector<char> dead(n, 0);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    const int right = next[c.left];
    if (dead[c.left] || right < 0 || symbols[c.left] != c.left_id || symbols[right] != c.right_id) continue;
    symbols[c.left] = merges_.at(pair_key(c.left_id, c.right_id)).second;
    dead[right] = 1;
    next[c.left] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.left;
    if (prev[c.left] >= 0) consider(prev[c.left]);
    consider(c.left);
  }
  int w = 0;
  for (int i = 0; i >= 0 && i < n; i = next[i]) symbols[w++] = symbols[i];
  symbols.resize(w);
}

}  // namespace crossmoe
