#include "tokenizer/byte_tokenizer.hpp"


#include "util/error.hpp"
#include "util/json_file.hpp"

namespace crossmoe {

namespace {

// GPT-2's map from bytes to printable code points: printable Latin-1 bytes map to themselves,
// the rest to 256, 257, ... in byte order.
std::vector<int> byte_to_codepoint() {
  std::vector<int> map(256);
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    map[b] = printable ? b : next++;
  }
  return map;
}

std::string utf8(int cp) {
  std::string s;
  if (cp < 0x80) {
    s += char(cp);
  } else if (cp < 0x800) {
    s += char(0xc0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3f));
  } else {
    s += char(0xe0 | (cp >> 12));
    s += char(0x80 | ((cp >> 6) & 0x3f));
    s += char(0x80 | (cp & 0x3f));
  }
  return s;
}

}  // namespace

nlohmann::json ByteTokenizer::make_json(const std::vector<std::string>& specials) {
  using nlohmann::json;
  const auto cps = byte_to_codepoint();
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[utf8(cps[b])] = b;
  json added = json::array();
  for (size_t i = 0; i < specials.size(); ++i) {
    const int id = 256 + static_cast<int>(i);
    vocab[specials[i]] = id;
    added.push_back({{"id", id}, {"content", specials[i]}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer", byte_level},
          {"post_processor", byte_level},
          {"decoder", byte_level},
          {"model",
           {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
            {"ignore_merges", false}, {"vocab", vocab}, {"merges", json::array()}}}};
}

ByteTokenizer ByteTokenizer::load(const std::filesystem::path& path) {
  const nlohmann::json j = read_json_file(path);
  const std::string where = path.string() + ": ";
  require(j.is_object() && j.contains("model") && j["model"].is_object(), where + "missing 'model'");
  const auto& model = j["model"];
  require(model.value("type", "") == "BPE", where + "model type '" + model.value("type", "?") +
                                                "' is not supported yet (byte-level BPE only)");
  require(!model.contains("merges") || model["merges"].empty(),
          where + "BPE with merges is not supported yet; pass token ids with --ids");
  require(model.contains("vocab") && model["vocab"].is_object(), where + "missing 'model.vocab'");
  const auto cps = byte_to_codepoint();
  std::map<std::string, int> char_to_byte;
  for (int b = 0; b < 256; ++b) char_to_byte[utf8(cps[b])] = b;
  ByteTokenizer t;
  for (const auto& [piece, id_json] : model["vocab"].items()) {
    require(id_json.is_number_integer() && id_json.get<int>() >= 0, where + "bad id for '" + piece + "'");
    const int id = id_json.get<int>();
    if (int(t.id_to_byte_.size()) <= id) t.id_to_byte_.resize(id + 1, -1);
    auto it = char_to_byte.find(piece);
    if (it != char_to_byte.end()) {
      t.id_to_byte_[id] = it->second;
      t.byte_to_id_[it->second] = id;
    }
  }
  if (j.contains("added_tokens") && j["added_tokens"].is_array())
    for (const auto& a : j["added_tokens"]) {
      const int id = a.value("id", -1);
      const std::string content = a.value("content", "");
      require(id >= 0 && !content.empty(), where + "bad entry in 'added_tokens'");
      if (int(t.id_to_byte_.size()) <= id) t.id_to_byte_.resize(id + 1, -1);
      t.id_to_byte_[id] = -1;
      t.specials_[content] = id;
    }
  for (int b = 0; b < 256; ++b)
    require(t.byte_to_id_[b] >= 0, where + "vocabulary lacks a token for byte " + std::to_string(b));
  return t;
}

std::vector<int> ByteTokenizer::encode(const std::string& text) const {
  std::vector<int> ids;
  for (size_t i = 0; i < text.size();) {
    size_t best_len = 0;
    int best_id = -1;
    for (const auto& [content, id] : specials_)
      if (content.size() > best_len && text.compare(i, content.size(), content) == 0) {
        best_len = content.size();
        best_id = id;
      }
    if (best_len > 0) {
      ids.push_back(best_id);
      i += best_len;
    } else {
      ids.push_back(byte_to_id_[static_cast<unsigned char>(text[i])]);
      ++i;
    }
  }
  return ids;
}

std::string ByteTokenizer::token_bytes(int id) const {
  if (id < 0 || id >= int(id_to_byte_.size()) || id_to_byte_[id] < 0) return "";
  return std::string(1, char(id_to_byte_[id]));
}

std::string ByteTokenizer::decode(const std::vector<int>& ids) const {
  std::string out;
  for (int id : ids) out += token_bytes(id);
  return out;
}

int ByteTokenizer::special_id(const std::string& content) const {
  auto it = specials_.find(content);
  return it == specials_.end() ? -1 : it->second;
}

std::string Utf8Stream::push(const std::string& bytes) {
  pending_ += bytes;
  // Emit up to the last complete character; keep a trailing partial sequence.
  size_t end = pending_.size();
  size_t lead = end;
  for (size_t back = 1; back <= 4 && back <= pending_.size(); ++back) {
    const unsigned char c = pending_[pending_.size() - back];
    if ((c & 0xc0) != 0x80) {
      lead = pending_.size() - back;
      const size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
      if (back < need) end = lead;
      break;
    }
  }
  std::string out = pending_.substr(0, end);
  pending_.erase(0, end);
  return out;
}

std::string Utf8Stream::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace crossmoe
