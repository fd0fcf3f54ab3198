// crossmoe perplexity MODEL FILE: llama.cpp's perplexity measure on a text file.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>

#include "commands.hpp"
#include "runtime/model_files.hpp"
#include "runtime/perplexity.hpp"
#include "tokenizer/tokenizer.hpp"
#include "util/error.hpp"
#include "util/progress.hpp"

namespace crossmoe::cli {

namespace {

struct PerplexityArgs {
  std::string model, file;
  int context = 512;
  int max_chunks = 0;
};

void run_perplexity(const PerplexityArgs& a) {
  namespace fs = std::filesystem;
  require(fs::is_regular_file(a.file), a.file + " is not a regular file");
  std::ifstream in(a.file, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  require(in.good() || in.eof(), "cannot read " + a.file);
  Tokenizer tokenizer = require_model_tokenizer(a.model, "perplexity reads text");
  // llama.cpp tokenizes the whole text with the special tokens its vocabulary adds (a BOS at the
  // start) and puts that BOS at the start of every chunk.
  const std::vector<int> tokens = tokenizer.encode(text.str(), true);
  const std::vector<int> prefix = tokenizer.encode("", true);
  const std::optional<int> bos = prefix.size() == 1 ? std::optional<int>(prefix[0]) : std::nullopt;
  const Model model(a.model);
  Stopwatch watch;
  const PerplexityResult r = perplexity(model, tokens, a.context, bos, a.max_chunks);
  log_info(std::to_string(r.chunks) + " chunks of " + std::to_string(a.context) + " tokens, " +
           std::to_string(r.scored_tokens) + " scored, in " + std::to_string(watch.seconds()).substr(0, 6) + " s; +/- " +
           std::to_string(r.perplexity_error));
  std::printf("perplexity %.4f\n", r.perplexity);
}

}  // namespace

void add_perplexity(CLI::App& app) {
  auto a = std::make_shared<PerplexityArgs>();
  CLI::App* cmd = app.add_subcommand(
      "perplexity",
      "Perplexity on a text file as llama.cpp's perplexity tool measures it: chunks of --context tokens, "
      "each from an empty cache starting with BOS, the second half of each chunk scored");
  cmd->add_option("model", a->model, "Model directory (with tokenizer.json) or GGUF file (with tokenizer metadata)")->required();
  cmd->add_option("file", a->file, "Text file")->required();
  cmd->add_option("-c,--context", a->context, "Tokens per chunk (llama.cpp's -c)")->capture_default_str()->check(whole_number(4));
  cmd->add_option("--chunks", a->max_chunks, "Score at most this many chunks (0: all; the text must still hold 2 chunks, as in llama.cpp)")
      ->capture_default_str()
      ->check(whole_number(0));
  add_threads_option(*cmd);
  cmd->callback([a] { run_perplexity(*a); });
}

}  // namespace crossmoe::cli
