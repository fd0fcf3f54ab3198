#include "model/gguf_tokenizer.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <optional>
#include <string_view>
#include <tuple>
#include <unordered_map>

#include "model/gguf_model.hpp"
#include "util/error.hpp"

namespace crossmoe {

namespace {

using nlohmann::json;

// llama.cpp's token types (llama_token_type).
enum TokenType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// Pre-tokenizer regexes as the models' tokenizer.json files write them and llama.cpp's
// src/llama-vocab.cpp lists them per tokenizer.ggml.pre. Where a model's file has a carriage
// return or line feed itself rather than the escape \r or \n, so does its pattern here: export
// recognises a pre-tokenizer by its patterns' text.
const std::string kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const std::string kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const std::string kQwen35Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const std::string kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct PreTokenizer {
  std::vector<std::string> names;    // tokenizer.ggml.pre values
  std::vector<std::string> regexes;  // applied in order
  bool ignore_merges = false;        // a piece that is a token is that token, whatever the merges say
};

const std::vector<PreTokenizer>& pre_tokenizers() {
  static const std::vector<PreTokenizer> table = {
      {{"qwen2", "deepseek-r1-qwen"}, {kQwen2Regex}},
      {{"qwen35"}, {kQwen35Regex}},
      {{"llama-bpe", "llama3", "llama-v3"}, {kLlama3Regex}, true},
      {{"dbrx", "smaug-bpe"}, {kLlama3Regex}},
      {{"gpt-2", "phi-2", "olmo", "mpt"}, {kGpt2Regex}},
      {{"starcoder", "refact", "command-r", "smollm"}, {R"(\p{N})", kGpt2Regex}},
      {{"deepseek-llm"},
       {"[\r\n]", R"(\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+)", R"(\s?[!-/:-~！-／：-～‘-‟　-。]+)", R"(\s+$)", R"([一-龥ࠀ-一가-퟿]+)",
        R"(\p{N}+)"}},
      {{"deepseek-coder"}, {"[\r\n]", R"(\s?\p{L}+)", R"(\s?\p{P}+)", R"([一-龥ࠀ-一가-퟿]+)", R"(\p{N})"}},
      {{"deepseek-v3"},
       {R"(\p{N}{1,3})", R"([一-龥぀-ゟ゠-ヿ]+)",
        "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|"
        "\\s*[\r\n]+|\\s+(?!\\S)|\\s+"}},
      {{"falcon"}, {R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2Regex, R"([0-9][0-9][0-9])"}},
      // llama.cpp's own choice for files that name none.
      {{"default"}, {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2Regex, R"(\p{N}+)", R"([0-9][0-9][0-9])"}},
  };
  return table;
}

const PreTokenizer* find_pre_tokenizer(const std::string& name) {
  for (const PreTokenizer& p : pre_tokenizers())
    if (std::find(p.names.begin(), p.names.end(), name) != p.names.end()) return &p;
  return nullptr;
}

json byte_level_pre_tokenizer(const PreTokenizer& p) {
  json parts = json::array();
  for (const std::string& regex : p.regexes)
    parts.push_back({{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}});
  parts.push_back({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}});
  return {{"type", "Sequence"}, {"pretokenizers", parts}};
}

// Hugging Face's merges for a SentencePiece vocabulary: each split of a token at a character
// boundary into two tokens, ordered by the token's score (highest first), then the token's id,
// then the halves' ids. Tokens not in `vocab` (unused ones) take no part.
json sentencepiece_merges(const std::vector<std::string>& tokens, const std::vector<double>& scores, const json& vocab) {
  std::unordered_map<std::string_view, int> ids;
  for (size_t id = 0; id < tokens.size(); ++id)
    if (vocab.contains(tokens[id])) ids[tokens[id]] = int(id);
  struct Merge {
    double score;
    int joined, left, right;
  };
  std::vector<Merge> merges;
  for (size_t id = 0; id < tokens.size(); ++id) {
    const std::string_view t = tokens[id];
    if (!ids.count(t)) continue;
    for (size_t k = 1; k < t.size(); ++k) {
      if ((static_cast<unsigned char>(t[k]) & 0xc0) == 0x80) continue;  // inside a character
      const auto l = ids.find(t.substr(0, k)), r = ids.find(t.substr(k));
      if (l != ids.end() && r != ids.end()) merges.push_back({scores[id], int(id), l->second, r->second});
    }
  }
  std::sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) {
    return std::tuple(-a.score, a.joined, a.left, a.right) < std::tuple(-b.score, b.joined, b.left, b.right);
  });
  json out = json::array();
  for (const Merge& m : merges) out.push_back({tokens[size_t(m.left)], tokens[size_t(m.right)]});
  return out;
}

// The BOS and EOS llama.cpp puts around a text (add_bos_token, default per vocabulary type;
// add_eos_token, default false) as Hugging Face's TemplateProcessing; null when it puts neither.
json special_post_processor(const GgufFile& f, const GgufValue& tokens, bool add_bos_by_default) {
  json single = json::array(), special_tokens = json::object();
  const auto special = [&](const char* key) {
    const int64_t id = f.integer(key);
    require(id >= 0 && size_t(id) < tokens.texts.size(), f.label() + ": '" + key + "' is not a token");
    const std::string& text = tokens.texts[size_t(id)];
    special_tokens[text] = {{"id", text}, {"ids", {id}}, {"tokens", {text}}};
    return json{{"SpecialToken", {{"id", text}, {"type_id", 0}}}};
  };
  const bool bos = f.has("tokenizer.ggml.bos_token_id") && f.boolean("tokenizer.ggml.add_bos_token", add_bos_by_default);
  const bool eos = f.has("tokenizer.ggml.eos_token_id") && f.boolean("tokenizer.ggml.add_eos_token", false);
  if (!bos && !eos) return nullptr;
  if (bos) single.push_back(special("tokenizer.ggml.bos_token_id"));
  single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  if (eos) single.push_back(special("tokenizer.ggml.eos_token_id"));
  return {{"type", "TemplateProcessing"}, {"single", single}, {"pair", json::array()}, {"special_tokens", special_tokens}};
}

// The ids a tokenizer.json's post-processor puts before and after a single text (TemplateProcessing,
// alone or in a Sequence; other post-processors add none), which llama.cpp expresses as
// add_bos_token / add_eos_token.
struct SpecialWrap {
  std::vector<int64_t> before, after;
};
SpecialWrap post_processor_wrap(const json& pp) {
  SpecialWrap wrap;
  if (!pp.is_object()) return wrap;
  const std::string type = pp.value("type", "");
  if (type == "Sequence") {
    for (const json& part : pp.value("processors", json::array())) {
      const SpecialWrap p = post_processor_wrap(part);
      wrap.before.insert(wrap.before.end(), p.before.begin(), p.before.end());
      wrap.after.insert(wrap.after.end(), p.after.begin(), p.after.end());
    }
    return wrap;
  }
  if (type != "TemplateProcessing") return wrap;
  bool after = false;
  const json specials = pp.value("special_tokens", json::object());
  for (const json& item : pp.value("single", json::array())) {
    if (item.contains("Sequence")) after = true;
    if (!item.contains("SpecialToken")) continue;
    const std::string name = item["SpecialToken"].value("id", "");
    require(specials.contains(name) && specials[name].contains("ids"),
            "tokenizer.json: TemplateProcessing names an unknown special token '" + name + "'");
    for (const json& id : specials[name]["ids"]) (after ? wrap.after : wrap.before).push_back(id.get<int64_t>());
  }
  return wrap;
}

}  // namespace

std::string gguf_pre_tokenizer_names() {
  std::string s;
  for (const PreTokenizer& p : pre_tokenizers())
    for (const std::string& name : p.names) s += (s.empty() ? "" : ", ") + name;
  return s;
}

std::optional<nlohmann::json> gguf_tokenizer_json(const GgufFile& f) {
  if (!f.has("tokenizer.ggml.model")) return std::nullopt;
  const std::string model = f.string("tokenizer.ggml.model");
  if (model == "no_vocab" || model == "none") return std::nullopt;
  require(model == "gpt2" || model == "llama",
          f.label() + ": tokenizer.ggml.model '" + model +
              "' is not supported (gpt2, i.e. byte-level BPE, and llama, i.e. SentencePiece; no_vocab runs with --ids)");
  const bool sentencepiece = model == "llama";
  const GgufValue* tokens = f.find("tokenizer.ggml.tokens");
  require(tokens && tokens->type == GgufType::Array && tokens->element == GgufType::String,
          f.label() + ": 'tokenizer.ggml.tokens' must be an array of strings");
  const GgufValue* types = f.find("tokenizer.ggml.token_type");
  require(!types || (types->type == GgufType::Array && types->element != GgufType::String &&
                     types->element != GgufType::F32 && types->element != GgufType::F64 && types->size() == tokens->size()),
          f.label() + ": 'tokenizer.ggml.token_type' must be an integer array as long as the token list");

  json vocab = json::object(), added = json::array();
  for (size_t id = 0; id < tokens->texts.size(); ++id) {
    const std::string& token = tokens->texts[id];
    const int64_t type = types ? types->integers[id] : int64_t(kNormal);
    if (type == kUnused) continue;
    if (type == kControl || type == kUserDefined || (sentencepiece && type == kUnknown)) {
      if (token.empty()) continue;
      // SentencePiece's own pieces match the raw text; a byte-level user-defined token, as
      // Hugging Face's added tokens default to, the normalised text.
      added.push_back({{"id", id}, {"content", token}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                       {"normalized", !sentencepiece && type == kUserDefined}, {"special", type != kUserDefined}});
    }
    vocab[token] = id;
  }

  json out = {{"version", "1.0"}, {"added_tokens", added}, {"post_processor", special_post_processor(f, *tokens, sentencepiece)}};
  if (sentencepiece) {
    const GgufValue* scores = f.find("tokenizer.ggml.scores");
    require(scores && scores->type == GgufType::Array && (scores->element == GgufType::F32 || scores->element == GgufType::F64) &&
                scores->size() == tokens->size(),
            f.label() + ": 'tokenizer.ggml.scores' must be a float array as long as the token list");
    require(std::none_of(scores->reals.begin(), scores->reals.end(), [](double x) { return std::isnan(x); }),
            f.label() + ": 'tokenizer.ggml.scores' holds NaN");
    const bool space_prefix = f.boolean("tokenizer.ggml.add_space_prefix", true);
    const std::string space = "\xe2\x96\x81";  // U+2581, SentencePiece's space
    json normalizers = json::array();
    if (space_prefix) normalizers.push_back({{"type", "Prepend"}, {"prepend", space}});
    normalizers.push_back({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", space}});
    json decoders = {{{"type", "Replace"}, {"pattern", {{"String", space}}}, {"content", " "}},
                     {{"type", "ByteFallback"}},
                     {{"type", "Fuse"}}};
    if (space_prefix) decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    json unk = nullptr;
    if (f.has("tokenizer.ggml.unknown_token_id")) {
      const int64_t id = f.integer("tokenizer.ggml.unknown_token_id");
      require(id >= 0 && size_t(id) < tokens->texts.size(), f.label() + ": 'tokenizer.ggml.unknown_token_id' is not a token");
      unk = tokens->texts[size_t(id)];
    }
    out["normalizer"] = {{"type", "Sequence"}, {"normalizers", normalizers}};
    out["pre_tokenizer"] = nullptr;
    out["decoder"] = {{"type", "Sequence"}, {"decoders", decoders}};
    out["model"] = {{"type", "BPE"},       {"dropout", nullptr}, {"unk_token", unk},
                    {"fuse_unk", true},    {"byte_fallback", true}, {"ignore_merges", false},
                    {"vocab", vocab},      {"merges", sentencepiece_merges(tokens->texts, scores->reals, vocab)}};
    return out;
  }

  const GgufValue* merges = f.find("tokenizer.ggml.merges");
  require(!merges || (merges->type == GgufType::Array && merges->element == GgufType::String),
          f.label() + ": 'tokenizer.ggml.merges' must be an array of strings");
  const std::string pre = f.string("tokenizer.ggml.pre", "default");
  const PreTokenizer* p = find_pre_tokenizer(pre);
  require(p != nullptr, f.label() + ": tokenizer.ggml.pre '" + pre + "' is not supported (" + gguf_pre_tokenizer_names() + ")");
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
  out["normalizer"] = nullptr;
  out["pre_tokenizer"] = byte_level_pre_tokenizer(*p);
  out["decoder"] = byte_level;
  out["model"] = {{"type", "BPE"},    {"dropout", nullptr},   {"unk_token", nullptr},
                  {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", p->ignore_merges},
                  {"vocab", vocab},    {"merges", merges ? json(merges->texts) : json::array()}};
  return out;
}

nlohmann::json gguf_tokenizer_config(const GgufFile& f) {
  nlohmann::json out = nlohmann::json::object();
  if (f.has("tokenizer.chat_template")) out["chat_template"] = f.string("tokenizer.chat_template");
  const GgufValue* tokens = f.find("tokenizer.ggml.tokens");
  if (!tokens || tokens->type != GgufType::Array || tokens->element != GgufType::String) return out;
  for (const auto& [key, field] : {std::pair{"tokenizer.ggml.bos_token_id", "bos_token"}, {"tokenizer.ggml.eos_token_id", "eos_token"}})
    if (f.has(key)) {
      const int64_t id = f.integer(key);
      if (id >= 0 && size_t(id) < tokens->texts.size()) out[field] = tokens->texts[size_t(id)];
    }
  return out;
}

void add_gguf_tokenizer_metadata(GgufWriter& w, const ModelConfig& c, const nlohmann::json& tj,
                                 const nlohmann::json& tokenizer_config) {
  using nlohmann::json;
  const auto fail = [](const std::string& why) { throw Error("tokenizer.json cannot be written as GGUF tokenizer metadata: " + why); };
  if (!tj.is_object() || !tj.contains("model") || !tj["model"].is_object()) fail("no 'model'");
  const json& m = tj["model"];
  if (m.value("type", "BPE") != "BPE")
    fail("only BPE models are supported (byte-level, or SentencePiece-style with byte fallback)");
  const bool sentencepiece = m.value("byte_fallback", false);
  const json normalizer = tj.value("normalizer", json());
  const json p = tj.value("pre_tokenizer", json());

  // SentencePiece-style (LLaMA-2, Mistral, Mixtral): spaces become U+2581 and one is prepended, in
  // the normalizer, as Hugging Face's conversion of a SentencePiece model writes it (and as
  // gguf_tokenizer_json reads a "llama" vocabulary back), or by a Metaspace pre-tokenizer that
  // keeps the text whole (split false: newer Mistral files). Written as llama.cpp's own converter
  // writes such files, with add_space_prefix, which llama.cpp applies as the normalizer does: the
  // same tokens, except for text that starts with a space (Metaspace adds no second one) and,
  // with prepend_scheme "first", text after a special token (Metaspace adds none).
  const std::string space = "\xe2\x96\x81";
  bool space_prefix = false;
  const bool metaspace = p.is_object() && p.value("type", "") == "Metaspace";
  if (sentencepiece && metaspace) {
    const std::string scheme = p.contains("prepend_scheme") && p["prepend_scheme"].is_string()
                                   ? p["prepend_scheme"].get<std::string>()
                                   : (p.value("add_prefix_space", true) ? "always" : "never");
    if (!normalizer.is_null() || p.value("replacement", space) != space || p.value("split", true))
      fail("a SentencePiece-style tokenizer with a Metaspace pre-tokenizer needs replacement U+2581, split false and "
           "no normalizer (as Mistral's files write it)");
    space_prefix = scheme != "never";
  } else if (sentencepiece) {
    const json replace = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", space}};
    const json steps = normalizer.is_object() && normalizer.value("type", "") == "Sequence"
                           ? normalizer.value("normalizers", json::array())
                           : json::array({normalizer});
    space_prefix = steps.size() == 2 && steps[0] == json{{"type", "Prepend"}, {"prepend", space}};
    if (!p.is_null() || steps.empty() || steps.back() != replace || steps.size() != (space_prefix ? 2u : 1u))
      fail("a SentencePiece-style tokenizer needs the normalizer Prepend(U+2581) then Replace(' ', U+2581), or the "
           "Replace alone, and no pre-tokenizer (as Hugging Face converts SentencePiece models), or a Metaspace "
           "pre-tokenizer with split false and no normalizer");
  }

  // The pre-tokenizer of a byte-level one must be one llama.cpp names: GPT-2's, or Splits by one
  // of the regex lists of pre_tokenizers() followed by the byte mapping.
  std::string pre;
  if (!sentencepiece) {
    if (p.is_object() && p.value("type", "") == "ByteLevel" && p.value("use_regex", true)) {
      pre = "gpt-2";
    } else if (p.is_object() && p.value("type", "") == "Sequence" && p.contains("pretokenizers") &&
               p["pretokenizers"].is_array() && !p["pretokenizers"].empty()) {
      const json& parts = p["pretokenizers"];
      const json& bl = parts.back();
      std::vector<std::string> regexes;
      for (size_t i = 0; i + 1 < parts.size(); ++i) {
        const json& split = parts[i];
        if (split.is_object() && split.value("type", "") == "Split" && split.value("behavior", "") == "Isolated" &&
            !split.value("invert", false) && split.contains("pattern") && split["pattern"].is_object() &&
            split["pattern"].contains("Regex") && split["pattern"]["Regex"].is_string())
          regexes.push_back(split["pattern"]["Regex"].get<std::string>());
      }
      if (regexes.size() + 1 == parts.size() && bl.is_object() && bl.value("type", "") == "ByteLevel" && !bl.value("use_regex", true))
        for (const PreTokenizer& known : pre_tokenizers())
          if (known.regexes == regexes) {
            pre = known.names.front();
            break;
          }
    }
    if (pre.empty()) fail("its pre-tokenizer is none of the byte-level ones llama.cpp names (" + gguf_pre_tokenizer_names() + ")");
    const bool no_normalizer = normalizer.is_null() || (normalizer.is_object() && normalizer.value("type", "") == "Sequence" &&
                                                        normalizer.value("normalizers", json::array()).empty());
    if (!no_normalizer && !(normalizer.is_object() && normalizer.value("type", "") == "NFC"))
      fail("its normalizer has no llama.cpp equivalent");
  }

  std::vector<std::string> tokens(size_t(c.vocab_size));
  std::vector<int64_t> types(size_t(c.vocab_size), kUnused);
  if (!m.contains("vocab") || !m["vocab"].is_object()) fail("no vocab");
  const auto place = [&](int64_t id, const std::string& text, int type) {
    if (id < 0 || id >= c.vocab_size) fail("token id " + std::to_string(id) + " is outside the model's vocabulary of " + std::to_string(c.vocab_size));
    tokens[size_t(id)] = text;
    types[size_t(id)] = type;
  };
  const auto is_byte_token = [](const std::string& t) {  // <0xNN>, byte fallback's tokens
    return t.size() == 6 && t.compare(0, 3, "<0x") == 0 && std::isxdigit(static_cast<unsigned char>(t[3])) &&
           std::isxdigit(static_cast<unsigned char>(t[4])) && t[5] == '>';
  };
  for (const auto& [text, id] : m["vocab"].items()) place(id.get<int64_t>(), text, sentencepiece && is_byte_token(text) ? kByte : kNormal);
  if (tj.contains("added_tokens"))
    for (const json& a : tj["added_tokens"])
      place(a.at("id").get<int64_t>(), a.at("content").get<std::string>(), a.value("special", false) ? kControl : kUserDefined);
  std::optional<int64_t> unknown;
  if (sentencepiece && m.contains("unk_token") && m["unk_token"].is_string()) {
    const std::string unk = m["unk_token"].get<std::string>();
    if (!m["vocab"].contains(unk)) fail("its unk_token '" + unk + "' is not in the vocabulary");
    unknown = m["vocab"][unk].get<int64_t>();
    types[size_t(*unknown)] = kUnknown;
  }
  // Ids the tokenizer does not use (a vocabulary rounded up) get placeholder tokens, as llama.cpp's
  // converter writes them.
  for (size_t id = 0; id < tokens.size(); ++id)
    if (types[id] == kUnused) tokens[id] = "[PAD" + std::to_string(id) + "]";
  std::vector<std::pair<std::string, std::string>> merges;
  for (const json& merge : m.value("merges", json::array())) {
    if (merge.is_string()) {
      const std::string text = merge.get<std::string>();
      const size_t cut = text.find(' ');
      if (cut == std::string::npos) fail("a merge \"" + text + "\" has no space");
      merges.emplace_back(text.substr(0, cut), text.substr(cut + 1));
    } else if (merge.is_array() && merge.size() == 2) {
      merges.emplace_back(merge[0].get<std::string>(), merge[1].get<std::string>());
    } else {
      fail("a merge is neither \"a b\" nor [a, b]");
    }
  }

  if (sentencepiece) {
    // llama.cpp's SentencePiece tokenizer joins the adjacent pair whose joined token scores
    // highest; Hugging Face's BPE the pair of lowest merge rank. A token scored minus the rank of
    // its first merge ranks them alike exactly when the merges are what gguf_tokenizer_json makes
    // of scores (every split of a token into two tokens, by the joined token's score, then ids),
    // which holds for tokenizers converted from SentencePiece: checked, not assumed.
    std::unordered_map<std::string, size_t> first_merge;
    for (size_t rank = 0; rank < merges.size(); ++rank) first_merge.emplace(merges[rank].first + merges[rank].second, rank);
    std::vector<double> scores(tokens.size(), 0.0);
    for (size_t id = 0; id < tokens.size(); ++id)
      if (const auto it = first_merge.find(tokens[id]); it != first_merge.end() && types[id] != kUnused) scores[id] = -double(it->second);
    const json rebuilt = sentencepiece_merges(tokens, scores, m["vocab"]);
    bool same = rebuilt.size() == merges.size();
    for (size_t i = 0; same && i < merges.size(); ++i) same = rebuilt[i][0] == merges[i].first && rebuilt[i][1] == merges[i].second;
    if (!same)
      fail("its merges are not every split of its tokens ranked by token (as converted from SentencePiece), so no "
           "SentencePiece scores give llama.cpp the same tokens");
    w.add_string("tokenizer.ggml.model", "llama");
    w.add_strings("tokenizer.ggml.tokens", std::move(tokens));
    w.add_f32s("tokenizer.ggml.scores", std::move(scores));
    w.add_i32s("tokenizer.ggml.token_type", std::move(types));
    if (unknown) w.add_u32("tokenizer.ggml.unknown_token_id", uint32_t(*unknown));
    w.add_bool("tokenizer.ggml.add_space_prefix", space_prefix);
  } else {
    std::vector<std::string> joined;
    for (const auto& [left, right] : merges) joined.push_back(left + " " + right);
    w.add_string("tokenizer.ggml.model", "gpt2");
    w.add_string("tokenizer.ggml.pre", pre);
    w.add_strings("tokenizer.ggml.tokens", std::move(tokens));
    w.add_i32s("tokenizer.ggml.token_type", std::move(types));
    w.add_strings("tokenizer.ggml.merges", std::move(joined));
  }
  // What Hugging Face's tokenizer puts around a text, llama.cpp's add_bos_token / add_eos_token: one
  // BOS before it and one EOS after it at most, the ids config.json names (or, where it names
  // none, the tokenizer's).
  const SpecialWrap wrap = post_processor_wrap(tj.value("post_processor", json()));
  if (wrap.before.size() > 1 || wrap.after.size() > 1)
    fail("its post-processor puts " + std::to_string(wrap.before.size()) + " token(s) before a text and " +
         std::to_string(wrap.after.size()) + " after it; llama.cpp adds at most a BOS before and an EOS after");
  ModelConfig ids = c;
  if (!wrap.before.empty()) {
    if (ids.bos_token_id < 0) ids.bos_token_id = int(wrap.before[0]);
    if (ids.bos_token_id != wrap.before[0])
      fail("its post-processor begins a text with token " + std::to_string(wrap.before[0]) + ", config.json's bos_token_id is " +
           std::to_string(ids.bos_token_id));
  }
  if (!wrap.after.empty()) {
    if (ids.eos_token_ids.empty()) ids.eos_token_ids = {int(wrap.after[0])};
    if (ids.eos_token_ids[0] != wrap.after[0])
      fail("its post-processor ends a text with token " + std::to_string(wrap.after[0]) + ", config.json's first eos_token_id is " +
           std::to_string(ids.eos_token_ids[0]));
  }
  add_gguf_special_tokens(w, ids);
  w.add_bool("tokenizer.ggml.add_bos_token", !wrap.before.empty());
  w.add_bool("tokenizer.ggml.add_eos_token", !wrap.after.empty());
  if (tokenizer_config.is_object() && tokenizer_config.contains("chat_template") && tokenizer_config["chat_template"].is_string())
    w.add_string("tokenizer.chat_template", tokenizer_config["chat_template"].get<std::string>());
}

}  // namespace crossmoe
