// crossmoe generate MODEL -p TEXT: stream a continuation and report its speed.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>
#include <sstream>

#include "commands.hpp"
#include "memory_budget_options.hpp"
#include "sampling_options.hpp"
#include "runtime/generate.hpp"
#include "runtime/stop_strings.hpp"
#include "runtime/model_files.hpp"
#include "tokenizer/tokenizer.hpp"
#include "util/error.hpp"
#include "util/progress.hpp"

namespace crossmoe::cli {

namespace {

struct GenerateArgs {
  std::string model, prompt, prompt_file, ids, trace;
  std::vector<std::string> stops;
  int max_tokens = 128;
  int context = 0;
  SamplingOptions sampling;
  MemoryBudgetArgs memory;
};

std::string read_all(std::istream& in) { return std::string(std::istreambuf_iterator<char>(in), {}); }

// The prompt text from -p TEXT, -p - (stdin), -f FILE, or stdin when it is piped and no other
// source is given; nullopt when the prompt is token ids (--ids).
std::optional<std::string> prompt_text(const GenerateArgs& a) {
  const int sources = !a.prompt.empty() + !a.prompt_file.empty() + !a.ids.empty();
  if (sources > 1) throw UsageError("give only one of --prompt, --file and --ids");
  if (!a.ids.empty()) return std::nullopt;
  if (!a.prompt_file.empty()) {
    // A pipe is fine here (-f <(command)); a directory is not.
    if (std::filesystem::is_directory(a.prompt_file)) throw Error("--file " + a.prompt_file + ": is a directory, expected a text file");
    std::ifstream in(a.prompt_file, std::ios::binary);
    require(in.good(), "--file " + a.prompt_file + ": cannot open it");
    return read_all(in);
  }
  if (a.prompt == "-" || (a.prompt.empty() && !isatty(STDIN_FILENO))) return read_all(std::cin);
  if (a.prompt.empty()) throw UsageError("give a prompt: -p TEXT, -f FILE, --ids 1,2,3, or pipe it into stdin");
  return a.prompt;
}

std::vector<int> parse_ids(const std::string& text) {
  std::vector<int> ids;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      size_t used = 0;
      ids.push_back(std::stoi(item, &used));
      require(used == item.size(), "");
    } catch (const std::exception&) {
      throw Error("--ids: '" + item + "' is not a token id");
    }
  }
  return ids;
}

void write_trace(const std::string& path, const std::vector<RoutingRecord>& trace) {
  std::ofstream out(path);
  require(out.good(), "cannot write " + path);
  for (const auto& r : trace) {
    nlohmann::json experts = nlohmann::json::array();
    for (const auto& e : r.experts) experts.push_back({{"layer", e.owner_layer}, {"expert", e.index}});
    out << nlohmann::json{{"position", r.position}, {"layer", r.layer}, {"experts", experts}, {"weights", r.weights}}.dump()
        << "\n";
  }
}

// Every byte of the text, NULs included (a model may write them).
void print(const std::string& text) { std::fwrite(text.data(), 1, text.size(), stdout); }

void run_generate(const GenerateArgs& a) {
  const std::optional<std::string> text = prompt_text(a);
  const Model model(a.model, a.memory.resolve());
  const ModelConfig& c = model.config();
  std::optional<Tokenizer> tokenizer = load_model_tokenizer(a.model);
  require(tokenizer || !text, a.model + " has no tokenizer.json (or, for a GGUF file, no tokenizer.ggml.* vocabulary); pass token ids with --ids");
  if (!tokenizer && !a.stops.empty()) throw Error("--stop needs a tokenizer in " + a.model + " to turn tokens into text");
  // A text as Hugging Face's tokenizer(text) encodes it: with what its post-processor puts around
  // a text (LLaMA-2's <s>; nothing for Qwen3's, whatever config.json's bos_token_id), as
  // transformers 5 does; a GGUF file's as llama.cpp's add_bos_token / add_eos_token say.
  std::vector<int> prompt = text ? tokenizer->encode(*text, /*add_special_tokens=*/true) : parse_ids(a.ids);
  require(!prompt.empty(), "the prompt is empty");
  require(a.context <= c.max_position_embeddings,
          "--ctx " + std::to_string(a.context) + " is more than the model's context of " +
              std::to_string(c.max_position_embeddings) + " tokens (max_position_embeddings in config.json)");
  const int context = a.context > 0 ? a.context : std::min(c.max_position_embeddings, 8192);
  require(int(prompt.size()) < context, "the prompt has " + std::to_string(prompt.size()) +
                                            " tokens, more than the context of " + std::to_string(context) +
                                            " can take with room to generate");
  InferenceSession session(model, context);
  std::vector<RoutingRecord> trace;
  if (!a.trace.empty()) session.set_trace(&trace);
  Sampler sampler(a.sampling.resolve(a.model));
  std::optional<DecodeStream> stream;
  StopStrings stops(a.stops);
  if (tokenizer) {
    print(text ? *text : tokenizer->decode(prompt));
    // The prompt's last ids as context: the generated text continues the prompt's (a
    // SentencePiece decoder would strip the space before the first generated word).
    stream.emplace(*tokenizer, true, std::vector<int>(prompt.end() - std::min<std::ptrdiff_t>(prompt.size(), 4), prompt.end()));
  }
  const GenerationResult result = generate(session, prompt, a.max_tokens, sampler, c.eos_token_ids, [&](int token) {
    if (stream) print(stops.push(stream->push(token)));
    else std::printf("%d ", token);
    std::fflush(stdout);
    return !stops.stopped();
  });
  print(stops.flush());
  std::printf("\n");
  std::fflush(stdout);  // the speed line goes to stderr: keep it after the text
  const GenerationStats& s = result.stats;
  char line[256];
  std::snprintf(line, sizeof line, "prefill %d tokens at %.1f tokens/s; decode %d tokens at %.1f tokens/s",
                s.prompt_tokens, s.prefill_tokens_per_second(), s.generated_tokens, s.decode_tokens_per_second());
  log_info(line);
  if (model.expert_cache())
    log_info(expert_cache_summary(*model.expert_cache(), int64_t(s.prompt_tokens) + s.generated_tokens));
  if (!a.trace.empty()) {
    write_trace(a.trace, trace);
    log_info("routing trace: " + std::to_string(trace.size()) + " records in " + a.trace);
  }
}

}  // namespace

void add_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a prompt, streaming tokens");
  cmd->add_option("model", a->model, "Model directory or GGUF file")->required();
  cmd->add_option("-p,--prompt", a->prompt, "Prompt text; - reads it from stdin (as does a piped stdin without -p)");
  cmd->add_option("-f,--file", a->prompt_file, "Read the prompt from this file");
  cmd->add_option("--ids", a->ids, "Prompt as comma-separated token ids");
  cmd->add_option("-n,--max-tokens", a->max_tokens, "Tokens to generate")->capture_default_str()->check(positive());
  cmd->add_option("--ctx", a->context, "Context length (default: the model's, at most 8192)")->check(positive());
  cmd->add_option("--stop", a->stops, "Stop when the output contains this text, which is not printed (repeatable)")
      ->allow_extra_args(false);
  a->sampling.add_to(*cmd);
  a->memory.add_to(*cmd);
  cmd->add_option("--trace", a->trace, "Write the routing trace (JSON lines) to this file");
  add_threads_option(*cmd);
  cmd->callback([a] { run_generate(*a); });
}

}  // namespace crossmoe::cli
