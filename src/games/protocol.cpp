#include "games/protocol.hpp"

#include <algorithm>
#include <cctype>

#include "util/error.hpp"
#include "util/replace_all.hpp"

namespace crossmoe::games {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && is_space(s[a])) ++a;
  while (b > a && is_space(s[b - 1])) --b;
  return s.substr(a, b - a);
}

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

std::vector<double> step_rewards(const Game& game, const State& state, const MarsRewards& r) {
  std::vector<double> out = state.rewards();
  if (state.is_terminal() && game.info().zero_terminal_reward_is_draw)
    for (double& v : out)
      if (v == 0.0) v = r.draw;
  return out;
}

Forfeit forfeit(const Game& game, const State& state, int player, const MarsRewards& r) {
  const int n = state.num_players();
  require(player >= 0 && player < n, "forfeit: no player " + std::to_string(player));
  const double stake = state.forfeit_stake(player);
  Forfeit f;
  f.rewards.assign(size_t(n), 0.0);
  f.rewards[size_t(player)] = -stake - r.forfeit_extra;
  if (game.info().cooperative) {
    f.returns = state.returns();
  } else {
    f.returns.assign(size_t(n), stake);
    f.returns[size_t(player)] = -stake;
  }
  return f;
}

double format_reward(bool answer_valid, const MarsRewards& r) {
  return answer_valid ? std::max(r.format_penalty, 0.0) : std::min(r.format_penalty, 0.0);
}

double length_penalty(int response_tokens, const MarsRewards& r) {
  double v = r.length_coef - double(response_tokens - r.length_min) / double(r.length_max - r.length_min);
  if (v > 0) v *= r.length_upper;
  if (v < 0) v *= r.length_lower;
  return v;
}

bool overlong(int response_tokens, int tokens_left, const MarsRewards& r) {
  return response_tokens >= r.overlong_response_tokens || tokens_left <= r.min_tokens_left;
}

std::string answer_text(const Game& game, const State& state, int action) {
  const std::string& family = game.info().family;
  const char mark = state.current_player() == 1 ? 'O' : 'X';
  if (family == "tic_tac_toe")
    return std::string("<") + mark + "(" + std::to_string(action / 3) + "," + std::to_string(action % 3) + ")>";
  if (family == "connect_four") return std::string("<") + mark + "(" + std::to_string(action) + ")>";
  if (family == "kuhn_poker") return action == 0 ? "<PASS>" : "<BET>";
  if (family == "leduc_poker") return action == 0 ? "<FOLD>" : action == 1 ? "<CALL>" : "<RAISE>";
  std::string s = state.action_to_string(action);
  if (family == "hanabi") {  // "(Play 0)" -> "<Play card 0>"
    std::replace(s.begin(), s.end(), '(', '<');
    std::replace(s.begin(), s.end(), ')', '>');
    return replace_all(replace_all(std::move(s), "Play", "Play card"), "Discard", "Discard card");
  }
  return "<" + s + ">";
}

std::string moves_and_legal_actions(const Game& game, const State& state) {
  std::string history;
  for (const auto& h : state.history_text())
    if (h != "deal") history += "- " + h + "\n";
  std::string s = history.empty() ? "No moves have been made yet.\n" : "Moves so far:\n" + history;
  s += "Legal actions:";
  for (int a : state.legal_actions()) s.append(" ").append(answer_text(game, state, a));
  return s;
}

std::string turn_prompt(const Game& game, const State& state) {
  const GameInfo& info = game.info();
  const int player = state.current_player();
  std::string p = "You are playing " + info.name + ".\n\nRules: " + info.rules + "\n\n";
  p += "You are Player " + std::to_string(player) + ".\n" + state.observation(player);
  p += moves_and_legal_actions(game, state);
  p += "\n\nThink briefly, then give exactly one legal action, written as listed, in this format and "
       "with nothing after it:\n<think>your reasoning</think><answer>" +
       answer_text(game, state, state.legal_actions().front()) + "</answer>";
  return p;
}

ParsedAnswer parse_answer(const std::string& response, const Game& game, const State& state) {
  if (response.size() > kMaxAnswerBytes) return {-1, "response longer than " + std::to_string(kMaxAnswerBytes) + " bytes"};
  // MARS matches ^<think>(.*?)</think>\s*<answer>(.*?)</answer>$ (Python's $ also before a
  // final newline).
  std::string text = response;
  if (text.ends_with('\n')) text.pop_back();
  if (!text.starts_with("<think>")) return {-1, "the response does not start with <think>"};
  if (!text.ends_with("</answer>")) return {-1, "the response does not end with </answer>"};
  const size_t end = text.size() - 9;
  size_t answer_open = std::string::npos;
  for (size_t close = text.find("</think>", 7); close != std::string::npos; close = text.find("</think>", close + 1)) {
    size_t at = close + 8;
    while (at < text.size() && is_space(text[at])) ++at;
    if (text.compare(at, 8, "<answer>") == 0 && at + 8 <= end) {
      answer_open = at + 8;
      break;
    }
  }
  if (answer_open == std::string::npos) return {-1, "no </think> followed by <answer>"};
  std::string content = text.substr(answer_open, end - answer_open);
  for (const char* special : {"<think>", "</think>", "<answer>", "</answer>", "<|im_start|>", "<|im_end|>"}) {
    content = replace_all(std::move(content), special, "");
    content = trim(content);
  }
  // Only the first non-empty one of several actions joined by "||" counts.
  std::string said;
  for (size_t at = 0; at <= content.size() && said.empty();) {
    size_t sep = content.find("||", at);
    if (sep == std::string::npos) sep = content.size();
    said = trim(content.substr(at, sep - at));
    at = sep + 2;
  }
  if (said.empty()) return {-1, "empty answer"};
  for (int a : state.legal_actions())
    if (answer_text(game, state, a) == said) return {a, ""};
  return {-1, "'" + said + "' is not a legal action"};
}

ParsedAnswer parse_human_move(const std::string& line, const Game& game, const State& state) {
  const std::string typed = trim(line);
  const std::string said = lower(typed);
  if (said.empty()) return {-1, "empty move"};
  for (int a : state.legal_actions())
    if (said == lower(answer_text(game, state, a)) || said == lower(state.action_to_string(a)) ||
        said == std::to_string(a))
      return {a, ""};
  return {-1, "'" + typed + "' is not a legal move"};
}

}  // namespace crossmoe::games
