// Kuhn poker and Leduc hold'em, with OpenSpiel's rules.
//
// Kuhn: cards J < Q < K, one dealt to each player, ante 1. Player 0 acts first; actions Pass (0)
// and Bet (1), a bet being 1 chip. Pass-pass, bet-bet and pass-bet-bet go to showdown (the
// higher card takes the pot); a pass facing a bet folds.
//
// Leduc: six cards, J Q K in two suits; ante 1; one private card each, then a betting round, a
// public card, and a second round. Player 0 opens each round. Actions Fold (0, only facing a
// bet), Call (1, a check when nothing is owed), Raise (2) by 2 chips in round one and 4 in round
// two, at most two raises per round. A round ends when a raise is called or both players
// check. Showdown: a private card pairing the public card wins, else the higher rank; equal
// ranks split the pot.
#include <algorithm>
#include <numeric>

#include "games/games_impl.hpp"
#include "util/error.hpp"

namespace crossmoe::games {

namespace {

const char* kRanks = "JQK";

// Every card left in the deck is equally likely.
std::vector<std::pair<int, double>> uniform_deal(const std::vector<int>& cards) {
  std::vector<std::pair<int, double>> out;
  out.reserve(cards.size());
  for (int c : cards) out.push_back({c, 1.0 / double(cards.size())});
  return out;
}

// Each state's is_legal(action) answers as legal_actions() would, without building the list.
template <class S>
void check_legal(const S& s, int action) {
  if (!s.is_legal(action)) throw Error("illegal action " + std::to_string(action));
}

class KuhnState : public State {
 public:
  KuhnState() {  // room for a whole game: one allocation each instead of one per doubling
    cards_.reserve(2);
    actions_.reserve(3);
    history_.reserve(5);
  }
  int num_players() const override { return 2; }
  int current_player() const override {
    if (cards_.size() < 2) return kChancePlayer;
    if (finished()) return kTerminalPlayer;
    return int(actions_.size() % 2);
  }
  std::vector<int> legal_actions() const override {
    if (is_terminal()) return {};
    if (is_chance()) {
      std::vector<int> out;
      out.reserve(3);
      for (int c = 0; c < 3; ++c)
        if (std::find(cards_.begin(), cards_.end(), c) == cards_.end()) out.push_back(c);
      return out;
    }
    return {0, 1};
  }
  bool is_legal(int action) const {
    if (is_chance()) return action >= 0 && action < 3 && std::find(cards_.begin(), cards_.end(), action) == cards_.end();
    return !is_terminal() && (action == 0 || action == 1);
  }
  std::vector<std::pair<int, double>> chance_outcomes() const override {
    if (!is_chance()) return {};  // as OpenSpiel: no outcomes where chance does not move
    std::vector<std::pair<int, double>> out;  // uniform_deal(legal_actions()) in one allocation
    out.reserve(3);
    for (int c = 0; c < 3; ++c)
      if (std::find(cards_.begin(), cards_.end(), c) == cards_.end()) out.push_back({c, 1.0 / double(3 - cards_.size())});
    return out;
  }
  void apply(int action) override {
    check_legal(*this, action);
    if (is_chance()) {
      cards_.push_back(action);
      history_.push_back("deal");
      return;
    }
    actions_.push_back(action);
    seq_ += action == 0 ? 'p' : 'b';
    history_.push_back(std::string("Player ") + char('0' + (actions_.size() - 1) % 2) + ": " + action_to_string(action));
  }
  std::vector<double> returns() const override {
    if (!is_terminal()) return {0.0, 0.0};
    const std::string h = seq();
    if (h == "pbp") return {-1, 1};   // player 0 folds to a bet
    if (h == "bp") return {1, -1};    // player 1 folds
    const double pot_share = h == "pp" ? 1.0 : 2.0;
    const double sign = cards_[0] > cards_[1] ? 1.0 : -1.0;
    return {sign * pot_share, -sign * pot_share};
  }
  double forfeit_stake(int player) const override {  // the ante and any bet
    double chips = 1;
    for (size_t i = 0; i < actions_.size(); ++i)
      if (int(i % 2) == player) chips += actions_[i];
    return chips;
  }
  std::string action_to_string(int action) const override {
    if (is_chance()) return "Deal:" + std::to_string(action);
    return action == 0 ? "Pass" : "Bet";
  }
  std::string observation(int player) const override {
    std::string s = "Your card: " + std::string(1, kRanks[cards_[size_t(player)]]) + ".\n";
    int chips[2] = {1, 1};
    for (size_t i = 0; i < actions_.size(); ++i) chips[i % 2] += actions_[i];
    s += "Chips in the pot: you " + std::to_string(chips[player]) + ", opponent " + std::to_string(chips[1 - player]) + ".\n";
    return s;
  }
  std::string information_state(int player) const override {
    return std::string(1, kRanks[cards_[size_t(player)]]) + ":" + seq();
  }
  std::string to_string() const override {
    std::string s = "Cards:";
    for (size_t p = 0; p < cards_.size(); ++p) s += " player " + std::to_string(p) + " " + kRanks[cards_[p]];
    s += "\nBets:";
    for (int a : actions_) s += a == 0 ? " Pass" : " Bet";
    return s + "\n";
  }
  std::unique_ptr<State> clone() const override { return std::make_unique<KuhnState>(*this); }

 private:
  const std::string& seq() const { return seq_; }
  bool finished() const {  // pp, bb, bp, pbp, pbb: every sequence of three, and of two but pb
    return seq_.size() == 3 || (seq_.size() == 2 && seq_ != "pb");
  }
  std::vector<int> cards_, actions_;
  std::string seq_;  // the betting so far, 'p' for a pass and 'b' for a bet
};

class LeducState : public State {
 public:
  enum Action { Fold = 0, Call = 1, Raise = 2 };

  LeducState() {  // room for a whole game (3 deals, at most 4 moves a round)
    private_.reserve(2);
    history_.reserve(11);
  }

  int num_players() const override { return 2; }
  int current_player() const override {
    if (folded_ >= 0 || round_ > 2) return kTerminalPlayer;
    if (private_.size() < 2 || (round_ == 2 && public_ < 0)) return kChancePlayer;
    return player_;
  }
  std::vector<int> legal_actions() const override {
    if (is_terminal()) return {};
    if (is_chance()) {
      std::vector<int> out;
      out.reserve(6);
      for (int c = 0; c < 6; ++c)
        if (std::count(private_.begin(), private_.end(), c) == 0) out.push_back(c);
      return out;
    }
    std::vector<int> out;
    out.reserve(3);
    if (contrib_[player_] < contrib_[1 - player_]) out.push_back(Fold);
    out.push_back(Call);
    if (raises_ < 2) out.push_back(Raise);
    return out;
  }
  bool is_legal(int action) const {
    if (is_chance()) return action >= 0 && action < 6 && std::count(private_.begin(), private_.end(), action) == 0;
    if (is_terminal()) return false;
    if (action == Fold) return contrib_[player_] < contrib_[1 - player_];
    return action == Call || (action == Raise && raises_ < 2);
  }
  std::vector<std::pair<int, double>> chance_outcomes() const override {
    if (!is_chance()) return {};  // as OpenSpiel: no outcomes where chance does not move
    return uniform_deal(legal_actions());
  }
  void apply(int action) override {
    check_legal(*this, action);
    if (is_chance()) {
      if (private_.size() < 2) private_.push_back(action);
      else public_ = action;
      history_.push_back(private_.size() < 2 || public_ < 0 ? "deal" : "public card " + card(action));
      return;
    }
    history_.push_back(std::string("Player ") + char('0' + player_) + ": " + action_to_string(action));
    round_actions_ += "fcr"[action];
    if (action == Fold) {
      folded_ = player_;
      return;
    }
    const int owed = contrib_[1 - player_] - contrib_[player_];
    if (action == Raise) {
      contrib_[player_] += owed + (round_ == 1 ? 2 : 4);
      ++raises_;
    } else {
      contrib_[player_] += owed;
      // A call ends the round when it matches a raise or is the second check.
      if (owed > 0 || round_actions_.size() >= 2) {
        past_rounds_ += round_actions_ + "/";
        round_actions_.clear();
        ++round_;
        raises_ = 0;
        player_ = 0;
        return;
      }
    }
    player_ = 1 - player_;
  }
  std::vector<double> returns() const override {
    if (!is_terminal()) return {0.0, 0.0};
    if (folded_ >= 0) {
      const double lost = contrib_[folded_];
      return folded_ == 0 ? std::vector<double>{-lost, lost} : std::vector<double>{lost, -lost};
    }
    const auto strength = [&](int p) {
      const int rank = private_[size_t(p)] / 2;
      return rank == public_ / 2 ? 10 + rank : rank;
    };
    const int a = strength(0), b = strength(1);
    const double pot = contrib_[1];
    if (a == b) return {0.0, 0.0};
    return a > b ? std::vector<double>{pot, -pot} : std::vector<double>{-pot, pot};
  }
  double forfeit_stake(int player) const override { return contrib_[player]; }
  std::string action_to_string(int action) const override {
    if (is_chance()) return "Chance outcome:" + std::to_string(action);
    return action == Fold ? "Fold" : action == Call ? "Call" : "Raise";
  }
  std::string observation(int player) const override {
    std::string s = "Your card: " + card(private_[size_t(player)]) + ".\n";
    s += "Public card: " + (public_ >= 0 ? card(public_) : std::string("not dealt yet")) + ".\n";
    s += "Betting round " + std::to_string(std::min(round_, 2)) + " of 2; raises this round: " + std::to_string(raises_) + " of 2.\n";
    s += "Chips in the pot: you " + std::to_string(contrib_[player]) + ", opponent " + std::to_string(contrib_[1 - player]) + ".\n";
    return s;
  }
  std::string information_state(int player) const override {
    return card(private_[size_t(player)]) + (public_ >= 0 ? card(public_) : "") + ":" + past_rounds_ + round_actions_;
  }
  std::string to_string() const override {
    std::string s = "Cards:";
    for (size_t p = 0; p < private_.size(); ++p) s += " player " + std::to_string(p) + " " + card(private_[p]);
    if (public_ >= 0) s += ", public " + card(public_);
    s += "\nChips in the pot: player 0 " + std::to_string(contrib_[0]) + ", player 1 " + std::to_string(contrib_[1]) +
         "\nBetting: " + past_rounds_ + round_actions_ + (folded_ >= 0 ? " (player " + std::to_string(folded_) + " folded)" : "");
    return s + "\n";
  }
  std::unique_ptr<State> clone() const override { return std::make_unique<LeducState>(*this); }

 private:
  static std::string card(int c) { return std::string(1, kRanks[c / 2]) + (c % 2 ? "h" : "s"); }
  std::vector<int> private_;
  int public_ = -1;
  int round_ = 1, player_ = 0, raises_ = 0, folded_ = -1;
  int contrib_[2] = {1, 1};
  std::string round_actions_, past_rounds_;
};

}  // namespace

std::unique_ptr<Game> make_kuhn_poker() {
  GameInfo info;
  info.name = info.family = "kuhn_poker";
  info.rules =
      "Kuhn poker. The deck has three cards: J < Q < K. Each player antes 1 chip and is dealt one card the other "
      "player cannot see. Player 0 acts first. Actions: <PASS> or <BET> (1 chip). After Pass-Pass, Bet-Bet or "
      "Pass-Bet-Bet the higher card wins the pot; a player who passes facing a bet folds and loses the pot.";
  info.perfect_information = false;
  info.num_distinct_actions = 2;
  info.max_chance_outcomes = 3;
  info.min_utility = -2, info.max_utility = 2;
  info.parameters = {{"players", 2}};
  return make_simple_game<KuhnState>(info);
}

std::unique_ptr<Game> make_leduc_poker() {
  GameInfo info;
  info.name = info.family = "leduc_poker";
  info.rules =
      "Leduc hold'em. The deck has six cards: J, Q and K in two suits (s, h). Each player antes 1 chip and gets one "
      "private card. There are two betting rounds; after the first a public card is dealt. Player 0 acts first in "
      "each round. Actions: <FOLD> (only when facing a raise), <CALL> (match the opponent, or check when nothing "
      "is owed) and <RAISE> (2 chips in round one, 4 in round two; at most two raises per round). A round ends when a "
      "raise is called or both players check. At showdown a private card that pairs the public card wins; "
      "otherwise the higher rank wins; equal ranks split the pot.";
  info.perfect_information = false;
  info.num_distinct_actions = 3;
  info.max_chance_outcomes = 6;
  info.min_utility = -13, info.max_utility = 13;
  info.parameters = {{"players", 2}};
  return make_simple_game<LeducState>(info);
}

}  // namespace crossmoe::games
