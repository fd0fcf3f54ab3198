// crossmoe: run, benchmark and make Mixture-of-Experts models whose layers share experts.
#include <omp.h>

#include <cstdio>
#include <exception>

#include "commands.hpp"
#include "util/error.hpp"

namespace crossmoe::cli {

void add_threads_option(CLI::App& cmd) {
  cmd.add_option_function<int>(
         "--threads", [](int n) { omp_set_num_threads(n); }, "Worker threads (default: all cores)")
      ->check(CLI::PositiveNumber);
}

#ifndef CROSSMOE_HAVE_TORCH
void add_train(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("train", "Pre-train a model (needs a build with libtorch)");
  cmd->allow_extras();
  cmd->callback([] {
    throw Error("this crossmoe was built without libtorch: install libtorch-dev (scripts/setup.sh does) and rebuild");
  });
}
void add_rl(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("rl", "Self-play RL (needs a build with libtorch)");
  cmd->allow_extras();
  cmd->callback([] {
    throw Error("this crossmoe was built without libtorch: install libtorch-dev (scripts/setup.sh does) and rebuild");
  });
}
#endif

}  // namespace crossmoe::cli

int main(int argc, char** argv) {
  CLI::App app{"crossmoe: run, benchmark and make Mixture-of-Experts models whose layers share experts"};
  app.require_subcommand(1);
  crossmoe::cli::add_init(app);
  crossmoe::cli::add_info(app);
  crossmoe::cli::add_generate(app);
  crossmoe::cli::add_bench(app);
  crossmoe::cli::add_tokenizer(app);
  crossmoe::cli::add_chat(app);
  crossmoe::cli::add_games(app);
  crossmoe::cli::add_data(app);
  crossmoe::cli::add_eval(app);
  crossmoe::cli::add_train(app);
  crossmoe::cli::add_rl(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
