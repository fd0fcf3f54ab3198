// Tic-Tac-Toe and Connect Four, with OpenSpiel's rules: x (player 0) moves first; a line of
// three (four) wins; a full board is a draw. Returns +1 / -1, 0 for a draw.
#include <algorithm>

#include "games/games_impl.hpp"
#include "util/error.hpp"

namespace crossmoe::games {

namespace {

class GridState : public State {
 public:
  GridState(int rows, int cols, int line, bool gravity)
      : rows_(rows), cols_(cols), line_(line), gravity_(gravity), cells_(size_t(rows * cols), '.') {
    history_.reserve(size_t(rows * cols));  // one allocation per game, not one per doubling
  }

  int num_players() const override { return 2; }
  int current_player() const override { return winner_ >= 0 || full() ? kTerminalPlayer : player_; }
  std::vector<int> legal_actions() const override {
    std::vector<int> out;
    if (is_terminal()) return out;
    out.reserve(size_t(gravity_ ? cols_ : rows_ * cols_ - moves_));  // one allocation
    if (gravity_) {
      for (int c = 0; c < cols_; ++c)
        if (cells_[size_t(c)] == '.') out.push_back(c);
    } else {
      for (int i = 0; i < rows_ * cols_; ++i)
        if (cells_[size_t(i)] == '.') out.push_back(i);
    }
    return out;
  }
  void apply(int action) override {
    // legal_actions() without building it: an empty cell; with gravity, a column whose top
    // cell (the same index, row 0) is empty.
    if (is_terminal() || action < 0 || action >= (gravity_ ? cols_ : rows_ * cols_) || cells_[size_t(action)] != '.')
      throw Error("illegal move " + std::to_string(action));
    int cell = action;
    if (gravity_) {  // the piece falls to the lowest empty row of the column
      int r = rows_ - 1;
      while (cells_[size_t(r * cols_ + action)] != '.') --r;
      cell = r * cols_ + action;
    }
    cells_[size_t(cell)] = player_ == 0 ? 'x' : 'o';
    history_.push_back(action_to_string(action));
    if (wins(cell)) winner_ = player_;
    player_ = 1 - player_;
    ++moves_;
  }
  std::vector<double> returns() const override {
    if (winner_ < 0) return {0.0, 0.0};
    return winner_ == 0 ? std::vector<double>{1.0, -1.0} : std::vector<double>{-1.0, 1.0};
  }
  double forfeit_stake(int) const override { return 1.0; }  // a forfeit turns the game into a loss
  std::string action_to_string(int action) const override {  // OpenSpiel's: x(row,col) or x<col>
    // Appended in place (every move records it): no temporaries shifted by a prefix.
    std::string s(1, player_ == 0 ? 'x' : 'o');
    const auto number = [&](int n) { n < 10 ? s += char('0' + n) : s += std::to_string(n); };
    if (gravity_) {
      number(action);
      return s;
    }
    s += '(';
    number(action / cols_);
    s += ',';
    number(action % cols_);
    return s += ')';
  }
  std::string observation(int player) const override {
    std::string s = "You play " + std::string(player == 0 ? "x" : "o") + ". Board:\n";
    for (int r = 0; r < rows_; ++r) {
      for (int c = 0; c < cols_; ++c) s += std::string(c ? " " : "") + cells_[size_t(r * cols_ + c)];
      s += "\n";
    }
    return s;
  }
  std::string information_state(int) const override { return cells_; }
  std::string to_string() const override {
    std::string s;
    for (int r = 0; r < rows_; ++r) s += cells_.substr(size_t(r * cols_), size_t(cols_)) + "\n";
    return s;
  }

 protected:
  bool full() const { return moves_ == rows_ * cols_; }
  bool wins(int cell) const {
    const char me = cells_[size_t(cell)];
    const int r0 = cell / cols_, c0 = cell % cols_;
    // How many of `me` follow the cell in direction (dr, dc), the cell itself not counted.
    const auto run = [&](int dr, int dc) {
      int n = 0;
      for (int r = r0 + dr, c = c0 + dc;
           r >= 0 && r < rows_ && c >= 0 && c < cols_ && cells_[size_t(r * cols_ + c)] == me; r += dr, c += dc)
        ++n;
      return n;
    };
    return 1 + run(0, 1) + run(0, -1) >= line_ || 1 + run(1, 0) + run(-1, 0) >= line_ ||
           1 + run(1, 1) + run(-1, -1) >= line_ || 1 + run(1, -1) + run(-1, 1) >= line_;
  }
  int rows_, cols_, line_;
  bool gravity_;
  std::string cells_;
  int player_ = 0, winner_ = -1, moves_ = 0;
};

class TicTacToeState : public GridState {
 public:
  TicTacToeState() : GridState(3, 3, 3, false) {}
  std::unique_ptr<State> clone() const override {
    auto copy = std::make_unique<TicTacToeState>();
    static_cast<GridState&>(*copy) = *this;  // assigning keeps the room reserved for the game's history
    return copy;
  }
};

class ConnectFourState : public GridState {
 public:
  ConnectFourState() : GridState(6, 7, 4, true) {}
  std::unique_ptr<State> clone() const override {
    auto copy = std::make_unique<ConnectFourState>();
    static_cast<GridState&>(*copy) = *this;  // assigning keeps the room reserved for the game's history
    return copy;
  }
};

}  // namespace

std::unique_ptr<Game> make_tic_tac_toe() {
  GameInfo info;
  info.name = info.family = "tic_tac_toe";
  info.rules =
      "Tic-Tac-Toe on a 3x3 board. Players alternate placing their mark (X moves first, then O) in an empty cell. "
      "Three of your marks in a row, column or diagonal win; a full board without a line is a draw. A move is "
      "written <X(row,column)> (O for the second player), rows and columns numbered 0 to 2 from the top left.";
  info.num_distinct_actions = 9;
  info.min_utility = -1, info.max_utility = 1;
  info.zero_terminal_reward_is_draw = true;
  return make_simple_game<TicTacToeState>(info);
}

std::unique_ptr<Game> make_connect_four() {
  GameInfo info;
  info.name = info.family = "connect_four";
  info.rules =
      "Connect Four on a board of 6 rows and 7 columns. Players alternate dropping a piece (X moves first, then O) "
      "into a column numbered 0 to 6 from the left; it falls to the lowest empty row. Four of your pieces in a "
      "row, column or diagonal win; a full board is a draw. A move is written <X(column)> (O for the second "
      "player) and needs a column that is not full.";
  info.num_distinct_actions = 7;
  info.min_utility = -1, info.max_utility = 1;
  info.zero_terminal_reward_is_draw = true;
  return make_simple_game<ConnectFourState>(info);
}

}  // namespace crossmoe::games
