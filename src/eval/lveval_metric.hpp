#pragma once
// The LV-Eval metric, as the official evaluation code (metrics.py of the LVEval repository, and
// the `rouge` package 1.0.1 it calls) computes it, quirks included, because the numbers are only
// comparable when they are computed the same way:
//   - English tokens: lower case, ASCII punctuation removed, the words a/an/the dropped, split on
//     whitespace.
//   - Chinese tokens: jieba precise mode on the raw text, each token lower-cased with ASCII and
//     Chinese punctuation and whitespace removed, empty tokens dropped.
//   - keyword recall: tokens shared by the prediction and the answer keywords, blacklisted common
//     words left out, over the number of keyword tokens (blacklisted ones included); below the gate
//     (0.2 English, 0.4 Chinese) the sample scores 0, otherwise token F1 against the answer.
//   - dureader_mixup: jieba cuts the text, the pieces are joined with spaces and cut again; each
//     token is normalised as above (empty ones kept), blacklisted ones dropped, the rest joined
//     with spaces; then Rouge-L F of prediction against answer.
#include <string>
#include <vector>

#include "eval/jieba.hpp"

namespace crossmoe::eval {

enum class LvMetricKind {
  F1En,              // qa_f1_score
  F1Zh,              // qa_f1_zh_score
  GatedF1En,         // qa_f1_score_with_gold_ans
  GatedF1Zh,         // qa_f1_zh_score_with_gold_ans
  RougeZhBlacklist,  // rouge_zh_score_blacklist
};
const char* metric_name(LvMetricKind kind);  // the official function's name

std::vector<std::string> english_tokens(const std::string& text);  // normalize_answer(text).split()
std::string normalize_zh(const std::string& text);                  // normalize_zh_answer

// F1 of two token multisets; 0 when nothing overlaps.
double token_f1(const std::vector<std::string>& prediction, const std::vector<std::string>& truth);

// Rouge-L F as rouge.Rouge().get_scores([hyp], [ref], avg=True)["rouge-l"]["f"] of version
// 1.0.1: sentences split on ".", words on spaces, the union of the LCS word sets over distinct
// words, F = 2PR / (P + R + 1e-8). Returns 0 where that call raises (an empty side, or an LCS
// deeper than Python's recursion limit), as the official code catches it.
double rouge_l_f(const std::string& hypothesis, const std::string& reference);

class LvMetric {
 public:
  explicit LvMetric(const Jieba& jieba) : jieba_(jieba) {}

  // One prediction against one gold answer; gold_keywords is the sample's answer_keywords (the
  // predictions file's gold_ans; "" for none). Throws Error where the official scorer would crash:
  // keywords that normalise to no token divide by zero there; the message names gold_ans, or the
  // answer where it stood in for empty Chinese keywords.
  double score(LvMetricKind kind, const std::string& prediction, const std::string& truth,
               const std::string& gold_keywords) const;

  std::vector<std::string> chinese_tokens(const std::string& text) const;

 private:
  double rouge_zh_blacklist(const std::string& prediction, const std::string& truth) const;
  const Jieba& jieba_;
};

extern const std::vector<std::string> kAbandonWordsEn;
extern const std::vector<std::string> kAbandonWordsZh;

}  // namespace crossmoe::eval
