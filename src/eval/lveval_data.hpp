#pragma once
// LV-Eval data: reading its jsonl files with per-line validation, and generating LV-Eval-style
// fact-recall samples from real text, since the real dataset cannot be downloaded here.
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
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

// One line of a jsonl file as a JSON object; otherwise Error "not valid UTF-8 (byte N)" or "not
// a JSON object". The field readers' errors name the field.
nlohmann::json parse_jsonl_object(const std::string& line);
std::string string_field(const nlohmann::json& object, const char* key);
std::vector<std::string> string_list(const nlohmann::json& object, const char* key, bool required);

// Fields as LV-Eval writes them; a line with a missing or mistyped field, an unknown language
// tag or text that is not UTF-8 becomes an error naming the line and the field.
LvFile read_lveval_jsonl(const std::filesystem::path& path);

struct SampleOptions {
  std::string language = "en";  // "en": length in words; "zh": in characters
  int64_t length = 16000;
  double depth = 0.5;           // where the answer sits, as a fraction of the context
  int confusing_facts = 3;      // CFI: plausible but wrong statements elsewhere in the context
  uint64_t seed = 0;
};

// A factrecall-style sample (factrecall_en / factrecall_zh): `filler` (real text) cut to the
// length, with a needle that states who discovered a thing inserted at `depth`. KPR: the
// discoverer is a made-up name, the same in the needle and the answer, so that no memorised fact
// answers it.
LvSample make_fact_recall(const std::string& filler, const SampleOptions& options);

// A QA sample on the real text itself (multifieldqa_en_mixup / multifieldqa_zh_mixup): the context
// is sentences of `filler` (one per line, or split at sentence ends) from a random place. KPR: a
// keyword of the sentence at `depth` (a capitalised name in English, two Han characters in
// Chinese) is replaced by a made-up word everywhere in the context; the question quotes that
// sentence with the word blanked, and the made-up word is the answer. CFI: copies of the sentence
// with another made-up word and one other word changed, at random places.
LvSample make_cloze_qa(const std::string& filler, const SampleOptions& options);

std::string to_jsonl_line(const LvSample& sample);

// LongBench's middle truncation, which LV-Eval uses: when the prompt (encoded with special
// tokens, as transformers' tokenizer() does) is longer than max_length tokens, keep the first and
// the last max_length/2 tokens and decode each half without special tokens.
std::string truncate_middle(Tokenizer& tokenizer, const std::string& prompt, int max_length);

}  // namespace crossmoe::eval
