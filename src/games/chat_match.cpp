#include "games/chat_match.hpp"

#include <algorithm>

#include "games/conversation.hpp"
#include "tokenizer/chat_template.hpp"
#include "util/error.hpp"

namespace crossmoe::games {

namespace fs = std::filesystem;

ChatModel load_chat_model(const fs::path& model_dir, const std::vector<int>& eos_token_ids) {
  const fs::path tok = model_dir / "tokenizer.json";
  require(fs::exists(tok), model_dir.string() + " has no tokenizer.json: a model plays games through its tokenizer");
  return make_chat_model(Tokenizer::load(tok),
                         fs::exists(model_dir / "tokenizer_config.json") ? read_tokenizer_config(model_dir)
                                                                        : nlohmann::json::object(),
                         eos_token_ids, model_dir.string());
}

ChatModel make_chat_model(Tokenizer tokenizer, nlohmann::json config, const std::vector<int>& eos_token_ids,
                          const std::string& model_name) {
  ChatModel chat{std::move(tokenizer), std::move(config), eos_token_ids};
  require(chat.config.contains("chat_template") && chat.config["chat_template"].is_string(),
          model_name + " has no chat template (tokenizer_config.json \"chat_template\" or chat_template.jinja): "
                               "a model plays games as conversations");
  // The end of an answer: the model's eos tokens and the chat template's (tokenizer_config's eos_token,
  // e.g. ChatML's <|im_end|>).
  if (chat.config.contains("eos_token")) {
    const auto& e = chat.config["eos_token"];
    const std::string text = e.is_string() ? e.get<std::string>() : e.is_object() ? e.value("content", "") : "";
    const int id = text.empty() ? -1 : chat.tokenizer.token_to_id(text);
    if (id >= 0 && std::find(chat.stop.begin(), chat.stop.end(), id) == chat.stop.end()) chat.stop.push_back(id);
  }
  require(!chat.stop.empty(), model_name + " names no end-of-turn token (eos_token_id, eos_token)");
  return chat;
}

void check_game_text(ChatModel& chat, const Game& game, int model_vocab_size, const std::string& model_name) {
  const std::string who = model_name + " cannot play " + game.info().name + ": ";
  auto check = [&](const std::string& text) {
    const std::vector<int> ids = chat.tokenizer.encode(text);
    for (int id : ids)
      require(id >= 0 && id < model_vocab_size, who + "its tokenizer gives token id " + std::to_string(id) +
                                                    ", outside the model's vocabulary of " + std::to_string(model_vocab_size));
    const std::string back = chat.tokenizer.decode(ids);
    if (back == text) return;
    size_t at = 0;
    while (at < text.size() && at < back.size() && text[at] == back[at]) ++at;
    const size_t from = at < 20 ? 0 : at - 20;
    throw Error(who + "its tokenizer cannot encode the game's text (\"" + text.substr(from, 40) + "\" comes back as \"" +
                back.substr(from, 40) + "\")");
  };
  for (int seat = 0; seat < game.info().num_players; ++seat) check(seat_system_message(game.info(), seat));
  // The observations along one game (the first legal action, the first chance outcome, each time).
  auto state = game.initial_state();
  for (int step = 0; step < 200 && !state->is_terminal(); ++step) {
    if (state->is_chance()) {
      state->apply(state->chance_outcomes().front().first);
      continue;
    }
    const int seat = state->current_player();
    check(seat_turn_message(game, *state, seat));
    state->apply(state->legal_actions().front());
  }
}

namespace {

// The step rewards of the move that led to the current state: the mover's own turn gets its part
// when the move was the model's answer (added by the caller); every other seat's last turn gets its.
void share_step_rewards(Match& m, int mover, const MarsRewards& r, double* mover_reward) {
  const std::vector<double> step = step_rewards(*m.game, *m.state, r);
  for (size_t s = 0; s < m.seats.size(); ++s) {
    if (int(s) == mover) {
      if (mover_reward) *mover_reward = step[s];
      continue;
    }
    if (!m.seats[s].turn_reward.empty()) m.seats[s].turn_reward.back() += step[s];
  }
  if (m.state->is_terminal()) {
    m.done = true;
    m.returns = m.state->returns();
  }
}

// `seat` forfeits (an invalid, over-long or out-of-room answer): MARS's losing state.
void end_invalid(Match& m, int seat, const MarsRewards& r, int response_tokens) {
  const Forfeit f = forfeit(*m.game, *m.state, seat, r);
  m.done = true;
  m.invalid_seat = seat;
  m.returns = f.returns;
  for (size_t s = 0; s < m.seats.size(); ++s) {
    Seat& st = m.seats[s];
    if (int(s) == seat && st.turn_reward.empty()) st.turn_reward.push_back(0.0);
    if (st.turn_reward.empty()) continue;
    st.turn_reward.back() += f.rewards[s];
    if (int(s) == seat) st.turn_reward.back() += format_reward(false, r) + length_penalty(response_tokens, r);
  }
}

}  // namespace

PlayCounts play_matches(std::vector<Match>& matches, TokenGenerator& generator, ChatModel& chat,
                        const MatchSettings& o, std::mt19937_64& rng) {
  generator.reset();
  PlayCounts counts;
  while (true) {
    std::vector<GenerationRequest> requests;
    std::vector<size_t> owner;
    for (size_t mi = 0; mi < matches.size(); ++mi) {
      Match& m = matches[mi];
      while (!m.done) {
        State& st = *m.state;
        if (st.is_chance()) {
          apply_chance_outcome(st, rng);
          continue;
        }
        if (st.is_terminal()) {
          m.done = true;
          m.returns = st.returns();
          break;
        }
        if (m.turns >= o.max_turns) {  // truncated, as MARS stops at max_actions_per_traj
          m.done = true;
          break;
        }
        const int seat = st.current_player();
        Seat& s = m.seats[size_t(seat)];
        if (s.row < 0) {
          st.apply(s.agent->act(*m.game, st, rng));
          ++m.turns;
          share_step_rewards(m, seat, o.rewards, nullptr);
          continue;
        }
        if (s.messages.empty())
          s.messages.push_back({{"role", "system"}, {"content", seat_system_message(m.game->info(), seat)}});
        s.messages.push_back({{"role", "user"}, {"content", seat_turn_message(*m.game, st, seat)}});
        ChatRequest request;
        request.messages = s.messages;
        const std::string text = apply_chat_template(chat.config, request);
        require(text.compare(0, s.covered.size(), s.covered) == 0,
                "the model's chat template does not render a conversation as an extension of its earlier turns; "
                "playing games needs one that does (ChatML, as `crossmoe init` writes, does)");
        std::string delta = text.substr(s.covered.size());
        if (!s.pending_stop.empty() && delta.compare(0, s.pending_stop.size(), s.pending_stop) == 0)
          delta = delta.substr(s.pending_stop.size());
        s.covered = text;
        s.pending_stop.clear();
        std::vector<int> append = chat.tokenizer.encode(delta);
        if (int(append.size()) + o.max_new_tokens > generator.free_space(s.row)) {
          // The conversation outgrew the row: that seat loses, as MARS's overlong sequences do.
          end_invalid(m, seat, o.rewards, 0);
          break;
        }
        requests.push_back({s.row, std::move(append), o.max_new_tokens});
        owner.push_back(mi);
        break;
      }
    }
    if (requests.empty()) break;
    const std::vector<Generation> gens = generator.generate(requests, chat.stop, o.sampling, rng);
    for (size_t i = 0; i < gens.size(); ++i) {
      Match& m = matches[owner[i]];
      const int seat = m.state->current_player();
      Seat& s = m.seats[size_t(seat)];
      const Generation& g = gens[i];
      const int end = int(generator.tokens(s.row).size()), begin = end - int(g.tokens.size());
      s.answers.push_back({begin, end});
      s.log_probs.insert(s.log_probs.end(), g.log_probs.begin(), g.log_probs.end());
      std::vector<int> content_tokens = g.tokens;
      if (g.stopped) content_tokens.pop_back();
      const std::string content = chat.tokenizer.decode(content_tokens);
      s.covered += content;
      if (g.stopped) s.pending_stop = chat.tokenizer.decode({g.tokens.back()});
      s.messages.push_back({{"role", "assistant"}, {"content", content}});
      ++counts.answers;
      counts.answer_tokens += int64_t(g.tokens.size());
      const int tokens = int(g.tokens.size());
      const bool too_long = !g.stopped || overlong(tokens, generator.free_space(s.row), o.rewards);
      const ParsedAnswer parsed =
          too_long ? ParsedAnswer{-1, "no end within the limit"} : parse_answer(content, *m.game, *m.state);
      if (parsed.action < 0) {
        ++counts.invalid;
        if (too_long) ++counts.overlong;
        s.turn_reward.push_back(0.0);
        end_invalid(m, seat, o.rewards, tokens);
        continue;
      }
      m.state->apply(parsed.action);
      ++m.turns;
      double own = 0;
      share_step_rewards(m, seat, o.rewards, &own);
      s.turn_reward.push_back(own + format_reward(true, o.rewards) + length_penalty(tokens, o.rewards));
    }
  }
  return counts;
}

double seat_return(const Match& m, int seat) {
  require(m.done, "seat_return: the match is not over");
  const std::vector<double> returns = m.returns.empty() ? m.state->returns() : m.returns;
  return returns.at(size_t(seat));
}

}  // namespace crossmoe::games
