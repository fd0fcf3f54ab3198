// `crossmoe train` as a user runs it (the commands that need libtorch, which the crossmoe command
// hands to crossmoe-torch): against plain PyTorch, killed and resumed, on several processes.
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli_fixture.hpp"
#include "runtime/forward.hpp"
#include "train/checkpoint_state.hpp"
#include "train/distributed.hpp"
#include "train/torch_model.hpp"
#include "train_log.hpp"
#include "util/json_file.hpp"

namespace fs = std::filesystem;

namespace {

using crossmoe::testing_cli::bytes_of;
using crossmoe::testing_cli::Cli;
using crossmoe::testing_cli::expect_one_line_error;
using crossmoe::testing_cli::kill_when;
using crossmoe::testing_cli::made_up_text;
using crossmoe::testing_cli::replaced;
using crossmoe::testing_cli::Result;
using crossmoe::testing_cli::run;
using crossmoe::testing_cli::run_shell;
using crossmoe::testing_cli::spawn;

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

}  // namespace
