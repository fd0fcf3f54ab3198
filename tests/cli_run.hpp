#pragma once
// Runs the crossmoe binary the way a user's shell does, for the tests of the command line.
#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace crossmoe::testing_cli {

struct Result {
  int code;
  std::string out;
};

// `args` go through the shell, so they may redirect stdin ("< file"); stderr is merged into out,
// or dropped.
inline Result run(const std::string& args, bool merge_stderr = true) {
  const std::string cmd = std::string(CROSSMOE_BIN) + " " + args + (merge_stderr ? " 2>&1" : " 2>/dev/null");
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace crossmoe::testing_cli
