#include "tokenizer/tokenizer.hpp"

#include <utf8proc.h>

#include <algorithm>
#include <functional>
#include <map>

#include "tokenizer/regex.hpp"
#include "tokenizer/unicode.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"
#include "util/replace_all.hpp"

namespace crossmoe {

using nlohmann::json;

namespace {

const std::string kReplacementChar = "\xef\xbf\xbd";  // U+FFFD

std::string type_of(const json& j, const char* what) {
  require(j.is_object() && j.contains("type") && j["type"].is_string(),
          std::string("tokenizer.json: a ") + what + " lacks its 'type'");
  return j["type"].get<std::string>();
}

[[noreturn]] void unsupported(const char* what, const std::string& type) {
  throw Error(std::string("tokenizer.json: unsupported ") + what + " '" + type + "'");
}

// A pattern object {"String": "..."} or {"Regex": "..."}; strings become literal regexes.
std::string pattern_regex(const json& pattern, bool* is_string = nullptr) {
  require(pattern.is_object(), "tokenizer.json: a pattern must be an object");
  if (pattern.contains("Regex")) {
    if (is_string) *is_string = false;
    return pattern["Regex"].get<std::string>();
  }
  require(pattern.contains("String"), "tokenizer.json: a pattern needs 'String' or 'Regex'");
  if (is_string) *is_string = true;
  std::string quoted;
  for (char c : pattern["String"].get<std::string>()) {
    if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) quoted += '\\';
    quoted += c;
  }
  return quoted;
}

bool is_whitespace(char32_t cp) {
  if ((cp >= 0x09 && cp <= 0x0d) || cp == 0x20 || cp == 0x85) return true;
  const auto cat = utf8proc_category(utf8proc_int32_t(cp));
  return cat == UTF8PROC_CATEGORY_ZS || cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP;
}

bool is_word_char(char32_t cp) {
  if (cp == '_') return true;
  const auto cat = utf8proc_category(utf8proc_int32_t(cp));
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

// The code point that ends just before byte `end` (end > 0, valid UTF-8).
char32_t char_before(std::string_view s, size_t end, size_t* begin) {
  size_t b = end - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xc0) == 0x80) --b;
  *begin = b;
  return unicode::decode_at(s, b, end - b);
}

// Bytes to text as Rust's from_utf8_lossy does: each maximal ill-formed subsequence becomes one U+FFFD.
std::string utf8_lossy(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    const size_t len = unicode::valid_sequence_length(s, i);
    if (len > 0) {
      out.append(s.substr(i, len));
      i += len;
      continue;
    }
    const unsigned char c = s[i];
    size_t need = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 1;
    size_t k = 1;
    for (; k < need && i + k < s.size(); ++k) {
      const unsigned char d = s[i + k];
      unsigned char lo = 0x80, hi = 0xbf;
      if (k == 1) {
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
      }
      if (d < lo || d > hi) break;
    }
    out += kReplacementChar;
    i += k;
  }
  return out;
}

}  // namespace

namespace tokenizer_parts {

// ---------------------------------------------------------------- normalizers
struct Normalizer {
  virtual ~Normalizer() = default;
  virtual void apply(std::string& s) const = 0;
};

struct UnicodeForm : Normalizer {
  unicode::NormalForm form;
  explicit UnicodeForm(unicode::NormalForm f) : form(f) {}
  void apply(std::string& s) const override { s = unicode::normalize(s, form); }
};
struct Lowercase : Normalizer {
  void apply(std::string& s) const override { s = unicode::lowercase(s); }
};
struct Prepend : Normalizer {
  std::string prefix;
  void apply(std::string& s) const override {
    if (!s.empty()) s.insert(0, prefix);
  }
};
struct ReplaceNormalizer : Normalizer {
  std::string from, to;
  void apply(std::string& s) const override { s = replace_all(std::move(s), from, to); }
};
struct StripNormalizer : Normalizer {
  bool left, right;
  void apply(std::string& s) const override {
    size_t b = 0, e = s.size();
    while (left && b < e) {
      const size_t len = unicode::valid_sequence_length(s, b);
      if (!is_whitespace(unicode::decode_at(s, b, len))) break;
      b += len;
    }
    while (right && e > b) {
      size_t start;
      if (!is_whitespace(char_before(s, e, &start))) break;
      e = start;
    }
    s = s.substr(b, e - b);
  }
};
struct NormalizerSequence : Normalizer {
  std::vector<std::unique_ptr<Normalizer>> parts;
  void apply(std::string& s) const override {
    for (const auto& p : parts) p->apply(s);
  }
};

std::unique_ptr<Normalizer> make_normalizer(const json& j) {
  const std::string type = type_of(j, "normalizer");
  if (type == "NFC") return std::make_unique<UnicodeForm>(unicode::NormalForm::NFC);
  if (type == "NFD") return std::make_unique<UnicodeForm>(unicode::NormalForm::NFD);
  if (type == "NFKC") return std::make_unique<UnicodeForm>(unicode::NormalForm::NFKC);
  if (type == "NFKD") return std::make_unique<UnicodeForm>(unicode::NormalForm::NFKD);
  if (type == "Lowercase") return std::make_unique<Lowercase>();
  if (type == "Prepend") {
    auto p = std::make_unique<Prepend>();
    p->prefix = j.at("prepend").get<std::string>();
    return p;
  }
  if (type == "Replace") {
    bool literal = false;
    pattern_regex(j.at("pattern"), &literal);
    require(literal, "tokenizer.json: Replace normalizers with a regex pattern are not supported");
    auto r = std::make_unique<ReplaceNormalizer>();
    r->from = j["pattern"]["String"].get<std::string>();
    r->to = j.at("content").get<std::string>();
    return r;
  }
  if (type == "Strip") {
    auto s = std::make_unique<StripNormalizer>();
    s->left = j.value("strip_left", true);
    s->right = j.value("strip_right", true);
    return s;
  }
  if (type == "Sequence") {
    auto seq = std::make_unique<NormalizerSequence>();
    for (const auto& part : j.at("normalizers")) seq->parts.push_back(make_normalizer(part));
    return seq;
  }
  unsupported("normalizer", type);
}

// ---------------------------------------------------------------- pre-tokenizers
struct Word {
  std::string text;
  bool at_start;  // begins at offset 0 of the whole input
};

struct PreTokenizer {
  virtual ~PreTokenizer() = default;
  virtual void apply(std::vector<Word>& words) const = 0;
};

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

// Splits every word at the matches of a regex, keeping the matches as `behavior` says.
void split_words(std::vector<Word>& words, const Regex& regex, Behavior behavior, bool invert) {
  std::vector<Word> out;
  for (const Word& w : words) {
    struct Part {
      size_t begin, end;
      bool match;
    };
    std::vector<Part> parts;
    size_t at = 0;
    for (const auto& [b, e] : regex.find_all(w.text)) {
      if (b > at) parts.push_back({at, b, false});
      parts.push_back({b, e, true});
      at = e;
    }
    if (at < w.text.size()) parts.push_back({at, w.text.size(), false});
    if (invert)
      for (Part& p : parts) p.match = !p.match;
    std::vector<std::pair<size_t, size_t>> pieces;
    bool pending_next = false;  // MergedWithNext: a match waiting for what follows
    for (size_t i = 0; i < parts.size(); ++i) {
      const Part& p = parts[i];
      switch (behavior) {
        case Behavior::Removed:
          if (!p.match) pieces.push_back({p.begin, p.end});
          break;
        case Behavior::Isolated: pieces.push_back({p.begin, p.end}); break;
        case Behavior::MergedWithPrevious:
          if (p.match && !pieces.empty() && pieces.back().second == p.begin) pieces.back().second = p.end;
          else pieces.push_back({p.begin, p.end});
          break;
        case Behavior::MergedWithNext:
          if (pending_next) pieces.back().second = p.end;
          else pieces.push_back({p.begin, p.end});
          pending_next = p.match;
          break;
        case Behavior::Contiguous:
          if (p.match && i > 0 && parts[i - 1].match) pieces.back().second = p.end;
          else pieces.push_back({p.begin, p.end});
          break;
      }
    }
    for (const auto& [b, e] : pieces)
      if (e > b) out.push_back({w.text.substr(b, e - b), w.at_start && b == 0});
  }
  words = std::move(out);
}

// GPT-2's pattern, used by ByteLevel when use_regex is set.
const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct ByteLevelPre : PreTokenizer {
  bool add_prefix_space = false;
  std::unique_ptr<Regex> regex;  // null when use_regex is false
  void apply(std::vector<Word>& words) const override {
    if (add_prefix_space)
      for (Word& w : words)
        if (w.text.empty() || w.text[0] != ' ') w.text.insert(0, 1, ' ');
    if (regex) split_words(words, *regex, Behavior::Isolated, false);
    for (Word& w : words) {
      std::string mapped;
      mapped.reserve(w.text.size() * 2);
      for (unsigned char b : w.text) mapped += unicode::byte_to_char(b);
      w.text = std::move(mapped);
    }
  }
};
struct SplitPre : PreTokenizer {
  std::unique_ptr<Regex> regex;
  Behavior behavior;
  bool invert;
  void apply(std::vector<Word>& words) const override { split_words(words, *regex, behavior, invert); }
};
struct MetaspacePre : PreTokenizer {
  std::string replacement;
  std::string scheme;  // always | first | never
  bool split = true;
  std::unique_ptr<Regex> regex;  // the replacement, literally
  void apply(std::vector<Word>& words) const override {
    for (Word& w : words) {
      w.text = replace_all(std::move(w.text), " ", replacement);
      const bool prepend = scheme == "always" || (scheme == "first" && w.at_start);
      if (prepend && w.text.rfind(replacement, 0) != 0) w.text.insert(0, replacement);
    }
    if (split) split_words(words, *regex, Behavior::MergedWithNext, false);
  }
};
struct PreTokenizerSequence : PreTokenizer {
  std::vector<std::unique_ptr<PreTokenizer>> parts;
  void apply(std::vector<Word>& words) const override {
    for (const auto& p : parts) p->apply(words);
  }
};

Behavior behavior_from(const std::string& name) {
  static const std::map<std::string, Behavior> names = {{"Removed", Behavior::Removed},
                                                        {"Isolated", Behavior::Isolated},
                                                        {"MergedWithPrevious", Behavior::MergedWithPrevious},
                                                        {"MergedWithNext", Behavior::MergedWithNext},
                                                        {"Contiguous", Behavior::Contiguous}};
  auto it = names.find(name);
  require(it != names.end(), "tokenizer.json: unknown split behavior '" + name + "'");
  return it->second;
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, bool* byte_level) {
  const std::string type = type_of(j, "pre_tokenizer");
  if (type == "ByteLevel") {
    *byte_level = true;
    auto b = std::make_unique<ByteLevelPre>();
    b->add_prefix_space = j.value("add_prefix_space", false);
    if (j.value("use_regex", true)) b->regex = std::make_unique<Regex>(kGpt2Pattern);
    return b;
  }
  if (type == "Split") {
    auto s = std::make_unique<SplitPre>();
    s->regex = std::make_unique<Regex>(pattern_regex(j.at("pattern")));
    s->behavior = behavior_from(j.value("behavior", "Isolated"));
    s->invert = j.value("invert", false);
    return s;
  }
  if (type == "Digits") {
    auto s = std::make_unique<SplitPre>();
    s->regex = std::make_unique<Regex>(j.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)");
    s->behavior = Behavior::Isolated;
    s->invert = false;
    return s;
  }
  if (type == "Metaspace") {
    auto m = std::make_unique<MetaspacePre>();
    m->replacement = j.value("replacement", "\xe2\x96\x81");
    m->scheme = j.contains("prepend_scheme") ? j["prepend_scheme"].get<std::string>()
                                             : (j.value("add_prefix_space", true) ? "always" : "never");
    require(m->scheme == "always" || m->scheme == "first" || m->scheme == "never",
            "tokenizer.json: unknown Metaspace prepend_scheme '" + m->scheme + "'");
    m->split = j.value("split", true);
    m->regex = std::make_unique<Regex>(pattern_regex({{"String", m->replacement}}));
    return m;
  }
  if (type == "Sequence") {
    auto seq = std::make_unique<PreTokenizerSequence>();
    for (const auto& part : j.at("pretokenizers")) seq->parts.push_back(make_pre_tokenizer(part, byte_level));
    return seq;
  }
  unsupported("pre_tokenizer", type);
}

// ---------------------------------------------------------------- decoders
struct Decoder {
  virtual ~Decoder() = default;
  virtual void apply(std::vector<std::string>& tokens) const = 0;
};

struct ByteLevelDecoder : Decoder {
  void apply(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens)
      for (size_t i = 0; i < t.size();) {
        size_t len = unicode::valid_sequence_length(t, i);
        if (len == 0) len = 1;
        const int b = unicode::char_to_byte(unicode::decode_at(t, i, len));
        if (b >= 0) bytes += char(b);
        else bytes.append(t, i, len);
        i += len;
      }
    tokens = {utf8_lossy(bytes)};
  }
};
struct MetaspaceDecoder : Decoder {
  std::string replacement;
  bool strip_first = true;
  void apply(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      tokens[i] = replace_all(std::move(tokens[i]), replacement, " ");
      if (i == 0 && strip_first && !tokens[i].empty() && tokens[i][0] == ' ') tokens[i].erase(0, 1);
    }
  }
};
struct ReplaceDecoder : Decoder {
  std::string from, to;
  void apply(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) t = replace_all(std::move(t), from, to);
  }
};
struct ByteFallbackDecoder : Decoder {
  static int byte_of(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; ++i) {
      const char c = t[i];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (d < 0) return -1;
      v = v * 16 + d;
    }
    return v;
  }
  void apply(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    const auto flush = [&] {
      if (pending.empty()) return;
      if (unicode::first_invalid_byte(pending) == std::string::npos) out.push_back(pending);
      else
        for (size_t i = 0; i < pending.size(); ++i) out.push_back(kReplacementChar);
      pending.clear();
    };
    for (std::string& t : tokens) {
      const int b = byte_of(t);
      if (b >= 0) {
        pending += char(b);
        continue;
      }
      flush();
      out.push_back(std::move(t));
    }
    flush();
    tokens = std::move(out);
  }
};
struct FuseDecoder : Decoder {
  void apply(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens = {all};
  }
};
struct StripDecoder : Decoder {
  std::string content;
  int start = 0, stop = 0;
  void apply(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      for (int i = 0; i < start && t.rfind(content, 0) == 0 && !content.empty(); ++i) t.erase(0, content.size());
      for (int i = 0; i < stop && !content.empty() && t.size() >= content.size() &&
                      t.compare(t.size() - content.size(), content.size(), content) == 0;
           ++i)
        t.erase(t.size() - content.size());
    }
  }
};
struct DecoderSequence : Decoder {
  std::vector<std::unique_ptr<Decoder>> parts;
  void apply(std::vector<std::string>& tokens) const override {
    for (const auto& p : parts) p->apply(tokens);
  }
};

std::unique_ptr<Decoder> make_decoder(const json& j) {
  const std::string type = type_of(j, "decoder");
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    auto m = std::make_unique<MetaspaceDecoder>();
    m->replacement = j.value("replacement", "\xe2\x96\x81");
    const std::string scheme = j.contains("prepend_scheme") ? j["prepend_scheme"].get<std::string>()
                                                            : (j.value("add_prefix_space", true) ? "always" : "never");
    m->strip_first = scheme != "never";
    return m;
  }
  if (type == "Replace") {
    bool literal = false;
    pattern_regex(j.at("pattern"), &literal);
    require(literal, "tokenizer.json: Replace decoders with a regex pattern are not supported");
    auto r = std::make_unique<ReplaceDecoder>();
    r->from = j["pattern"]["String"].get<std::string>();
    r->to = j.at("content").get<std::string>();
    return r;
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    auto s = std::make_unique<StripDecoder>();
    s->content = j.at("content").get<std::string>();
    s->start = j.value("start", 0);
    s->stop = j.value("stop", 0);
    return s;
  }
  if (type == "Sequence") {
    auto seq = std::make_unique<DecoderSequence>();
    for (const auto& part : j.at("decoders")) seq->parts.push_back(make_decoder(part));
    return seq;
  }
  unsupported("decoder", type);
}

// ---------------------------------------------------------------- post-processors
struct PostProcessor {
  virtual ~PostProcessor() = default;
  virtual void apply(std::vector<int>& ids) const = 0;
};
struct TemplatePost : PostProcessor {
  std::vector<int> prefix, suffix;
  void apply(std::vector<int>& ids) const override {
    ids.insert(ids.begin(), prefix.begin(), prefix.end());
    ids.insert(ids.end(), suffix.begin(), suffix.end());
  }
};
struct PostSequence : PostProcessor {
  std::vector<std::unique_ptr<PostProcessor>> parts;
  void apply(std::vector<int>& ids) const override {
    for (const auto& p : parts) p->apply(ids);
  }
};
struct NoPost : PostProcessor {
  void apply(std::vector<int>&) const override {}
};

std::unique_ptr<PostProcessor> make_post_processor(const json& j) {
  const std::string type = type_of(j, "post_processor");
  if (type == "ByteLevel") return std::make_unique<NoPost>();  // only adjusts offsets
  if (type == "TemplateProcessing") {
    auto t = std::make_unique<TemplatePost>();
    bool seen_sequence = false;
    for (const auto& item : j.at("single")) {
      if (item.contains("Sequence")) {
        seen_sequence = true;
        continue;
      }
      require(item.contains("SpecialToken"), "tokenizer.json: unknown TemplateProcessing item");
      const std::string name = item["SpecialToken"].at("id").get<std::string>();
      require(j.contains("special_tokens") && j["special_tokens"].contains(name),
              "tokenizer.json: TemplateProcessing names an unknown special token '" + name + "'");
      for (const auto& id : j["special_tokens"][name].at("ids")) (seen_sequence ? t->suffix : t->prefix).push_back(id.get<int>());
    }
    return t;
  }
  if (type == "Sequence") {
    auto seq = std::make_unique<PostSequence>();
    for (const auto& part : j.at("processors")) seq->parts.push_back(make_post_processor(part));
    return seq;
  }
  unsupported("post_processor", type);
}

}  // namespace tokenizer_parts

using namespace tokenizer_parts;

// ---------------------------------------------------------------- Tokenizer

Tokenizer Tokenizer::load(const std::filesystem::path& path) {
  try {
    return Tokenizer(read_json_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + ": " + json_error_text(e));
  } catch (const Error& e) {
    const std::string what = e.what();
    throw Error(what.rfind("tokenizer.json", 0) == 0 ? path.string() + what.substr(14) : what);
  }
}

Tokenizer::Tokenizer(const json& j) {
  require(j.is_object() && j.contains("model"), "tokenizer.json: missing 'model'");
  const std::string model_type = j["model"].value("type", "BPE");
  if (model_type != "BPE") unsupported("model", model_type);
  model_ = std::make_unique<Bpe>(j["model"]);
  if (j.contains("normalizer") && !j["normalizer"].is_null()) normalizer_ = make_normalizer(j["normalizer"]);
  if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null())
    pre_tokenizer_ = make_pre_tokenizer(j["pre_tokenizer"], &byte_level_);
  if (j.contains("decoder") && !j["decoder"].is_null()) decoder_ = make_decoder(j["decoder"]);
  if (j.contains("post_processor") && !j["post_processor"].is_null()) post_processor_ = make_post_processor(j["post_processor"]);
  added_by_first_byte_.resize(256);
  if (j.contains("added_tokens"))
    for (const auto& a : j["added_tokens"]) {
      AddedToken t{a.at("id").get<int>(),          a.at("content").get<std::string>(), a.value("special", false),
                   a.value("lstrip", false),         a.value("rstrip", false),          a.value("single_word", false),
                   a.value("normalized", !a.value("special", false)), a.at("content").get<std::string>()};
      require(!t.content.empty() && t.id >= 0, "tokenizer.json: bad entry in 'added_tokens'");
      if (t.normalized && normalizer_) normalizer_->apply(t.pattern);
      if (t.pattern.empty()) continue;
      added_by_first_byte_[static_cast<unsigned char>(t.pattern[0])].push_back(int(added_.size()));
      added_by_id_[t.id] = added_.size();
      added_ids_[t.content] = t.id;
      added_.push_back(std::move(t));
    }
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

// Leftmost-longest matches of added tokens whose `normalized` flag equals normalized_tokens.
std::vector<Tokenizer::Segment> Tokenizer::split_added(std::string_view text, bool normalized_tokens) const {
  std::vector<Segment> out;
  size_t plain_start = 0;
  for (size_t i = 0; i < text.size();) {
    int best = -1;
    for (int idx : added_by_first_byte_[static_cast<unsigned char>(text[i])]) {
      const AddedToken& t = added_[idx];
      if (t.normalized != normalized_tokens || text.compare(i, t.pattern.size(), t.pattern) != 0) continue;
      if (best >= 0 && t.pattern.size() <= added_[best].pattern.size()) continue;
      if (t.single_word) {
        size_t b;
        const size_t end = i + t.pattern.size();
        if (i > 0 && is_word_char(char_before(text, i, &b))) continue;
        if (end < text.size()) {
          const size_t len = std::max<size_t>(1, unicode::valid_sequence_length(text, end));
          if (is_word_char(unicode::decode_at(text, end, len))) continue;
        }
      }
      best = idx;
    }
    if (best < 0) {
      ++i;
      continue;
    }
    const AddedToken& t = added_[best];
    size_t begin = i, end = i + t.pattern.size();
    if (t.lstrip)
      for (size_t b; begin > plain_start && is_whitespace(char_before(text, begin, &b));) begin = b;
    if (t.rstrip)
      while (end < text.size()) {
        const size_t len = std::max<size_t>(1, unicode::valid_sequence_length(text, end));
        if (!is_whitespace(unicode::decode_at(text, end, len))) break;
        end += len;
      }
    if (begin > plain_start) out.push_back({plain_start, begin, -1});
    out.push_back({begin, end, best});
    plain_start = i = end;
  }
  if (plain_start < text.size()) out.push_back({plain_start, text.size(), -1});
  return out;
}

void Tokenizer::encode_text(std::string_view text, bool at_start, std::vector<int>& out) {
  std::string normalized(text);
  if (normalizer_) normalizer_->apply(normalized);
  for (const Segment& seg : split_added(normalized, true)) {
    if (seg.added >= 0) {
      out.push_back(added_[seg.added].id);
      continue;
    }
    std::vector<Word> words = {{normalized.substr(seg.begin, seg.end - seg.begin), at_start && seg.begin == 0}};
    if (pre_tokenizer_) pre_tokenizer_->apply(words);
    for (const Word& w : words) model_->encode_piece(w.text, out);
  }
}

std::vector<int> Tokenizer::encode(std::string_view text, bool add_special_tokens) {
  std::vector<int> ids;
  const size_t bad = unicode::first_invalid_byte(text);
  if (bad != std::string_view::npos) {
    require(byte_level_, "input is not valid UTF-8 (byte " + std::to_string(bad) + ")");
    // Byte-level vocabularies hold every byte: valid runs are encoded as usual, each invalid
    // byte becomes its own byte token.
    size_t i = 0;
    while (i < text.size()) {
      size_t j = i;
      while (j < text.size() && (static_cast<unsigned char>(text[j]) < 0x80 || unicode::valid_sequence_length(text, j) > 0))
        j += std::max<size_t>(1, unicode::valid_sequence_length(text, j));
      if (j > i) {
        const std::vector<int> part = encode(text.substr(i, j - i), false);
        ids.insert(ids.end(), part.begin(), part.end());
      }
      if (j < text.size()) {
        const int id = model_->token_to_id(unicode::byte_to_char(static_cast<unsigned char>(text[j])));
        if (id >= 0) ids.push_back(id);
        ++j;
      }
      i = j;
    }
  } else {
    for (const Segment& seg : split_added(text, false)) {
      if (seg.added >= 0) ids.push_back(added_[seg.added].id);
      else encode_text(text.substr(seg.begin, seg.end - seg.begin), seg.begin == 0, ids);
    }
  }
  if (add_special_tokens && post_processor_) post_processor_->apply(ids);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int id : ids) {
    if (skip_special_tokens && is_special(id)) continue;
    std::string t = id_to_token(id);
    if (!t.empty()) tokens.push_back(std::move(t));
  }
  if (!decoder_) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  decoder_->apply(tokens);
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

int Tokenizer::token_to_id(std::string_view token) const {
  auto it = added_ids_.find(std::string(token));
  return it != added_ids_.end() ? it->second : model_->token_to_id(token);
}

std::string Tokenizer::id_to_token(int id) const {
  // A normalized added token reads back in its normalised form, as in tokenizers.
  auto it = added_by_id_.find(id);
  if (it == added_by_id_.end()) return model_->id_to_token(id);
  const AddedToken& t = added_[it->second];
  return t.normalized ? t.pattern : t.content;
}

bool Tokenizer::is_special(int id) const {
  auto it = added_by_id_.find(id);
  return it != added_by_id_.end() && added_[it->second].special;
}

int Tokenizer::vocab_size() const {
  int n = model_->vocab_size();
  for (const AddedToken& t : added_) n = std::max(n, t.id + 1);
  return n;
}

DecodeStream::DecodeStream(const Tokenizer& tokenizer, bool skip_special_tokens, std::vector<int> context)
    : tokenizer_(tokenizer), skip_special_(skip_special_tokens), ids_(std::move(context)), read_(ids_.size()) {}

std::string DecodeStream::push(int id) {
  ids_.push_back(id);
  const std::vector<int> window(ids_.begin() + std::ptrdiff_t(prefix_), ids_.end());
  const std::vector<int> settled(ids_.begin() + std::ptrdiff_t(prefix_), ids_.begin() + std::ptrdiff_t(read_));
  const std::string before = tokenizer_.decode(settled, skip_special_);
  const std::string now = tokenizer_.decode(window, skip_special_);
  if (now.size() < before.size() || now.compare(0, before.size(), before) != 0) return "";
  if (now.size() >= 3 && now.compare(now.size() - 3, 3, kReplacementChar) == 0) return "";  // incomplete character
  prefix_ = read_;
  read_ = ids_.size();
  return now.substr(before.size());
}

}  // namespace crossmoe
