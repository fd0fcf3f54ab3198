#pragma once
// Matches in which a language model plays seats as chat conversations (games/conversation): the
// loop that self-play's rollouts and evaluations (src/rl) and `crossmoe games eval` share.
//
// Each model seat is one growing conversation in one row of a TokenGenerator: the system message,
// then per turn the seat's user message and the model's answer. Fixed agents (MCTS, CFR, ...)
// move at once; the model's seats of all unfinished matches answer together in one generate()
// call per round, so a batched generator (the libtorch rollout engine) decodes many games at once
// and the CPU runtime plays them one after the other.
//
// MARS's rules for answers (games/protocol.hpp): an answer that does not parse, names an illegal
// action, does not end within max_new_tokens, or leaves too little of the row free, ends the game
// with a forfeit for that seat. Each seat's turn rewards are kept as MARS's env manager builds them.
#include <nlohmann/json.hpp>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "games/agents.hpp"
#include "games/protocol.hpp"
#include "tokenizer/tokenizer.hpp"

namespace crossmoe::games {

// How answers are sampled, as MARS configures vLLM: temperature, then top-k, then top-p (the
// smallest set of most likely tokens whose probability reaches top_p), then a draw; temperature
// 0 is greedy.
struct SamplingOptions {
  double temperature = 0.6;
  double top_p = 0.99;
  int top_k = 100;  // 0 = off
};

struct GenerationRequest {
  int sequence = 0;               // row of the generator
  std::vector<int> append;        // tokens to add before generating (at least one)
  int max_new_tokens = 256;
};

struct Generation {
  std::vector<int> tokens;        // generated, the stop token included when one came
  std::vector<float> log_probs;   // policy log-probability of each generated token (generators
                                  // that feed training keep them; others leave this empty)
  bool stopped = false;           // ended on a stop token (false: hit max_new_tokens)
};

// Rows of token sequences that only grow; generate() appends each request's tokens to its row
// and then samples an answer into it.
class TokenGenerator {
 public:
  virtual ~TokenGenerator() = default;
  virtual void reset() = 0;  // empties every row
  virtual int sequences() const = 0;
  virtual const std::vector<int>& tokens(int sequence) const = 0;
  virtual int free_space(int sequence) const = 0;
  // Requests name distinct rows and fit: appended tokens + max_new_tokens <= free_space.
  virtual std::vector<Generation> generate(const std::vector<GenerationRequest>& requests,
                                           const std::vector<int>& stop_tokens, const SamplingOptions& sampling,
                                           std::mt19937_64& rng) = 0;
};

// The model's tokenizer and chat template: how conversations become tokens.
struct ChatModel {
  Tokenizer tokenizer;
  nlohmann::json config;   // tokenizer_config.json (with chat_template.jinja when there is one)
  std::vector<int> stop;   // tokens that end an answer
};

// Reads model_dir's tokenizer and chat template; the answer ends at eos_token_ids (config.json's)
// or the template's eos_token (ChatML's <|im_end|>). Throws Error naming the directory when the
// tokenizer, the chat template or an end-of-turn token is missing.
ChatModel load_chat_model(const std::filesystem::path& model_dir, const std::vector<int>& eos_token_ids);
// The same from a tokenizer and tokenizer_config already read (a GGUF file's: runtime/model_files.hpp);
// errors name `model_name`.
ChatModel make_chat_model(Tokenizer tokenizer, nlohmann::json config, const std::vector<int>& eos_token_ids,
                          const std::string& model_name);

// Refuses (Error naming the model and the game) a model that cannot play `game` as text: some
// message the game sends (the rules of each seat, the observations along a game) does not come
// back unchanged from the tokenizer (characters it has no token for), or is encoded with ids past
// the model's vocabulary (a tokenizer bigger than the model). Checked before any game is played.
void check_game_text(ChatModel& chat, const Game& game, int model_vocab_size, const std::string& model_name);

struct Seat {
  int row = -1;                       // generator row; -1 when a fixed agent plays the seat
  Agent* agent = nullptr;
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  std::string covered;                // the text the row's tokens stand for
  std::string pending_stop;           // text of the stop token that ended the last answer
  std::vector<std::pair<int, int>> answers;  // [begin, end) token ranges of the seat's answers
  std::vector<float> log_probs;       // log-prob of every answer token, in order (when kept)
  std::vector<double> turn_reward;
};

struct Match {
  std::string game_name;
  const Game* game = nullptr;
  std::unique_ptr<State> state;
  std::vector<Seat> seats;
  bool done = false;
  int turns = 0;
  int invalid_seat = -1;              // seat whose answer ended the game
  std::vector<double> returns;        // the game's payoffs (a forfeit's; empty when cut at max_turns)
};

struct MatchSettings {
  int max_new_tokens = 256;           // per answer
  int max_turns = 50;                 // actions per game (MARS's max_actions_per_traj)
  SamplingOptions sampling;
  MarsRewards rewards;
};

struct PlayCounts {
  int answers = 0, invalid = 0, overlong = 0;  // overlong: answers cut off at max_new_tokens
  int64_t answer_tokens = 0;
};

// Plays every match to the end (generator rows must be distinct and < generator.sequences();
// the generator is reset first). Chance and the fixed agents draw from rng.
PlayCounts play_matches(std::vector<Match>& matches, TokenGenerator& generator, ChatModel& chat,
                        const MatchSettings& settings, std::mt19937_64& rng);

// What `seat` scored in a finished match: a forfeit is a loss for the seat that gave the invalid
// answer and a win for the others (Forfeit::returns); a game cut at max_turns pays what its state
// has paid so far (0 in the two-player games, the score in Hanabi).
double seat_return(const Match& match, int seat);

}  // namespace crossmoe::games
