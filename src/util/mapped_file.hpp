#pragma once
// A model file opened read-only and mapped whole: the checks and the mapping the safetensors and
// GGUF readers share.
#include <cstddef>
#include <filesystem>
#include <string>

namespace crossmoe {

class MappedFile {
 public:
  MappedFile() = default;
  // Opens and maps `path`; throws Error naming `label` when it cannot be opened or mapped, is not
  // a regular file (a pipe, socket, device or directory), or is shorter than `min_size` bytes (the
  // `format`'s header). A FIFO never blocks the open.
  MappedFile(const std::filesystem::path& path, const std::string& label, size_t min_size, const std::string& format);
  MappedFile(MappedFile&& other) noexcept;             // leaves `other` closed
  MappedFile& operator=(MappedFile&& other) noexcept;  // closes what this held
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  // The file's bytes, null once unmap() ran (or when closed).
  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  // The descriptor, open while this lives (for reads that bypass the mapping), -1 when closed.
  int fd() const { return fd_; }
  // Drops the mapping and keeps the descriptor.
  void unmap();

 private:
  int fd_ = -1;
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace crossmoe
