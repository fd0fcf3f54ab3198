#include "eval/lveval_data.hpp"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <cstring>
#include <random>
#include <sstream>

#include "tokenizer/unicode.hpp"
#include "util/error.hpp"
#include "util/replace_all.hpp"

namespace crossmoe::eval {

using nlohmann::json;

json parse_jsonl_object(const std::string& line) {
  const size_t bad = unicode::first_invalid_byte(line);
  require(bad == std::string::npos, "not valid UTF-8 (byte " + std::to_string(bad) + ")");
  json j;
  try {
    j = json::parse(line);
  } catch (const json::exception&) {
    throw Error("not a JSON object");
  }
  require(j.is_object(), "not a JSON object");
  return j;
}

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

namespace {

LvSample parse_sample(const std::string& line) {
  const json j = parse_jsonl_object(line);
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

// The characters of a UTF-8 string, each as its bytes (a stray byte stands alone).
std::vector<std::string> characters_of(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const size_t len = std::max<size_t>(1, unicode::valid_sequence_length(s, i));
    out.push_back(s.substr(i, len));
    i += len;
  }
  return out;
}

// Words of English filler, or characters of Chinese filler.
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
    for (auto& c : characters_of(text))
      if (!std::isspace(static_cast<unsigned char>(c[0]))) out.push_back(std::move(c));
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

LvSample make_fact_recall(const std::string& filler, const SampleOptions& o) {
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

namespace {

// The filler's sentences: its lines, or where it has few lines, pieces ending at . ! ? or 。！？.
std::vector<std::string> sentences_of(const std::string& text) {
  std::vector<std::string> out;
  const auto add = [&](std::string piece) {
    const size_t b = piece.find_first_not_of(" \t\r\n"), e = piece.find_last_not_of(" \t\r\n");
    if (b != std::string::npos) out.push_back(piece.substr(b, e - b + 1));
  };
  std::string current;
  const bool by_line = std::count(text.begin(), text.end(), '\n') >= 16;
  for (size_t i = 0; i < text.size(); ++i) {
    current += text[i];
    const bool end = by_line ? text[i] == '\n'
                             : (std::strchr(".!?", text[i]) && (i + 1 == text.size() || text[i + 1] == ' ')) ||
                                   current.ends_with("。") || current.ends_with("！") || current.ends_with("？");
    if (end) add(std::move(current)), current.clear();
  }
  add(current);
  return out;
}

std::vector<std::string> split_spaces(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

std::string join_words(const std::vector<std::string>& words) {
  std::string out;
  for (size_t i = 0; i < words.size(); ++i) out += (i ? " " : "") + words[i];
  return out;
}

bool is_name(const std::string& w) {  // Capitalised, then lower-case letters: a proper name
  if (w.size() < 3 || w[0] < 'A' || w[0] > 'Z') return false;
  return std::all_of(w.begin() + 1, w.end(), [](char c) { return c >= 'a' && c <= 'z'; });
}

bool is_plain_word(const std::string& w) {
  return w.size() >= 4 && std::all_of(w.begin(), w.end(), [](char c) { return c >= 'a' && c <= 'z'; });
}

bool is_han(char32_t c) { return c >= 0x4E00 && c <= 0x9FFF; }

bool han_at(const std::vector<std::string>& chars, size_t i) {
  const std::string& c = chars[i];
  return c.size() == 3 && is_han(unicode::decode_at(c, 0, 3));
}

}  // namespace

LvSample make_cloze_qa(const std::string& filler, const SampleOptions& o) {
  require(o.language == "en" || o.language == "zh", "language must be en or zh");
  require(o.depth >= 0 && o.depth <= 1, "depth must be between 0 and 1");
  require(o.length > 0, "length must be positive");
  const bool en = o.language == "en";
  std::mt19937_64 rng(o.seed);
  const std::vector<std::string> pool = sentences_of(filler);
  require(!pool.empty(), "the filler text is empty");
  // Sentences from a random place until the length is reached.
  std::vector<std::string> context;
  int64_t size = 0;
  for (size_t i = rng() % pool.size(); size < o.length; i = (i + 1) % pool.size()) {
    context.push_back(pool[i]);
    size += en ? int64_t(split_spaces(pool[i]).size()) : int64_t(characters_of(pool[i]).size());
  }
  // The keyword: from the sentence at the depth, or the next one that has a candidate.
  const size_t start = size_t(o.depth * double(context.size() - 1));
  size_t target = context.size();
  std::string keyword;
  for (size_t k = 0; k < context.size() && keyword.empty(); ++k) {
    const size_t i = (start + k) % context.size();
    if (en) {
      const auto words = split_spaces(context[i]);
      for (size_t w = 1; w < words.size() && keyword.empty(); ++w)
        if (is_name(words[w])) keyword = words[w], target = i;
    } else {
      const auto chars = characters_of(context[i]);
      for (size_t c = 0; c + 1 < chars.size() && keyword.empty(); ++c)
        if (han_at(chars, c) && han_at(chars, c + 1)) keyword = chars[c] + chars[c + 1], target = i;
    }
  }
  require(!keyword.empty(), en ? "the filler text has no capitalised names to ask about"
                               : "the filler text has no Chinese characters to ask about");
  const std::vector<std::string> made_up = en ? std::vector<std::string>{"Velmora", "Quenlith", "Dravosk", "Talvenor",
                                                                         "Marrowick", "Esselind", "Corvath", "Ildessa"}
                                              : std::vector<std::string>{"柯澜", "纪川", "聂舒", "庞齐", "岑越", "蔺潇",
                                                                         "郗远", "闵桐"};
  std::vector<size_t> order(made_up.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  const std::string answer = made_up[order[0]];
  // KPR, consistently: the keyword is the made-up word everywhere.
  for (auto& sentence : context) {
    if (en) {
      auto words = split_spaces(sentence);
      for (auto& w : words) w = w == keyword ? answer : w;
      sentence = join_words(words);
    } else {
      sentence = replace_all(sentence, keyword, answer);
    }
  }
  const std::string fact = context[target];
  const size_t blank_at = fact.find(answer);
  const std::string quoted = fact.substr(0, blank_at) + "____" + fact.substr(blank_at + answer.size());
  // CFI: the sentence with another made-up word and one more word changed, so that only the
  // true sentence matches the quote.
  std::vector<std::string> confusing;
  for (int k = 0; k < o.confusing_facts; ++k) {
    const std::string other = made_up[order[1 + size_t(k) % (order.size() - 1)]];
    const std::string before = fact.substr(0, blank_at), after = fact.substr(blank_at + answer.size());
    // Units (words or characters) that may change: not the name; and what may replace them.
    std::vector<std::string> units = en ? split_spaces(before + other + after) : characters_of(before + other + after);
    const std::vector<std::string> donor = en ? split_spaces(pool[rng() % pool.size()]) : characters_of(pool[rng() % pool.size()]);
    const size_t name_from = en ? split_spaces(before).size() : characters_of(before).size();
    const size_t name_to = name_from + (en ? 1 : characters_of(other).size());
    const auto changeable = [&](const std::vector<std::string>& u, size_t i) {
      return en ? is_plain_word(u[i]) : han_at(u, i);
    };
    std::vector<size_t> mine, theirs;
    for (size_t i = 0; i < units.size(); ++i)
      if ((i < name_from || i >= name_to) && changeable(units, i)) mine.push_back(i);
    for (size_t i = 0; i < donor.size(); ++i)
      if (changeable(donor, i)) theirs.push_back(i);
    for (int tries = 0; tries < 8 && !mine.empty() && !theirs.empty(); ++tries) {
      const size_t i = mine[rng() % mine.size()];
      const std::string& replacement = donor[theirs[rng() % theirs.size()]];
      if (replacement == units[i]) continue;
      units[i] = replacement;
      break;
    }
    std::string wrong;
    if (en) wrong = join_words(units);
    else for (const auto& u : units) wrong += u;
    confusing.push_back(wrong);
  }
  for (const auto& wrong : confusing) {
    size_t at = rng() % (context.size() + 1);
    if (at <= target) ++target;  // keep the index of the true sentence
    context.insert(context.begin() + std::ptrdiff_t(at), wrong);
  }
  LvSample s;
  s.dataset = en ? "multifieldqa_en_mixup" : "multifieldqa_zh_mixup";
  s.language = o.language;
  s.input = en ? "Which name fills the blank in this sentence of the article: \"" + quoted + "\"?"
               : "文章中这句话的空白处应填什么词：“" + quoted + "”？";
  s.answers = {answer};
  s.answer_keywords = answer;
  s.confusing_facts = confusing;
  for (size_t i = 0; i < context.size(); ++i) s.context += (i ? (en ? " " : "") : "") + context[i];
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
