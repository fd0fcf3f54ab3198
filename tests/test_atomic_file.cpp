// write_file_atomically (util/atomic_file): the file is replaced whole, no PATH.tmp is left
// behind, and a file that cannot be made is an Error naming it.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "temp_dir.hpp"
#include "util/atomic_file.hpp"
#include "util/error.hpp"

namespace crossmoe {
namespace {

std::string contents(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(AtomicFile, ReplacesTheFileWholeAndLeavesNoTemporary) {
  const auto path = testing_paths::temp_path("atomic_file");
  std::ofstream(path) << "an older and longer content\n";
  write_file_atomically(path, [](std::ostream& out) { out << "new\n" << std::string(1, '\0') << "bytes"; });
  EXPECT_EQ(contents(path), std::string("new\n") + '\0' + "bytes");
  EXPECT_FALSE(std::filesystem::exists(path.string() + ".tmp"));
  std::filesystem::remove(path);

  const auto missing = path / "no" / "such" / "dir.txt";
  try {
    write_file_atomically(missing, [](std::ostream& out) { out << "x"; });
    FAIL() << "wrote into a missing directory";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot write " + missing.string() + ".tmp"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace crossmoe
