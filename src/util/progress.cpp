#include "util/progress.hpp"

#include <cstdio>

namespace crossmoe {

void log_info(const std::string& line) {
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

}  // namespace crossmoe
