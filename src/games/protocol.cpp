#include "games/protocol.hpp"

#include <algorithm>
#include <cctype>

namespace crossmoe::games {

namespace {
std::string lower_trim(std::string s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  s = s.substr(first, s.find_last_not_of(" \t\r\n") - first + 1);
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
}  // namespace

std::string turn_prompt(const GameInfo& info, const State& state) {
  const int player = state.current_player();
  std::string p = "You are playing " + info.name + ".\n\nRules: " + info.rules + "\n\n";
  p += "You are Player " + std::to_string(player) + ".\n" + state.observation(player);
  std::string history;
  for (const auto& h : state.history_text())
    if (h != "deal") history += "- " + h + "\n";
  p += history.empty() ? "No moves have been made yet.\n" : "Moves so far:\n" + history;
  p += "Legal actions:";
  for (int a : state.legal_actions()) p += " " + state.action_to_string(a);
  p += "\n\nThink, then answer with exactly one legal action, in this format:\n"
       "<think>your reasoning</think><answer>ACTION</answer>";
  return p;
}

ParsedAnswer parse_answer(const std::string& text, const State& state) {
  if (text.size() > kMaxAnswerBytes) return {-1, "answer longer than " + std::to_string(kMaxAnswerBytes) + " bytes"};
  const size_t open = text.rfind("<answer>");
  if (open == std::string::npos) return {-1, "no <answer> tag"};
  const size_t close = text.find("</answer>", open);
  if (close == std::string::npos) return {-1, "unclosed <answer> tag"};
  const size_t think_open = text.find("<think>"), think_close = text.find("</think>");
  if (think_open != std::string::npos && (think_close == std::string::npos || think_close > open))
    return {-1, "<think> is not closed before <answer>"};
  const std::string said = lower_trim(text.substr(open + 8, close - open - 8));
  if (said.empty()) return {-1, "empty answer"};
  for (int a : state.legal_actions())
    if (lower_trim(state.action_to_string(a)) == said) return {a, ""};
  return {-1, "'" + said + "' is not a legal action"};
}

}  // namespace crossmoe::games
