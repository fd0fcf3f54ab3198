// crossmoe eval generate | check: LV-Eval-style data made from real text, and validation of
// LV-Eval jsonl files.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>

#include "commands.hpp"
#include "eval/lveval_data.hpp"
#include "util/error.hpp"
#include "util/progress.hpp"

namespace crossmoe::cli {

namespace {

struct GenerateDataArgs {
  std::string text, out, language = "en";
  int64_t length = 16000;
  int samples = 10, confusing = 3;
  uint64_t seed = 0;
};

void run_generate_data(const GenerateDataArgs& a) {
  std::ifstream in(a.text, std::ios::binary);
  require(in.good(), "cannot open " + a.text);
  const std::string filler((std::istreambuf_iterator<char>(in)), {});
  std::filesystem::create_directories(a.out);
  const std::string level = std::to_string((a.length + 999) / 1000) + "k";
  const auto path = std::filesystem::path(a.out) / ("factrecall_" + a.language + "_" + level + ".jsonl");
  std::ofstream out(path);
  require(out.good(), "cannot write " + path.string());
  for (int i = 0; i < a.samples; ++i) {
    eval::FactRecallOptions o;
    o.language = a.language;
    o.length = a.length;
    o.depth = a.samples > 1 ? double(i) / double(a.samples - 1) : 0.5;  // needles from start to end
    o.confusing_facts = a.confusing;
    o.seed = a.seed + uint64_t(i);
    out << eval::to_jsonl_line(eval::make_fact_recall(filler, o)) << "\n";
  }
  log_info("wrote " + std::to_string(a.samples) + " samples to " + path.string());
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

}  // namespace

void add_eval(CLI::App& app) {
  CLI::App* ev = app.add_subcommand("eval", "LV-Eval data (the metric and the eval run are still to come)");
  ev->require_subcommand(1);
  auto a = std::make_shared<GenerateDataArgs>();
  CLI::App* gen = ev->add_subcommand("generate", "Write LV-Eval-style factrecall samples made from real text");
  gen->add_option("--text", a->text, "Filler text (UTF-8), e.g. build/text/english.txt")->required()->check(CLI::ExistingFile);
  gen->add_option("-o,--out", a->out, "Output directory")->required();
  gen->add_option("--language", a->language, "en (length in words) or zh (in characters)")
      ->capture_default_str()
      ->check(CLI::IsMember({"en", "zh"}));
  gen->add_option("--length", a->length, "Context length")->capture_default_str()->check(CLI::PositiveNumber);
  gen->add_option("-n,--samples", a->samples, "Samples (needle depths spread from 0 to 1)")->capture_default_str()->check(CLI::PositiveNumber);
  gen->add_option("--confusing-facts", a->confusing, "Confusing facts inserted per sample")->capture_default_str();
  gen->add_option("--seed", a->seed, "Seed")->capture_default_str();
  gen->callback([a] { run_generate_data(*a); });

  auto files = std::make_shared<std::vector<std::string>>();
  CLI::App* check = ev->add_subcommand("check", "Validate LV-Eval jsonl files line by line");
  check->add_option("files", *files, "jsonl files")->required()->check(CLI::ExistingFile);
  check->callback([files] { run_check(*files); });
}

}  // namespace crossmoe::cli
