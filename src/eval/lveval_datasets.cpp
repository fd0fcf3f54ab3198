#include "eval/lveval_datasets.hpp"

#include <algorithm>

#include "tokenizer/unicode.hpp"
#include "util/error.hpp"

namespace crossmoe::eval {

namespace {

// The prompt templates of config.py (DATASET_PROMPT), character for character: the benchmark
// defines them, and tests/test_lveval_metric.cpp compares them with config.py's own strings.
// Several datasets share one; lic_mixup's differs from cmrc's and dureader's in one word order
// (请现在 for 现在请).
const std::string kEnOnePassage =
    "Please answer the following question based on the given passages. Questions and answers are only relevant to "
    "one passage. Only give me the answer and do not output any other explanation and evidence.\n\nArticle: "
    "{context}\n\nPlease answer the following question based on the above passages. Questions and answers are only "
    "relevant to one passage. Only give me the answer and do not output any other explanation and evidence.\n\n"
    "Question: {input}\nAnswer:";
const std::string kEnSomePassages =
    "Answer the question based on the given passages. Questions and answers are only relevant to some passages. "
    "Only give me the answer and do not output any other explanation and evidence.\n\nArticle: {context}\n\nPlease "
    "answer the following question based on the above passages. Questions and answers are only relevant to some "
    "passages. Only give me the answer and do not output any other explanation and evidence.\n\nQuestion: "
    "{input}\nAnswer:";
const std::string kZhOnePassage =
    "请根据下面给定的文章回答问题，问题和答案只与其中一篇文章有关。\n\n文章：{context}\n\n"
    "现在请基于上述文章回答下面的问题，问题和答案只与其中一篇文章有关。\n\n问题：{input}\n回答：";
const std::string kZhLic =
    "请根据下面给定的文章回答问题，问题和答案只与其中一篇文章有关。\n\n文章：{context}\n\n"
    "请现在基于上述文章回答下面的问题，问题和答案只与其中一篇文章有关。\n\n问题：{input}\n回答：";
const std::string kZhMultifield =
    "请阅读以下文章并用中文回答问题，问题和答案只与其中一篇文章有关。只需要直接给出问题的答案，不要输出其他任何解释和证据。"
    "\n\n文章：{context}\n\n请基于上面的文章回答下面的问题，问题和答案只与其中一篇文章有关。只需要直接给出问题的答案，"
    "不要输出其他任何解释和证据。\n\n问题：{input}\n回答：";
const std::string kEnFactRecall =
    "Please answer the following questions based on the given article.\n\nArticle: {context}\n\nPlease answer the "
    "following questions based on the above article.\n\nQuestion: {input}\nAnswer:";
const std::string kZhFactRecall =
    "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n现在请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：";

}  // namespace

const std::vector<LvDataset>& lveval_datasets() {
  using M = LvMetricKind;
  static const std::vector<LvDataset> all = {  // in config.py's DATASET_SELECTED order
      {"hotpotwikiqa_mixup", "en", M::GatedF1En, 64, kEnSomePassages},
      {"loogle_SD_mixup", "en", M::GatedF1En, 64, kEnOnePassage},
      {"loogle_CR_mixup", "en", M::GatedF1En, 64, kEnOnePassage},
      {"loogle_MIR_mixup", "en", M::GatedF1En, 64, kEnOnePassage},
      {"multifieldqa_en_mixup", "en", M::GatedF1En, 64, kEnOnePassage},
      {"multifieldqa_zh_mixup", "zh", M::GatedF1Zh, 64, kZhMultifield},
      {"factrecall_en", "en", M::F1En, 16, kEnFactRecall},
      {"factrecall_zh", "zh", M::F1Zh, 16, kZhFactRecall},
      {"cmrc_mixup", "zh", M::GatedF1Zh, 64, kZhOnePassage},
      {"lic_mixup", "zh", M::GatedF1Zh, 64, kZhLic},
      {"dureader_mixup", "zh", M::RougeZhBlacklist, 64, kZhOnePassage},
  };
  return all;
}

const LvDataset& lveval_dataset(const std::string& name) {
  std::string known;
  for (const auto& d : lveval_datasets()) {
    if (d.name == name) return d;
    known += (known.empty() ? "" : ", ") + d.name;
  }
  throw Error("unknown LV-Eval dataset '" + name + "' (known: " + known + ")");
}

namespace {
// The leftmost match of the regular expression '_.{1,3}k' ('.' being any character but a newline):
// its start in bytes, or npos. Characters, not bytes, are counted (a byte that is not UTF-8 counts
// as one character).
size_t level_match(const std::string& stem) {
  std::vector<size_t> at;  // where each character starts
  for (size_t i = 0; i < stem.size(); i += std::max<size_t>(1, unicode::valid_sequence_length(stem, i))) at.push_back(i);
  const auto is = [&](size_t c, char ascii) { return stem[at[c]] == ascii; };
  for (size_t p = 0; p < at.size(); ++p) {
    if (!is(p, '_')) continue;
    for (size_t len = 3; len >= 1; --len) {  // greedy, then backtracking
      if (p + 1 + len >= at.size() || !is(p + 1 + len, 'k')) continue;
      bool newline = false;
      for (size_t c = p + 1; c <= p + len; ++c) newline |= is(c, '\n');
      if (!newline) return at[p];
    }
  }
  return std::string::npos;
}
}  // namespace

std::string lveval_file_stem(const std::filesystem::path& file) {
  const std::string name = file.filename().string();
  return name.substr(0, name.find('.'));
}

std::string dataset_of_file_stem(const std::string& stem) { return stem.substr(0, level_match(stem)); }

std::string level_of_file_stem(const std::string& stem) {
  if (level_match(stem) == std::string::npos) return "";
  return stem.substr(stem.rfind('_') + 1);
}

int level_thousands(const std::string& level) {
  if (level.size() < 2 || level.back() != 'k') return 0;
  int n = 0;
  for (size_t i = 0; i + 1 < level.size(); ++i) {
    if (level[i] < '0' || level[i] > '9' || n > 100'000'000) return 0;
    n = n * 10 + (level[i] - '0');
  }
  return n;
}

std::string build_prompt(const std::string& t, const std::string& context, const std::string& input) {
  std::string out;
  for (size_t i = 0; i < t.size();) {
    if (t.compare(i, 2, "{{") == 0 || t.compare(i, 2, "}}") == 0) {
      out += t[i];
      i += 2;
    } else if (t[i] == '{') {
      const size_t close = t.find('}', i);
      require(close != std::string::npos, "prompt template: unclosed '{'");
      const std::string key = t.substr(i + 1, close - i - 1);
      require(key == "context" || key == "input", "prompt template: unknown field {" + key + "}");
      out += key == "context" ? context : input;
      i = close + 1;
    } else {
      out += t[i++];
    }
  }
  return out;
}

}  // namespace crossmoe::eval
