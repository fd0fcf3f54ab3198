#include "util/regular_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/error.hpp"

namespace crossmoe {

int open_regular_file(const std::filesystem::path& path, const std::string& label, size_t min_size,
                      const std::string& format, size_t& size) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever; the fstat
  // below then refuses it. A regular file ignores the flag.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  require(fd >= 0, "cannot open " + label + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(label + ": not a regular file (a pipe, socket, device or directory)");
  }
  size = static_cast<size_t>(st.st_size);
  if (size < min_size) {
    ::close(fd);
    throw Error(label + ": file too short for a " + format + " header (" + std::to_string(size) + " bytes)");
  }
  return fd;
}

}  // namespace crossmoe
