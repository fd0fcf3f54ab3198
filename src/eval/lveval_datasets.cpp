#include "eval/lveval_datasets.hpp"

#include "util/error.hpp"

namespace crossmoe::eval {

namespace {

// The prompt families of config.py: the English QA sets ask for the bare answer, the Chinese ones
// point at the one relevant passage, factrecall asks about one article.
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
  static const std::vector<LvDataset> all = {
      {"loogle_SD_mixup", "en", M::GatedF1En, 64, kEnOnePassage},
      {"cmrc_mixup", "zh", M::GatedF1Zh, 64, kZhOnePassage},
      {"multifieldqa_en_mixup", "en", M::GatedF1En, 64, kEnOnePassage},
      {"multifieldqa_zh_mixup", "zh", M::GatedF1Zh, 64, kZhMultifield},
      {"factrecall_en", "en", M::F1En, 16, kEnFactRecall},
      {"factrecall_zh", "zh", M::F1Zh, 16, kZhFactRecall},
      {"dureader_mixup", "zh", M::RougeZhBlacklist, 64, kZhOnePassage},
      {"loogle_CR_mixup", "en", M::GatedF1En, 64, kEnOnePassage},
      {"loogle_MIR_mixup", "en", M::GatedF1En, 64, kEnOnePassage},
      {"hotpotwikiqa_mixup", "en", M::GatedF1En, 64, kEnSomePassages},
      {"lic_mixup", "zh", M::GatedF1Zh, 64, kZhOnePassage},
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
// The leftmost match of '_.{1,3}k': its start and length, or npos.
std::pair<size_t, size_t> level_match(const std::string& stem) {
  for (size_t p = 0; p < stem.size(); ++p) {
    if (stem[p] != '_') continue;
    for (size_t len = 3; len >= 1; --len)  // greedy, then backtracking
      if (p + 1 + len < stem.size() && stem[p + 1 + len] == 'k')
        return {p, len + 2};
  }
  return {std::string::npos, 0};
}
}  // namespace

std::string dataset_of_file_stem(const std::string& stem) { return stem.substr(0, level_match(stem).first); }

std::string level_of_file_stem(const std::string& stem) {
  const auto [at, len] = level_match(stem);
  return at == std::string::npos ? "" : stem.substr(at + 1, len - 1);
}

int level_thousands(const std::string& level) {
  if (level.size() < 2 || level.back() != 'k') return 0;
  int n = 0;
  for (size_t i = 0; i + 1 < level.size(); ++i) {
    if (level[i] < '0' || level[i] > '9') return 0;
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
