#include "eval/lveval_data.hpp"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "tokenizer/unicode.hpp"
#include "util/error.hpp"

namespace crossmoe::eval {

namespace {

using nlohmann::json;

std::string string_field(const json& j, const char* key) {
  require(j.contains(key), std::string("missing field '") + key + "'");
  require(j[key].is_string(), std::string("field '") + key + "' must be a string");
  return j[key].get<std::string>();
}

std::vector<std::string> string_list(const json& j, const char* key, bool required) {
  std::vector<std::string> out;
  if (!j.contains(key) || j[key].is_null()) {
    require(!required, std::string("missing field '") + key + "'");
    return out;
  }
  require(j[key].is_array(), std::string("field '") + key + "' must be a list of strings");
  for (const auto& v : j[key]) {
    require(v.is_string(), std::string("field '") + key + "' must be a list of strings");
    out.push_back(v.get<std::string>());
  }
  return out;
}

LvSample parse_sample(const std::string& line) {
  const size_t bad = unicode::first_invalid_byte(line);
  require(bad == std::string::npos, "not valid UTF-8 (byte " + std::to_string(bad) + ")");
  json j;
  try {
    j = json::parse(line);
  } catch (const json::exception&) {
    throw Error("not a JSON object");
  }
  require(j.is_object(), "not a JSON object");
  LvSample s;
  s.input = string_field(j, "input");
  s.context = string_field(j, "context");
  s.answers = string_list(j, "answers", true);
  s.dataset = string_field(j, "dataset");
  s.language = string_field(j, "language");
  require(s.language == "en" || s.language == "zh", "field 'language' must be \"en\" or \"zh\", got \"" + s.language + "\"");
  if (j.contains("length")) {
    require(j["length"].is_number_integer(), "field 'length' must be an integer");
    s.length = j["length"].get<int64_t>();
  }
  // answer_keywords is a string in LV-Eval; absent or null means no keywords.
  if (j.contains("answer_keywords") && !j["answer_keywords"].is_null()) s.answer_keywords = string_field(j, "answer_keywords");
  s.confusing_facts = string_list(j, "confusing_facts", false);
  return s;
}

// Words of English filler, or characters of Chinese filler, up to `length`.
std::vector<std::string> units(const std::string& text, const std::string& language) {
  std::vector<std::string> out;
  if (language == "en") {
    size_t i = 0;
    while (i < text.size()) {
      while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
      size_t e = i;
      while (e < text.size() && !std::isspace(static_cast<unsigned char>(text[e]))) ++e;
      if (e > i) out.push_back(text.substr(i, e - i));
      i = e;
    }
  } else {
    for (size_t i = 0; i < text.size();) {
      const size_t len = std::max<size_t>(1, unicode::valid_sequence_length(text, i));
      if (!std::isspace(static_cast<unsigned char>(text[i]))) out.push_back(text.substr(i, len));
      i += len;
    }
  }
  return out;
}

}  // namespace

LvFile read_lveval_jsonl(const std::filesystem::path& path) {
  std::ifstream in(path);
  require(in.good(), "cannot open " + path.string());
  LvFile file;
  int n = 0;
  for (std::string line; std::getline(in, line);) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      file.samples.push_back(parse_sample(line));
      file.sample_lines.push_back(n);
    } catch (const Error& e) {
      file.errors.push_back({n, e.what()});
    }
  }
  return file;
}

LvSample make_fact_recall(const std::string& filler, const FactRecallOptions& o) {
  require(o.language == "en" || o.language == "zh", "language must be en or zh");
  require(o.depth >= 0 && o.depth <= 1, "depth must be between 0 and 1");
  require(o.length > 0, "length must be positive");
  std::mt19937_64 rng(o.seed);
  const bool en = o.language == "en";
  // Made-up names (KPR) and things; the confusing facts name other people and near things.
  const std::vector<std::string> names = en ? std::vector<std::string>{"Orrin Vantessa", "Maelis Korrund", "Tobiah Quenstrel",
                                                                       "Ilsabet Drummore", "Casimir Vellacott", "Renwick Halloway"}
                                            : std::vector<std::string>{"柯文澜", "司徒明远", "欧阳清越", "纪若川", "庞思齐", "聂云舒"};
  const std::vector<std::string> things = en ? std::vector<std::string>{"silver comet", "northern current", "glass orchid", "hollow star"}
                                             : std::vector<std::string>{"银色彗星", "北方洋流", "玻璃兰花", "空心星"};
  std::vector<size_t> order(names.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  const std::string thing = things[rng() % things.size()];
  const std::string name = names[order[0]];
  const auto fact = [&](const std::string& who, const std::string& what) {
    return en ? who + " is the one who discovered the " + what + "." : who + "是发现" + what + "的人。";
  };
  std::vector<std::string> words = units(filler, o.language);
  require(!words.empty(), "the filler text is empty");
  std::vector<std::string> context;
  while (int64_t(context.size()) < o.length) context.insert(context.end(), words.begin(), words.end());
  context.resize(size_t(o.length));
  LvSample s;
  s.dataset = en ? "factrecall_en" : "factrecall_zh";
  s.language = o.language;
  s.input = en ? "Who discovered the " + thing + "?" : "谁发现了" + thing + "？";
  s.answers = {name};
  s.answer_keywords = name;
  // Confusing facts first, at random places; then the needle at its depth, so it stays put.
  // Each names another person and a thing close to the asked one, without contradicting it.
  const std::string near_thing = en ? "twin of the " + thing : thing + "的孪生体";
  for (int k = 0; k < o.confusing_facts; ++k) {
    const std::string wrong = fact(names[order[1 + size_t(k) % (order.size() - 1)]], near_thing);
    s.confusing_facts.push_back(wrong);
    context.insert(context.begin() + std::ptrdiff_t(rng() % (context.size() + 1)), wrong);
  }
  const size_t at = size_t(o.depth * double(context.size()));
  context.insert(context.begin() + std::ptrdiff_t(at), fact(name, thing));
  for (size_t i = 0; i < context.size(); ++i) s.context += (en && i ? " " : "") + context[i];
  s.length = o.length;
  return s;
}

std::string truncate_middle(Tokenizer& tokenizer, const std::string& prompt, int max_length) {
  require(max_length >= 2, "max_length must be at least 2");
  const std::vector<int> ids = tokenizer.encode(prompt, true);
  if (int(ids.size()) <= max_length) return prompt;
  const size_t half = size_t(max_length / 2);
  return tokenizer.decode(std::vector<int>(ids.begin(), ids.begin() + std::ptrdiff_t(half)), true) +
         tokenizer.decode(std::vector<int>(ids.end() - std::ptrdiff_t(half), ids.end()), true);
}

std::string to_jsonl_line(const LvSample& s) {
  return json{{"input", s.input},
              {"context", s.context},
              {"answers", s.answers},
              {"length", s.length},
              {"dataset", s.dataset},
              {"language", s.language},
              {"answer_keywords", s.answer_keywords},
              {"confusing_facts", s.confusing_facts}}
      .dump();
}

}  // namespace crossmoe::eval
