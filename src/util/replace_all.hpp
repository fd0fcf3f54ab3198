#pragma once
// Replacing a string's every occurrence of another (tokenizer normalizers and decoders, the games'
// answer text, generated samples).
#include <string>

namespace crossmoe {

// `s` with each occurrence of `from` replaced by `to`, found left to right without overlaps in `s`
// as it was (a `to` that holds `from` is not replaced again). An empty `from` changes nothing.
inline std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  std::string out;
  size_t at = 0;
  for (size_t hit; (hit = s.find(from, at)) != std::string::npos; at = hit + from.size()) out.append(s, at, hit - at) += to;
  return out.append(s, at);
}

}  // namespace crossmoe
