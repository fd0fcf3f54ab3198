// crossmoe: run, benchmark and make Mixture-of-Experts models whose layers share experts.
//
// Every failure reaches the user the same way, from the one handler in main(): a single line
// "error: ..." on stderr. Exit codes: 2 when the command line is wrong (unknown option, missing or
// malformed value, value out of range: CLI parse errors and UsageError), 1 for everything else
// (files, models, data, running out of memory). --help and --version exit 0.
#include <omp.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <new>
#include <regex>
#include <stdexcept>

#include "commands.hpp"
#include "torch_build.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"
#include "version.hpp"

namespace crossmoe::cli {

void add_threads_option(CLI::App& cmd) {
  cmd.add_option_function<int>(
         "--threads", [](int n) { omp_set_num_threads(n); }, "Worker threads (default: all cores)")
      ->check(positive());
}

#ifndef CROSSMOE_HAVE_TORCH
// Listed in --help; main() hands these commands to crossmoe-torch before parsing when it is built
// (torch_build.hpp), so that its own options and help apply. Without it they say what is missing.
void add_train(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("train", "Pre-train a model (runs in crossmoe-torch, with libtorch)");
  cmd->allow_extras();
  cmd->callback([] { require_torch_build("train"); });
}
void add_rl(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("rl", "Reinforcement learning: self-play on text games (runs in crossmoe-torch)");
  cmd->allow_extras();
  cmd->callback([] { require_torch_build("rl"); });
}

// train, rl and --version (which reports the trainer) are crossmoe-torch's.
bool needs_torch_build(int argc, char** argv) {
  if (argc < 2) return false;
  const std::string first = argv[1];
  return first == "train" || first == "rl" || first == "--version";
}
#endif

namespace {

enum ExitCode { kRuntimeFailure = 1, kUsageError = 2 };

// "crossmoe generate", following the subcommands the parser had entered when it stopped.
std::string command_path(const CLI::App& app) {
  std::string path = app.get_name().empty() ? "crossmoe" : app.get_name();
  for (const CLI::App* at = &app; !at->get_subcommands().empty();) {
    at = at->get_subcommands().back();
    path += " " + at->get_name();
  }
  return path;
}

// Line breaks inside a message become "; " so that an error is always one line.
std::string one_line(std::string message) {
  for (size_t at; (at = message.find('\n')) != std::string::npos;) {
    size_t end = at;
    while (end < message.size() && (message[end] == '\n' || message[end] == ' ')) ++end;
    message.replace(at, end - at, end == message.size() ? "" : "; ");
  }
  return message;
}

void print_error(const std::string& message) { std::fprintf(stderr, "error: %s\n", one_line(message).c_str()); }

// The message and exit code for an exception that escaped a command. Library exceptions that
// reach here (bad_alloc, a number conversion, JSON access, regex) get words a user can act on
// instead of their internal text.
int report(const std::exception_ptr& failure) {
  try {
    std::rethrow_exception(failure);
  } catch (const UsageError& e) {
    print_error(e.what());
    return kUsageError;
  } catch (const Error& e) {
    print_error(e.what());
  } catch (const std::bad_alloc&) {
    print_error("out of memory: the command needs more memory than this machine can give "
                "(check sizes such as --ctx, --hidden, --vocab and the model's config.json)");
  } catch (const nlohmann::json::exception& e) {
    print_error("unexpected JSON content: " + json_error_text(e));
  } catch (const std::regex_error&) {
    print_error("a regular expression in the input could not be compiled or ran too long");
  } catch (const std::filesystem::filesystem_error& e) {
    const std::string path = e.path1().string();
    print_error((path.empty() ? "" : path + ": ") + e.code().message());
  } catch (const std::invalid_argument&) {
    print_error("a number in the input could not be read");
  } catch (const std::out_of_range&) {
    print_error("a number or index in the input is out of range");
  } catch (const std::exception& e) {
    print_error(e.what());
  } catch (...) {
    print_error("unexpected failure");
  }
  return kRuntimeFailure;
}

// An exception that escapes where it cannot be caught (a worker thread, a destructor) would end
// the process with "terminate called ..." and a core dump; it gets the same one line instead.
[[noreturn]] void on_terminate() {
  const std::exception_ptr failure = std::current_exception();
  std::fflush(stdout);
  const int code = failure ? report(failure) : (print_error("unexpected failure"), int(kRuntimeFailure));
  std::_Exit(code);
}

}  // namespace

}  // namespace crossmoe::cli

int main(int argc, char** argv) {
  using namespace crossmoe::cli;
  std::set_terminate(on_terminate);
#ifndef CROSSMOE_HAVE_TORCH
  remember_command_line(argc, argv);
  if (needs_torch_build(argc, argv)) {
    try {
      run_in_torch_build();  // returns only when there is no crossmoe-torch
    } catch (...) {
      return report(std::current_exception());
    }
  }
#endif
  CLI::App app{"crossmoe: run, benchmark and make Mixture-of-Experts models whose layers share experts", "crossmoe"};
  app.require_subcommand(1);
  app.set_version_flag("--version", version_text, "Print the version, commit, kernels and trainer support, then exit");
  add_init(app);
  add_info(app);
  add_quantize(app);
  add_convert(app);
  add_perplexity(app);
  add_generate(app);
  add_bench(app);
  add_cache_sim(app);
  add_tokenizer(app);
  add_chat(app);
  add_games(app);
  add_data(app);
  add_eval(app);
  add_serve(app);
  add_train(app);
  add_rl(app);
  check_number_syntax(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    std::string message = e.what();
    if (app.get_subcommands().empty() && !app.remaining().empty()) {  // `crossmoe frobnicate`, `crossmoe --bogus`
      std::string commands;
      for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) commands += (commands.empty() ? "" : ", ") + sub->get_name();
      message = "'" + app.remaining().front() + "' is not a command (commands: " + commands + ")";
    }
    if (!message.empty()) message[0] = char(std::tolower(static_cast<unsigned char>(message[0])));
    const std::string path = command_path(app);
    print_error(path + ": " + message + " (see " + path + " --help)");
    return kUsageError;
  } catch (...) {
    return report(std::current_exception());
  }
  return 0;
}
