#include "util/mapped_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "util/error.hpp"

namespace crossmoe {

MappedFile::MappedFile(const std::filesystem::path& path, const std::string& label, size_t min_size,
                       const std::string& format) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever; the fstat
  // below then refuses it. A regular file ignores the flag.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  require(fd >= 0, "cannot open " + label + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(label + ": not a regular file (a pipe, socket, device or directory)");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < min_size) {
    ::close(fd);
    throw Error(label + ": file too short for a " + format + " header (" + std::to_string(size) + " bytes)");
  }
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) {
    const int err = errno;
    ::close(fd);
    throw Error("cannot map " + label + ": " + std::strerror(err));
  }
  fd_ = fd;
  data_ = static_cast<const std::byte*>(m);
  size_ = size;
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    unmap();
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() {
  unmap();
  if (fd_ >= 0) ::close(fd_);
}

void MappedFile::unmap() {
  if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

}  // namespace crossmoe
