#include "util/anonymous_memory.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>

#include "util/error.hpp"

namespace crossmoe {

AnonymousMemory::AnonymousMemory(size_t bytes, const std::string& purpose, const Options& options) {
  if (bytes == 0) return;
  const size_t page = size_t(::sysconf(_SC_PAGESIZE));
  const size_t alignment = options.alignment > page ? options.alignment : page;
  require((alignment & (alignment - 1)) == 0,
          "cannot allocate " + purpose + ": alignment " + std::to_string(alignment) + " is not a power of two");
  const size_t length = (bytes + page - 1) / page * page;
  // Past the page size, the kernel has no way to ask for an alignment: map the slack too and
  // give back what lies before and after the aligned range.
  const size_t mapped = length + (alignment - page);
  void* m = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED)
    throw Error("cannot allocate " + std::to_string(bytes) + " bytes for " + purpose + ": " + std::strerror(errno));
  std::byte* raw = static_cast<std::byte*>(m);
  const size_t lead = (alignment - reinterpret_cast<uintptr_t>(raw) % alignment) % alignment;
  if (lead > 0) ::munmap(raw, lead);
  if (mapped - lead > length) ::munmap(raw + lead + length, mapped - lead - length);
  data_ = raw + lead;
  size_ = bytes;
  if (options.huge_pages) ::madvise(data_, length, MADV_HUGEPAGE);  // EINVAL without THP: a hint
  if (options.touch) std::memset(data_, 0, bytes);  // reads as zeros already; this faults it in
}

AnonymousMemory::AnonymousMemory(AnonymousMemory&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

AnonymousMemory& AnonymousMemory::operator=(AnonymousMemory&& other) noexcept {
  if (this != &other) {
    if (data_) ::munmap(data_, size_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

AnonymousMemory::~AnonymousMemory() {
  if (data_) ::munmap(data_, size_);
}

}  // namespace crossmoe
