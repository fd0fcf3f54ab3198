// MappedFile (util/mapped_file): the bytes of the file, a descriptor that outlives unmap(), moves
// that hand both over and close them once. The refusals (missing file, FIFO, too short) are tested
// through the readers that use it (Safetensors, CliErrors).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "temp_dir.hpp"
#include "util/error.hpp"
#include "util/mapped_file.hpp"

namespace crossmoe {
namespace {

bool is_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

bool is_mapped(const std::byte* p) {
  const long page = ::sysconf(_SC_PAGESIZE);
  unsigned char resident = 0;
  void* base = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(p) / page * page);
  return ::mincore(base, 1, &resident) == 0;
}

TEST(MappedFile, BytesDescriptorUnmapAndMoves) {
  const auto path = testing_paths::temp_path("mapped_file");
  const std::string text = "GGUF and then some bytes";
  std::ofstream(path) << text;

  MappedFile a(path, "the test file", 4, "test");
  ASSERT_EQ(a.size(), text.size());
  EXPECT_EQ(std::memcmp(a.data(), text.data(), text.size()), 0);
  const int fd = a.fd();
  const std::byte* bytes = a.data();
  char first = 0;
  ASSERT_EQ(::pread(fd, &first, 1, 0), 1);
  EXPECT_EQ(first, 'G');

  MappedFile b(std::move(a));
  EXPECT_EQ(a.fd(), -1);
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(b.fd(), fd);
  EXPECT_EQ(b.data(), bytes);

  b.unmap();  // the descriptor stays for reads past the mapping
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_FALSE(is_mapped(bytes));
  EXPECT_TRUE(is_open(fd));

  b = MappedFile();  // closes it
  EXPECT_FALSE(is_open(fd));
  std::filesystem::remove(path);

  EXPECT_THROW(MappedFile(path, "the test file", 4, "test"), Error);  // gone
}

}  // namespace
}  // namespace crossmoe
