// The LV-Eval metric and tables: against values made by the official code itself (LV-Eval's
// metrics.py, config.py and evaluation.py with rouge 1.0.1, run on Debian's jieba by
// fixtures/make_lveval_metric_goldens.py), and on hand-checked cases.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "eval/lveval_datasets.hpp"
#include "eval/lveval_metric.hpp"
#include "eval/lveval_run.hpp"
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

const nlohmann::json& goldens() {
  static const nlohmann::json g = read_json_file(std::string(CROSSMOE_FIXTURES) + "/lveval_metric_goldens.json");
  return g;
}

LvMetricKind kind_named(const std::string& name) {
  for (LvMetricKind k : {LvMetricKind::F1En, LvMetricKind::F1Zh, LvMetricKind::GatedF1En, LvMetricKind::GatedF1Zh,
                         LvMetricKind::RougeZhBlacklist})
    if (name == eval::metric_name(k)) return k;
  throw Error("no metric " + name);
}

TEST(LvEvalMetric, MatchesTheOfficialMetricOnRealText) {
  const eval::LvMetric metric(jieba());
  const auto& cases = goldens()["cases"];
  ASSERT_GT(cases.size(), 1000u);
  int checked = 0, mismatches = 0, raised = 0;
  for (const auto& g : cases) {
    const auto pred = g["prediction"].get<std::string>(), truth = g["truth"].get<std::string>(),
               keys = g["keywords"].get<std::string>();
    ASSERT_EQ(g["scores"].size(), 5u);
    for (const auto& [name, want] : g["scores"].items()) {
      const LvMetricKind k = kind_named(name);
      ++checked;
      if (want.is_null()) {  // the official scorer raises: we report bad input
        ++raised;
        EXPECT_THROW(metric.score(k, pred, truth, keys), Error) << name << ": " << pred;
        continue;
      }
      double got = -1;
      try {
        got = metric.score(k, pred, truth, keys);
      } catch (const Error& e) {
        ADD_FAILURE() << e.what();
      }
      if (std::abs(got - want.get<double>()) > 1e-12 && ++mismatches <= 10)
        ADD_FAILURE() << name << "(\"" << pred << "\", \"" << truth << "\", \"" << keys << "\") = " << got
                      << ", official: " << want.get<double>();
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << checked;
  EXPECT_GT(raised, 4);
}

TEST(LvEvalMetric, FileScoresMatchTheOfficialScorer) {
  const eval::LvMetric metric(jieba());
  const auto dir = std::filesystem::temp_directory_path() / ("crossmoe_lveval_files_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const auto& files = goldens()["files"];
  ASSERT_GE(files.size(), 33u);
  for (const auto& f : files) {
    const auto path = dir / (f["stem"].get<std::string>() + ".jsonl");
    {
      std::ofstream out(path);
      for (const auto& line : f["lines"]) out << line.dump() << "\n";
    }
    const eval::ScoredFile s = eval::score_predictions(metric, path);
    EXPECT_TRUE(s.errors.empty()) << path;
    EXPECT_EQ(s.samples, int(f["lines"].size()));
    ASSERT_TRUE(s.score.has_value()) << path;
    EXPECT_EQ(*s.score, f["score"].get<double>()) << path;  // round(100 * mean, 2) exactly
  }
  std::filesystem::remove_all(dir);
}

TEST(LvEvalMetric, BlacklistsAreTheOfficialOnes) {
  EXPECT_EQ(eval::kAbandonWordsEn, goldens()["abandon_words_en"].get<std::vector<std::string>>());
  EXPECT_EQ(eval::kAbandonWordsZh, goldens()["abandon_words_zh"].get<std::vector<std::string>>());
}

// Names, order, answer token limits, metrics and prompt templates as config.py holds them.
TEST(LvEvalMetric, DatasetTableIsConfigPy) {
  const auto& want = goldens()["datasets"];
  const auto& ours = eval::lveval_datasets();
  ASSERT_EQ(ours.size(), want.size());
  for (size_t i = 0; i < ours.size(); ++i) {
    EXPECT_EQ(ours[i].name, want[i]["name"].get<std::string>());
    EXPECT_EQ(ours[i].max_new_tokens, want[i]["max_new_tokens"].get<int>()) << ours[i].name;
    EXPECT_EQ(eval::metric_name(ours[i].metric), want[i]["metric"].get<std::string>()) << ours[i].name;
    EXPECT_EQ(ours[i].prompt, want[i]["prompt"].get<std::string>()) << ours[i].name;
    for (const auto& level : goldens()["length_levels"]) {
      const std::string stem = ours[i].name + "_" + level.get<std::string>();
      EXPECT_EQ(eval::dataset_of_file_stem(stem), ours[i].name);
      EXPECT_EQ(eval::level_of_file_stem(stem), level.get<std::string>());
    }
  }
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
  // Keywords with no token left after normalisation: the official code divides by zero. The
  // error names what normalised to nothing: the keywords, or the answer standing in for them.
  const auto message = [&](LvMetricKind k, const std::string& truth, const std::string& keys) -> std::string {
    try {
      m.score(k, "x", truth, keys);
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_EQ(message(LvMetricKind::GatedF1En, "x", "The ?").rfind("gold_ans ", 0), 0u);
  EXPECT_EQ(message(LvMetricKind::GatedF1Zh, "x", "。").rfind("gold_ans ", 0), 0u);
  EXPECT_EQ(message(LvMetricKind::GatedF1Zh, "。", "").rfind("the answer (standing in for the empty gold_ans)", 0), 0u);
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
  // evaluation.py: the dataset ends where '_.{1,3}k' first matches (counting characters), the
  // level is what follows the last '_', and the name is the file's up to its first '.'.
  EXPECT_EQ(eval::dataset_of_file_stem("factrecall_en_16k_run2"), "factrecall_en");
  EXPECT_EQ(eval::level_of_file_stem("factrecall_en_16k_run2"), "run2");
  EXPECT_EQ(eval::dataset_of_file_stem("x_ééék"), "x");  // three characters, six bytes
  EXPECT_EQ(eval::dataset_of_file_stem("x_éééék"), "x_éééék");
  EXPECT_EQ(eval::lveval_file_stem("/d/factrecall_en_16k.run.jsonl"), "factrecall_en_16k");
  EXPECT_EQ(eval::level_thousands("99999999999999k"), 0);
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
