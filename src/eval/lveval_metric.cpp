#include "eval/lveval_metric.hpp"

#include <algorithm>
#include <map>
#include <set>
#include <unordered_set>

#include "tokenizer/unicode.hpp"
#include "util/error.hpp"

namespace crossmoe::eval {

// ABANDON_WORDS_EN and ABANDON_WORDS_ZH of the official metrics.py, in its order.
const std::vector<std::string> kAbandonWordsEn = {
    "and", "to", "of", "in", "her", "was", "with", "for", "it", "from", "is", "that", "his",
    "he", "by", "she", "they", "or", "at", "because", "be", "on", "are", "their", "what", "as",
    "had", "were", "about", "being", "this", "who", "but", "have", "has", "when", "which", "does"};
const std::vector<std::string> kAbandonWordsZh = {
    "的", "和", "是", "等", "在", "年", "可以", "为", "与", "‰", "了", "或", "一种", "月", "c", "至", "日",
    "有", "进行", "于", "不", "中", "×", "根据", "小", "由", "亩", "也", "要", "指", "法", "会", "元",
    "主要", "以及", "通过", "首先", "对", "然后", "号", "以", "所", "后", "丁", "包括", "无", "将", "用",
    "能", "形", "方面", "因素", "位于", "而", "从", "到", "一定", "用于", "但", "使用", "让", "具有", "并",
    "亿元", "万元", "上", "类", "基于", "才", "来", "地", "片", "其他", "个", "或者", "变得", "时", "给",
    "你", "使", "条", "受", "已经", "带", "度"};

namespace {

// Python's string.punctuation, and the Chinese punctuation normalize_zh_answer adds to it
// (zhon's list as LongBench spells it; note that it has 》 but not 《).
const std::u32string kAsciiPunctuation = U"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
const std::u32string kChinesePunctuation =
    U"！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.";

// Python's str.split(): runs of non-whitespace.
std::vector<std::u32string> split_whitespace(const std::u32string& s) {
  std::vector<std::u32string> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && unicode::is_python_space(s[i])) ++i;
    size_t e = i;
    while (e < s.size() && !unicode::is_python_space(s[e])) ++e;
    if (e > i) out.push_back(s.substr(i, e - i));
    i = e;
  }
  return out;
}

// Python's str.split(sep) for a one-character separator.
std::vector<std::string> split_on(const std::string& s, char sep) {
  std::vector<std::string> out(1);
  for (char c : s) {
    if (c == sep) out.emplace_back();
    else out.back() += c;
  }
  return out;
}

std::string join(const std::vector<std::string>& parts, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? sep : "") + parts[i];
  return out;
}

bool contains(const std::vector<std::string>& list, const std::string& word) {
  return std::find(list.begin(), list.end(), word) != list.end();
}

// Keyword recall: Counter(prediction) & Counter(keywords), blacklisted words left out, over the
// number of keyword tokens. `field` names where the keywords came from, for the error the
// official scorer would crash with (a division by zero) when they normalise to no token.
double keyword_recall(const std::vector<std::string>& prediction, const std::vector<std::string>& keywords,
                      const std::vector<std::string>& blacklist, const std::string& field) {
  require(!keywords.empty(), field + " normalises to no token (the official scorer divides by zero here)");
  std::map<std::string, int> left;
  for (const auto& k : keywords) ++left[k];
  int same = 0;
  for (const auto& p : prediction) {
    auto it = left.find(p);
    if (it != left.end() && it->second > 0 && !contains(blacklist, p)) --it->second, ++same;
  }
  return double(same) / double(keywords.size());
}

// rouge 1.0.1's _recon_lcs(x, y): the words of one longest common subsequence, traced back
// with its tie-break (up only when strictly better than left), as a set. Returns false when
// Python would have hit its recursion limit on the way: _recon recurses once per step, on top
// of about ten frames of the official evaluation.py and the rouge package.
bool lcs_words(const std::vector<std::string>& x, const std::vector<std::string>& y, std::set<std::string>& words) {
  constexpr size_t kRecursionBudget = 1000 - 10;
  const size_t n = x.size(), m = y.size();
  std::vector<std::vector<int>> table(n + 1, std::vector<int>(m + 1, 0));
  for (size_t i = 1; i <= n; ++i)
    for (size_t j = 1; j <= m; ++j)
      table[i][j] = x[i - 1] == y[j - 1] ? table[i - 1][j - 1] + 1 : std::max(table[i - 1][j], table[i][j - 1]);
  size_t i = n, j = m, calls = 1;
  while (i > 0 && j > 0) {
    if (x[i - 1] == y[j - 1]) words.insert(x[i - 1]), --i, --j;
    else if (table[i - 1][j] > table[i][j - 1]) --i;
    else --j;
    ++calls;
  }
  return calls <= kRecursionBudget;
}

// rouge 1.0.1: the text split on "." into sentences (empty pieces dropped), each sentence's
// whitespace collapsed; its words are the sentences split on single spaces.
std::vector<std::string> rouge_sentences(const std::string& text) {
  std::vector<std::string> out;
  for (const std::string& piece : split_on(text, '.')) {
    if (piece.empty()) continue;
    std::vector<std::string> words;
    for (const auto& w : split_whitespace(unicode::to_utf32(piece))) words.push_back(unicode::to_utf8(w));
    out.push_back(join(words, " "));
  }
  return out;
}

std::vector<std::string> words_of(const std::vector<std::string>& sentences) {
  std::vector<std::string> out;
  for (const auto& s : sentences)
    for (auto& w : split_on(s, ' ')) out.push_back(std::move(w));
  return out;
}

}  // namespace

const char* metric_name(LvMetricKind kind) {
  switch (kind) {
    case LvMetricKind::F1En: return "qa_f1_score";
    case LvMetricKind::F1Zh: return "qa_f1_zh_score";
    case LvMetricKind::GatedF1En: return "qa_f1_score_with_gold_ans";
    case LvMetricKind::GatedF1Zh: return "qa_f1_zh_score_with_gold_ans";
    case LvMetricKind::RougeZhBlacklist: return "rouge_zh_score_blacklist";
  }
  return "";
}

std::vector<std::string> english_tokens(const std::string& text) {
  // lower -> remove ASCII punctuation -> remove \b(a|an|the)\b -> split. An article match is a
  // maximal run of word characters, since \b needs a non-word character (or an end) both sides.
  std::u32string s;
  for (char32_t c : unicode::to_utf32(unicode::lowercase(text)))
    if (kAsciiPunctuation.find(c) == std::u32string::npos) s += c;
  std::u32string out;
  for (size_t i = 0; i < s.size();) {
    if (!unicode::is_python_word_char(s[i])) {
      out += s[i++];
      continue;
    }
    size_t e = i;
    while (e < s.size() && unicode::is_python_word_char(s[e])) ++e;
    const std::u32string word = s.substr(i, e - i);
    out += (word == U"a" || word == U"an" || word == U"the") ? U" " : word;
    i = e;
  }
  std::vector<std::string> tokens;
  for (const auto& w : split_whitespace(out)) tokens.push_back(unicode::to_utf8(w));
  return tokens;
}

std::string normalize_zh(const std::string& text) {
  std::u32string out;
  for (char32_t c : unicode::to_utf32(unicode::lowercase(text)))
    if (kAsciiPunctuation.find(c) == std::u32string::npos && kChinesePunctuation.find(c) == std::u32string::npos &&
        !unicode::is_python_space(c))
      out += c;
  return unicode::to_utf8(out);
}

double token_f1(const std::vector<std::string>& prediction, const std::vector<std::string>& truth) {
  std::map<std::string, int> left;
  for (const auto& t : truth) ++left[t];
  int same = 0;
  for (const auto& p : prediction) {
    auto it = left.find(p);
    if (it != left.end() && it->second > 0) --it->second, ++same;
  }
  if (same == 0) return 0;
  const double precision = double(same) / double(prediction.size());
  const double recall = double(same) / double(truth.size());
  return (2 * precision * recall) / (precision + recall);
}

double rouge_l_f(const std::string& hypothesis, const std::string& reference) {
  const std::vector<std::string> hyp = rouge_sentences(hypothesis), ref = rouge_sentences(reference);
  if (hyp.empty() || ref.empty()) return 0;  // "Hypothesis is empty." / "Reference is empty."
  const std::vector<std::string> ref_words = words_of(ref), hyp_words = words_of(hyp);
  const double m = double(std::set<std::string>(ref_words.begin(), ref_words.end()).size());
  const double n = double(std::set<std::string>(hyp_words.begin(), hyp_words.end()).size());
  std::set<std::string> lcs_union;
  for (const auto& r : ref) {
    const std::vector<std::string> rw = split_on(r, ' ');
    for (const auto& h : hyp)
      if (!lcs_words(rw, split_on(h, ' '), lcs_union)) return 0;  // RecursionError, caught
  }
  const double llcs = double(lcs_union.size());
  const double r_lcs = llcs / m, p_lcs = llcs / n;
  return 2.0 * ((p_lcs * r_lcs) / (p_lcs + r_lcs + 1e-8));
}

std::vector<std::string> LvMetric::chinese_tokens(const std::string& text) const {
  std::vector<std::string> out;
  for (const auto& t : jieba_.cut(text)) {
    std::string n = normalize_zh(t);
    if (!n.empty()) out.push_back(std::move(n));
  }
  return out;
}

double LvMetric::rouge_zh_blacklist(const std::string& prediction, const std::string& truth) const {
  // As the official code does it: cut, join with spaces, cut the joined text again, normalise each
  // token (empty ones stay, as spaces that rouge later collapses), drop blacklisted words, join
  // with spaces.
  const auto prepare = [&](const std::string& text) {
    std::vector<std::string> kept;
    for (const auto& w : jieba_.cut(join(jieba_.cut(text), " "))) {
      std::string n = normalize_zh(w);
      if (!contains(kAbandonWordsZh, n)) kept.push_back(std::move(n));
    }
    return join(kept, " ");
  };
  return rouge_l_f(prepare(prediction), prepare(truth));
}

double LvMetric::score(LvMetricKind kind, const std::string& prediction, const std::string& truth,
                       const std::string& gold_keywords) const {
  switch (kind) {
    case LvMetricKind::F1En: return token_f1(english_tokens(prediction), english_tokens(truth));
    case LvMetricKind::F1Zh: return token_f1(chinese_tokens(prediction), chinese_tokens(truth));
    case LvMetricKind::GatedF1En: {
      const auto p = english_tokens(prediction);
      if (!gold_keywords.empty() &&
          keyword_recall(p, english_tokens(gold_keywords), kAbandonWordsEn, "gold_ans (the answer keywords)") < 0.2)
        return 0;
      return token_f1(p, english_tokens(truth));
    }
    case LvMetricKind::GatedF1Zh: {
      const auto p = chinese_tokens(prediction);
      // Without keywords the answer stands in for them.
      const bool own = !gold_keywords.empty();
      const std::string& keywords = own ? gold_keywords : truth;
      if (!keywords.empty() &&
          keyword_recall(p, chinese_tokens(keywords), kAbandonWordsZh,
                         own ? "gold_ans (the answer keywords)" : "the answer (standing in for the empty gold_ans)") < 0.4)
        return 0;
      return token_f1(p, chinese_tokens(truth));
    }
    case LvMetricKind::RougeZhBlacklist: return rouge_zh_blacklist(prediction, truth);
  }
  return 0;
}

}  // namespace crossmoe::eval
