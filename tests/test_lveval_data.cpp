// LV-Eval data: per-line validation of jsonl files, and the factrecall-style generator.
#include <gtest/gtest.h>

#include "temp_dir.hpp"

#include <filesystem>
#include <fstream>

#include "eval/lveval_data.hpp"
#include "tokenizer/tokenizer.hpp"
#include "util/error.hpp"

using namespace crossmoe;

namespace {

TEST(LvEvalData, BadLinesAreReportedAndTheRestIsRead) {
  const auto path = testing_paths::temp_path("lveval.jsonl");
  const std::string good =
      R"({"input": "Q?", "context": "C", "answers": ["A"], "length": 5, "dataset": "cmrc_mixup", "language": "zh", "answer_keywords": "A", "confusing_facts": []})";
  std::ofstream(path) << good << "\n"
                      << R"({"input": "Q?", "answers": ["A"], "dataset": "d", "language": "en"})" << "\n"
                      << "\n"
                      << R"({"input": "Q?", "context": "C", "answers": ["A"], "dataset": "d", "language": "fr"})" << "\n"
                      << "{\"input\": \"\xff\", \"context\": \"C\", \"answers\": [], \"dataset\": \"d\", \"language\": \"en\"}\n"
                      << "not json\n"
                      << R"({"input": "Q?", "context": "C", "answers": "A", "dataset": "d", "language": "en"})" << "\n"
                      << good << "\n";
  const eval::LvFile f = eval::read_lveval_jsonl(path);
  ASSERT_EQ(f.samples.size(), 2u);
  EXPECT_EQ(f.sample_lines, (std::vector<int>{1, 8}));
  EXPECT_EQ(f.samples[0].answers, (std::vector<std::string>{"A"}));
  EXPECT_EQ(f.samples[0].answer_keywords, "A");
  ASSERT_EQ(f.errors.size(), 5u);
  EXPECT_EQ(f.errors[0].line, 2);
  EXPECT_EQ(f.errors[0].message, "missing field 'context'");
  EXPECT_NE(f.errors[1].message.find("\"fr\""), std::string::npos);
  EXPECT_NE(f.errors[2].message.find("not valid UTF-8"), std::string::npos);
  EXPECT_EQ(f.errors[3].message, "not a JSON object");
  EXPECT_NE(f.errors[4].message.find("'answers' must be a list"), std::string::npos);
  std::filesystem::remove(path);
}

TEST(LvEvalData, MiddleTruncationKeepsBothEnds) {
  Tokenizer t(nlohmann::json::parse(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "<s>": 3}, "merges": []},
      "added_tokens": [{"id": 3, "content": "<s>", "special": true}],
      "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}],
                         "special_tokens": {"<s>": {"id": "<s>", "ids": [3]}}}})"));
  EXPECT_EQ(eval::truncate_middle(t, "abcabc", 10), "abcabc");  // 7 tokens with <s>: fits
  // 7 tokens > 4: the first 2 (<s> a, decoded without <s>: "a") and the last 2 ("b c": with no
  // decoder, tokens are joined by spaces, as in tokenizers).
  EXPECT_EQ(eval::truncate_middle(t, "abcabc", 4), "ab c");
}

TEST(LvEvalData, FactRecallPutsTheNeedleAtItsDepth) {
  std::string filler;
  for (int i = 0; i < 100; ++i) filler += "word" + std::to_string(i) + " ";
  eval::SampleOptions o;
  o.length = 5000;
  o.depth = 0.25;
  o.seed = 7;
  const eval::LvSample s = eval::make_fact_recall(filler, o);
  ASSERT_EQ(s.answers.size(), 1u);
  const std::string needle = s.answers[0] + " is the one who discovered";
  const size_t at = s.context.find(needle);
  ASSERT_NE(at, std::string::npos);
  EXPECT_EQ(s.context.find(needle, at + 1), std::string::npos);  // stated once
  EXPECT_NEAR(double(at) / double(s.context.size()), 0.25, 0.02);
  ASSERT_EQ(s.confusing_facts.size(), 3u);
  for (const auto& f : s.confusing_facts) {
    EXPECT_NE(s.context.find(f), std::string::npos);
    EXPECT_EQ(f.find(s.answers[0]), std::string::npos);  // about someone else
  }
  EXPECT_EQ(eval::to_jsonl_line(s), eval::to_jsonl_line(eval::make_fact_recall(filler, o)));  // seeded
  o.seed = 8;
  EXPECT_NE(eval::to_jsonl_line(s), eval::to_jsonl_line(eval::make_fact_recall(filler, o)));
}

size_t count_of(const std::string& text, const std::string& part) {
  size_t n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

void expect_answerable_cloze(const eval::LvSample& s, const std::string& open_quote, const std::string& close_quote,
                             const std::string& keyword) {
  ASSERT_EQ(s.answers.size(), 1u);
  const std::string& answer = s.answers[0];
  EXPECT_EQ(s.answer_keywords, answer);
  const size_t from = s.input.find(open_quote) + open_quote.size(), to = s.input.rfind(close_quote);
  std::string quoted = s.input.substr(from, to - from);
  ASSERT_NE(quoted.find("____"), std::string::npos) << s.input;
  quoted.replace(quoted.find("____"), 4, answer);
  EXPECT_EQ(count_of(s.context, quoted), 1u) << quoted;  // the true sentence, once
  EXPECT_EQ(s.context.find(keyword), std::string::npos) << keyword << " survived the replacement";
  ASSERT_EQ(s.confusing_facts.size(), 3u);
  for (const auto& f : s.confusing_facts) {
    EXPECT_NE(s.context.find(f), std::string::npos);
    EXPECT_EQ(f.find(answer), std::string::npos) << f;
    EXPECT_NE(f, quoted);
  }
}

TEST(LvEvalData, ClozeQaReplacesTheKeywordEverywhereAndStaysAnswerable) {
  std::string filler;
  for (int i = 0; i < 40; ++i)
    filler += "Line " + std::to_string(i) + " says that Atlanta and the river " + (i % 2 ? "flows" : "bends") + " slowly .\n";
  eval::SampleOptions o;
  o.length = 600;
  o.depth = 0.5;
  o.seed = 3;
  const eval::LvSample en = eval::make_cloze_qa(filler, o);
  EXPECT_EQ(en.dataset, "multifieldqa_en_mixup");
  expect_answerable_cloze(en, "\"", "\"", "Atlanta");
  EXPECT_GE(std::count(en.context.begin(), en.context.end(), ' '), 600);

  std::string zh;
  for (int i = 0; i < 40; ++i) zh += "北京第" + std::to_string(i) + "条河水" + (i % 2 ? "很慢" : "很急") + "。\n";
  o.language = "zh";
  const eval::LvSample z = eval::make_cloze_qa(zh, o);
  EXPECT_EQ(z.dataset, "multifieldqa_zh_mixup");
  expect_answerable_cloze(z, "“", "”", "北京");
  EXPECT_THROW(eval::make_cloze_qa("no names here at all .", eval::SampleOptions{}), Error);
}

}  // namespace
