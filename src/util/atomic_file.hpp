#pragma once
// Files written whole or not at all: the bytes go to PATH.tmp, which is then renamed over PATH, so
// that a reader (or a resume after a kill) never sees half a file.
#include <filesystem>
#include <functional>
#include <ostream>

namespace crossmoe {

// Calls `write` on a binary stream of PATH.tmp and renames it over `path`; throws Error naming the
// file when it cannot be created, written or renamed.
void write_file_atomically(const std::filesystem::path& path, const std::function<void(std::ostream&)>& write);

}  // namespace crossmoe
