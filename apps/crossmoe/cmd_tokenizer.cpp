// crossmoe tokenize MODEL TEXT, and crossmoe tokenizer train FILES...
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>

#include "model/gguf.hpp"
#include "runtime/model_files.hpp"
#include "commands.hpp"
#include "tokenizer/bpe_trainer.hpp"
#include "tokenizer/chatml.hpp"
#include "tokenizer/tokenizer.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"
#include "util/progress.hpp"

namespace crossmoe::cli {

namespace {

std::filesystem::path tokenizer_file(const std::string& model_or_file) {
  const std::filesystem::path p(model_or_file);
  return std::filesystem::is_directory(p) ? p / "tokenizer.json" : p;
}

// Control characters (a raw newline in a vocabulary) escaped as JSON would, so one token is one line.
std::string printable(const std::string& piece) {
  for (unsigned char ch : piece)
    if (ch < 0x20 || ch == 0x7F) {
      const std::string quoted = nlohmann::json(piece).dump();
      return quoted.substr(1, quoted.size() - 2);
    }
  return piece;
}

void run_tokenize(const std::string& model, const std::string& text, bool add_special, bool json_out) {
  Tokenizer t = is_gguf_file(model) ? require_model_tokenizer(model, "tokenize needs one") : Tokenizer::load(tokenizer_file(model));
  const std::vector<int> ids = t.encode(text, add_special);
  if (json_out) {
    nlohmann::json pieces = nlohmann::json::array();
    for (int id : ids) pieces.push_back(t.id_to_token(id));
    std::printf("%s\n", nlohmann::json{{"ids", ids}, {"tokens", pieces}}.dump().c_str());
    return;
  }
  // The piece as the vocabulary spells it (byte-level "Ġthe", SentencePiece "▁the", byte
  // fallback "<0xE4>"), then the text it stands for when that is whole characters.
  for (int id : ids) {
    const std::string text = t.decode({id});
    const bool whole = text.find("\xEF\xBF\xBD") == std::string::npos;  // no U+FFFD from a partial character
    std::printf("%8d  %-16s %s\n", id, printable(t.id_to_token(id)).c_str(), whole ? nlohmann::json(text).dump().c_str() : "");
  }
  std::printf("%zu tokens\n", ids.size());
}

struct TrainArgs {
  std::vector<std::string> files;
  std::string out;
  std::vector<std::string> extra_special;
  bool force = false;
  BpeTrainingOptions options;
};

void run_train(TrainArgs a) {
  namespace fs = std::filesystem;
  const fs::path out = fs::path(a.out) / "tokenizer.json", config = fs::path(a.out) / "tokenizer_config.json";
  if (!a.force)
    for (const fs::path& p : {out, config})
      require(!fs::exists(p), p.string() + " exists; pass --force to overwrite it");
  require(!fs::exists(a.out) || fs::is_directory(a.out), "--out " + a.out + " is not a directory");
  // The ChatML tokens first (documents and the chat template need them), then the extra ones.
  a.options.special_tokens = chatml_special_tokens();
  for (const std::string& token : a.extra_special) {
    require(!token.empty(), "--special: a special token cannot be empty");
    if (std::find(a.options.special_tokens.begin(), a.options.special_tokens.end(), token) ==
        a.options.special_tokens.end())
      a.options.special_tokens.push_back(token);
  }
  require(a.options.vocab_size >= 256 + int(a.options.special_tokens.size()),
          "--vocab-size must be at least " + std::to_string(256 + a.options.special_tokens.size()) +
              " (256 bytes and the special tokens)");
  require(a.options.vocab_size <= (1 << 24), "--vocab-size must be at most " + std::to_string(1 << 24));
  require(a.options.min_frequency >= 1, "--min-frequency must be at least 1");
  Stopwatch watch;
  a.options.progress = [&](int done, int wanted) {
    std::fprintf(stderr, "\r  %d / %d tokens learned (%.1f s)", done, wanted, watch.seconds());
  };
  BpeTrainer trainer(a.options);
  size_t bytes = 0;
  for (const auto& f : a.files) {
    std::ifstream in(f, std::ios::binary);
    require(in.good(), "cannot open " + f);
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    bytes += text.size();
    trainer.add_text(text);
  }
  log_info("training a " + std::to_string(a.options.vocab_size) + "-token byte-level BPE on " +
           std::to_string(bytes / 1000) + " kB from " + std::to_string(a.files.size()) + " files");
  const nlohmann::json tokenizer = trainer.train();
  std::fprintf(stderr, "\n");
  fs::create_directories(a.out);
  // Each file is renamed into place whole: a kill leaves the old file or the new one, never half.
  write_json_file(out, tokenizer);
  nlohmann::json chat_config = chatml_tokenizer_config(0);
  chat_config.erase("model_max_length");  // a model's context, set when `init` ships the tokenizer
  write_json_file(config, chat_config);
  log_info("wrote " + out.string() + " and " + config.filename().string() + " (ChatML chat template)");
}

}  // namespace

void add_tokenizer(CLI::App& app) {
  auto model = std::make_shared<std::string>(), text = std::make_shared<std::string>();
  auto special = std::make_shared<bool>(false), json_out = std::make_shared<bool>(false);
  CLI::App* tok = app.add_subcommand("tokenize", "Show the token ids and pieces of a text");
  tok->add_option("model", *model, "Model directory, tokenizer.json or GGUF file")->required();
  tok->add_option("text", *text, "Text to tokenize")->required();
  tok->add_flag("--special", *special, "Add the special tokens of the post-processor");
  tok->add_flag("--json", *json_out, "Print {\"ids\": [...], \"tokens\": [...]}");
  tok->callback([=] { run_tokenize(*model, *text, *special, *json_out); });

  auto a = std::make_shared<TrainArgs>();
  CLI::App* group = app.add_subcommand("tokenizer", "Tokenizer tools");
  group->require_subcommand(1);
  CLI::App* train = group->add_subcommand(
      "train", "Train a byte-level BPE tokenizer on text files (writes tokenizer.json and a ChatML tokenizer_config.json)");
  train->add_option("files", a->files, "Text files (UTF-8)")->required()->check(CLI::ExistingFile);
  train->add_option("-o,--out", a->out, "Output directory for tokenizer.json")->required();
  train->add_option("--vocab-size", a->options.vocab_size, "Tokens in all: bytes, merges, specials")->capture_default_str();
  train->add_option("--min-frequency", a->options.min_frequency, "Merge only pairs seen this often")->capture_default_str();
  train->add_option("--special", a->extra_special,
                    "More special tokens, after <|endoftext|>, <|im_start|> and <|im_end|> (always there)");
  train->add_flag("--force", a->force, "Overwrite tokenizer.json and tokenizer_config.json in --out");
  train->callback([a] { run_train(*a); });
}

}  // namespace crossmoe::cli
