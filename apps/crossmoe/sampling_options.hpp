#pragma once
// The sampling flags of generate, chat and games: defaults come from the model's
// generation_config.json; flags given on the command line override them one by one.
#include <filesystem>

#include <CLI/CLI.hpp>

#include "runtime/sampler.hpp"

namespace crossmoe::cli {

class SamplingOptions {
 public:
  void add_to(CLI::App& cmd);
  SamplingParams resolve(const std::filesystem::path& model_dir) const;

 private:
  SamplingParams given_;
  CLI::Option *temperature_ = nullptr, *top_k_ = nullptr, *top_p_ = nullptr, *min_p_ = nullptr,
              *repetition_penalty_ = nullptr;
};

}  // namespace crossmoe::cli
