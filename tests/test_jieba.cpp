// Chinese segmentation against Python jieba (Debian python3-jieba): 3,000 real sentences and
// hand-picked mixed cases, goldens made by fixtures/make_jieba_goldens.py.
#include <gtest/gtest.h>

#include <filesystem>

#include "eval/jieba.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

using namespace crossmoe;

namespace {

TEST(Jieba, MatchesPythonJiebaPreciseMode) {
  const std::filesystem::path dir = CROSSMOE_JIEBA_DIR;
  ASSERT_TRUE(std::filesystem::exists(dir / "dict.txt")) << dir << " is missing: run scripts/setup.sh";
  const eval::Jieba jieba(dir / "dict.txt", dir / "hmm.json");
  const auto goldens = read_json_file(std::string(CROSSMOE_FIXTURES) + "/jieba_goldens.json");
  ASSERT_GT(goldens.size(), 3000u);
  int mismatches = 0;
  for (const auto& g : goldens) {
    const auto expected = g[1].get<std::vector<std::string>>();
    const auto got = jieba.cut(g[0].get<std::string>());
    if (got != expected && ++mismatches <= 5) ADD_FAILURE() << g[0].get<std::string>();
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(Jieba, MissingFilesAreErrors) {
  EXPECT_THROW(eval::Jieba("/nonexistent/dict.txt", "/nonexistent/hmm.json"), Error);
}

}  // namespace
