// crossmoe rl selfplay: self-play RL post-training (MARS) of a model on text games (libtorch).
#include <omp.h>

#include <torch/csrc/autograd/profiler_legacy.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <sstream>

#include "commands.hpp"
#include "option_checks.hpp"
#include "rl/rollout.hpp"
#include "rl/selfplay.hpp"
#include "train/torch_model.hpp"
#include "util/error.hpp"
#include "util/progress.hpp"

namespace crossmoe::cli {

namespace {

struct RlArgs {
  rl::SelfPlayOptions options;
  std::string games = "tic_tac_toe,kuhn_poker,mini_hanabi", advantage = "mars", bf16 = "auto";
  std::string update_experts = "auto";
  bool no_turn_scores = false, no_seat_norm = false;
};

void run_selfplay(RlArgs& a) {
  namespace fs = std::filesystem;
  rl::SelfPlayOptions& o = a.options;
  o.games.clear();
  std::stringstream ss(a.games);
  for (std::string g; std::getline(ss, g, ',');)
    if (!g.empty()) o.games.push_back(g);
  require(!o.games.empty(), "--game names no game");
  o.credit = a.advantage == "mars" ? rl::CreditOptions::mars()
             : a.advantage == "grpo" ? rl::CreditOptions::grpo()
                                     : rl::CreditOptions::reinforce();
  if (a.no_turn_scores) o.credit.turn_scores = false;
  if (a.no_seat_norm) o.credit.per_seat = false;
  o.bf16 = a.bf16 == "auto" ? o.device.rfind("cuda", 0) == 0 : a.bf16 == "on";
  o.update_experts = a.update_experts == "dense" ? train::GroupedExperts::Dense : train::GroupedExperts::Auto;
  require(fs::exists(o.model_dir / "config.json"), o.model_dir.string() + " is not a model directory (no config.json)");
  if (fs::exists(o.out_dir) && !fs::is_empty(o.out_dir) && !o.resume)
    throw Error(o.out_dir.string() + " is not empty: pass --resume to continue that run, or choose another --out");
  at::set_num_threads(omp_get_max_threads());
  try {
    rl::run_selfplay(o);
  } catch (const c10::Error& e) {  // libtorch's message without its C++ backtrace
    throw Error(std::string("libtorch: ") + e.what_without_backtrace());
  }
}

struct BenchArgs {
  std::string model, device = "cpu", bf16 = "auto";
  int sequences = 256, prompt_tokens = 256, new_tokens = 128;
  int profile = 0;  // operators to list from a profiled batch (0 = no profile)
  uint64_t seed = 0;
};

namespace profiler = torch::autograd::profiler;

// Host time per ATen operator, from the legacy profiler's per-thread event lists (ranges nest, so a
// stack pairs each push with its pop): self time excludes the operators an operator called. Time
// that no operator covers is crossmoe's own host code (batch assembly, sampling).
void print_operator_profile(const profiler::thread_event_lists& lists, double wall_seconds, int top) {
  struct Total {
    double self_us = 0;
    int64_t calls = 0;
  };
  std::map<std::string, Total> totals;
  double operators_us = 0;
  for (const auto& list : lists) {
    struct Open {
      const profiler::LegacyEvent* push;
      double children_us;
    };
    std::vector<Open> open;
    for (const auto& e : list) {
      if (e.kind() == profiler::EventKind::PushRange) {
        open.push_back({&e, 0.0});
      } else if (e.kind() == profiler::EventKind::PopRange && !open.empty()) {
        const Open o = open.back();
        open.pop_back();
        const double us = o.push->cpuElapsedUs(e);
        Total& t = totals[o.push->name()];
        t.self_us += us - o.children_us;
        ++t.calls;
        if (open.empty()) operators_us += us;
        else open.back().children_us += us;
      }
    }
  }
  std::vector<std::pair<std::string, Total>> sorted(totals.begin(), totals.end());
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.second.self_us > b.second.self_us; });
  std::printf("profile: %.3f s wall, %.3f s in ATen operators (the rest: crossmoe's host code)\n", wall_seconds,
              operators_us * 1e-6);
  std::printf("  %-40s %10s %10s %9s\n", "operator", "self ms", "calls", "us/call");
  for (size_t i = 0; i < sorted.size() && int(i) < top; ++i) {
    const auto& [name, t] = sorted[i];
    std::printf("  %-40s %10.1f %10lld %9.1f\n", name.c_str(), t.self_us * 1e-3, static_cast<long long>(t.calls),
                t.self_us / double(std::max<int64_t>(t.calls, 1)));
  }
}

// Generated tokens per second of the rollout engine for one sequence and for a ragged batch
// (prompt lengths drawn from [prompt/2, 3 prompt/2]), sampling as MARS does, no early stops, for
// each way of running decode steps; and whether bucketed steps pick the same greedy tokens.
void run_bench(const BenchArgs& a) {
  const torch::Device device(a.device);
  if (device.is_cuda()) require(torch::cuda::is_available(), "--device cuda but no CUDA device is available");
  const bool bf16 = a.bf16 == "auto" ? device.is_cuda() : a.bf16 == "on";
  at::set_num_threads(omp_get_max_threads());
  const train::TorchModel model = train::TorchModel::load(a.model, device);
  const int vocab = int(model.config().vocab_size);
  std::mt19937_64 rng(a.seed);
  const int capacity = a.prompt_tokens * 3 / 2 + a.new_tokens + 2;
  rl::RolloutEngine engine(model, a.sequences, capacity, bf16 ? torch::kBFloat16 : torch::kFloat32);
  struct Way {
    const char* name;
    rl::RolloutEngine::DecodeSteps steps;
    train::GroupedExperts experts;
  };
  using Steps = rl::RolloutEngine::DecodeSteps;
  using train::GroupedExperts;
  // The trainer's expert dispatch (a host sync per MoE layer), every expert on every row (no sync,
  // C/K times the expert arithmetic), and DecodeGraphs' fixed-shape steps (CUDA graphs on CUDA).
  const std::vector<Way> ways = {{"ragged, expert dispatch", Steps::Ragged, GroupedExperts::Auto},
                                 {"ragged, dense experts", Steps::Ragged, GroupedExperts::Dense},
                                 {"bucketed", Steps::Bucketed, GroupedExperts::Auto}};
  auto requests_for = [&](int n) {
    std::vector<rl::GenerationRequest> requests;
    for (int i = 0; i < n; ++i) {
      rl::GenerationRequest r;
      r.sequence = i;
      const int len = std::max(1, a.prompt_tokens / 2 + int(rng() % uint64_t(std::max(a.prompt_tokens, 1) + 1)));
      for (int t = 0; t < len; ++t) r.append.push_back(int(rng() % uint64_t(vocab)));
      r.max_new_tokens = a.new_tokens;
      requests.push_back(std::move(r));
    }
    return requests;
  };
  auto generate = [&](const std::vector<rl::GenerationRequest>& requests, const Way& way,
                      const rl::SamplingOptions& sampling) {
    engine.set_decode_steps(way.steps);
    engine.set_decode_experts(way.experts);
    engine.reset();
    return engine.generate(requests, {}, sampling, rng);
  };
  auto measure = [&](int n, const Way& way) -> double {
    const auto requests = requests_for(n);
    if (device.is_cuda()) torch::cuda::synchronize();
    const rl::RolloutStats before = engine.stats();
    Stopwatch watch;
    generate(requests, way, rl::SamplingOptions{});
    if (device.is_cuda()) torch::cuda::synchronize();
    return double(engine.stats().generated_tokens - before.generated_tokens) / watch.seconds();
  };
  // Warm up at the measured sizes: a first run of new shapes pays for the caching allocator's
  // growth, the attention backend's plans and the graphs' captures (on an H200, a cold batch of
  // 256 ran at a third of the speed of the same batch again).
  for (const Way& way : ways) measure(1, way), measure(a.sequences, way);
  std::vector<std::pair<double, double>> speed;
  for (const Way& way : ways) speed.push_back({measure(1, way), measure(a.sequences, way)});
  std::printf("rollout %s%s: prompts ~%d tokens, %d new tokens each; generated tokens/s\n", a.device.c_str(),
              bf16 ? " bf16" : "", a.prompt_tokens, a.new_tokens);
  std::printf("  %-34s %12s %14s\n", "decode steps", "1 sequence", (std::to_string(a.sequences) + " sequences").c_str());
  for (size_t i = 0; i < ways.size(); ++i) {
    std::string name = ways[i].name;
    if (ways[i].steps == Steps::Bucketed) name += engine.replaying_graphs() ? " (CUDA graphs)" : " (eager)";
    std::printf("  %-34s %12.0f %14.0f   (%.2fx and %.2fx the first)\n", name.c_str(), speed[i].first, speed[i].second,
                speed[i].first / speed[0].first, speed[i].second / speed[0].second);
  }
  // Greedy: bucketed steps against the ragged dispatch, token for token (bf16 products may round
  // differently in the two shapes, so a rare near-tie can split; they are counted, not hidden).
  const auto requests = requests_for(a.sequences);
  const auto ragged = generate(requests, ways[0], rl::SamplingOptions{0.0, 1.0, 0});
  const auto bucketed = generate(requests, ways[2], rl::SamplingOptions{0.0, 1.0, 0});
  int same = 0;
  for (size_t i = 0; i < requests.size(); ++i) same += ragged[i].tokens == bucketed[i].tokens;
  std::printf("  greedy tokens, bucketed = ragged: %d of %d sequences\n", same, a.sequences);
  if (a.profile > 0) {
    // The batch again under the profiler (host time only: on CUDA an operator that waits for the
    // device, such as a copy to the host, carries the wait).
    // The engine's default on the device: bucketed steps on CUDA, ragged with the dispatch on the CPU.
    const Way& way = device.is_cuda() ? ways[2] : ways[0];
    const auto profiled = requests_for(a.sequences);
    profiler::thread_event_lists events;
    Stopwatch watch;
    {
      profiler::TLSLegacyProfilerGuard guard(
          torch::profiler::impl::ProfilerConfig(torch::profiler::impl::ProfilerState::CPU),
          [&events](const profiler::thread_event_lists& lists) { events = lists; });
      generate(profiled, way, rl::SamplingOptions{});
    }
    print_operator_profile(events, watch.seconds(), a.profile);
  }
}

}  // namespace

void add_rl(CLI::App& app) {
  CLI::App* rl_cmd = app.add_subcommand("rl", "Reinforcement learning: self-play on text games (MARS)");
  rl_cmd->require_subcommand(1);
  auto a = std::make_shared<RlArgs>();
  rl::SelfPlayOptions& o = a->options;
  CLI::App* cmd = rl_cmd->add_subcommand(
      "selfplay", "Iterations of self-play rollouts and a clipped policy update with a KL loss to the starting model; "
                  "log.csv, progress.svg, resumable checkpoints, model/ at the end");
  cmd->add_option("model", o.model_dir, "Model directory (config, weights, tokenizer with a chat template)")
      ->required()->check(CLI::ExistingDirectory);
  cmd->add_option("-o,--out", o.out_dir, "Output directory")->required();
  cmd->add_option("--game", a->games, "Training games, comma-separated (two-player)")->capture_default_str();
  cmd->add_option("--iterations", o.iterations, "Rollout-and-update iterations")->capture_default_str()
      ->check(cli::positive());
  cmd->add_option("--games-per-iteration", o.games_per_iteration, "Self-play games per training game and iteration")
      ->capture_default_str()->check(cli::positive());
  cmd->add_option("--max-new-tokens", o.max_new_tokens, "Longest answer; a longer one loses the game")
      ->capture_default_str()->check(cli::positive());
  cmd->add_option("--max-sequence", o.max_sequence, "Longest conversation of one seat, in tokens")
      ->capture_default_str()->check(CLI::Range(16, 1 << 20));
  cmd->add_option("--max-turns", o.max_turns, "Actions per game before it is cut off")->capture_default_str()
      ->check(cli::positive());
  cmd->add_option("--temperature", o.sampling.temperature, "Sampling temperature (0 = greedy)")->capture_default_str()
      ->check(cli::real_number(0));
  cmd->add_option("--top-p", o.sampling.top_p, "Nucleus sampling mass")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--top-k", o.sampling.top_k, "Candidates per draw (0 = all)")->capture_default_str()
      ->check(cli::whole_number(0));
  cmd->add_option("--advantage", a->advantage,
                  "Credit assignment: mars (turn-level returns, per-game and per-seat normalisation, whitening), "
                  "grpo (episode reward standardised per game), reinforce (raw episode reward)")
      ->capture_default_str()->check(CLI::IsMember({"mars", "grpo", "reinforce"}));
  cmd->add_flag("--no-turn-scores", a->no_turn_scores, "Ablation: the episode's reward on the last turn only");
  cmd->add_flag("--no-seat-norm", a->no_seat_norm, "Ablation: normalise rewards per game, not per seat");
  cmd->add_option("--clip", o.loss.clip, "PPO ratio clip")->capture_default_str();
  cmd->add_option("--dual-clip", o.loss.dual_clip, "Dual clip for negative advantages (true/false)")->capture_default_str();
  cmd->add_option("--kl-coef", o.loss.kl_coef, "KL loss weight (k3 estimator, to the starting model)")
      ->capture_default_str();
  cmd->add_option("--reference", o.reference_dir,
                  "The KL loss's frozen reference model (default: the starting model), e.g. the warm start when "
                  "continuing from another run's policy")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--sft-mix", o.sft_mix_file,
                  "Conversations (jsonl, as train --sft reads) whose assistant-token loss every optimizer step adds "
                  "(PPO-ptx): keeps the answer protocol when a seat's games all forfeit and its advantages vanish")
      ->check(CLI::ExistingFile);
  cmd->add_option("--sft-mix-coef", o.sft_mix_coef, "Weight of the --sft-mix loss beside the policy loss")
      ->capture_default_str()->check(cli::real_number(0));
  cmd->add_option("--sft-mix-batch", o.sft_mix_batch, "--sft-mix conversations per optimizer step")
      ->capture_default_str()->check(cli::positive());
  cmd->add_option("--lr", o.lr, "Learning rate (constant after warmup)")->capture_default_str();
  cmd->add_option("--warmup", o.warmup, "Optimizer steps of linear warmup")->capture_default_str();
  cmd->add_option("--weight-decay", o.weight_decay, "AdamW weight decay (matrices only)")->capture_default_str();
  cmd->add_option("--grad-clip", o.grad_clip, "Max gradient norm (0 = off)")->capture_default_str();
  cmd->add_option("--minibatch", o.minibatch, "Sequences per optimizer step (one epoch per iteration)")
      ->capture_default_str()->check(cli::positive());
  cmd->add_option("--update-experts", a->update_experts,
                  "How the update's forward passes run MoE experts: auto (tokens dispatched to their experts; "
                  "on CUDA a wait per MoE layer for the counts) or dense (every candidate expert on every token, "
                  "weighted by the routing: no wait, more arithmetic)")
      ->capture_default_str()->check(CLI::IsMember({"auto", "dense"}));
  cmd->add_option("--eval-every", o.eval_every, "Evaluate every N iterations (0 = never)")->capture_default_str()
      ->check(cli::whole_number(0));
  cmd->add_option("--eval-games", o.eval_games, "Evaluation games per game, opponent and seat")->capture_default_str()
      ->check(cli::positive());
  cmd->add_option("--mcts-simulations", o.mcts_simulations, "MCTS opponent's simulations per move")
      ->capture_default_str()->check(cli::positive());
  cmd->add_option("--cfr-iterations", o.cfr_iterations, "CFR+ iterations for the poker opponent")->capture_default_str()
      ->check(cli::positive());
  cmd->add_option("--device", o.device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--bf16", a->bf16, "bf16 matrix products: auto (on for cuda), on, off")
      ->capture_default_str()->check(CLI::IsMember({"auto", "on", "off"}));
  cmd->add_option("--seed", o.seed, "Seed for sampling, chance and opponents")->capture_default_str();
  cmd->add_option("--stop-after", o.stop_after, "Checkpoint and stop after this iteration (continue with --resume)");
  cmd->add_flag("--resume", o.resume,
                "Continue from the output directory's newest complete checkpoint (refused when it has none)");
  add_threads_option(*cmd);
  cmd->callback([a] { run_selfplay(*a); });

  auto b = std::make_shared<BenchArgs>();
  CLI::App* bench = rl_cmd->add_subcommand("bench", "Rollout engine throughput: one sequence against a ragged batch");
  bench->add_option("model", b->model, "Model directory")->required()->check(CLI::ExistingDirectory);
  bench->add_option("--sequences", b->sequences, "Sequences in the batch")->capture_default_str()
      ->check(cli::positive());
  bench->add_option("--prompt-tokens", b->prompt_tokens, "Mean prompt length (random tokens)")->capture_default_str()
      ->check(cli::positive());
  bench->add_option("--new-tokens", b->new_tokens, "Tokens generated per sequence")->capture_default_str()
      ->check(cli::positive());
  bench->add_option("--device", b->device, "cpu or cuda")->capture_default_str();
  bench->add_option("--bf16", b->bf16, "bf16 matrix products: auto (on for cuda), on, off")
      ->capture_default_str()->check(CLI::IsMember({"auto", "on", "off"}));
  bench->add_option("--seed", b->seed, "Seed for the prompts and sampling")->capture_default_str();
  bench->add_option("--profile", b->profile, "Profile one more batch and list the N operators with the most host time")
      ->check(cli::whole_number(0));
  add_threads_option(*bench);
  bench->callback([b] {
    try {
      run_bench(*b);
    } catch (const c10::Error& e) {
      throw Error(std::string("libtorch: ") + e.what_without_backtrace());
    }
  });
}

}  // namespace crossmoe::cli
