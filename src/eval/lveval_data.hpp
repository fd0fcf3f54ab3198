#pragma once
// LV-Eval data: reading its jsonl files with per-line validation, and generating LV-Eval-style
// fact-recall samples from real text, since the real dataset cannot be downloaded here.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.hpp"

namespace crossmoe::eval {

struct LvSample {
  std::string input;                         // the question
  std::string context;
  std::vector<std::string> answers;
  int64_t length = 0;
  std::string dataset, language;             // language: "en" or "zh"
  std::string answer_keywords;
  std::vector<std::string> confusing_facts;
};

struct LineError {
  int line;
  std::string message;
};

struct LvFile {
  std::vector<LvSample> samples;
  std::vector<int> sample_lines;  // the line each sample came from
  std::vector<LineError> errors;  // lines that could not be read; the others still are
};

// Fields as LV-Eval writes them; a line with a missing or mistyped field, an unknown language
// tag or text that is not UTF-8 becomes an error naming the line and the field.
LvFile read_lveval_jsonl(const std::filesystem::path& path);

struct FactRecallOptions {
  std::string language = "en";  // "en": length in words; "zh": in characters
  int64_t length = 16000;
  double depth = 0.5;           // where the needle sits, as a fraction of the context
  int confusing_facts = 3;      // CFI: plausible but wrong statements elsewhere in the context
  uint64_t seed = 0;
};

// A factrecall-style sample: `filler` (real text) cut to the length, with a needle that states
// who discovered a thing inserted at `depth`. KPR: the discoverer is a made-up name, replaced
// consistently in the needle and the answer, so that no memorised fact answers it.
LvSample make_fact_recall(const std::string& filler, const FactRecallOptions& options);

std::string to_jsonl_line(const LvSample& sample);

// LongBench's middle truncation, which LV-Eval uses: when the prompt (encoded with special
// tokens, as transformers' tokenizer() does) is longer than max_length tokens, keep the first and
// the last max_length/2 tokens and decode each half without special tokens.
std::string truncate_middle(Tokenizer& tokenizer, const std::string& prompt, int max_length);

}  // namespace crossmoe::eval
