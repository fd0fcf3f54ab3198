#pragma once
// Opening a model file that is about to be mapped: the checks the safetensors and GGUF readers share.
#include <cstddef>
#include <filesystem>
#include <string>

namespace crossmoe {

// Opens `path` read-only and returns its descriptor and size, or throws Error naming `label` when it
// cannot be opened, is not a regular file (a pipe, socket, device or directory), or is shorter than
// `min_size` bytes (the `format`'s header). A FIFO never blocks the open.
int open_regular_file(const std::filesystem::path& path, const std::string& label, size_t min_size,
                      const std::string& format, size_t& size);

}  // namespace crossmoe
