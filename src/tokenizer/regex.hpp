#pragma once
// A PCRE2 pattern compiled for UTF-8 with Unicode properties (\p{L}, \s over all of Unicode)
// and JIT, as pre-tokenizer patterns need. One Regex serves one thread at a time.
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace crossmoe {

class Regex {
 public:
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Non-overlapping matches, left to right, as [begin, end) byte offsets. Empty matches are skipped.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

 private:
  void* code_ = nullptr;
  void* match_data_ = nullptr;
};

}  // namespace crossmoe
