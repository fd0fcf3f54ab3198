#pragma once
// Each subcommand adds itself to the CLI and runs through a callback; all real work is in src/.
#include <CLI/CLI.hpp>

#include "option_checks.hpp"  // positive(), whole_number(), real_number(): use them on every numeric option

namespace crossmoe::cli {

void add_init(CLI::App& app);
void add_info(CLI::App& app);
void add_quantize(CLI::App& app);
void add_perplexity(CLI::App& app);
void add_generate(CLI::App& app);
void add_bench(CLI::App& app);
void add_cache_sim(CLI::App& app);  // eviction policies replayed on a routing trace
void add_tokenizer(CLI::App& app);  // tokenize, tokenizer train
void add_chat(CLI::App& app);
void add_games(CLI::App& app);  // games info, play, solve, transcripts, eval
void add_games_eval_command(CLI::App& games);  // games eval (cmd_games_eval.cpp)
void add_data(CLI::App& app);   // data prepare
void add_eval(CLI::App& app);   // eval lveval, score, generate, check
void add_serve(CLI::App& app);  // the OpenAI-compatible server
void add_train(CLI::App& app);  // needs libtorch; otherwise says so
void add_rl(CLI::App& app);     // rl selfplay; needs libtorch

// --threads N for any command that computes.
void add_threads_option(CLI::App& cmd);

}  // namespace crossmoe::cli
