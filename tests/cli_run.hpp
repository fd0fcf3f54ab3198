#pragma once
// Runs the crossmoe binary the way a user's shell does, for the tests of the command line.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace crossmoe::testing_cli {

struct Result {
  int code;  // -1 when the process died of a signal
  std::string out;
};

// Runs a shell command line; its stdout (with whatever redirections the line makes) and exit code.
inline Result run_shell(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// `args` go through the shell, so they may redirect stdin ("< file"); stderr is merged into out,
// or dropped.
inline Result run(const std::string& args, bool merge_stderr = true) {
  return run_shell(std::string(CROSSMOE_BIN) + " " + args + (merge_stderr ? " 2>&1" : " 2>/dev/null"));
}

// Starts crossmoe with these arguments (split at spaces), output to `log`; returns its pid.
inline pid_t spawn(const std::string& args, const std::filesystem::path& log) {
  std::vector<std::string> words{CROSSMOE_BIN};
  std::istringstream in(args);
  for (std::string w; in >> w;) words.push_back(w);
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    std::vector<char*> argv;
    for (auto& w : words) argv.push_back(w.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

// Kills the process with SIGKILL as soon as `ready` holds (polled), and reaps it. True when it
// was killed, false when it had finished first.
inline bool kill_when(pid_t pid, const std::function<bool()>& ready) {
  int status = 0;
  while (!ready()) {
    if (waitpid(pid, &status, WNOHANG) == pid) return false;
    usleep(1000);
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

}  // namespace crossmoe::testing_cli
