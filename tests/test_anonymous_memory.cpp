// AnonymousMemory (util/anonymous_memory): size and alignment, moves that hand the mapping over
// and unmap it exactly once, first touch, the huge-page advice, the error when the kernel refuses.
// Residency and mapping come from the kernel itself: mincore() answers per page whether it is
// resident, and fails with ENOMEM where nothing is mapped; /proc/self/smaps shows the advice.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "util/anonymous_memory.hpp"
#include "util/error.hpp"

namespace crossmoe {
namespace {

const size_t kPage = size_t(::sysconf(_SC_PAGESIZE));

// Resident pages of [p, p + bytes), or -1 when some of it is not mapped.
long resident_pages(const std::byte* p, size_t bytes) {
  std::vector<unsigned char> v((bytes + kPage - 1) / kPage);
  if (::mincore(const_cast<std::byte*>(p), bytes, v.data()) != 0) return errno == ENOMEM ? -1 : -2;
  long n = 0;
  for (unsigned char c : v) n += c & 1;
  return n;
}

// The fields of the /proc/self/smaps entry whose range holds p ("VmFlags", "THPeligible", ...).
std::string smaps_field(const std::byte* p, const std::string& field) {
  std::ifstream in("/proc/self/smaps");
  const uintptr_t at = reinterpret_cast<uintptr_t>(p);
  bool inside = false;
  for (std::string line; std::getline(in, line);) {
    uintptr_t begin = 0, end = 0;
    char dash = 0;
    std::istringstream range(line);
    if (line.find(':') > line.find(' ') && (range >> std::hex >> begin >> dash >> end) && dash == '-') {
      inside = begin <= at && at < end;
      continue;
    }
    if (inside && line.rfind(field + ":", 0) == 0) return line.substr(field.size() + 1);
  }
  return "";
}

// The transparent huge page mode ("always", "madvise", "never"), or "" without THP.
std::string thp_mode() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string all;
  std::getline(in, all);
  const size_t open = all.find('['), close = all.find(']');
  return open == std::string::npos || close == std::string::npos ? "" : all.substr(open + 1, close - open - 1);
}

long vm_size_kb() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmSize:", 0) == 0) return std::stol(line.substr(7));
  return -1;
}

TEST(AnonymousMemory, SizeAlignmentAndZeros) {
  const AnonymousMemory m(5000, "a test", {});
  ASSERT_FALSE(m.empty());
  EXPECT_EQ(m.size(), 5000u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(m.data()) % kPage, 0u);
  for (size_t i = 0; i < m.size(); ++i) ASSERT_EQ(m.data()[i], std::byte{0}) << i;
  m.as<float>()[1249] = 2.5f;  // the last float of the 5000 bytes
  EXPECT_EQ(m.as<float>()[1249], 2.5f);

  const size_t big = size_t(64) << 20;
  const long before = vm_size_kb();
  const AnonymousMemory aligned(3 * kPage, "a test", {.alignment = big});
  EXPECT_EQ(reinterpret_cast<uintptr_t>(aligned.data()) % big, 0u);
  EXPECT_EQ(resident_pages(aligned.data(), aligned.size()), 0);  // mapped, not touched
  // The slack mapped to find an aligned address is given back: the process grew by about 3
  // pages, not by the 64 MiB of slack.
  EXPECT_LT(vm_size_kb() - before, long(big / 1024 / 4));

  EXPECT_TRUE(AnonymousMemory(0, "a test", {}).empty());
  EXPECT_TRUE(AnonymousMemory().empty());
}

TEST(AnonymousMemory, TouchMakesEveryPageResident) {
  const size_t bytes = 64 * kPage + 100;
  const AnonymousMemory lazy(bytes, "a test", {});
  const AnonymousMemory touched(bytes, "a test", {.touch = true});
  EXPECT_EQ(resident_pages(lazy.data(), bytes), 0);
  EXPECT_EQ(resident_pages(touched.data(), bytes), 65);
}

TEST(AnonymousMemory, MovesHandTheMappingOverAndUnmapItOnce) {
  const size_t bytes = 8 * kPage;
  std::byte* at = nullptr;
  {
    AnonymousMemory a(bytes, "a test", {.touch = true});
    at = a.data();
    a.data()[bytes - 1] = std::byte{7};
    AnonymousMemory b(std::move(a));
    EXPECT_TRUE(a.empty());
    EXPECT_EQ(a.size(), 0u);
    EXPECT_EQ(b.data(), at);
    EXPECT_EQ(b.size(), bytes);
    { AnonymousMemory gone(std::move(b)); }  // unmaps here, once
    EXPECT_EQ(resident_pages(at, bytes), -1);
    EXPECT_TRUE(b.empty());
  }  // a and b, both empty, unmap nothing: mapping the same size again gets a live range
  {
    AnonymousMemory c(bytes, "a test", {.touch = true});
    std::byte* const c_at = c.data();
    AnonymousMemory d(2 * bytes, "a test", {.touch = true});
    std::byte* const d_at = d.data();
    d = std::move(c);  // d's own mapping goes; c's comes over whole
    EXPECT_EQ(resident_pages(d_at, 2 * bytes), -1);
    EXPECT_EQ(d.data(), c_at);
    EXPECT_EQ(resident_pages(c_at, bytes), long(bytes / kPage));
    EXPECT_TRUE(c.empty());
    d = std::move(d);  // self-move keeps it
    EXPECT_EQ(resident_pages(c_at, bytes), long(bytes / kPage));
  }
}

TEST(AnonymousMemory, HugePageAdvice) {
  const std::string mode = thp_mode();
  if (mode.empty()) GTEST_SKIP() << "this kernel has no transparent huge pages to advise";
  const size_t huge = size_t(2) << 20;
  const AnonymousMemory advised(2 * huge, "a test", {.alignment = huge, .huge_pages = true});
  const AnonymousMemory plain(2 * huge, "a test", {.alignment = huge});
  const std::string advised_flags = smaps_field(advised.data(), "VmFlags");
  ASSERT_FALSE(advised_flags.empty()) << "no smaps entry for the mapping";
  EXPECT_NE(advised_flags.find(" hg"), std::string::npos) << advised_flags;
  EXPECT_EQ(smaps_field(plain.data(), "VmFlags").find(" hg"), std::string::npos);
  // Whether the kernel will back a mapping with huge pages follows from the mode and the advice.
  if (mode == "always" || mode == "madvise") {
    EXPECT_NE(smaps_field(advised.data(), "THPeligible").find('1'), std::string::npos);
    if (mode == "madvise") EXPECT_NE(smaps_field(plain.data(), "THPeligible").find('0'), std::string::npos);
  }
}

TEST(AnonymousMemory, RefusalIsAnErrorNamingThePurpose) {
  try {
    const AnonymousMemory m(size_t(1) << 62, "the test's impossible buffer", {});
    FAIL() << "mapped 4 EiB";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot allocate 4611686018427387904 bytes for the test's impossible buffer"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(AnonymousMemory(100, "a test", {.alignment = 3 * kPage}), Error);
}

}  // namespace
}  // namespace crossmoe
