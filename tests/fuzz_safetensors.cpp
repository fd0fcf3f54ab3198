// Thousands of mutated safetensors images through the parser, built with ASan and UBSan: each
// must either parse (and then every tensor's bytes lie inside the image) or raise Error.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>

#include "model/safetensors.hpp"
#include "util/error.hpp"

using namespace crossmoe;

namespace {

std::string image(const std::string& header, size_t data_bytes) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = char((uint64_t(header.size()) >> (8 * i)) & 0xff);
  return s + header + std::string(data_bytes, '\x11');
}

const std::string kValid =
    R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
    R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]},"c":{"dtype":"F16","shape":[2,2],"data_offsets":[32,40]}})";

// Replacements that push values to the edges a parser gets wrong.
const char* kTokens[] = {"0", "-1", "18446744073709551615", "9223372036854775807", "4294967296", "1e308",
                         "[]", "{}", "null", "\"F64\"", "\"I8\"", "[1,2,3,4,5,6,7,8,9]", "\"", ",", "]", "}",
                         "[0,40]", "[40,0]", "[-8,8]", "1.5", "true", "\"\\u0000\""};

void check(const std::string& bytes) {
  // An exact-size heap copy, so any read past the end is caught by AddressSanitizer.
  std::vector<std::byte> buf(bytes.size());
  if (!bytes.empty()) std::memcpy(buf.data(), bytes.data(), bytes.size());
  try {
    SafetensorsFile f(buf.data(), buf.size(), "fuzz");
    unsigned sum = 0;
    for (const auto& [name, t] : f.tensors())
      for (size_t i = 0; i < t.nbytes; ++i) sum += std::to_integer<unsigned>(t.data[i]);
    (void)sum;
  } catch (const Error&) {
  }
}

TEST(FuzzSafetensors, ValidImageParses) {
  const std::string bytes = image(kValid, 40);
  std::vector<std::byte> buf(bytes.size());
  if (!bytes.empty()) std::memcpy(buf.data(), bytes.data(), bytes.size());
  EXPECT_EQ(SafetensorsFile(buf.data(), buf.size(), "valid").tensors().size(), 3u);
}

TEST(FuzzSafetensors, MutatedHeadersNeverCrash) {
  std::mt19937_64 rng(12345);
  const std::string base = image(kValid, 40);
  int rejected = 0;
  constexpr int kCases = 20000;
  for (int i = 0; i < kCases; ++i) {
    std::string s = base;
    const int mutations = 1 + int(rng() % 4);
    for (int m = 0; m < mutations; ++m) {
      if (s.empty()) s.push_back(char(rng()));
      switch (rng() % 6) {
        case 0:  // flip a byte anywhere
          s[rng() % s.size()] ^= char(1 + rng() % 255);
          break;
        case 1: {  // splice a token into the header
          const size_t at = 8 + rng() % kValid.size();
          const size_t len = rng() % 6;
          s.replace(std::min(at, s.size()), len, kTokens[rng() % std::size(kTokens)]);
          break;
        }
        case 2:  // truncate
          s.resize(rng() % s.size());
          break;
        case 3: {  // change the header length
          const uint64_t n = rng() % 3 == 0 ? rng() : rng() % (s.size() + 16);
          for (int b = 0; b < 8 && b < int(s.size()); ++b) s[b] = char((n >> (8 * b)) & 0xff);
          break;
        }
        case 4:  // append bytes
          s.append(rng() % 16, char(rng()));
          break;
        default: {  // change a digit
          const size_t at = s.find_first_of("0123456789", 8 + rng() % kValid.size());
          if (at != std::string::npos) s[at] = char('0' + rng() % 10);
        }
      }
    }
    std::vector<std::byte> buf(s.size());
    if (!s.empty()) std::memcpy(buf.data(), s.data(), s.size());
    try {
      SafetensorsFile f(buf.data(), buf.size(), "fuzz");
      for (const auto& [name, t] : f.tensors()) {
        ASSERT_GE(t.data, buf.data());
        ASSERT_LE(t.data + t.nbytes, buf.data() + buf.size());
      }
    } catch (const Error&) {
      ++rejected;
    }
    check(s);
  }
  // Most mutations must be caught; the rest parse into in-bounds tensors (checked above).
  EXPECT_GT(rejected, kCases / 2);
}

}  // namespace
