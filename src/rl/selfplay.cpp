#include "rl/selfplay.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <optional>

#include "games/cfr.hpp"
#include "games/chat_match.hpp"
#include "model/hf_config.hpp"
#include "tokenizer/chat_template.hpp"
#include "tokenizer/tokenizer.hpp"
#include "train/checkpoint_state.hpp"
#include "train/optimizer.hpp"
#include "train/trainer.hpp"
#include "util/error.hpp"
#include "util/csv.hpp"
#include "util/json_file.hpp"
#include "util/progress.hpp"
#include "util/svg_plot.hpp"

namespace crossmoe::rl {

namespace fs = std::filesystem;
using games::Game;
using games::State;
using games::Match;
using games::Seat;

namespace {

enum Stream : uint64_t { kRollout = 11, kEvaluation = 12, kShuffle = 13, kSftMix = 14 };

// A seat's conversation in the update's form.
struct Sequence {
  std::vector<int> tokens;
  SeatTrajectory trajectory;
  std::vector<float> rollout_log_probs;  // [positions], 0 off the model's tokens
};

std::vector<Sequence> sequences_of(const std::vector<Match>& matches, const RolloutEngine& engine) {
  std::vector<Sequence> out;
  for (const Match& m : matches)
    for (size_t seat = 0; seat < m.seats.size(); ++seat) {
      const Seat& s = m.seats[seat];
      if (s.row < 0 || s.answers.empty()) continue;
      Sequence q;
      q.tokens = engine.tokens(s.row);
      SeatTrajectory& t = q.trajectory;
      t.game = m.game_name;
      t.seat = int(seat);
      t.positions = int(q.tokens.size()) - 1;
      t.response.assign(size_t(t.positions), 0);
      q.rollout_log_probs.assign(size_t(t.positions), 0.0f);
      size_t lp = 0;
      for (const auto& [begin, end] : s.answers) {
        for (int tok = begin; tok < end; ++tok) {
          t.response[size_t(tok - 1)] = 1;
          q.rollout_log_probs[size_t(tok - 1)] = s.log_probs[lp++];
        }
        t.turn_end.push_back(end - 2);
      }
      t.turn_reward = s.turn_reward;
      out.push_back(std::move(q));
    }
  return out;
}

// The [B, T] batch of some sequences (right-padded with 0) and [B, T - 1] tensors aligned with
// positions: the mask of the model's tokens and any per-position values.
torch::Tensor padded_tokens(const std::vector<const Sequence*>& batch, int64_t T) {
  torch::Tensor t = torch::zeros({int64_t(batch.size()), T}, torch::kInt64);
  for (size_t b = 0; b < batch.size(); ++b)
    std::copy(batch[b]->tokens.begin(), batch[b]->tokens.end(), t.data_ptr<int64_t>() + int64_t(b) * T);
  return t;
}

template <typename F>
torch::Tensor per_position(const std::vector<const Sequence*>& batch, int64_t T, F value) {
  torch::Tensor t = torch::zeros({int64_t(batch.size()), T - 1}, torch::kFloat64);
  double* p = t.data_ptr<double>();
  for (size_t b = 0; b < batch.size(); ++b)
    for (int i = 0; i < batch[b]->trajectory.positions; ++i) p[int64_t(b) * (T - 1) + i] = value(b, i);
  return t;
}

// Log-probs of each next token [B, T - 1] (float32). With a mask, the entropy summed over the masked
// positions is added to *entropy_sum (a device scalar: nothing here waits for the device).
torch::Tensor token_log_probs(const train::TorchModel& model, const torch::Tensor& tokens,
                              const train::ForwardOptions& fo, const torch::Tensor* mask, torch::Tensor* entropy_sum) {
  const int64_t T = tokens.size(1);
  const torch::Tensor logits = model.forward(tokens.narrow(1, 0, T - 1), fo).logits;
  const torch::Tensor log_probs = logits.log_softmax(-1);
  if (mask) {
    torch::NoGradGuard no_grad;
    *entropy_sum += (entropy_from_logits(logits) * *mask).sum().to(torch::kFloat64);
  }
  return log_probs.gather(-1, tokens.narrow(1, 1, T - 1).unsqueeze(-1)).squeeze(-1);
}

// Scoring runs sequences in chunks of about this many logit bytes: wide batches (few forward
// passes, each a long queue of kernels) without holding every logit of the iteration at once.
constexpr int64_t kScoringLogitBytes = int64_t(512) << 20;

// Log-probs of the taken tokens under `model` for every sequence, without gradient: one [positions]
// float32 tensor per sequence, on the device. Sequences run longest first in chunks of similar
// length, so padding is small; a causal model's right padding never reaches the real tokens, so the
// chunking changes nothing but rounding. With entropy_sum, the entropy over the model's tokens is
// added to it.
std::vector<torch::Tensor> score_sequences(const train::TorchModel& model, const std::vector<Sequence>& seqs,
                                           const train::ForwardOptions& fo, torch::Device device,
                                           torch::Tensor* entropy_sum) {
  torch::NoGradGuard no_grad;
  std::vector<size_t> by_length(seqs.size());
  std::iota(by_length.begin(), by_length.end(), 0);
  std::stable_sort(by_length.begin(), by_length.end(),
                   [&](size_t a, size_t b) { return seqs[a].tokens.size() > seqs[b].tokens.size(); });
  const int64_t chunk_tokens = std::max<int64_t>(1, kScoringLogitBytes / (int64_t(model.config().vocab_size) * 4));
  std::vector<torch::Tensor> out(seqs.size());
  for (size_t first = 0; first < by_length.size();) {
    const int64_t T = int64_t(seqs[by_length[first]].tokens.size());
    size_t end = first + 1;
    while (end < by_length.size() && int64_t(end - first + 1) * T <= chunk_tokens) ++end;
    std::vector<const Sequence*> chunk;
    for (size_t k = first; k < end; ++k) chunk.push_back(&seqs[by_length[k]]);
    const torch::Tensor tokens = padded_tokens(chunk, T).to(device);
    torch::Tensor mask;
    if (entropy_sum)
      mask = per_position(chunk, T, [&](size_t b, int i) { return double(chunk[b]->trajectory.response[size_t(i)]); })
                 .to(device, torch::kFloat32);
    const torch::Tensor lp = token_log_probs(model, tokens, fo, entropy_sum ? &mask : nullptr, entropy_sum);
    for (size_t b = 0; b < chunk.size(); ++b)
      out[by_length[first + b]] = lp[int64_t(b)].narrow(0, 0, chunk[b]->trajectory.positions);
    first = end;
  }
  return out;
}

// Per-sequence [positions] tensors as one right-padded [B, T - 1] matrix (T: the longest sequence).
torch::Tensor padded_rows(const std::vector<torch::Tensor>& rows) {
  return torch::nn::utils::rnn::pad_sequence(rows, /*batch_first=*/true);
}

struct UpdateStats {
  double pg = 0, kl = 0, entropy = 0, clip_fraction = 0, ratio_deviation = 0, grad_norm = 0, log_prob_gap = 0,
         sft_mix_loss = 0;
  int64_t tokens = 0, steps = 0;
  double seconds = 0;
};

struct Evaluation {
  std::map<std::string, double> values;  // column -> value
  int answers = 0, invalid = 0;
};

std::string csv_number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

void write_progress_svg(const fs::path& csv, const fs::path& svg) {
  std::ifstream in(csv);
  std::string line;
  std::getline(in, line);
  const std::vector<std::string> columns = split_csv_line(line);
  LinePlot plot;
  plot.title = "self-play: evaluation against iterations";
  plot.x_label = "iteration";
  std::map<size_t, PlotSeries> series;
  for (size_t c = 0; c < columns.size(); ++c) {
    const std::string& n = columns[c];
    if (n.ends_with("_win") || n.ends_with("_score") || n == "invalid_rate") series[c].label = n;
  }
  while (std::getline(in, line)) {
    const std::vector<std::string> f = split_csv_line(line);
    for (auto& [c, s] : series)
      if (c < f.size() && !f[c].empty()) s.points.push_back({std::stod(f[0]), std::stod(f[c])});
  }
  for (auto& [c, s] : series)
    if (!s.points.empty()) plot.series.push_back(std::move(s));
  if (!plot.series.empty()) write_svg(plot, svg);
}

}  // namespace

std::vector<std::string> selfplay_columns(const std::vector<std::string>& games_list) {
  std::vector<std::string> c = {"iteration",    "trajectories", "answers",     "invalid_rate",     "overlong_rate",
                                "answer_tokens", "reward_mean",  "pg_loss",     "kl",               "entropy",
                                "clip_fraction", "ratio_deviation", "grad_norm",    "log_prob_gap", "sft_mix_loss", "rollout_tokens_per_s",
                                "update_tokens_per_s", "lr", "rollout_s", "rollout_prefill_s", "rollout_engine_s",
                                "decode_rows_per_step", "update_s", "eval_s"};
  for (const auto& name : games_list) {
    const auto game = games::make_game(name);
    if (game->info().cooperative) {
      c.push_back(name + "_score");
      continue;
    }
    for (const char* order : {"first", "second"})
      for (const char* r : {"win", "draw", "loss"}) c.push_back(name + "_" + order + "_" + r);
  }
  c.push_back("eval_invalid_rate");
  c.push_back("elapsed_s");
  return c;
}

IterationLog run_selfplay(const SelfPlayOptions& o) {
  require(!o.games.empty(), "self-play needs at least one game");
  require(o.iterations > 0 && o.games_per_iteration > 0 && o.minibatch > 0 && o.max_new_tokens > 0,
          "iterations, games per iteration, minibatch and max new tokens must be positive");
  const torch::Device device(o.device);
  if (device.is_cuda()) require(torch::cuda::is_available(), "rl: --device cuda but no CUDA device is available");
  const torch::ScalarType compute = o.bf16 ? torch::kBFloat16 : torch::kFloat32;

  // Everything that can be refused is checked before any work: the games, where the run starts
  // (a directory holding a run is resumed from its newest complete checkpoint or refused), the
  // model's chat template and whether its tokenizer can write every game's text.
  std::map<std::string, std::unique_ptr<Game>> games;
  for (const auto& name : o.games) {
    require(!games.count(name), "--game names " + name + " twice");
    games[name] = games::make_game(name);
    require(games[name]->info().num_players == 2, name + ": self-play here is for two-player games");
  }
  const std::vector<std::string> columns = selfplay_columns(o.games);
  const std::optional<train::SelfPlayState> resumed = train::starting_selfplay_state(o.out_dir, o.resume, o.model_dir);
  if (resumed)
    require(resumed->iteration <= o.iterations, "--resume: the run is already at iteration " +
                                                    std::to_string(resumed->iteration) + ", past --iterations " +
                                                    std::to_string(o.iterations));
  const ModelConfig model_config = read_model_config(o.model_dir);
  games::ChatModel chat = games::load_chat_model(o.model_dir, model_config.eos_token_ids);
  for (const auto& name : o.games)
    games::check_game_text(chat, *games.at(name), int(model_config.vocab_size), o.model_dir.string());

  // Conversations mixed into the update, encoded through the model's chat template.
  std::vector<train::SftExample> sft_mix;
  if (!o.sft_mix_file.empty()) {
    require(o.sft_mix_batch > 0 && o.sft_mix_coef >= 0, "--sft-mix-batch must be positive, --sft-mix-coef not negative");
    train::ChatEncoder encoder = train::ChatEncoder::load(o.model_dir);
    sft_mix = train::read_sft_file(o.sft_mix_file, encoder);  // an error when it holds none
  }
  train::EpochOrder sft_mix_order(o.seed, kSftMix, std::max<size_t>(sft_mix.size(), 1));

  // Policy (the start model or the resumed checkpoint), frozen reference, optimiser.
  train::TorchModel policy = train::TorchModel::load(o.model_dir, device);
  const fs::path reference_dir = o.reference_dir.empty() ? o.model_dir : o.reference_dir;
  const train::TorchModel reference = train::TorchModel::load(reference_dir, device);
  for (const auto& [name, t] : policy.tensors()) {
    const auto it = reference.tensors().find(name);
    require(it != reference.tensors().end() && it->second.sizes() == t.sizes(),
            "--reference " + reference_dir.string() + " is not a model of the policy's shape (tensor " + name + ")");
  }
  train::AdamW adam;
  int start_iteration = 0;
  int64_t optimizer_steps = 0;
  double elapsed_before = 0;
  if (resumed) {
    train::load_checkpoint_tensors(resumed->dir, policy, adam);
    start_iteration = resumed->iteration;
    optimizer_steps = resumed->optimizer_steps;
    elapsed_before = resumed->elapsed_s;
    log_info("resuming from " + resumed->dir.string() + " after iteration " + std::to_string(start_iteration));
  }

  // The evaluation opponents.
  std::map<std::string, std::unique_ptr<games::Agent>> opponents;
  for (const auto& name : o.games) {
    const Game& g = *games[name];
    if (g.info().cooperative) continue;
    if (g.info().perfect_information) {
      opponents[name] = std::make_unique<games::MctsAgent>(games::MctsOptions{2.0, o.mcts_simulations, 10});
    } else {
      games::CfrSolver solver(g);
      solver.iterate(o.cfr_iterations);
      opponents[name] = std::make_unique<games::PolicyAgent>(solver.average_policy(), "cfr");
    }
  }

  fs::create_directories(o.out_dir);
  const fs::path csv = o.out_dir / "log.csv";
  std::string header;
  for (const auto& c : columns) header += (header.empty() ? "" : ",") + c;
  train::keep_log_rows(csv, header, start_iteration);
  const std::vector<std::string> trainable = policy.trainable_names();
  for (const auto& name : trainable) policy.tensor(name).set_requires_grad(true);

  // One engine for rollouts and evaluations, with a row per seat the policy plays.
  // (Evaluation: one policy seat in each of 2 x eval_games matches, or both seats in eval_games.)
  const int rows = int(o.games.size()) * 2 * std::max(o.games_per_iteration, o.eval_every > 0 ? o.eval_games : 0);
  RolloutEngine engine(policy, rows, o.max_sequence, compute);
  games::MatchSettings settings;
  settings.max_new_tokens = o.max_new_tokens;
  settings.max_turns = o.max_turns;
  settings.sampling = o.sampling;
  settings.rewards = o.rewards;

  const train::AdamWHyper hyper{o.beta1, o.beta2, 1e-8, o.weight_decay};
  ProgressBar bar(o.iterations, start_iteration);
  Stopwatch watch;
  IterationLog log;
  log.columns = columns;
  for (int iteration = start_iteration; iteration < o.iterations; ++iteration) {
    std::map<std::string, double> row;
    // Rollout: self-play on every training game.
    auto rng = train::stream_rng(o.seed, kRollout, uint64_t(iteration));
    std::vector<Match> matches;
    int next_row = 0;
    for (const auto& name : o.games)
      for (int g = 0; g < o.games_per_iteration; ++g) {
        Match m;
        m.game_name = name;
        m.game = games.at(name).get();
        m.state = m.game->initial_state();
        m.seats.resize(2);
        for (auto& s : m.seats) s.row = next_row++;
        matches.push_back(std::move(m));
      }
    const RolloutStats before = engine.stats();
    Stopwatch rollout_watch;
    const games::PlayCounts counts = games::play_matches(matches, engine, chat, settings, rng);
    const double rollout_seconds = rollout_watch.seconds();
    const int64_t generated = engine.stats().generated_tokens - before.generated_tokens;
    std::vector<Sequence> seqs = sequences_of(matches, engine);
    row["trajectories"] = double(seqs.size());
    row["answers"] = counts.answers;
    row["invalid_rate"] = counts.answers ? double(counts.invalid) / counts.answers : 0.0;
    row["overlong_rate"] = counts.answers ? double(counts.overlong) / counts.answers : 0.0;
    row["answer_tokens"] = counts.answers ? double(counts.answer_tokens) / counts.answers : 0.0;
    row["rollout_tokens_per_s"] = double(generated) / std::max(rollout_seconds, 1e-9);
    // Where rollout time went: the engine (its prefills, then decode steps of so many rows each);
    // the rest of rollout_s is the games and the prompts on the host.
    const RolloutStats& after = engine.stats();
    row["rollout_s"] = rollout_seconds;
    row["rollout_prefill_s"] = after.prefill_seconds - before.prefill_seconds;
    row["rollout_engine_s"] = after.seconds - before.seconds;
    row["decode_rows_per_step"] = double(after.decode_rows - before.decode_rows) /
                                  double(std::max<int64_t>(after.decode_steps - before.decode_steps, 1));
    double reward_sum = 0;
    for (const auto& q : seqs)
      for (double r : q.trajectory.turn_reward) reward_sum += r;
    row["reward_mean"] = seqs.empty() ? 0.0 : reward_sum / double(seqs.size());

    // Update: credit, old and reference log-probs, one epoch of minibatches. The update never waits
    // for the device until its last step: its numbers are summed there and read once at the end.
    UpdateStats u;
    Stopwatch update_watch;
    if (!seqs.empty()) {
      std::vector<SeatTrajectory> trajectories;
      for (const auto& q : seqs) trajectories.push_back(q.trajectory);
      const Credit credit = assign_credit(trajectories, o.credit);
      std::vector<size_t> order(seqs.size());
      std::iota(order.begin(), order.end(), 0);
      auto shuffle_rng = train::stream_rng(o.seed, kShuffle, uint64_t(iteration));
      std::shuffle(order.begin(), order.end(), shuffle_rng);
      train::ForwardOptions fo;
      fo.compute_dtype = compute;
      fo.grouped_experts = o.update_experts;
      // Old and reference log-probs of the whole batch first, from the policy as it was before this
      // iteration's updates (as ROLL computes old_log_probs before its train step): later minibatches
      // then see a ratio that has moved away from 1, which is what the clip acts on.
      const auto on_device = torch::TensorOptions().dtype(torch::kFloat64).device(device);
      torch::Tensor entropy_sum = torch::zeros({}, on_device), gap_sum = torch::zeros({}, on_device);
      const std::vector<torch::Tensor> old_lp = score_sequences(policy, seqs, fo, device, &entropy_sum);
      const std::vector<torch::Tensor> ref_lp = score_sequences(reference, seqs, fo, device, nullptr);
      int64_t masked_tokens = 0;
      for (const auto& q : seqs)
        for (uint8_t r : q.trajectory.response) masked_tokens += r;
      // Per optimizer step: total loss, pg, kl, clip fraction, ratio deviation, gradient norm.
      std::vector<torch::Tensor> step_values;
      for (size_t first = 0; first < order.size(); first += size_t(o.minibatch)) {
        std::vector<const Sequence*> batch;
        std::vector<torch::Tensor> old_rows, ref_rows;
        int64_t T = 0;
        std::vector<size_t> index;
        for (size_t k = first; k < std::min(order.size(), first + size_t(o.minibatch)); ++k) {
          batch.push_back(&seqs[order[k]]);
          index.push_back(order[k]);
          old_rows.push_back(old_lp[order[k]]);
          ref_rows.push_back(ref_lp[order[k]]);
          T = std::max<int64_t>(T, int64_t(seqs[order[k]].tokens.size()));
        }
        const torch::Tensor tokens = padded_tokens(batch, T).to(device);
        const torch::Tensor mask =
            per_position(batch, T, [&](size_t b, int i) { return double(batch[b]->trajectory.response[size_t(i)]); })
                .to(device, torch::kFloat32);
        const torch::Tensor advantages =
            per_position(batch, T, [&](size_t b, int i) { return credit.advantages[index[b]][size_t(i)]; })
                .to(device, torch::kFloat32);
        const torch::Tensor rollout_lp =
            per_position(batch, T, [&](size_t b, int i) { return double(batch[b]->rollout_log_probs[size_t(i)]); })
                .to(device, torch::kFloat32);
        const torch::Tensor old = padded_rows(old_rows);
        gap_sum += ((old - rollout_lp).abs() * mask).sum().to(torch::kFloat64);
        const torch::Tensor lp = token_log_probs(policy, tokens, fo, nullptr, nullptr);
        const PolicyLoss loss = policy_loss(lp, old, padded_rows(ref_rows), advantages, mask, o.loss);
        loss.total.backward();
        // The mixed-in conversations of this optimizer step (a pure function of seed and step, so
        // a resumed run draws the same ones); their own backward pass adds to the gradients.
        torch::Tensor sft_mix_loss = torch::zeros({}, on_device);
        if (!sft_mix.empty()) {
          std::vector<const train::SftExample*> rows;
          for (int b = 0; b < o.sft_mix_batch; ++b)
            rows.push_back(&sft_mix[sft_mix_order.at(uint64_t(optimizer_steps) * uint64_t(o.sft_mix_batch) + uint64_t(b))]);
          const train::SftBatch sb = train::sft_batch(rows, o.max_sequence, device);
          sft_mix_loss = train::next_token_loss(policy.forward(sb.input, fo).logits, sb.target, sb.mask);
          (sft_mix_loss * o.sft_mix_coef).backward();
        }
        const double lr = o.lr * std::min(1.0, double(optimizer_steps + 1) / double(std::max<int64_t>(o.warmup, 1)));
        const torch::Tensor grad_norm = train::clip_gradients(policy, trainable, o.grad_clip);
        adam.step(policy, trainable, hyper, lr, ++optimizer_steps);
        for (const auto& name : trainable) policy.tensor(name).mutable_grad() = torch::Tensor();
        row["lr"] = lr;
        std::vector<torch::Tensor> values = {loss.total, loss.pg, loss.kl, loss.clip_fraction, loss.ratio_deviation,
                                             grad_norm, sft_mix_loss};
        for (torch::Tensor& t : values) t = t.detach().to(device, torch::kFloat64);
        step_values.push_back(torch::stack(values));
        ++u.steps;
        for (const Sequence* q : batch) u.tokens += int64_t(q->tokens.size());
      }
      const torch::Tensor sums = torch::stack(step_values).sum(0).cpu();  // the update's one wait
      const double* v = sums.data_ptr<double>();
      // A step with a loss that is not finite makes the sum not finite; the checkpoint of the
      // previous iteration is still whole.
      require(std::isfinite(v[0]), "rl: the loss is not finite (lower --lr?)");
      u.pg = v[1], u.kl = v[2], u.clip_fraction = v[3], u.ratio_deviation = v[4], u.grad_norm = v[5];
      u.sft_mix_loss = v[6];
      u.entropy = entropy_sum.item<double>() / double(std::max<int64_t>(masked_tokens, 1));
      u.log_prob_gap = gap_sum.item<double>() / double(std::max<int64_t>(masked_tokens, 1));
    }
    u.seconds = update_watch.seconds();
    const double steps = double(std::max<int64_t>(u.steps, 1));
    row["pg_loss"] = u.pg / steps;
    row["kl"] = u.kl / steps;
    row["entropy"] = u.entropy;
    row["clip_fraction"] = u.clip_fraction / steps;
    row["ratio_deviation"] = u.ratio_deviation / steps;
    row["grad_norm"] = u.grad_norm / steps;
    row["log_prob_gap"] = u.log_prob_gap;
    if (!sft_mix.empty()) row["sft_mix_loss"] = u.sft_mix_loss / steps;
    row["update_tokens_per_s"] = double(u.tokens) / std::max(u.seconds, 1e-9);
    row["update_s"] = u.seconds;
    if (!row.count("lr")) row["lr"] = 0.0;

    // Evaluation against the fixed opponents, and the Hanabi self-play score.
    const bool evaluate = o.eval_every > 0 && ((iteration + 1) % o.eval_every == 0 || iteration + 1 == o.iterations);
    if (evaluate) {
      torch::NoGradGuard no_grad;
      Stopwatch eval_watch;
      auto eval_rng = train::stream_rng(o.seed, kEvaluation, uint64_t(iteration));
      std::vector<Match> evals;
      std::vector<int> policy_seat;
      int r = 0;
      for (const auto& name : o.games) {
        const Game* g = games.at(name).get();
        for (int order = 0; order < (g->info().cooperative ? 1 : 2); ++order)
          for (int k = 0; k < o.eval_games; ++k) {
            Match m;
            m.game_name = name;
            m.game = g;
            m.state = g->initial_state();
            m.seats.resize(2);
            for (int seat = 0; seat < 2; ++seat) {
              if (g->info().cooperative || seat == order) m.seats[size_t(seat)].row = r++;
              else m.seats[size_t(seat)].agent = opponents.at(name).get();
            }
            policy_seat.push_back(order);
            evals.push_back(std::move(m));
          }
      }
      const games::PlayCounts ec = games::play_matches(evals, engine, chat, settings, eval_rng);
      row["eval_invalid_rate"] = ec.answers ? double(ec.invalid) / ec.answers : 0.0;
      std::map<std::string, std::array<double, 3>> tally;  // column prefix -> win, draw, loss
      std::map<std::string, std::pair<double, int>> scores;
      for (size_t i = 0; i < evals.size(); ++i) {
        const Match& m = evals[i];
        if (m.game->info().cooperative) {
          auto& [sum, n] = scores[m.game_name];
          sum += games::seat_return(m, 0);
          ++n;
          continue;
        }
        const int seat = policy_seat[i];
        const std::string prefix = m.game_name + (seat == 0 ? "_first" : "_second");
        auto& t = tally[prefix];
        const double ret = games::seat_return(m, seat);
        t[ret > 0 ? 0 : ret == 0 ? 1 : 2] += 1.0 / o.eval_games;
      }
      for (const auto& [prefix, t] : tally) {
        row[prefix + "_win"] = t[0];
        row[prefix + "_draw"] = t[1];
        row[prefix + "_loss"] = t[2];
      }
      for (const auto& [name, s] : scores) row[name + "_score"] = s.first / std::max(s.second, 1);
      row["eval_s"] = eval_watch.seconds();
    }

    const double elapsed = elapsed_before + watch.seconds();
    row["iteration"] = iteration + 1;
    row["elapsed_s"] = elapsed;
    {
      std::ofstream out(csv, std::ios::app);
      std::string line;
      log.values.clear();
      for (const auto& c : columns) {
        const auto it = row.find(c);
        line += (line.empty() ? "" : ",") + (it == row.end() ? std::string() : csv_number(it->second));
        log.values.push_back(it == row.end() ? std::nan("") : it->second);
      }
      out << line << "\n";
      require(out.good(), "cannot write " + csv.string());
    }
    write_progress_svg(csv, o.out_dir / "progress.svg");
    char status[200];
    std::snprintf(status, sizeof status, "invalid %.0f%% reward %.3f kl %.4f entropy %.3f rollout %.0f tok/s update %.0f tok/s",
                  100 * row["invalid_rate"], row["reward_mean"], row["kl"], row["entropy"], row["rollout_tokens_per_s"],
                  row["update_tokens_per_s"]);
    bar.update(iteration + 1, status);
    const bool last = iteration + 1 == o.iterations;
    const bool stop = o.stop_after > 0 && iteration + 1 == o.stop_after && !last;
    train::save_checkpoint(train::checkpoint_dir(o.out_dir, train::kSelfPlayCheckpoints, iteration + 1), policy, adam,
                           {{"iteration", iteration + 1},
                            {"optimizer_steps", optimizer_steps},
                            {"elapsed_s", elapsed},
                            {"start_model", fs::absolute(o.model_dir).lexically_normal().string()}});
    if (stop) {
      bar.finish("stopped after iteration " + std::to_string(iteration + 1) + " (continue with --resume)");
      return log;
    }
  }
  bar.finish("self-play done: " + std::to_string(o.iterations) + " iterations");
  const fs::path model_out = o.out_dir / "model";
  policy.export_hf(model_out, DType::BF16);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    if (fs::exists(o.model_dir / f)) fs::copy_file(o.model_dir / f, model_out / f, fs::copy_options::overwrite_existing);
  log_info("exported " + model_out.string());
  return log;
}

}  // namespace crossmoe::rl
