// The LV-Eval metric: against a Python implementation of the official code run on real jieba and
// real text (fixtures/make_lveval_metric_goldens.py), and on hand-checked cases.
#include <gtest/gtest.h>

#include <filesystem>

#include "eval/lveval_datasets.hpp"
#include "eval/lveval_metric.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

using namespace crossmoe;
using eval::LvMetricKind;

namespace {

const eval::Jieba& jieba() {
  static const eval::Jieba j(std::filesystem::path(CROSSMOE_JIEBA_DIR) / "dict.txt",
                             std::filesystem::path(CROSSMOE_JIEBA_DIR) / "hmm.json");
  return j;
}

TEST(LvEvalMetric, MatchesThePythonMetricOnRealText) {
  const eval::LvMetric metric(jieba());
  const auto goldens = read_json_file(std::string(CROSSMOE_FIXTURES) + "/lveval_metric_goldens.json");
  ASSERT_GT(goldens.size(), 1000u);
  const LvMetricKind kinds[] = {LvMetricKind::F1En, LvMetricKind::F1Zh, LvMetricKind::GatedF1En,
                                LvMetricKind::GatedF1Zh, LvMetricKind::RougeZhBlacklist};
  int checked = 0, mismatches = 0;
  for (const auto& g : goldens) {
    const auto pred = g["prediction"].get<std::string>(), truth = g["truth"].get<std::string>(),
               keys = g["keywords"].get<std::string>();
    for (LvMetricKind k : kinds) {
      const auto& want = g["scores"][eval::metric_name(k)];
      ++checked;
      if (want.is_null()) {  // the official scorer raises: we report bad input
        EXPECT_THROW(metric.score(k, pred, truth, keys), Error) << eval::metric_name(k) << ": " << pred;
        continue;
      }
      double got = -1;
      try {
        got = metric.score(k, pred, truth, keys);
      } catch (const Error& e) {
        ADD_FAILURE() << e.what();
      }
      if (std::abs(got - want.get<double>()) > 1e-12 && ++mismatches <= 10)
        ADD_FAILURE() << eval::metric_name(k) << "(\"" << pred << "\", \"" << truth << "\", \"" << keys
                      << "\") = " << got << ", Python: " << want.get<double>();
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << checked;
}

TEST(LvEvalMetric, EnglishNormalisation) {
  EXPECT_EQ(eval::english_tokens("The  Cat's  hat, an apple!"), (std::vector<std::string>{"cats", "hat", "apple"}));
  // Only ASCII punctuation goes; "the" next to a non-word character is still a word.
  EXPECT_EQ(eval::english_tokens("“the” end—a"), (std::vector<std::string>{"“", "”", "end—"}));
  EXPECT_EQ(eval::english_tokens("theatre anthem x_the"), (std::vector<std::string>{"theatre", "anthem", "xthe"}));
}

TEST(LvEvalMetric, GatesAtTheirBoundaries) {
  const eval::LvMetric m(jieba());
  // 1 of 5 keyword tokens = 0.2: passes (the gate is recall < 0.2); 1 of 6 does not.
  EXPECT_DOUBLE_EQ(m.score(LvMetricKind::GatedF1En, "Paris", "Paris", "Paris v w x y"), 1.0);
  EXPECT_EQ(m.score(LvMetricKind::GatedF1En, "Paris", "Paris", "Paris u v w x y"), 0.0);
  // Blacklisted words count in the denominator but never as recalled.
  EXPECT_EQ(m.score(LvMetricKind::GatedF1En, "in Paris", "in Paris", "in of to and"), 0.0);
  EXPECT_DOUBLE_EQ(m.score(LvMetricKind::F1En, "in Paris", "in Paris", "in of to and"), 1.0);
  // Chinese: 2 of 5 = 0.4 passes, 1 of 5 does not; no keywords: the answer stands in.
  EXPECT_GT(m.score(LvMetricKind::GatedF1Zh, "北京 天安门", "北京", "北京 天安门 广场 中国 首都"), 0.0);
  EXPECT_EQ(m.score(LvMetricKind::GatedF1Zh, "北京", "北京", "北京 天安门 广场 中国 首都"), 0.0);
  EXPECT_EQ(m.score(LvMetricKind::GatedF1Zh, "上海", "北京", ""), 0.0);
  // Keywords with no token left after normalisation: the official code divides by zero.
  EXPECT_THROW(m.score(LvMetricKind::GatedF1En, "x", "x", "The ?"), Error);
  EXPECT_THROW(m.score(LvMetricKind::GatedF1Zh, "x", "x", "。"), Error);
}

TEST(LvEvalMetric, RougeL) {
  EXPECT_NEAR(eval::rouge_l_f("a b c", "a b c"), 1.0, 1e-8);
  EXPECT_LT(eval::rouge_l_f("a b c", "a b c"), 1.0);  // 2PR / (P + R + 1e-8)
  // LCS of (a c b) and (a b) has 2 words: P = 2/3, R = 1.
  EXPECT_DOUBLE_EQ(eval::rouge_l_f("a c b", "a b"), 2.0 * ((2.0 / 3) / (2.0 / 3 + 1 + 1e-8)));
  EXPECT_EQ(eval::rouge_l_f("", "a"), 0.0);
  EXPECT_EQ(eval::rouge_l_f("a", "..."), 0.0);
  // Distinct words only: "a a" against "a" is P = R = 1.
  EXPECT_NEAR(eval::rouge_l_f("a a", "a"), 1.0, 1e-8);
}

TEST(LvEvalMetric, RougeGivesUpWherePythonRecursionWould) {
  std::string longer, shorter;
  for (int i = 0; i < 1200; ++i) longer += "w" + std::to_string(i) + " ";
  for (int i = 0; i < 50; ++i) shorter += "w" + std::to_string(i * 2) + " ";
  EXPECT_EQ(eval::rouge_l_f(shorter, longer), 0.0);  // the official code catches RecursionError
  EXPECT_GT(eval::rouge_l_f(shorter, longer.substr(0, 2000)), 0.0);
}

TEST(LvEvalMetric, DatasetTable) {
  EXPECT_EQ(eval::lveval_datasets().size(), 11u);
  EXPECT_EQ(eval::dataset_of_file_stem("loogle_SD_mixup_16k"), "loogle_SD_mixup");
  EXPECT_EQ(eval::dataset_of_file_stem("factrecall_en_256k"), "factrecall_en");
  EXPECT_EQ(eval::level_of_file_stem("multifieldqa_zh_mixup_128k"), "128k");
  EXPECT_EQ(eval::dataset_of_file_stem("notalevel"), "notalevel");
  EXPECT_EQ(eval::level_of_file_stem("notalevel"), "");
  EXPECT_EQ(eval::level_thousands("64k"), 64);
  EXPECT_EQ(eval::lveval_dataset("factrecall_zh").max_new_tokens, 16);
  EXPECT_EQ(eval::lveval_dataset("dureader_mixup").metric, LvMetricKind::RougeZhBlacklist);
  EXPECT_THROW(eval::lveval_dataset("nope"), Error);
  EXPECT_EQ(eval::build_prompt("C: {context}\nQ: {input} {{x}}", "a {input}", "q"), "C: a {input}\nQ: q {x}");
  EXPECT_THROW(eval::build_prompt("{other}", "", ""), Error);
  for (const auto& d : eval::lveval_datasets()) {
    const std::string p = eval::build_prompt(d.prompt, "CTX", "QQ");
    EXPECT_NE(p.find("CTX"), std::string::npos);
    EXPECT_EQ(p.substr(p.size() - (d.language == "en" ? 20 : 21)), d.language == "en" ? "Question: QQ\nAnswer:" : "问题：QQ\n回答：")
        << d.name;
  }
}

}  // namespace
