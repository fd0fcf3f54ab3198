#include "torch_build.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "util/error.hpp"

namespace crossmoe::cli {

namespace {

std::vector<char*> command_line;  // argv, ending with its null pointer

std::filesystem::path torch_build_path() {
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::path() : self.parent_path() / "crossmoe-torch";
}

}  // namespace

void remember_command_line(int argc, char** argv) { command_line.assign(argv, argv + argc + 1); }

void run_in_torch_build() {
  const std::filesystem::path path = torch_build_path();
  if (path.empty() || access(path.c_str(), X_OK) != 0 || command_line.empty()) return;
  execv(path.c_str(), command_line.data());
  throw Error("cannot start " + path.string() + ": " + std::strerror(errno));
}

void require_torch_build(const std::string& what) {
  run_in_torch_build();
  throw Error(what + " needs libtorch, and there is no crossmoe-torch beside this crossmoe: install libtorch-dev "
                     "(scripts/setup.sh does) and rebuild");
}

}  // namespace crossmoe::cli
