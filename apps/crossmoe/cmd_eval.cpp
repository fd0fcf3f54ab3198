// crossmoe eval lveval | score | generate | check: LV-Eval on a model, the metric on any
// predictions file, LV-Eval-style data made from real text, and validation of data files.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>

#include "runtime/model_files.hpp"
#include "commands.hpp"
#include "eval/lveval_data.hpp"
#include "eval/lveval_datasets.hpp"
#include "eval/lveval_run.hpp"
#include "tokenizer/chat_template.hpp"
#include "util/json_file.hpp"
#include "util/error.hpp"
#include "util/progress.hpp"

namespace crossmoe::cli {

namespace {

struct GenerateDataArgs {
  std::string text, out, language = "en", kind = "factrecall";
  std::vector<int64_t> lengths = {16000};
  int samples = 10, confusing = 3;
  uint64_t seed = 0;
};

void run_generate_data(const GenerateDataArgs& a) {
  // One file per length, named by LV-Eval's level (the length in thousands, rounded up): lengths
  // that share a level would overwrite each other's file, so they are refused before any work.
  const auto level_of = [](int64_t length) { return std::to_string((length + 999) / 1000) + "k"; };
  for (size_t i = 0; i < a.lengths.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      require(level_of(a.lengths[i]) != level_of(a.lengths[j]),
              "--length " + std::to_string(a.lengths[j]) + " and " + std::to_string(a.lengths[i]) +
                  " would both be written as level " + level_of(a.lengths[i]) +
                  " (files are named by length in thousands, rounded up); give lengths in different thousands");
  std::ifstream in(a.text, std::ios::binary);
  require(in.good(), "cannot open " + a.text);
  const std::string filler((std::istreambuf_iterator<char>(in)), {});
  std::filesystem::create_directories(a.out);
  for (const int64_t length : a.lengths) {
    const std::string dataset = a.kind == "factrecall" ? "factrecall_" + a.language : "multifieldqa_" + a.language + "_mixup";
    const auto path = std::filesystem::path(a.out) / (dataset + "_" + level_of(length) + ".jsonl");
    std::ofstream out(path);
    require(out.good(), "cannot write " + path.string());
    for (int i = 0; i < a.samples; ++i) {
      eval::SampleOptions o;  // answers spread from the start to the end
      o.language = a.language;
      o.length = length;
      o.depth = a.samples > 1 ? double(i) / double(a.samples - 1) : 0.5;
      o.confusing_facts = a.confusing;
      o.seed = a.seed + uint64_t(i);
      out << eval::to_jsonl_line(a.kind == "factrecall" ? eval::make_fact_recall(filler, o) : eval::make_cloze_qa(filler, o))
          << "\n";
    }
    log_info("wrote " + std::to_string(a.samples) + " samples to " + path.string());
  }
}

void run_check(const std::vector<std::string>& files) {
  int bad = 0;
  for (const auto& f : files) {
    const eval::LvFile file = eval::read_lveval_jsonl(f);
    std::printf("%s: %zu samples", f.c_str(), file.samples.size());
    std::printf(file.errors.empty() ? "\n" : ", %zu bad lines:\n", file.errors.size());
    for (const auto& e : file.errors) std::printf("  line %d: %s\n", e.line, e.message.c_str());
    bad += int(file.errors.size());
  }
  require(bad == 0, std::to_string(bad) + " bad lines");
}

// jieba's tables sit next to the binary (build/jieba, made by scripts/setup.sh) unless --jieba says.
std::filesystem::path jieba_dir(const std::string& given) {
  if (!given.empty()) return given;
  return std::filesystem::read_symlink("/proc/self/exe").parent_path() / "jieba";
}

eval::Jieba load_jieba(const std::string& given) {
  const auto dir = jieba_dir(given);
  require(std::filesystem::exists(dir / "dict.txt"),
          "jieba's dictionary is not in " + dir.string() + " (scripts/setup.sh writes it; or give --jieba DIR)");
  return eval::Jieba(dir / "dict.txt", dir / "hmm.json");
}

void print_scores(const std::vector<eval::ScoredFile>& scores) {
  for (const auto& s : scores) {
    if (s.score)
      std::printf("%-32s %-24s %6s %8.2f  (%d samples", s.name.c_str(), s.dataset.c_str(), s.level.c_str(), *s.score,
                  s.samples);
    else
      std::printf("%-32s %-24s %6s no score  (0 samples", s.name.c_str(), s.dataset.c_str(), s.level.c_str());
    std::printf(s.errors.empty() ? ")\n" : ", %zu bad lines)\n", s.errors.size());
    for (const auto& e : s.errors) std::printf("    line %d: %s\n", e.line, e.message.c_str());
  }
  std::printf("\n%s", eval::report_table(scores).c_str());
}

struct LvEvalArgs {
  std::string model, data, out, prompts, jieba;
  std::vector<std::string> datasets, levels;
  int max_length = 0, limit = 0;
  bool chat = false;
};

void run_lveval_command(const LvEvalArgs& a) {
  const eval::Jieba jieba = load_jieba(a.jieba);
  const eval::LvMetric metric(jieba);
  const Model model(a.model);
  Tokenizer tokenizer = require_model_tokenizer(a.model, "LV-Eval reads text");
  eval::LvEvalOptions o;
  o.data_dir = a.data;
  o.out_dir = a.out.empty() ? "lveval-" + std::filesystem::path(a.model).lexically_normal().filename().string() : a.out;
  o.datasets = a.datasets;
  o.levels = a.levels;
  o.max_length = a.max_length;
  o.limit = a.limit;
  if (!a.prompts.empty()) {
    const nlohmann::json prompts = read_json_file(a.prompts);
    require(prompts.is_object() && std::all_of(prompts.begin(), prompts.end(), [](const auto& v) { return v.is_string(); }),
            a.prompts + " must be a JSON object {dataset: template}");
    o.prompts = prompts.get<std::map<std::string, std::string>>();
  }
  if (a.chat) o.chat_config = read_model_tokenizer_config(a.model);
  const auto scores = eval::run_lveval(model, tokenizer, metric, o);
  eval::write_report(scores, o.out_dir, a.model);
  print_scores(scores);
  log_info("report: " + (o.out_dir / "report.md").string() + ", plot: " + (o.out_dir / "score_by_length.svg").string());
}

struct ScoreArgs {
  std::vector<std::string> files;
  std::string dataset, report, jieba;
};

void run_score(const ScoreArgs& a) {
  const eval::Jieba jieba = load_jieba(a.jieba);
  const eval::LvMetric metric(jieba);
  std::vector<eval::ScoredFile> scores;
  for (const auto& f : a.files) scores.push_back(eval::score_predictions(metric, f, a.dataset));
  print_scores(scores);
  if (!a.report.empty()) {
    eval::write_report(scores, a.report, "predictions");
    log_info("report: " + (std::filesystem::path(a.report) / "report.md").string());
  }
  std::string unscored;
  for (size_t i = 0; i < scores.size(); ++i)
    if (!scores[i].score) unscored += (unscored.empty() ? "" : ", ") + a.files[i];
  require(unscored.empty(), "no line could be scored in " + unscored);
}

}  // namespace

void add_eval(CLI::App& app) {
  CLI::App* ev = app.add_subcommand("eval", "LV-Eval: run it on a model, score predictions, make and check data");
  ev->require_subcommand(1);

  auto l = std::make_shared<LvEvalArgs>();
  CLI::App* lv = ev->add_subcommand("lveval", "Run LV-Eval on a model: predictions (resumable), scores, report and plot");
  lv->add_option("model", l->model, "Model directory or GGUF file")->required()->check(CLI::ExistingPath);
  lv->add_option("--data", l->data, "Directory of LV-Eval files named {dataset}_{level}.jsonl")
      ->required()
      ->check(CLI::ExistingDirectory);
  lv->add_option("-o,--out", l->out, "Output directory (default: lveval-<model name>); a rerun resumes there");
  lv->add_option("--datasets", l->datasets, "Only these datasets (default: all found)")->delimiter(',');
  lv->add_option("--levels", l->levels, "Only these length levels, e.g. 16k,32k (default: all found)")->delimiter(',');
  lv->add_option("--max-length", l->max_length, "Prompt tokens kept, middle truncated (default: the model's window - 500)")
      ->check(whole_number(0));
  lv->add_option("--limit", l->limit, "At most this many samples per file (default: all)")->check(whole_number(0));
  lv->add_option("--prompts", l->prompts, "JSON file {dataset: template with {context} and {input}} replacing built-in prompts")
      ->check(CLI::ExistingFile);
  lv->add_flag("--chat", l->chat, "Wrap each prompt in the model's chat template as one user turn (chat models)");
  lv->add_option("--jieba", l->jieba, "Directory with jieba's dict.txt and hmm.json (default: next to the binary)");
  add_threads_option(*lv);
  lv->callback([l] { run_lveval_command(*l); });

  auto sc = std::make_shared<ScoreArgs>();
  CLI::App* score = ev->add_subcommand("score", "Score predictions files (pred, answers, gold_ans per line) with the LV-Eval metric");
  score->add_option("files", sc->files, "Predictions jsonl files, named {dataset}_{level}.jsonl unless --dataset")
      ->required()
      ->check(CLI::ExistingFile);
  score->add_option("--dataset", sc->dataset, "The dataset all files belong to (default: from each file name)");
  score->add_option("--report", sc->report, "Also write report.md, results.json and score_by_length.svg here");
  score->add_option("--jieba", sc->jieba, "Directory with jieba's dict.txt and hmm.json (default: next to the binary)");
  score->callback([sc] { run_score(*sc); });
  score->footer("Exits with an error when some file has no line that could be scored.");

  auto a = std::make_shared<GenerateDataArgs>();
  CLI::App* gen = ev->add_subcommand("generate", "Write LV-Eval-style samples made from real text (factrecall or cloze QA)");
  gen->add_option("--text", a->text, "Filler text (UTF-8), e.g. build/text/english.txt")->required()->check(CLI::ExistingFile);
  gen->add_option("-o,--out", a->out, "Output directory")->required();
  gen->add_option("--kind", a->kind, "factrecall (a needle names a discoverer) or qa (a blanked sentence of the text)")
      ->capture_default_str()
      ->check(CLI::IsMember({"factrecall", "qa"}));
  gen->add_option("--language", a->language, "en (length in words) or zh (in characters)")
      ->capture_default_str()
      ->check(CLI::IsMember({"en", "zh"}));
  gen->add_option("--length", a->lengths, "Context lengths, one file each (level = length rounded up to thousands)")
      ->delimiter(',')
      ->capture_default_str()
      ->check(positive());
  gen->add_option("-n,--samples", a->samples, "Samples (needle depths spread from 0 to 1)")->capture_default_str()->check(positive());
  gen->add_option("--confusing-facts", a->confusing, "Confusing facts inserted per sample")->capture_default_str();
  gen->add_option("--seed", a->seed, "Seed")->capture_default_str();
  gen->callback([a] { run_generate_data(*a); });

  auto files = std::make_shared<std::vector<std::string>>();
  CLI::App* check = ev->add_subcommand("check", "Validate LV-Eval jsonl files line by line");
  check->add_option("files", *files, "jsonl files")->required()->check(CLI::ExistingFile);
  check->callback([files] { run_check(*files); });
}

}  // namespace crossmoe::cli
