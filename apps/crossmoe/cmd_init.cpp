// crossmoe init DIR: a random-initialised model directory of any layout.
#include <filesystem>
#include <memory>

#include "commands.hpp"
#include "model_options.hpp"
#include "model/config.hpp"
#include "model/init.hpp"
#include "util/error.hpp"
#include "util/progress.hpp"

namespace crossmoe::cli {

namespace {

struct InitArgs {
  std::string dir, dtype = "bf16";
  uint64_t seed = 0;
  bool force = false;
  ModelShapeArgs shape;
  std::string tokenizer;  // a tokenizer.json to ship with the model
};

void run_init(const InitArgs& a) {
  namespace fs = std::filesystem;
  if (fs::exists(a.dir) && !fs::is_empty(a.dir) && !a.force)
    throw Error(a.dir + " exists and is not empty; pass --force to overwrite its model files");
  const ModelConfig c = build_model_config(a.shape, a.tokenizer);
  InitOptions options;
  options.seed = a.seed;
  require(parse_dtype(a.dtype == "f32" ? "F32" : a.dtype == "f16" ? "F16" : a.dtype == "bf16" ? "BF16" : "?",
                      &options.dtype),
          "--dtype must be f32, bf16 or f16");
  const ParamCounts p = count_parameters(c);
  log_info("writing " + a.shape.layout + " model to " + a.dir + ": " + std::to_string(p.stored) + " parameters (" +
           std::to_string(p.active) + " active per token)");
  Stopwatch watch;
  write_random_model(c, a.dir, options);
  write_tokenizer_files(a.dir, a.tokenizer, c.max_position_embeddings);
  log_info("done in " + std::to_string(watch.seconds()).substr(0, 5) + " s");
}

}  // namespace

void add_init(CLI::App& app) {
  auto a = std::make_shared<InitArgs>();
  CLI::App* cmd = app.add_subcommand("init", "Write a random-initialised model directory (HF format)");
  cmd->add_option("dir", a->dir, "Output model directory")->required();
  cmd->add_option("--dtype", a->dtype, "Weight dtype: f32, bf16 or f16")->capture_default_str();
  cmd->add_option("--seed", a->seed, "Random seed")->capture_default_str();
  add_model_shape_options(*cmd, a->shape);
  cmd->add_option("--tokenizer", a->tokenizer, "tokenizer.json to use (default: one token per byte)")
      ->check(CLI::ExistingFile);
  cmd->add_flag("--force", a->force, "Overwrite model files in a non-empty directory");
  add_threads_option(*cmd);
  cmd->callback([a] { run_init(*a); });
}

}  // namespace crossmoe::cli
