#include "tokenizer/bpe_trainer.hpp"

#include <algorithm>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "tokenizer/regex.hpp"
#include "tokenizer/unicode.hpp"
#include "util/error.hpp"

namespace crossmoe {

namespace {

// Qwen2's pre-tokenizer pattern: words with a leading non-letter, single digits, punctuation
// runs, newline runs, and whitespace that does not precede a word.
const char* kSplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

const Regex& split_regex() {
  thread_local const Regex regex(kSplitPattern);
  return regex;
}

uint64_t key(int a, int b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

}  // namespace

BpeTrainer::BpeTrainer(const BpeTrainingOptions& options) : options_(options) {
  require(options.vocab_size >= 256 + int(options.special_tokens.size()),
          "vocabulary size must be at least 256 plus the special tokens");
}

void BpeTrainer::add_text(std::string_view text) {
  // Invalid UTF-8 is dropped byte by byte: the regex needs valid text.
  std::string clean;
  if (unicode::first_invalid_byte(text) != std::string_view::npos) {
    for (size_t i = 0; i < text.size();) {
      const size_t len = unicode::valid_sequence_length(text, i);
      if (len) clean.append(text.substr(i, len));
      i += std::max<size_t>(len, 1);
    }
    text = clean;
  }
  for (const auto& [b, e] : split_regex().find_all(text)) ++word_counts_[std::string(text.substr(b, e - b))];
}

nlohmann::json BpeTrainer::train() {
  // Symbols are token ids: 0..255 the bytes, then one per merge.
  std::vector<std::string> token(256);
  std::unordered_map<std::string, int> id_of;
  for (int b = 0; b < 256; ++b) id_of[token[b] = std::string(1, char(b))] = b;
  struct Word {
    std::vector<int> symbols;
    int64_t count;
  };
  std::vector<Word> words;
  words.reserve(word_counts_.size());
  for (const auto& [text, count] : word_counts_) {
    Word w{{}, count};
    for (unsigned char c : text) w.symbols.push_back(c);
    words.push_back(std::move(w));
  }
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::unordered_set<int>> pair_words;
  for (int wi = 0; wi < int(words.size()); ++wi) {
    const auto& s = words[wi].symbols;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      pair_count[key(s[i], s[i + 1])] += words[wi].count;
      pair_words[key(s[i], s[i + 1])].insert(wi);
    }
  }
  // Most frequent first; ties to the pair whose byte strings sort first, so training is
  // deterministic. Entries go stale as counts change and are checked when popped.
  struct Entry {
    int64_t count;
    uint64_t pair;
  };
  const auto worse = [&](const Entry& a, const Entry& b) {
    if (a.count != b.count) return a.count < b.count;
    const int al = int(a.pair >> 32), ar = int(uint32_t(a.pair)), bl = int(b.pair >> 32), br = int(uint32_t(b.pair));
    if (token[al] != token[bl]) return token[al] > token[bl];
    return token[ar] > token[br];
  };
  std::priority_queue<Entry, std::vector<Entry>, decltype(worse)> heap(worse);
  for (const auto& [p, c] : pair_count) heap.push({c, p});

  const int wanted = options_.vocab_size - 256 - int(options_.special_tokens.size());
  std::vector<std::pair<std::string, std::string>> merges;
  const auto learned = [&] { return int(token.size()) - 256; };
  while (learned() < wanted && !heap.empty()) {
    const Entry top = heap.top();
    heap.pop();
    auto it = pair_count.find(top.pair);
    if (it == pair_count.end() || it->second != top.count) continue;  // stale
    if (top.count < options_.min_frequency) break;
    const int left = int(top.pair >> 32), right = int(uint32_t(top.pair));
    // Two merge paths can spell the same string ("ab"+"c", "a"+"bc"): they share one token.
    const std::string joined = token[left] + token[right];
    auto known = id_of.find(joined);
    const int merged = known != id_of.end() ? known->second : int(token.size());
    if (known == id_of.end()) {
      token.push_back(joined);
      id_of.emplace(joined, merged);
    }
    merges.push_back({token[left], token[right]});
    std::unordered_map<uint64_t, int64_t> changed;
    const std::vector<int> affected(pair_words[top.pair].begin(), pair_words[top.pair].end());
    for (int wi : affected) {
      Word& w = words[wi];
      std::vector<int>& s = w.symbols;
      for (size_t i = 0; i + 1 < s.size(); ++i) changed[key(s[i], s[i + 1])] -= w.count;
      std::vector<int> next;
      next.reserve(s.size());
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == left && s[i + 1] == right) {
          next.push_back(merged);
          ++i;
        } else {
          next.push_back(s[i]);
        }
      }
      s = std::move(next);
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        changed[key(s[i], s[i + 1])] += w.count;
        pair_words[key(s[i], s[i + 1])].insert(wi);
      }
    }
    for (const auto& [p, delta] : changed) {
      if (delta == 0) continue;
      const int64_t c = (pair_count[p] += delta);
      if (c <= 0) pair_count.erase(p);
      else heap.push({c, p});
    }
    pair_count.erase(top.pair);
    pair_words.erase(top.pair);
    if (options_.progress && merges.size() % 256 == 0) options_.progress(learned(), wanted);
  }
  if (options_.progress) options_.progress(learned(), wanted);
  // Merges are learned on raw bytes; tokenizer.json spells tokens through the byte-level map.
  const auto mapped = [](const std::string& bytes) {
    std::string out;
    for (unsigned char c : bytes) out += unicode::byte_to_char(c);
    return out;
  };
  for (auto& [a, b] : merges) a = mapped(a), b = mapped(b);
  return tokenizer_json(merges, options_.special_tokens);
}

nlohmann::json BpeTrainer::tokenizer_json(const std::vector<std::pair<std::string, std::string>>& merges,
                                          const std::vector<std::string>& special_tokens) {
  using nlohmann::json;
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[unicode::byte_to_char(uint8_t(b))] = b;
  json merge_list = json::array();
  int next = 256;
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = next++;
    merge_list.push_back({a, b});
  }
  json added = json::array();
  for (const auto& s : special_tokens) {
    vocab[s] = next;
    added.push_back({{"id", next++}, {"content", s}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                     {"normalized", false}, {"special", true}});
  }
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer",
           {{"type", "Sequence"},
            {"pretokenizers",
             {{{"type", "Split"}, {"pattern", {{"Regex", kSplitPattern}}}, {"behavior", "Isolated"}, {"invert", false}},
              byte_level}}}},
          {"post_processor", byte_level},
          {"decoder", byte_level},
          {"model",
           {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
            {"vocab", vocab}, {"merges", merge_list}}}};
}

}  // namespace crossmoe
