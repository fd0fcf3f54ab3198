#include "sampling_options.hpp"

#include "option_checks.hpp"

namespace crossmoe::cli {

void SamplingOptions::add_to(CLI::App& cmd) {
  temperature_ = cmd.add_option("--temperature", given_.temperature, "0 = greedy (default: generation_config.json)")
                     ->check(real_number(0));
  top_k_ = cmd.add_option("--top-k", given_.top_k, "Keep the k most likely tokens, 0 = off")->check(whole_number(0));
  top_p_ = cmd.add_option("--top-p", given_.top_p, "Nucleus mass, 1 = off")->check(positive_real())->check(real_number(0, 1));
  min_p_ = cmd.add_option("--min-p", given_.min_p, "Drop tokens below min-p times the best, 0 = off")->check(real_number(0, 1));
  repetition_penalty_ =
      cmd.add_option("--repetition-penalty", given_.repetition_penalty, "1 = off")->check(positive_real())->check(real_number(0));
  cmd.add_option("--seed", given_.seed, "Sampling seed")->capture_default_str();
}

SamplingParams SamplingOptions::resolve(const std::filesystem::path& model_dir) const {
  SamplingParams p = generation_defaults(model_dir);
  if (temperature_->count()) p.temperature = given_.temperature;
  if (top_k_->count()) p.top_k = given_.top_k;
  if (top_p_->count()) p.top_p = given_.top_p;
  if (min_p_->count()) p.min_p = given_.min_p;
  if (repetition_penalty_->count()) p.repetition_penalty = given_.repetition_penalty;
  p.seed = given_.seed;
  return p;
}

}  // namespace crossmoe::cli
