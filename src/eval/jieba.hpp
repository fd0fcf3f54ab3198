#pragma once
// Chinese word segmentation exactly as Python jieba's default (precise) mode cuts:
// jieba.cut(text, cut_all=False, HMM=True), on jieba's own dictionary and HMM tables.
//   - the text is split into runs of [\u4E00-\u9FD5a-zA-Z0-9+#&._%-] and the rest; the rest
//     yields whitespace runs ("\r\n" or one space character) and single characters;
//   - a run is cut along the most probable route through the DAG of dictionary words
//     (log frequency / total), ties to the longer word;
//   - consecutive single characters that are not a dictionary word go to the HMM (BMES
//     Viterbi), which finds unknown words.
// Files: jieba's dict.txt ("word freq tag" lines) and its finalseg tables as JSON
// ({"start": {...}, "trans": {...}, "emit": {...}}), which scripts/setup.sh writes from
// Debian's python3-jieba.
#include <filesystem>
#include <string>
#include <unordered_map>
#include <vector>

namespace crossmoe::eval {

class Jieba {
 public:
  Jieba(const std::filesystem::path& dict_txt, const std::filesystem::path& hmm_json);
  std::vector<std::string> cut(const std::string& text) const;  // UTF-8 in, UTF-8 words out

 private:
  void cut_run(const std::u32string& run, std::vector<std::u32string>& out) const;
  void cut_unknown(const std::u32string& buf, std::vector<std::u32string>& out) const;
  void viterbi(const std::u32string& han, std::vector<std::u32string>& out) const;
  long long freq(const std::u32string& word) const;  // -1 when not even a prefix

  std::unordered_map<std::u32string, long long> freq_;  // words and, with 0, their prefixes
  double log_total_ = 0;
  double start_[4] = {};
  double trans_[4][4] = {};
  std::unordered_map<char32_t, double> emit_[4];
};

}  // namespace crossmoe::eval
