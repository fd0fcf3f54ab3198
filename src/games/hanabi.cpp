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
  explicit HanabiState(const HanabiParams& p) : p_(p), hands_(size_t(p.players)), knowledge_(size_t(p.players)) {
    for (int c = 0; c < p.colors; ++c)
      for (int r = 0; r < p.ranks; ++r) {
        const int copies = r == 0 ? 3 : r == p.ranks - 1 ? 1 : 2;
        for (int k = 0; k < copies; ++k) deck_.push_back({c, r});
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
  // Actions: [0, h) discard card i; [h, 2h) play card i; then reveal color c to player offset o
  // (o = 1 .. players-1) at 2h + (o-1)*colors + c; then reveal rank r at
  // 2h + (players-1)*colors + (o-1)*ranks + r.
  std::vector<int> legal_actions() const override {
    std::vector<int> out;
    if (is_terminal()) return out;
    if (is_chance()) {
      for (size_t i = 0; i < deck_.size(); ++i) out.push_back(int(i));
      return out;
    }
    const int h = p_.hand_size, n = int(hands_[size_t(player_)].size());
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
    std::sort(out.begin(), out.end());
    return out;
  }
  std::vector<std::pair<int, double>> chance_outcomes() const override {
    std::vector<std::pair<int, double>> out;
    for (size_t i = 0; i < deck_.size(); ++i) out.push_back({int(i), 1.0 / double(deck_.size())});
    return out;
  }
  void apply(int action) override {
    const auto legal = legal_actions();
    require(std::find(legal.begin(), legal.end(), action) != legal.end(), "illegal action " + std::to_string(action));
    if (is_chance()) {
      const int to = dealing();
      hands_[size_t(to)].push_back(deck_[size_t(action)]);
      knowledge_[size_t(to)].push_back({});
      deck_.erase(deck_.begin() + action);
      history_.push_back("deal");
      if (deck_.empty() && turns_left_ < 0) turns_left_ = p_.players;  // one more round each
      return;
    }
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
      refill_ = player_;  // the player draws, if cards remain
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
    if (turns_left_ > 0) --turns_left_;
    player_ = (player_ + 1) % p_.players;
  }
  std::vector<double> returns() const override {
    int score = 0;
    if (lives_ > 0)
      for (int f : fireworks_) score += f;
    return std::vector<double>(size_t(p_.players), double(score));
  }
  std::string action_to_string(int action) const override {
    if (is_chance()) return "deal";
    const int h = p_.hand_size;
    if (action < h) return "Discard " + std::to_string(action);
    if (action < 2 * h) return "Play " + std::to_string(action - h);
    const int color_actions = (p_.players - 1) * p_.colors;
    const int k = action - 2 * h;
    const bool by_color = k < color_actions;
    const int offset = 1 + (by_color ? k / p_.colors : (k - color_actions) / p_.ranks);
    std::string target = p_.players == 2 ? "" : " player +" + std::to_string(offset);
    if (by_color) return "Reveal" + target + " color " + std::string(1, kColors[k % p_.colors]);
    return "Reveal" + target + " rank " + std::to_string((k - color_actions) % p_.ranks + 1);
  }
  std::string observation(int player) const override {
    std::ostringstream s;
    s << "Fireworks:";
    for (int c = 0; c < p_.colors; ++c) s << " " << kColors[c] << fireworks_[size_t(c)];
    s << "\nInformation tokens: " << info_ << " of " << p_.max_information_tokens << ". Lives: " << lives_
      << " of " << p_.max_life_tokens << ". Cards in the deck: " << deck_.size() << ".\n";
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
  // The player who receives the next card, or -1: hands are filled in player order at the
  // start, and a player who played or discarded draws a replacement.
  int dealing() const {
    if (deck_.empty()) return -1;
    if (refill_ >= 0) return int(hands_[size_t(refill_)].size()) < p_.hand_size ? refill_ : -1;
    for (int q = 0; q < p_.players; ++q)
      if (int(hands_[size_t(q)].size()) < p_.hand_size) return q;
    return -1;
  }
  bool over() const {
    if (lives_ <= 0 || turns_left_ == 0) return true;
    return std::all_of(fireworks_.begin(), fireworks_.end(), [&](int f) { return f == p_.ranks; });
  }
  std::string card_name(const Card& c) const { return std::string(1, kColors[c.color]) + std::to_string(c.rank + 1); }
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
  std::vector<Card> deck_, discards_;
  std::vector<std::vector<Card>> hands_;
  std::vector<std::vector<Knowledge>> knowledge_;
  std::vector<int> fireworks_;
  int info_ = 0, lives_ = 0, player_ = 0, refill_ = -1, turns_left_ = -1;
};

class HanabiGame : public Game {
 public:
  explicit HanabiGame(HanabiParams p) : p_(p) {
    require(p.players >= 2 && p.players <= 5, "hanabi: players must be 2 to 5");
    require(p.colors >= 1 && p.colors <= 5 && p.ranks >= 1 && p.ranks <= 5, "hanabi: 1-5 colors and ranks");
    require(p.hand_size >= 1 && p.max_information_tokens >= 1 && p.max_life_tokens >= 1,
            "hanabi: hand_size, max_information_tokens and max_life_tokens must be positive");
    info_ = {"hanabi",
             "Hanabi, a cooperative card game. Cards have a color (" + std::string(kColors, size_t(p.colors)) +
                 ") and a rank (1-" + std::to_string(p.ranks) +
                 "). You see your partners' cards but not your own. Together you build one firework per color "
                 "by playing its ranks in order from 1. On your turn: Play a card from your hand (a wrong play "
                 "costs a life), Discard one (only when information tokens are below the maximum; it regains a "
                 "token), or spend a token to Reveal to a partner all their cards of one color or one rank. "
                 "Completing a firework regains a token. The game ends when lives run out (score 0), all "
                 "fireworks are complete, or one round after the deck is empty. The score, shared by all "
                 "players, is the sum of the fireworks. Cards in your hand are numbered from 0.",
             false, true, p.players};
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

std::unique_ptr<Game> make_hanabi(const GameParameters& params) {
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
  return std::make_unique<HanabiGame>(p);
}

}  // namespace crossmoe::games
