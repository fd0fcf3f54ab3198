#pragma once
// The comma-separated logs that runs write (metrics.csv and the like): plain cells, no quoting.
#include <sstream>
#include <string>
#include <vector>

namespace crossmoe {

// The cells of one line split at commas; a trailing empty cell is dropped (as std::getline does).
inline std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> cells;
  std::stringstream in(line);
  for (std::string cell; std::getline(in, cell, ',');) cells.push_back(cell);
  return cells;
}

}  // namespace crossmoe
