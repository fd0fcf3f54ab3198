// Hanabi with the rules of the Hanabi Learning Environment, which OpenSpiel's "hanabi" wraps,
// and its parameter names: players, colors, ranks, hand_size, max_information_tokens,
// max_life_tokens. Each color has three cards of the lowest rank, one of the highest and two of
// every other. Moves: Play a card, Discard one (only below the maximum of information tokens;
// it regains one), or spend an information token to reveal to another player all their cards of
// one color or one rank (at least one card must match). A correct play extends that color's
// firework; completing one regains an information token; a wrong play costs a life. The game
// ends when lives run out (score 0), every firework is complete, or one round after the deck
// runs out. Every player's return is the score: the sum of the fireworks.
#include <algorithm>
#include <array>
#include <numeric>
#include <sstream>

#include "games/agents.hpp"
#include "games/games_impl.hpp"
#include "util/error.hpp"

namespace crossmoe::games {

namespace {

const char* kColors = "RYGWB";

struct HanabiParams {
  int players = 2, colors = 5, ranks = 5, hand_size = 5, max_information_tokens = 8, max_life_tokens = 3;
};

struct Card {
  int color = -1, rank = -1;
};

struct Knowledge {            // what a player knows of one card in their hand from hints
  int color = -1, rank = -1;  // revealed, or -1
  uint32_t not_colors = 0, not_ranks = 0;
};

class HanabiState : public State {
 public:
  explicit HanabiState(const HanabiParams& p)
      : p_(p), hands_(size_t(p.players)), knowledge_(size_t(p.players)), turns_to_play_(p.players) {
    for (int c = 0; c < p.colors; ++c)
      for (int r = 0; r < p.ranks; ++r) {
        const int copies = r == 0 ? 3 : r == p.ranks - 1 ? 1 : 2;
        deck_count_.push_back(copies);
        deck_size_ += copies;
      }
    fireworks_.assign(size_t(p.colors), 0);
    info_ = p.max_information_tokens;
    lives_ = p.max_life_tokens;
  }

  int num_players() const override { return p_.players; }
  int current_player() const override {
    if (over()) return kTerminalPlayer;
    if (dealing() >= 0) return kChancePlayer;
    return player_;
  }
  // Moves, numbered as the Hanabi Learning Environment numbers them: [0, h) discard card i;
  // [h, 2h) play card i; then reveal color c to the player at offset o (o = 1 .. players-1)
  // at 2h + (o-1)*colors + c; then reveal rank r at 2h + (players-1)*colors + (o-1)*ranks + r.
  // Chance outcomes are the card dealt: color * ranks + rank.
  std::vector<int> legal_actions() const override {
    std::vector<int> out;
    if (is_terminal()) return out;
    if (is_chance()) {
      out.reserve(deck_count_.size());
      for (size_t card = 0; card < deck_count_.size(); ++card)
        if (deck_count_[card] > 0) out.push_back(int(card));
      return out;
    }
    const int h = p_.hand_size, n = int(hands_[size_t(player_)].size());
    out.reserve(size_t(2 * h + (p_.players - 1) * (p_.colors + p_.ranks)));  // every move id: one allocation
    if (info_ < p_.max_information_tokens)
      for (int i = 0; i < n; ++i) out.push_back(i);
    for (int i = 0; i < n; ++i) out.push_back(h + i);
    if (info_ > 0)
      for (int o = 1; o < p_.players; ++o) {
        const auto& target = hands_[size_t((player_ + o) % p_.players)];
        for (int c = 0; c < p_.colors; ++c)
          if (std::any_of(target.begin(), target.end(), [&](const Card& k) { return k.color == c; }))
            out.push_back(2 * h + (o - 1) * p_.colors + c);
      }
    if (info_ > 0)
      for (int o = 1; o < p_.players; ++o) {
        const auto& target = hands_[size_t((player_ + o) % p_.players)];
        for (int r = 0; r < p_.ranks; ++r)
          if (std::any_of(target.begin(), target.end(), [&](const Card& k) { return k.rank == r; }))
            out.push_back(2 * h + (p_.players - 1) * p_.colors + (o - 1) * p_.ranks + r);
      }
    return out;  // ascending already: each group and each loop above goes up the numbering
  }
  std::vector<std::pair<int, double>> chance_outcomes() const override {
    std::vector<std::pair<int, double>> out;
    if (!is_chance()) return out;
    out.reserve(deck_count_.size());
    for (size_t card = 0; card < deck_count_.size(); ++card)  // the cards legal_actions() deals
      if (deck_count_[card] > 0) out.push_back({int(card), double(deck_count_[card]) / double(deck_size_)});
    return out;
  }
  void apply(int action) override {
    const auto legal = legal_actions();
    if (std::find(legal.begin(), legal.end(), action) == legal.end())  // the message is built only when needed
      throw Error("illegal action " + std::to_string(action));
    if (is_chance()) {
      const int to = dealing();
      hands_[size_t(to)].push_back({action / p_.ranks, action % p_.ranks});
      knowledge_[size_t(to)].push_back({});
      --deck_count_[size_t(action)];
      --deck_size_;
      history_.push_back("deal");
      return;
    }
    previous_score_ = score();
    if (deck_size_ == 0) --turns_to_play_;  // after the last card is drawn, everyone plays once more
    history_.push_back("Player " + std::to_string(player_) + ": " + action_to_string(action));
    const int h = p_.hand_size;
    auto& hand = hands_[size_t(player_)];
    auto& know = knowledge_[size_t(player_)];
    if (action < 2 * h) {
      const int i = action % h;
      const Card card = hand[size_t(i)];
      hand.erase(hand.begin() + i);
      know.erase(know.begin() + i);
      if (action < h) {
        ++info_;
        discards_.push_back(card);
      } else if (fireworks_[size_t(card.color)] == card.rank) {
        if (++fireworks_[size_t(card.color)] == p_.ranks && info_ < p_.max_information_tokens) ++info_;
      } else {
        --lives_;
        discards_.push_back(card);
      }
    } else {
      --info_;
      const int color_actions = (p_.players - 1) * p_.colors;
      const int k = action - 2 * h;
      const bool by_color = k < color_actions;
      const int offset = 1 + (by_color ? k / p_.colors : (k - color_actions) / p_.ranks);
      const int value = by_color ? k % p_.colors : (k - color_actions) % p_.ranks;
      const int target = (player_ + offset) % p_.players;
      for (size_t c = 0; c < hands_[size_t(target)].size(); ++c) {
        Knowledge& kn = knowledge_[size_t(target)][c];
        const Card& card = hands_[size_t(target)][c];
        if (by_color) {
          if (card.color == value) kn.color = value;
          else kn.not_colors |= 1u << value;
        } else {
          if (card.rank == value) kn.rank = value;
          else kn.not_ranks |= 1u << value;
        }
      }
    }
    player_ = (player_ + 1) % p_.players;
  }
  // The score so far, shared by every player: OpenSpiel's returns at every state, and rewards
  // as its change with each move (negative when the last life is lost).
  std::vector<double> returns() const override { return std::vector<double>(size_t(p_.players), double(score())); }
  std::vector<double> rewards() const override {
    return std::vector<double>(size_t(p_.players), double(score() - previous_score_));
  }
  double forfeit_stake(int) const override { return score(); }
  std::string action_to_string(int action) const override {  // as the Hanabi Learning Environment writes moves
    if (is_chance()) return "(Deal " + card_name({action / p_.ranks, action % p_.ranks}) + ")";
    const int h = p_.hand_size;
    if (action < h) return "(Discard " + std::to_string(action) + ")";
    if (action < 2 * h) return "(Play " + std::to_string(action - h) + ")";
    const int color_actions = (p_.players - 1) * p_.colors;
    const int k = action - 2 * h;
    const bool by_color = k < color_actions;
    const int offset = 1 + (by_color ? k / p_.colors : (k - color_actions) / p_.ranks);
    const std::string target = "(Reveal player +" + std::to_string(offset);
    if (by_color) return target + " color " + std::string(1, kColors[k % p_.colors]) + ")";
    return target + " rank " + std::to_string((k - color_actions) % p_.ranks + 1) + ")";
  }
  std::string observation(int player) const override {
    std::ostringstream s;
    s << "Fireworks:";
    for (int c = 0; c < p_.colors; ++c) s << " " << kColors[c] << fireworks_[size_t(c)];
    s << "\nInformation tokens: " << info_ << " of " << p_.max_information_tokens << ". Lives: " << lives_
      << " of " << p_.max_life_tokens << ". Cards in the deck: " << deck_size_ << ".\n";
    s << "Discarded:";
    for (const Card& c : discards_) s << " " << card_name(c);
    s << (discards_.empty() ? " none" : "") << "\n";
    for (int o = 1; o < p_.players; ++o) {
      const int other = (player + o) % p_.players;
      s << "Player " << other << "'s hand (you see it):";
      for (const Card& c : hands_[size_t(other)]) s << " " << card_name(c);
      s << "\n";
    }
    s << "Your hand (hidden; what hints told you):";
    for (size_t i = 0; i < knowledge_[size_t(player)].size(); ++i) s << " [" << i << ": " << hint_text(knowledge_[size_t(player)][i]) << "]";
    s << "\n";
    return s.str();
  }
  std::string information_state(int player) const override {
    std::string key = observation(player);
    for (const auto& h : history_) key += h + ";";
    return key;
  }
  std::string to_string() const override {
    std::ostringstream s;
    s << "Fireworks:";
    for (int c = 0; c < p_.colors; ++c) s << " " << kColors[c] << fireworks_[size_t(c)];
    s << "\nScore: " << score() << ". Information tokens: " << info_ << ". Lives: " << lives_
      << ". Cards in the deck: " << deck_size_ << ".\n";
    for (int p = 0; p < p_.players; ++p) {
      s << "Player " << p << "'s hand:";
      for (const Card& c : hands_[size_t(p)]) s << " " << card_name(c);
      s << "\n";
    }
    s << "Discarded:";
    for (const Card& c : discards_) s << " " << card_name(c);
    s << (discards_.empty() ? " none" : "") << "\n";
    return s.str();
  }
  std::unique_ptr<State> clone() const override { return std::make_unique<HanabiState>(*this); }

 // A card the player knows to be playable now (color and rank both revealed), or -1.
  int known_playable(int player) const {
    const auto& know = knowledge_[size_t(player)];
    for (size_t i = 0; i < know.size(); ++i)
      if (know[i].color >= 0 && know[i].rank >= 0 && fireworks_[size_t(know[i].color)] == know[i].rank) return int(i);
    return -1;
  }
  // A reveal that tells a partner about a playable card they do not fully know yet, or -1.
  int helpful_reveal() const {
    if (info_ == 0) return -1;
    const int h = p_.hand_size;
    for (int o = 1; o < p_.players; ++o) {
      const int target = (player_ + o) % p_.players;
      for (size_t i = 0; i < hands_[size_t(target)].size(); ++i) {
        const Card& c = hands_[size_t(target)][i];
        const Knowledge& k = knowledge_[size_t(target)][i];
        if (fireworks_[size_t(c.color)] != c.rank) continue;
        if (k.color < 0) return 2 * h + (o - 1) * p_.colors + c.color;
        if (k.rank < 0) return 2 * h + (p_.players - 1) * p_.colors + (o - 1) * p_.ranks + c.rank;
      }
    }
    return -1;
  }
  int hand_size() const { return p_.hand_size; }
  bool can_discard() const { return info_ < p_.max_information_tokens; }

 private:
  // The player who receives the next card, or -1: the first player, in seat order, whose hand
  // is not full while cards remain (the Hanabi Learning Environment's rule).
  int dealing() const {
    if (deck_size_ == 0) return -1;
    for (int q = 0; q < p_.players; ++q)
      if (int(hands_[size_t(q)].size()) < p_.hand_size) return q;
    return -1;
  }
  int score() const {
    if (lives_ <= 0) return 0;
    return std::accumulate(fireworks_.begin(), fireworks_.end(), 0);
  }
  bool over() const { return lives_ <= 0 || score() == p_.colors * p_.ranks || turns_to_play_ <= 0; }
  std::string card_name(const Card& c) const { return kColors[c.color] + std::to_string(c.rank + 1); }
  std::string hint_text(const Knowledge& k) const {
    std::string s = k.color >= 0 ? std::string(1, kColors[k.color]) : "?";
    s += k.rank >= 0 ? std::to_string(k.rank + 1) : "?";
    for (int c = 0; c < p_.colors; ++c)
      if (k.not_colors >> c & 1u) s += std::string(" not ") + kColors[c];
    for (int r = 0; r < p_.ranks; ++r)
      if (k.not_ranks >> r & 1u) s += " not " + std::to_string(r + 1);
    return s;
  }

  HanabiParams p_;
  std::vector<int> deck_count_;  // cards left of each kind, color * ranks + rank
  int deck_size_ = 0;
  std::vector<Card> discards_;
  std::vector<std::vector<Card>> hands_;
  std::vector<std::vector<Knowledge>> knowledge_;
  std::vector<int> fireworks_;
  int info_ = 0, lives_ = 0, player_ = 0, turns_to_play_ = 0, previous_score_ = 0;
};

class HanabiGame : public Game {
 public:
  HanabiGame(HanabiParams p, const std::string& name) : p_(p) {
    require(p.players >= 2 && p.players <= 5, "players must be 2 to 5");
    require(p.colors >= 1 && p.colors <= 5 && p.ranks >= 1 && p.ranks <= 5, "colors and ranks must be 1 to 5");
    require(p.hand_size >= 1 && p.hand_size <= 10, "hand_size must be 1 to 10");
    require(p.max_information_tokens >= 1 && p.max_information_tokens <= 100 && p.max_life_tokens >= 1 &&
                p.max_life_tokens <= 100,
            "max_information_tokens and max_life_tokens must be 1 to 100");
    info_.name = name;
    info_.family = "hanabi";
    info_.rules =
        "Hanabi, a cooperative card game. Cards have a color (" + std::string(kColors, size_t(p.colors)) +
        ") and a rank (1-" + std::to_string(p.ranks) +
        "). You see your partners' cards but not your own. Together you build one firework per color "
        "by playing its ranks in order from 1. On your turn: play a card from your hand (<Play card i>; a "
        "wrong play costs a life), discard one (<Discard card i>, only when information tokens are below the "
        "maximum; it regains a token), or spend a token to reveal to the player k seats on all their cards of "
        "one color or one rank (<Reveal player +k color C>, <Reveal player +k rank R>). "
        "Completing a firework regains a token. The game ends when lives run out (score 0), all "
        "fireworks are complete, or one round after the deck is empty. The score, shared by all "
        "players, is the sum of the fireworks. Cards in your hand are numbered from 0.";
    info_.perfect_information = false;
    info_.cooperative = true;
    info_.num_players = p.players;
    info_.num_distinct_actions = 2 * p.hand_size + (p.players - 1) * (p.colors + p.ranks);
    info_.max_chance_outcomes = p.colors * p.ranks;
    info_.min_utility = 0;
    info_.max_utility = p.colors * p.ranks;
    info_.parameters = {{"players", p.players},
                        {"colors", p.colors},
                        {"ranks", p.ranks},
                        {"hand_size", p.hand_size},
                        {"max_information_tokens", p.max_information_tokens},
                        {"max_life_tokens", p.max_life_tokens}};
    info_.zero_terminal_reward_is_draw = true;
  }
  const GameInfo& info() const override { return info_; }
  std::unique_ptr<State> initial_state() const override { return std::make_unique<HanabiState>(p_); }

 private:
  HanabiParams p_;
  GameInfo info_;
};

// The rule-based partner: play a card known to be playable; else tell a partner about one of
// theirs; else discard the oldest card; else give any hint.
class HanabiRuleAgent : public Agent {
 public:
  int act(const Game&, const State& state, Rng&) override {
    const auto* s = dynamic_cast<const HanabiState*>(&state);
    require(s != nullptr, "the rule-based partner plays hanabi only");
    const int player = s->current_player();
    if (const int i = s->known_playable(player); i >= 0) return s->hand_size() + i;
    if (const int reveal = s->helpful_reveal(); reveal >= 0) return reveal;
    if (s->can_discard()) return 0;
    return s->legal_actions().back();  // a hint: the highest-numbered actions are reveals
  }
  std::string name() const override { return "hanabi-rules"; }
};

}  // namespace

std::unique_ptr<Agent> make_hanabi_partner() { return std::make_unique<HanabiRuleAgent>(); }

std::unique_ptr<Game> make_hanabi(const GameParameters& params, const std::string& name) {
  HanabiParams p;
  const std::map<std::string, int*> fields = {{"players", &p.players},
                                              {"colors", &p.colors},
                                              {"ranks", &p.ranks},
                                              {"hand_size", &p.hand_size},
                                              {"max_information_tokens", &p.max_information_tokens},
                                              {"max_life_tokens", &p.max_life_tokens}};
  for (const auto& [key, value] : params) {
    auto it = fields.find(key);
    require(it != fields.end(), "unknown parameter '" + key +
                                    "' (players, colors, ranks, hand_size, max_information_tokens, max_life_tokens)");
    *it->second = value;
  }
  // The Hanabi Learning Environment deals 4 cards to each of 4 or 5 players unless told.
  if (!params.count("hand_size")) p.hand_size = p.players < 4 ? 5 : 4;
  return std::make_unique<HanabiGame>(p, name);
}

}  // namespace crossmoe::games
