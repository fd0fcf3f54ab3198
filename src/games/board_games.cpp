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
  std::string action_to_string(int action) const override { return std::to_string(action); }
  std::string observation(int player) const override {
    std::string s = "You play " + std::string(player == 0 ? "x" : "o") + ". Board:\n";
    for (int r = 0; r < rows_; ++r) {
      for (int c = 0; c < cols_; ++c) s += std::string(c ? " " : "") + cells_[size_t(r * cols_ + c)];
      s += "\n";
    }
    return s;
  }
  std::string information_state(int) const override { return cells_; }

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
  std::unique_ptr<State> clone() const override { return std::make_unique<TicTacToeState>(*this); }
};

class ConnectFourState : public GridState {
 public:
  ConnectFourState() : GridState(6, 7, 4, true) {}
  std::unique_ptr<State> clone() const override { return std::make_unique<ConnectFourState>(*this); }
};

}  // namespace

std::unique_ptr<Game> make_tic_tac_toe() {
  return make_simple_game<TicTacToeState>(
      {"tic_tac_toe",
       "Tic-Tac-Toe on a 3x3 board. Players alternate placing their mark (x moves first) in an empty cell. Cells "
       "are numbered 0 to 8, left to right and top to bottom. Three of your marks in a row, column or diagonal "
       "win; a full board without a line is a draw. An action is the number of an empty cell.",
       true, false, 2});
}

std::unique_ptr<Game> make_connect_four() {
  return make_simple_game<ConnectFourState>(
      {"connect_four",
       "Connect Four on a board of 6 rows and 7 columns. Players alternate dropping a piece (x moves first) into a "
       "column numbered 0 to 6; it falls to the lowest empty row. Four of your pieces in a row, column or diagonal "
       "win; a full board is a draw. An action is the number of a column that is not full.",
       true, false, 2});
}

}  // namespace crossmoe::games
