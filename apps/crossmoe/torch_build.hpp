#pragma once
// The commands that need libtorch run in crossmoe-torch, built beside crossmoe (see CMakeLists.txt:
// loading libtorch costs about a second at every start, which every other command is spared).
#include <string>

namespace crossmoe::cli {

// The arguments crossmoe was started with, for handing them over unchanged.
void remember_command_line(int argc, char** argv);

// Replaces this process with crossmoe-torch and the same arguments (same pid, streams and exit
// code), when it sits beside this executable; returns when there is none.
void run_in_torch_build();

// For a command that cannot run without libtorch: run_in_torch_build(), else an error naming `what`.
[[noreturn]] void require_torch_build(const std::string& what);

}  // namespace crossmoe::cli
