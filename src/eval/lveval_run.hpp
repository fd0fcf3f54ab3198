#pragma once
// Running LV-Eval: predictions for every sample of every data file, written one JSON line at a
// time so that an interrupted run loses nothing and a rerun resumes; scoring of predictions files
// (ours or another system's); and the report: dataset x length level, the average per level, and
// a plot of score against length.
#include <filesystem>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "eval/lveval_data.hpp"
#include "eval/lveval_metric.hpp"
#include "runtime/forward.hpp"
#include "tokenizer/tokenizer.hpp"

namespace crossmoe::eval {

struct ScoredFile {
  std::string name;     // file name without .jsonl, e.g. factrecall_en_16k
  std::string dataset;  // e.g. factrecall_en
  std::string level;    // e.g. 16k; "" when the name has none
  int samples = 0;      // lines scored
  // Mean x 100, rounded to 2 decimals as evaluation.py does; none when no line could be scored
  // (such a file is shown as having no score and left out of the averages).
  std::optional<double> score;
  std::vector<LineError> errors;
};

// Scores a predictions file: one JSON object per line with "pred", "answers" (a list; only the
// first counts, an empty list scores 0) and optionally "gold_ans" (the answer keywords), as
// LV-Eval's prediction script writes them. The dataset is `dataset` when given, otherwise the
// file name's (factrecall_en_16k.jsonl -> factrecall_en). Bad lines (where the official script
// would stop with an exception) are reported and skipped.
ScoredFile score_predictions(const LvMetric& metric, const std::filesystem::path& file, const std::string& dataset = "");

struct LvEvalOptions {
  std::filesystem::path data_dir;
  std::filesystem::path out_dir;
  std::vector<std::string> datasets;  // empty: every dataset found
  std::vector<std::string> levels;    // empty: every level found
  int max_length = 0;                 // prompt tokens kept; 0: the model's window minus 500
  int limit = 0;                      // samples per file; 0: all
  std::map<std::string, std::string> prompts;  // dataset -> template, overriding the built-in ones
  // For chat models: tokenizer_config.json, whose chat template wraps each (truncated) prompt as
  // one user turn, as LV-Eval does for chat models; null: the prompt as it is.
  nlohmann::json chat_config;
};

// Generates greedily for every sample not yet in out_dir/predictions/<file>.jsonl, appending one
// line per sample (flushed), then scores every predictions file. Returns the scores.
std::vector<ScoredFile> run_lveval(const Model& model, Tokenizer& tokenizer, const LvMetric& metric,
                                   const LvEvalOptions& options);

// The report as a Markdown table: datasets down, levels across, "average" last.
std::string report_table(const std::vector<ScoredFile>& scores);
// report.md (the table and any bad lines), results.json and score_by_length.svg in out_dir.
void write_report(const std::vector<ScoredFile>& scores, const std::filesystem::path& out_dir, const std::string& title);

}  // namespace crossmoe::eval
