#pragma once
// A training run's log.csv without its timing columns, for comparing runs row by row.
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace crossmoe::testing_logs {

// Each line's first 8 cells, step to val_ppl (tokens_per_s, comm_s and elapsed_s follow them).
inline std::vector<std::string> log_without_timings(const std::filesystem::path& csv) {
  std::ifstream in(csv);
  std::vector<std::string> rows;
  for (std::string line; std::getline(in, line);) {
    size_t end = 0;
    for (int cell = 0; cell < 8 && end != std::string::npos; ++cell) end = line.find(',', end + (cell > 0));
    rows.push_back(line.substr(0, end));
  }
  return rows;
}

}  // namespace crossmoe::testing_logs
