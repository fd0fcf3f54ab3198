#pragma once
// The eleven LV-Eval datasets as the official config.py describes them: prompt template, answer
// token limit and metric; and how a data file's name maps to its dataset and length level.
#include <filesystem>
#include <string>
#include <vector>

#include "eval/lveval_metric.hpp"

namespace crossmoe::eval {

struct LvDataset {
  std::string name;
  std::string language;  // "en" or "zh"
  LvMetricKind metric;
  int max_new_tokens;    // 64, or 16 for factrecall
  std::string prompt;    // with {context} and {input}
};

const std::vector<LvDataset>& lveval_datasets();
const LvDataset& lveval_dataset(const std::string& name);  // throws Error naming the known ones

// A data or predictions file's name up to its first '.', as evaluation.py names the file's
// dataset and level: "factrecall_en_16k.jsonl" -> "factrecall_en_16k".
std::string lveval_file_stem(const std::filesystem::path& file);
// "loogle_SD_mixup_16k" -> "loogle_SD_mixup", as evaluation.py's re.split('_.{1,3}k', name)[0].
std::string dataset_of_file_stem(const std::string& stem);
// "loogle_SD_mixup_16k" -> "16k": what follows the last '_', as evaluation.py takes the length;
// "" when the name carries no level (no match of '_.{1,3}k').
std::string level_of_file_stem(const std::string& stem);
int level_thousands(const std::string& level);  // "16k" -> 16; 0 when not a level

// The template with {context} and {input} filled in (each placeholder once, left to right, as
// Python's str.format does; the filled-in text is not scanned again).
std::string build_prompt(const std::string& prompt_template, const std::string& context, const std::string& input);

}  // namespace crossmoe::eval
