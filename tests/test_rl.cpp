// Self-play RL (src/rl): credit assignment against MARS's own code (goldens made by
// tests/fixtures/make_rl_goldens.py from roll/utils/functionals.py) and against hand-computed
// trajectories; the clipped loss and its gradient against ROLL's loss on the same inputs and
// against finite differences; the rollout engine's per-token log-probs against a plain full
// forward, and its greedy tokens against the CPU runtime; the self-play command end to end.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli_run.hpp"
#include "file_bytes.hpp"
#include "games/conversation.hpp"
#include "model/init.hpp"
#include "rl/credit.hpp"
#include "rl/policy_loss.hpp"
#include "rl/rollout.hpp"
#include "rl/selfplay.hpp"
#include "train/trainer.hpp"
#include "runtime/generate.hpp"
#include "small_models.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

using namespace crossmoe;
using namespace crossmoe::rl;
namespace fs = std::filesystem;

namespace {

SeatTrajectory trajectory_from_json(const nlohmann::json& j) {
  SeatTrajectory t;
  t.game = j.at("game").get<std::string>();
  t.seat = j.at("seat").get<int>();
  t.positions = j.at("positions").get<int>();
  for (int r : j.at("response").get<std::vector<int>>()) t.response.push_back(static_cast<unsigned char>(r));
  t.turn_end = j.at("turn_end").get<std::vector<int>>();
  t.turn_reward = j.at("turn_reward").get<std::vector<double>>();
  return t;
}

Normalization norm_from_json(const nlohmann::json& j) {
  if (j.is_null() || j == "identity") return Normalization::None;
  return j == "mean" ? Normalization::Mean : Normalization::MeanStd;
}

const nlohmann::json& goldens() {
  static const nlohmann::json j = read_json_file(fs::path(CROSSMOE_FIXTURES) / "rl_goldens.json");
  return j;
}

}  // namespace

TEST(RlCredit, MatchesMarsFunctionals) {
  int cases = 0;
  for (const auto& c : goldens().at("credit")) {
    const auto& o = c.at("options");
    CreditOptions opts;
    opts.turn_scores = o.at("turn_scores").get<bool>();
    opts.reward_norm = norm_from_json(o.at("reward_norm"));
    opts.per_seat = o.at("per_seat").get<bool>();
    opts.whiten_rewards = o.at("whiten_rewards").get<bool>();
    opts.advantage_norm = norm_from_json(o.at("advantage_norm"));
    opts.whiten_advantages = o.at("whiten_advantages").get<bool>();
    std::vector<SeatTrajectory> batch;
    for (const auto& t : c.at("trajectories")) batch.push_back(trajectory_from_json(t));
    const Credit credit = assign_credit(batch, opts);
    const auto& want = c.at("advantages");
    ASSERT_EQ(credit.advantages.size(), want.size());
    for (size_t b = 0; b < want.size(); ++b) {
      ASSERT_EQ(credit.advantages[b].size(), want[b].size());
      for (size_t i = 0; i < want[b].size(); ++i)
        ASSERT_NEAR(credit.advantages[b][i], want[b][i].get<double>(), 2e-5)
            << c.at("batch") << " / " << c.at("config") << " trajectory " << b << " position " << i;
    }
    ++cases;
  }
  EXPECT_EQ(cases, 9);
}

// A two-player game by hand: turn rewards centred per seat, no whitening, so every token of a
// turn carries the sum of the seat's centred rewards from that turn on.
TEST(RlCredit, TwoPlayerTurnReturnsByHand) {
  auto seat = [](int seat, std::vector<double> rewards) {
    SeatTrajectory t;
    t.game = "tic_tac_toe";
    t.seat = seat;
    // prompt (2 positions), then per turn: 3 answer tokens and 2 message tokens
    t.response = {0, 0};
    for (size_t k = 0; k < rewards.size(); ++k) {
      t.response.insert(t.response.end(), {1, 1, 1});
      t.turn_end.push_back(int(t.response.size()) - 1);
      t.response.insert(t.response.end(), {0, 0});
    }
    t.positions = int(t.response.size());
    t.turn_reward = rewards;
    return t;
  };
  // Seat 0 wins game 1 and loses game 2; seat 1 the opposite. Seat means: 0.05 and 0.05.
  const std::vector<SeatTrajectory> batch = {seat(0, {0.05, 1.05}), seat(1, {0.05, -0.95}), seat(0, {0.05, -0.95}),
                                             seat(1, {0.05, 1.05})};
  CreditOptions o;
  o.whiten_rewards = o.whiten_advantages = false;
  o.advantage_norm = Normalization::None;
  const Credit c = assign_credit(batch, o);
  // Centred turn rewards of seat 0, game 1: {0, 1} -> returns {1, 1}; game 2: {0, -1} -> {-1, -1}.
  const std::vector<double> want0 = {0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0};
  const std::vector<double> want1 = {0, 0, -1, -1, -1, 0, 0, -1, -1, -1, 0, 0};
  for (size_t i = 0; i < want0.size(); ++i) {
    EXPECT_NEAR(c.advantages[0][i], want0[i], 1e-12) << i;
    EXPECT_NEAR(c.advantages[1][i], want1[i], 1e-12) << i;
    EXPECT_NEAR(c.advantages[2][i], want1[i], 1e-12) << i;
    EXPECT_NEAR(c.advantages[3][i], want0[i], 1e-12) << i;
  }
  // Returns before masking: the message tokens between turns carry the next turn's return.
  EXPECT_NEAR(c.returns[0][5], 1.0, 1e-12);
  EXPECT_NEAR(c.returns[0][0], 1.0, 1e-12);
}

// A cooperative game by hand: the seats share the outcome but are centred separately; the
// second seat's first turn gets everything that follows in its own conversation only.
TEST(RlCredit, CooperativeSeatsNormalisedSeparately) {
  auto seat = [](int s, std::vector<double> rewards) {
    SeatTrajectory t;
    t.game = "mini_hanabi";
    t.seat = s;
    t.response = {0};
    for (size_t k = 0; k < rewards.size(); ++k) {
      t.response.insert(t.response.end(), {1, 1});
      t.turn_end.push_back(int(t.response.size()) - 1);
      t.response.push_back(0);
    }
    t.positions = int(t.response.size());
    t.turn_reward = rewards;
    return t;
  };
  // Game 1 scores 3, game 2 scores 1; seat 0 moves 2 then 1 times, seat 1 once each.
  const std::vector<SeatTrajectory> batch = {seat(0, {0.05, 3.05}), seat(1, {3.05}), seat(0, {1.05}), seat(1, {1.05})};
  CreditOptions o;
  o.whiten_rewards = o.whiten_advantages = false;
  o.advantage_norm = Normalization::None;
  Credit c = assign_credit(batch, o);
  // Seat 0 rewards {0.05, 3.05, 1.05}: mean 1.4167 -> {-1.3667, 1.6333, -0.3667}; seat 1 {3.05, 1.05}: mean 2.05.
  const double m0 = (0.05 + 3.05 + 1.05) / 3;
  EXPECT_NEAR(c.advantages[0][1], (0.05 - m0) + (3.05 - m0), 1e-12);
  EXPECT_NEAR(c.advantages[0][4], 3.05 - m0, 1e-12);
  EXPECT_NEAR(c.advantages[1][1], 1.0, 1e-12);
  EXPECT_NEAR(c.advantages[2][2], 1.05 - m0, 1e-12);
  EXPECT_NEAR(c.advantages[3][2], -1.0, 1e-12);
  // Normalised together, seat 1 would share seat 0's mean (1.65).
  o.per_seat = false;
  c = assign_credit(batch, o);
  EXPECT_NEAR(c.advantages[1][1], 3.05 - 1.65, 1e-12);
}

TEST(RlCredit, RejectsInconsistentTrajectories) {
  SeatTrajectory t;
  t.game = "kuhn_poker";
  t.positions = 3;
  t.response = {0, 1, 1};
  t.turn_end = {0};  // not one of the model's tokens
  t.turn_reward = {1.0};
  EXPECT_THROW(assign_credit({t}, CreditOptions::mars()), Error);
  t.turn_end = {2};
  t.turn_reward = {};
  EXPECT_THROW(assign_credit({t}, CreditOptions::mars()), Error);
}

TEST(RlLoss, MatchesRollLossAndGradient) {
  for (const auto& c : goldens().at("loss")) {
    auto tensor = [&](const char* key) {
      const auto rows = c.at(key).get<std::vector<std::vector<double>>>();
      torch::Tensor t = torch::empty({int64_t(rows.size()), int64_t(rows[0].size())}, torch::kFloat64);
      for (size_t r = 0; r < rows.size(); ++r)
        for (size_t i = 0; i < rows[r].size(); ++i) t[int64_t(r)][int64_t(i)] = rows[r][i];
      return t;
    };
    PolicyLossOptions o;
    o.clip = c.at("clip").get<double>();
    o.dual_clip = c.at("dual_clip").get<bool>();
    o.kl_coef = c.at("kl_coef").get<double>();
    const torch::Tensor lp = tensor("new").requires_grad_(true);
    const PolicyLoss loss = policy_loss(lp, tensor("old"), tensor("ref"), tensor("advantages"), tensor("mask"), o);
    EXPECT_NEAR(loss.pg.item<double>(), c.at("pg_loss").get<double>(), 1e-12);
    EXPECT_NEAR(loss.kl.item<double>(), c.at("kl_loss").get<double>(), 1e-12);
    EXPECT_NEAR(loss.total.item<double>(), c.at("total").get<double>(), 1e-12);
    loss.total.backward();
    EXPECT_LT((lp.grad() - tensor("grad")).abs().max().item<double>(), 1e-12);
  }
}

// The gradient by central differences, with ratios inside and outside the clip range and both
// signs of advantage (where the dual clip bites).
TEST(RlLoss, GradientMatchesFiniteDifferences) {
  torch::manual_seed(7);
  const int64_t B = 3, T = 6;
  const torch::Tensor old = -torch::rand({B, T}, torch::kFloat64) * 2;
  const torch::Tensor ref = old + torch::randn({B, T}, torch::kFloat64) * 0.2;
  const torch::Tensor start = old + torch::randn({B, T}, torch::kFloat64) * 0.5;
  const torch::Tensor adv = torch::randn({B, T}, torch::kFloat64) * 2;
  const torch::Tensor mask = (torch::rand({B, T}) > 0.25).to(torch::kFloat64);
  const PolicyLossOptions o;
  torch::Tensor lp = start.clone().requires_grad_(true);
  policy_loss(lp, old, ref, adv, mask, o).total.backward();
  const double h = 1e-6;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < T; ++i) {
      torch::Tensor up = start.clone(), down = start.clone();
      up[b][i] += h;
      down[b][i] -= h;
      const double numeric = (policy_loss(up, old, ref, adv, mask, o).total.item<double>() -
                              policy_loss(down, old, ref, adv, mask, o).total.item<double>()) /
                             (2 * h);
      EXPECT_NEAR(lp.grad()[b][i].item<double>(), numeric, 1e-6) << b << "," << i;
    }
  // By hand: one token, ratio e^0.5 > 1.2 with A > 0 is clipped (no policy gradient), and with
  // A = -1 the dual clip caps the loss at 1.4 |A| (again no gradient); only the KL term remains.
  for (double a : {1.0, -1.0}) {
    torch::Tensor one = torch::full({1, 1}, 0.5, torch::kFloat64).requires_grad_(true);
    const torch::Tensor zero = torch::zeros({1, 1}, torch::kFloat64);
    const PolicyLoss l = policy_loss(one, zero, zero, torch::full({1, 1}, a, torch::kFloat64), torch::ones({1, 1}), o);
    l.total.backward();
    const double pg = a > 0 ? -1.2 : std::min(std::exp(0.5), 1.4);
    EXPECT_NEAR(l.pg.item<double>(), pg, 1e-12);
    // d/dx of 0.2 (e^{-x} + x - 1) at 0.5
    EXPECT_NEAR(one.grad().item<double>(), 0.2 * (1 - std::exp(-0.5)), 1e-12);
  }
}

namespace {

train::TorchModel tiny_model(const std::string& layout, uint64_t seed) {
  ModelConfig c = testing_models::small(layout);
  // As few layers as the layout allows: Megrez2's dense first layer and one pool of 3 layers.
  c.num_layers = layout == "megrez2" ? 4 : 2;
  c.layer_is_moe.resize(size_t(c.num_layers));
  c.finalize();
  return train::TorchModel(c, seed, torch::kCPU);
}

// Full-forward log-probs of tokens[1:] of one sequence.
std::vector<float> full_log_probs(const train::TorchModel& m, const std::vector<int>& tokens) {
  torch::NoGradGuard no_grad;
  std::vector<int64_t> ids(tokens.begin(), tokens.end());
  const torch::Tensor t = torch::tensor(ids, torch::kInt64).unsqueeze(0);
  const torch::Tensor lp = m.forward(t).logits.log_softmax(-1)[0];
  std::vector<float> out;
  for (size_t i = 1; i < tokens.size(); ++i) out.push_back(lp[int64_t(i) - 1][tokens[i]].item<float>());
  return out;
}

}  // namespace

// Ragged prompts, several rounds of appending and sampling per row (the rows' lengths all
// differ), rows leaving the batch at different steps: every kept log-prob equals the full
// forward's over the final sequence. For ragged decode steps with the expert dispatch and with
// dense experts, and for DecodeGraphs' bucketed steps (run eagerly on the CPU: buckets of 32 batch
// rows, most of them padding that writes to row 0's scratch slot, and 256 of the 301 key slots).
TEST(RlRollout, LogProbsEqualFullForward) {
  enum class Decode { Dispatched, Dense, Bucketed };
  for (const std::string layout : {"dense", "megrez2", "rexmoe"})
  for (const Decode decode : {Decode::Dispatched, Decode::Dense, Decode::Bucketed}) {
    SCOPED_TRACE(layout + " decode " + std::to_string(int(decode)));
    const train::TorchModel model = tiny_model(layout, 3);
    RolloutEngine engine(model, 40, 300, torch::kFloat32, /*max_batch_tokens=*/24);
    EXPECT_EQ(engine.decode_steps(), RolloutEngine::DecodeSteps::Ragged);  // the CPU's default
    if (decode == Decode::Dense) engine.set_decode_experts(train::GroupedExperts::Dense);
    if (decode == Decode::Bucketed) engine.set_decode_steps(RolloutEngine::DecodeSteps::Bucketed);
    EXPECT_FALSE(engine.replaying_graphs());
    std::mt19937_64 rng(1), draw(5);
    std::vector<std::vector<std::pair<int, float>>> kept(5);  // (token index, log-prob)
    for (int round = 0; round < 3; ++round) {
      std::vector<GenerationRequest> requests;
      for (int row = 0; row < 5; ++row) {
        if (round == 2 && row == 1) continue;  // a row that sits a round out
        GenerationRequest r;
        r.sequence = row;
        const int n = 1 + int(draw() % 9);
        for (int i = 0; i < n; ++i) r.append.push_back(int(draw() % 300));
        r.max_new_tokens = 2 + int(draw() % 6);
        requests.push_back(r);
      }
      const std::vector<Generation> gens = engine.generate(requests, {7, 11}, SamplingOptions{1.0, 0.95, 40}, rng);
      for (size_t i = 0; i < gens.size(); ++i) {
        const int row = requests[i].sequence;
        const int end = int(engine.tokens(row).size());
        for (size_t k = 0; k < gens[i].tokens.size(); ++k)
          kept[size_t(row)].push_back({end - int(gens[i].tokens.size()) + int(k), gens[i].log_probs[k]});
      }
    }
    EXPECT_EQ(engine.stats().graph_steps > 0, decode == Decode::Bucketed);
    for (int row = 0; row < 5; ++row) {
      const std::vector<float> full = full_log_probs(model, engine.tokens(row));
      ASSERT_FALSE(kept[size_t(row)].empty());
      for (const auto& [index, lp] : kept[size_t(row)]) EXPECT_NEAR(lp, full[size_t(index) - 1], 2e-4) << row << " " << index;
    }
  }
}

// Greedy decoding of the exported model: the engine (batched, ragged) and the CPU runtime pick
// the same tokens.
TEST(RlRollout, GreedyTokensEqualRuntime) {
  const fs::path dir = fs::temp_directory_path() / ("crossmoe_rl_greedy_" + std::to_string(getpid()));
  fs::remove_all(dir);
  const train::TorchModel model = tiny_model("megrez2", 9);
  model.export_hf(dir, DType::F32);
  RolloutEngine engine(model, 3, 64, torch::kFloat32);
  const std::vector<std::vector<int>> prompts = {{5, 17, 200, 3}, {42}, {9, 9, 9, 100, 250, 1, 2}};
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 3; ++i) requests.push_back({i, prompts[size_t(i)], 12});
  std::mt19937_64 rng(0);
  const auto gens = engine.generate(requests, {}, SamplingOptions{0.0, 1.0, 0}, rng);
  // No stop tokens: 12 tokens each, the first from the prefill, then 11 decode steps of 3 rows.
  EXPECT_EQ(engine.stats().generated_tokens, 36);
  EXPECT_EQ(engine.stats().decode_steps, 11);
  EXPECT_EQ(engine.stats().decode_rows, 33);
  EXPECT_EQ(engine.stats().prefill_tokens, 12);
  EXPECT_GT(engine.stats().prefill_seconds, 0.0);
  EXPECT_LT(engine.stats().prefill_seconds, engine.stats().seconds);
  Model runtime(dir);
  for (int i = 0; i < 3; ++i) {
    InferenceSession session(runtime, 64);
    Sampler greedy(SamplingParams{});
    const GenerationResult r = generate(session, prompts[size_t(i)], 12, greedy, {});
    EXPECT_EQ(gens[size_t(i)].tokens, r.tokens) << "prompt " << i;
  }
  fs::remove_all(dir);
}

TEST(RlRollout, SamplingFilters) {
  const float logits[4] = {2.0f, 1.0f, 0.5f, -3.0f};
  std::mt19937_64 rng(3);
  // Greedy, and a top-p small enough to keep one token.
  EXPECT_EQ(sample_candidate(logits, 4, {0.0, 1.0, 0}, rng), 0);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(sample_candidate(logits, 4, {0.6, 0.5, 100}, rng), 0);
  // Temperature 1, top-p 1: frequencies follow the softmax.
  std::vector<int> hits(4);
  const int n = 40000;
  for (int i = 0; i < n; ++i) ++hits[size_t(sample_candidate(logits, 4, {1.0, 1.0, 100}, rng))];
  double z = 0;
  for (float l : logits) z += std::exp(l);
  for (int k = 0; k < 4; ++k) EXPECT_NEAR(double(hits[size_t(k)]) / n, std::exp(logits[k]) / z, 0.01) << k;
}

namespace {

using testing_cli::kill_when;
using testing_cli::Result;
using testing_cli::run;
using testing_cli::spawn;
using testing_files::bytes_of;


std::vector<std::vector<std::string>> read_csv(const fs::path& p) {
  std::vector<std::vector<std::string>> rows;
  std::ifstream in(p);
  for (std::string line; std::getline(in, line);) {
    std::vector<std::string> cells;
    std::stringstream ss(line);
    for (std::string c; std::getline(ss, c, ',');) cells.push_back(c);
    if (!line.empty() && line.back() == ',') cells.push_back("");
    rows.push_back(cells);
  }
  return rows;
}

}  // namespace

// The loop end to end on a tiny random model (byte tokens, ChatML): its answers never parse, so
// every game ends at the first answer with MARS's forfeit for that seat. One uninterrupted run of
// two iterations is the reference that split, killed and resumed runs must reproduce. (ctest runs
// each test in its own process, so each makes only the runs it needs.)
class RlSelfPlay : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("crossmoe_rl_selfplay_" + std::to_string(getpid()));
    fs::remove_all(dir_);
    model_ = dir_ / "model";
    ASSERT_EQ(run("init " + model_.string() + " --layout moe --layers 2 --hidden 32 --heads 2 --kv-heads 1 "
                  "--head-dim 16 --intermediate 64 --experts 4 --top-k 2 --expert-size 16 --context 4096")
                  .code,
              0);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  // Mini Hanabi's long prompts make it most of an iteration's time (11 s of 17 s alone, more when
  // padded beside the others): only the test that reads its columns plays it.
  static constexpr const char* kAllGames = "tic_tac_toe,kuhn_poker,mini_hanabi";
  static constexpr const char* kQuickGames = "tic_tac_toe,kuhn_poker";
  static std::string args(const fs::path& out, const fs::path& model = model_, const std::string& games = kQuickGames) {
    return "rl selfplay " + model.string() + " -o " + out.string() + " --game " + games +
           " --iterations 2 --games-per-iteration 2 "
           "--max-new-tokens 6 --max-sequence 4000 --eval-every 2 --eval-games 2 --mcts-simulations 4 "
           "--cfr-iterations 20 --lr 1e-3 --minibatch 4 --seed 5 --threads 1";
  }
  // A run that stopped after its first iteration (a copy of one made once per game list).
  static fs::path stopped_run(const std::string& name, const std::string& games = kQuickGames) {
    const fs::path first = dir_ / ("stopped_" + games);
    if (!fs::exists(first / "checkpoints" / "iter-00001")) {
      const Result r = run(args(first, model_, games) + " --stop-after 1");
      EXPECT_EQ(r.code, 0) << r.out;
    }
    const fs::path out = dir_ / name;
    fs::remove_all(out);
    fs::copy(first, out, fs::copy_options::recursive);
    return out;
  }
  // The run in `out` finished with the uninterrupted run's log (timings aside) and weights.
  static void expect_same_as_whole(const fs::path& out) {
    const auto whole_csv = read_csv(dir_ / "whole" / "log.csv"), csv = read_csv(out / "log.csv");
    ASSERT_EQ(whole_csv.size(), 3u);
    ASSERT_EQ(csv.size(), 3u) << out;
    const std::vector<std::string>& header = whole_csv[0];
    EXPECT_EQ(csv[0], header);
    for (size_t r = 1; r < 3; ++r)
      for (size_t c = 0; c < header.size(); ++c) {
        const std::string& n = header[c];
        // Timings: rates (..._per_s) and seconds (..._s).
        if (n.ends_with("_per_s") || n.ends_with("_s")) continue;
        EXPECT_EQ(whole_csv[r][c], csv[r][c]) << n << " row " << r << " of " << out;
      }
    EXPECT_EQ(bytes_of(dir_ / "whole" / "checkpoints" / "iter-00002" / "model.safetensors"),
              bytes_of(out / "checkpoints" / "iter-00002" / "model.safetensors"));
    EXPECT_EQ(bytes_of(dir_ / "whole" / "model" / "model.safetensors"), bytes_of(out / "model" / "model.safetensors"));
  }
  static void expect_error(const Result& r, const std::string& fragment) {
    EXPECT_NE(r.code, 0) << r.out;
    EXPECT_EQ(r.out.rfind("error: ", 0), 0u) << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
    EXPECT_NE(r.out.find(fragment), std::string::npos) << r.out;
  }
  static inline fs::path dir_, model_;
};

// The uninterrupted run's log; the same run split by --stop-after and --resume with
// `checkpoints/latest` removed in between (resume finds the newest complete checkpoint itself, and
// skips an unfinished iter-00002.tmp beside it); the same run killed with SIGKILL during its second
// iteration, `latest` then emptied, and resumed: the same log and weights.
TEST_F(RlSelfPlay, SplitAndKilledRunsResumeToTheUninterruptedRun) {
  const Result whole = run(args(dir_ / "whole", model_, kAllGames));
  ASSERT_EQ(whole.code, 0) << whole.out;
  const auto csv = read_csv(dir_ / "whole" / "log.csv");
  ASSERT_EQ(csv.size(), 3u);
  const std::vector<std::string>& header = csv[0];
  EXPECT_EQ(header, selfplay_columns({"tic_tac_toe", "kuhn_poker", "mini_hanabi"}));
  auto col = [&](const std::string& name) {
    const auto it = std::find(header.begin(), header.end(), name);
    EXPECT_NE(it, header.end()) << name;
    return size_t(it - header.begin());
  };
  for (const char* c : {"invalid_rate", "answer_tokens", "kl", "entropy", "rollout_tokens_per_s", "update_tokens_per_s",
                        "rollout_s", "rollout_prefill_s", "rollout_engine_s", "decode_rows_per_step", "update_s", "eval_s",
                        "tic_tac_toe_first_win", "tic_tac_toe_second_loss", "kuhn_poker_first_win", "mini_hanabi_score"})
    col(c);
  for (size_t r = 1; r < 3; ++r) {
    const auto& row = csv[r];
    EXPECT_EQ(std::stod(row[col("invalid_rate")]), 1.0);
    EXPECT_EQ(std::stod(row[col("trajectories")]), 6.0);  // seat 0 of 2 games x 3 games: seat 1 never moves
    // MARS forfeits: -(stake) - 10: 1 in Tic-Tac-Toe, the ante in Kuhn, the score (0) in Hanabi.
    EXPECT_NEAR(std::stod(row[col("reward_mean")]), (4 * -11.0 + 2 * -10.0) / 6, 1e-3);
    EXPECT_GT(std::stod(row[col("entropy")]), 0.0);
    // The update scores all sequences again (longest first, in chunks) before its first step: the
    // same policy as the rollouts, so each token's log-prob equals the engine's.
    EXPECT_LT(std::stod(row[col("log_prob_gap")]), 1e-5);
    // Old log-probs come from the policy before the iteration's first update: the second
    // minibatch (6 trajectories, 4 a minibatch) sees a ratio that moved away from 1.
    EXPECT_GT(std::stod(row[col("ratio_deviation")]), 0.0);
  }
  // Evaluated every 2nd iteration: only the last row has the rates.
  EXPECT_EQ(csv[1][col("tic_tac_toe_first_loss")], "");
  EXPECT_EQ(std::stod(csv[2][col("tic_tac_toe_first_loss")]), 1.0);
  EXPECT_EQ(std::stod(csv[2][col("mini_hanabi_score")]), 0.0);
  EXPECT_NE(bytes_of(dir_ / "whole" / "checkpoints" / "iter-00002" / "model.safetensors").size(), 0u);
  EXPECT_TRUE(fs::exists(dir_ / "whole" / "model" / "tokenizer_config.json"));
  EXPECT_TRUE(fs::exists(dir_ / "whole" / "progress.svg"));

  const fs::path split = stopped_run("split", kAllGames);
  EXPECT_FALSE(fs::exists(split / "model"));
  fs::remove(split / "checkpoints" / "latest");
  fs::create_directories(split / "checkpoints" / "iter-00002.tmp");
  const Result rest = run(args(split, model_, kAllGames) + " --resume");
  ASSERT_EQ(rest.code, 0) << rest.out;
  expect_same_as_whole(split);

  const fs::path killed = dir_ / "killed";
  const pid_t pid = spawn(args(killed, model_, kAllGames), dir_ / "killed.log");
  EXPECT_TRUE(kill_when(pid, [&] { return fs::exists(killed / "checkpoints" / "iter-00001" / "state.json"); }))
      << "the run ended before it was killed";
  EXPECT_FALSE(fs::exists(killed / "checkpoints" / "iter-00002"));
  std::ofstream(killed / "checkpoints" / "latest", std::ios::trunc).close();
  const Result resumed = run(args(killed, model_, kAllGames) + " --resume");
  ASSERT_EQ(resumed.code, 0) << resumed.out;
  EXPECT_NE(resumed.out.find("resuming from"), std::string::npos) << resumed.out;
  expect_same_as_whole(killed);
}

// Mixing SFT conversations into the update (--sft-mix, PPO-ptx) and a KL reference other than the
// starting model (--reference). One optimizer step an iteration (--minibatch 100): the first
// iteration's sft_mix_loss is the starting model's loss on the conversations drawn, all four
// here, as the trainer's evaluate_sft_loss computes it; the step lowers it. A run split by
// --stop-after and --resume draws the same conversations (same weights). With the policy as
// its own reference the first step's KL is 0; with another model's weights it is not.
TEST_F(RlSelfPlay, SftMixAndReference) {
  const fs::path conversations = dir_ / "mix.jsonl";
  ASSERT_EQ(run("games transcripts tic_tac_toe -n 2 --mcts-simulations 4 -o " + conversations.string()).code, 0);
  // args() with one optimizer step an iteration, no evaluation games (nothing here reads them; they
  // were a sixth of the test's time), and other changes, for the run in `out`.
  auto with = [](const fs::path& out, const std::string& extra, const std::string& iterations = "2") {
    std::string a = args(out);
    a.replace(a.find("--minibatch 4"), 13, "--minibatch 100");
    a.replace(a.find("--eval-every 2"), 14, "--eval-every 0");
    a.replace(a.find("--iterations 2"), 14, "--iterations " + iterations);
    return a + extra;
  };
  const std::string mix = " --sft-mix " + conversations.string() + " --sft-mix-coef 1 --sft-mix-batch 4";
  const Result whole = run(with(dir_ / "mix", mix));
  ASSERT_EQ(whole.code, 0) << whole.out;
  const auto csv = read_csv(dir_ / "mix" / "log.csv");
  ASSERT_EQ(csv.size(), 3u);
  auto col = [&](const std::string& name) {
    return size_t(std::find(csv[0].begin(), csv[0].end(), name) - csv[0].begin());
  };
  train::ChatEncoder encoder = train::ChatEncoder::load(model_);
  const auto examples = train::read_sft_file(conversations, encoder);
  ASSERT_EQ(examples.size(), 4u);
  const double start_loss = train::evaluate_sft_loss(train::TorchModel::load(model_, torch::kCPU), examples, 1, 4,
                                                     4000, torch::kFloat32);
  EXPECT_NEAR(std::stod(csv[1][col("sft_mix_loss")]), start_loss, 1e-5 * start_loss);
  EXPECT_LT(std::stod(csv[2][col("sft_mix_loss")]), start_loss);
  EXPECT_EQ(std::stod(csv[1][col("kl")]), 0.0);

  const fs::path split = dir_ / "mix_split";
  ASSERT_EQ(run(with(split, mix + " --stop-after 1")).code, 0);
  const Result rest = run(with(split, mix + " --resume"));
  ASSERT_EQ(rest.code, 0) << rest.out;
  EXPECT_EQ(bytes_of(dir_ / "mix" / "model" / "model.safetensors"), bytes_of(split / "model" / "model.safetensors"));
  EXPECT_EQ(read_csv(split / "log.csv")[2][col("sft_mix_loss")], csv[2][col("sft_mix_loss")]);

  // The same run without mixing: no sft_mix_loss, other weights.
  ASSERT_EQ(run(with(dir_ / "plain", "")).code, 0);
  EXPECT_EQ(read_csv(dir_ / "plain" / "log.csv")[1][col("sft_mix_loss")], "");
  EXPECT_NE(bytes_of(dir_ / "mix" / "model" / "model.safetensors"),
            bytes_of(dir_ / "plain" / "model" / "model.safetensors"));

  const fs::path other = dir_ / "other_seed";
  ASSERT_EQ(run("init " + other.string() + " --layout moe --layers 2 --hidden 32 --heads 2 --kv-heads 1 --head-dim 16 "
                "--intermediate 64 --experts 4 --top-k 2 --expert-size 16 --context 4096 --seed 9").code, 0);
  const Result referenced = run(with(dir_ / "referenced", " --reference " + other.string(), "1"));
  ASSERT_EQ(referenced.code, 0) << referenced.out;
  EXPECT_GT(std::stod(read_csv(dir_ / "referenced" / "log.csv")[1][col("kl")]), 0.0);

  const fs::path wider = dir_ / "wider";
  ASSERT_EQ(run("init " + wider.string() + " --layout moe --layers 2 --hidden 48 --heads 2 --kv-heads 1 --head-dim 16 "
                "--intermediate 64 --experts 4 --top-k 2 --expert-size 16 --context 4096").code, 0);
  expect_error(run(args(dir_ / "x7") + " --reference " + wider.string()), "is not a model of the policy's shape");
  const fs::path empty = dir_ / "empty.jsonl";
  std::ofstream(empty).close();
  expect_error(run(args(dir_ / "x8") + " --sft-mix " + empty.string()), "empty.jsonl has no conversations");
}

// A directory that holds a run is never started over: without --resume it is refused, and with
// --resume but no complete checkpoint it is refused with its log untouched.
TEST_F(RlSelfPlay, RefusesToRestartARun) {
  const fs::path out = stopped_run("no_checkpoint");
  expect_error(run(args(out)), "pass --resume");
  // A run past the iterations asked for (its checkpoint made iteration 2); a checkpoint of a run
  // from another model.
  const fs::path ahead = stopped_run("ahead");
  fs::rename(ahead / "checkpoints" / "iter-00001", ahead / "checkpoints" / "iter-00002");
  nlohmann::json state = read_json_file(ahead / "checkpoints" / "iter-00002" / "state.json");
  state["iteration"] = 2;
  write_json_file(ahead / "checkpoints" / "iter-00002" / "state.json", state);
  std::string fewer = args(ahead);
  fewer.replace(fewer.find("--iterations 2"), 14, "--iterations 1");
  expect_error(run(fewer + " --resume"), "already at iteration 2, past --iterations 1");
  fs::copy(model_, dir_ / "other_model", fs::copy_options::recursive);
  expect_error(run(args(ahead, dir_ / "other_model") + " --resume"), "this run started from");
  fs::remove_all(out / "checkpoints" / "iter-00001");
  const std::string log = bytes_of(out / "log.csv");
  expect_error(run(args(out) + " --resume"), "no complete checkpoint to resume from");
  EXPECT_EQ(bytes_of(out / "log.csv"), log);
  fs::remove_all(out / "checkpoints");  // only the log left: still a run
  expect_error(run(args(out) + " --resume"), "no complete checkpoint to resume from");
  EXPECT_EQ(bytes_of(out / "log.csv"), log);
}

// Corrupt checkpoints: each a one-line error naming the file, before any game is played.
TEST_F(RlSelfPlay, CorruptCheckpointsAreClearErrors) {
  const fs::path out = stopped_run("corrupt"), ckpt = out / "checkpoints" / "iter-00001";
  const fs::path saved = dir_ / "corrupt_saved";
  fs::copy(ckpt, saved);
  const std::string log = bytes_of(out / "log.csv");
  auto expect_refused = [&](const std::string& what, const std::string& fragment) {
    SCOPED_TRACE(what);
    expect_error(run(args(out) + " --resume"), fragment);
    EXPECT_EQ(bytes_of(out / "log.csv"), log);
    fs::remove_all(ckpt);
    fs::copy(saved, ckpt);
  };
  const nlohmann::json state = read_json_file(ckpt / "state.json");
  std::ofstream(ckpt / "state.json", std::ios::trunc) << state.dump().substr(0, 20);
  expect_refused("truncated state", "iter-00001/state.json: invalid JSON");
  for (auto [key, value, fragment] : std::vector<std::tuple<std::string, nlohmann::json, std::string>>{
           {"iteration", "one", "'iteration' must be an integer from 1 to"},
           {"iteration", 2, "'iteration' is 2 but the directory is iter-00001"},
           {"optimizer_steps", -1, "'optimizer_steps' must be an integer from 0 to"},
           {"elapsed_s", nullptr, "'elapsed_s' must be a number of seconds"},
           {"start_model", 7, "'start_model' must be a non-empty string"}}) {
    nlohmann::json bad = state;
    bad[key] = value;
    write_json_file(ckpt / "state.json", bad);
    expect_refused(key, "iter-00001/state.json: " + fragment);
  }
  fs::resize_file(ckpt / "model.safetensors", fs::file_size(ckpt / "model.safetensors") / 2);
  expect_refused("truncated weights", "iter-00001/model.safetensors");
  fs::resize_file(ckpt / "optimizer.safetensors", 5);
  expect_refused("truncated optimizer", "iter-00001/optimizer.safetensors");
  auto weights = train::load_tensors(ckpt / "model.safetensors", torch::kCPU);
  const std::string first = weights.begin()->first;
  weights.erase(weights.begin());
  train::save_tensors(ckpt / "model.safetensors", weights);
  expect_refused("missing tensor", "iter-00001/model.safetensors lacks " + first);
  weights = train::load_tensors(ckpt / "model.safetensors", torch::kCPU);
  weights.begin()->second = torch::zeros({3});
  train::save_tensors(ckpt / "model.safetensors", weights);
  expect_refused("wrong shape", "iter-00001/model.safetensors: " + first + " has the wrong shape");
  auto moments = train::load_tensors(ckpt / "optimizer.safetensors", torch::kCPU);
  moments.erase(moments.begin());
  train::save_tensors(ckpt / "optimizer.safetensors", moments);
  expect_refused("moment without its pair", "iter-00001/optimizer.safetensors");
}

// Models that cannot play are refused before any work: no chat template, a tokenizer that cannot
// write a game's text, an unknown game; and out-of-range options.
TEST_F(RlSelfPlay, ModelsThatCannotPlayAreRefused) {
  const fs::path no_template = dir_ / "no_template";
  fs::copy(model_, no_template, fs::copy_options::recursive);
  fs::remove(no_template / "tokenizer_config.json");
  expect_error(run(args(dir_ / "x1", no_template)), "chat template");
  fs::remove(no_template / "tokenizer.json");
  expect_error(run(args(dir_ / "x2", no_template)), "no tokenizer.json");
  // A tokenizer with a token for a few letters only (and ChatML's markers), no byte fallback.
  const fs::path letters = dir_ / "letters";
  fs::copy(model_, letters, fs::copy_options::recursive);
  nlohmann::json vocab = nlohmann::json::object();
  int id = 0;
  for (const char* piece : {"<unk>", "a", "b", "c"}) vocab[piece] = id++;
  nlohmann::json added = nlohmann::json::array();
  for (const char* marker : {"<|im_start|>", "<|im_end|>"})
    added.push_back({{"id", id++}, {"content", marker}, {"single_word", false},
                     {"lstrip", false}, {"rstrip", false}, {"normalized", false}, {"special", true}});
  write_json_file(letters / "tokenizer.json",
                  {{"version", "1.0"}, {"added_tokens", added}, {"normalizer", nullptr}, {"pre_tokenizer", nullptr},
                   {"post_processor", nullptr}, {"decoder", nullptr},
                   {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}, {"unk_token", "<unk>"}}}});
  expect_error(run(args(dir_ / "x3", letters)), "cannot play tic_tac_toe: its tokenizer cannot encode the game's text");
  EXPECT_FALSE(fs::exists(dir_ / "x3" / "log.csv"));
  expect_error(run("rl selfplay " + model_.string() + " -o " + (dir_ / "x4").string() + " --game tic_tac_toe,chess"),
               "unknown game 'chess'");
  expect_error(run(args(dir_ / "x5") + " --mcts-simulations 0"), "--mcts-simulations");
  expect_error(run(args(dir_ / "x6") + " --cfr-iterations -1"), "--cfr-iterations");
}

// Transcripts: one conversation per game and seat, system + (user, assistant) pairs whose answers
// parse under the protocol.
TEST(RlTranscripts, ConversationsOfReferencePlayers) {
  const fs::path out = fs::temp_directory_path() / ("crossmoe_rl_transcripts_" + std::to_string(getpid()) + ".jsonl");
  const Result r = run("games transcripts tic_tac_toe -n 3 -o " + out.string() + " --mcts-simulations 20");
  ASSERT_EQ(r.code, 0) << r.out;
  std::ifstream in(out);
  int lines = 0;
  for (std::string line; std::getline(in, line); ++lines) {
    const auto j = nlohmann::json::parse(line);
    const auto& m = j.at("messages");
    ASSERT_GE(m.size(), 3u);
    EXPECT_EQ(m[0].at("role"), "system");
    for (size_t i = 1; i < m.size(); ++i) {
      EXPECT_EQ(m[i].at("role"), i % 2 ? "user" : "assistant");
      if (i % 2 == 0) {
        const std::string a = m[i].at("content");
        EXPECT_NE(a.find("<think>"), std::string::npos);
        EXPECT_NE(a.find("</answer>"), std::string::npos);
      }
    }
  }
  EXPECT_EQ(lines, 6);  // both seats of 3 games move in tic-tac-toe
  fs::remove(out);
}
