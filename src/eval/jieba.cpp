#include "eval/jieba.hpp"

#include <utf8proc.h>

#include <array>
#include <cmath>
#include <fstream>

#include "tokenizer/unicode.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

namespace crossmoe::eval {

namespace {

constexpr double kMinFloat = -3.14e100;  // jieba's stand-in for log(0)
enum State { B = 0, E = 1, M = 2, S = 3 };  // in jieba's tie-break order: max() prefers later letters
const char kStateNames[] = "BEMS";

bool is_han_run_char(char32_t c) {  // re_han_default
  return (c >= 0x4E00 && c <= 0x9FD5) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         c == '+' || c == '#' || c == '&' || c == '.' || c == '_' || c == '%' || c == '-';
}

bool is_ascii_alnum(char32_t c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

bool is_unicode_digit(char32_t c) {  // re's \d on str: Unicode decimal digits
  return utf8proc_category(utf8proc_int32_t(c)) == UTF8PROC_CATEGORY_ND;
}

}  // namespace

Jieba::Jieba(const std::filesystem::path& dict_txt, const std::filesystem::path& hmm_json) {
  std::ifstream in(dict_txt);
  require(in.good(), "cannot open the jieba dictionary " + dict_txt.string());
  long long total = 0;
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    const size_t b = line.find_first_not_of(" \t\r\n"), e = line.find_last_not_of(" \t\r\n");
    if (b == std::string::npos) continue;
    line = line.substr(b, e - b + 1);
    const size_t sp = line.find(' ');
    require(sp != std::string::npos, dict_txt.string() + ":" + std::to_string(lineno) + ": expected 'word freq'");
    const size_t sp2 = line.find(' ', sp + 1);
    const std::u32string word = unicode::to_utf32(line.substr(0, sp));
    long long f = 0;
    try {
      f = std::stoll(line.substr(sp + 1, sp2 == std::string::npos ? std::string::npos : sp2 - sp - 1));
    } catch (...) {
      throw Error(dict_txt.string() + ":" + std::to_string(lineno) + ": bad frequency");
    }
    freq_[word] = f;
    total += f;
    for (size_t k = 1; k < word.size(); ++k) freq_.try_emplace(word.substr(0, k), 0);
  }
  require(total > 0, dict_txt.string() + " holds no words");
  log_total_ = std::log(double(total));

  const nlohmann::json hmm = read_json_file(hmm_json);
  for (int s = 0; s < 4; ++s) {
    const std::string name(1, kStateNames[s]);
    start_[s] = hmm.at("start").at(name).get<double>();
    for (int t = 0; t < 4; ++t) {
      const auto& row = hmm.at("trans").at(name);
      const std::string to(1, kStateNames[t]);
      trans_[s][t] = row.contains(to) ? row[to].get<double>() : kMinFloat;
    }
    for (const auto& [ch, p] : hmm.at("emit").at(name).items()) {
      const std::u32string c = unicode::to_utf32(ch);
      if (c.size() == 1) emit_[s][c[0]] = p.get<double>();
    }
  }
}

long long Jieba::freq(const std::u32string& word) const {
  auto it = freq_.find(word);
  return it == freq_.end() ? -1 : it->second;
}

std::vector<std::string> Jieba::cut(const std::string& text) const {
  const std::u32string s = unicode::to_utf32(text);
  std::vector<std::u32string> words;
  for (size_t i = 0; i < s.size();) {
    size_t j = i;
    if (is_han_run_char(s[i])) {
      while (j < s.size() && is_han_run_char(s[j])) ++j;
      cut_run(s.substr(i, j - i), words);
    } else {
      while (j < s.size() && !is_han_run_char(s[j])) ++j;
      // jieba splits these at "\r\n" and whitespace (re_skip) and yields the rest character by
      // character: so every character stands alone, except that "\r\n" stays together.
      for (size_t k = i; k < j;) {
        if (s[k] == '\r' && k + 1 < j && s[k + 1] == '\n') {
          words.push_back(U"\r\n");
          k += 2;
        } else {
          words.push_back(s.substr(k, 1));
          ++k;
        }
      }
    }
    i = j;
  }
  std::vector<std::string> out;
  out.reserve(words.size());
  for (const auto& w : words) out.push_back(unicode::to_utf8(w));
  return out;
}

void Jieba::cut_run(const std::u32string& run, std::vector<std::u32string>& out) const {
  const int n = int(run.size());
  // DAG: for each start, the ends of dictionary words (frequency > 0) beginning there.
  std::vector<std::vector<int>> dag(static_cast<size_t>(n));
  for (int k = 0; k < n; ++k) {
    for (int i = k; i < n; ++i) {
      const long long f = freq(run.substr(size_t(k), size_t(i - k + 1)));
      if (f < 0) break;
      if (f > 0) dag[size_t(k)].push_back(i);
    }
    if (dag[size_t(k)].empty()) dag[size_t(k)].push_back(k);
  }
  // Best route from the end: max over (log prob, end), ties to the larger end.
  std::vector<std::pair<double, int>> route(size_t(n) + 1, {0.0, 0});
  for (int idx = n - 1; idx >= 0; --idx) {
    std::pair<double, int> best{-INFINITY, -1};
    for (int x : dag[size_t(idx)]) {
      const long long f = freq(run.substr(size_t(idx), size_t(x - idx + 1)));
      const std::pair<double, int> cand{std::log(double(f > 0 ? f : 1)) - log_total_ + route[size_t(x) + 1].first, x};
      if (cand > best) best = cand;
    }
    route[size_t(idx)] = best;
  }
  std::u32string buf;
  const auto flush = [&] {
    if (buf.empty()) return;
    if (buf.size() == 1) out.push_back(buf);
    else if (freq(buf) <= 0) cut_unknown(buf, out);
    else
      for (char32_t c : buf) out.push_back(std::u32string(1, c));
    buf.clear();
  };
  for (int x = 0; x < n;) {
    const int y = route[size_t(x)].second + 1;
    if (y - x == 1) {
      buf += run[size_t(x)];
    } else {
      flush();
      out.push_back(run.substr(size_t(x), size_t(y - x)));
    }
    x = y;
  }
  flush();
}

// jieba.finalseg.cut: Han runs through the HMM; other text split into alphanumeric words
// ([a-zA-Z0-9]+(?:\.\d+)?%?) and what lies between.
void Jieba::cut_unknown(const std::u32string& buf, std::vector<std::u32string>& out) const {
  const auto is_han = [](char32_t c) { return c >= 0x4E00 && c <= 0x9FD5; };
  for (size_t i = 0; i < buf.size();) {
    size_t j = i;
    if (is_han(buf[i])) {
      while (j < buf.size() && is_han(buf[j])) ++j;
      viterbi(buf.substr(i, j - i), out);
      i = j;
      continue;
    }
    while (j < buf.size() && !is_han(buf[j])) ++j;
    const std::u32string blk = buf.substr(i, j - i);
    size_t k = 0, plain = 0;
    while (k < blk.size()) {
      if (!is_ascii_alnum(blk[k])) {
        ++k;
        continue;
      }
      size_t e = k;
      while (e < blk.size() && is_ascii_alnum(blk[e])) ++e;
      if (e + 1 < blk.size() && blk[e] == '.' && is_unicode_digit(blk[e + 1])) {
        e += 1;
        while (e < blk.size() && is_unicode_digit(blk[e])) ++e;
      }
      if (e < blk.size() && blk[e] == '%') ++e;
      if (k > plain) out.push_back(blk.substr(plain, k - plain));
      out.push_back(blk.substr(k, e - k));
      plain = k = e;
    }
    if (plain < blk.size()) out.push_back(blk.substr(plain));
    i = j;
  }
}

void Jieba::viterbi(const std::u32string& obs, std::vector<std::u32string>& out) const {
  static const std::vector<int> kPrev[4] = {{E, S}, {B, M}, {M, B}, {S, E}};  // for B, E, M, S
  const auto emit = [&](int s, char32_t c) {
    auto it = emit_[s].find(c);
    return it == emit_[s].end() ? kMinFloat : it->second;
  };
  const size_t n = obs.size();
  std::vector<std::array<double, 4>> v(n);
  std::vector<std::array<int, 4>> back(n);
  for (int s = 0; s < 4; ++s) v[0][size_t(s)] = start_[s] + emit(s, obs[0]);
  for (size_t t = 1; t < n; ++t)
    for (int y = 0; y < 4; ++y) {
      const double em = emit(y, obs[t]);
      std::pair<double, int> best{-INFINITY, -1};
      for (int y0 : kPrev[y]) {
        const std::pair<double, int> cand{v[t - 1][size_t(y0)] + trans_[y0][y] + em, y0};
        if (cand > best) best = cand;  // ties: the later letter, as Python's max over tuples
      }
      v[t][size_t(y)] = best.first;
      back[t][size_t(y)] = best.second;
    }
  std::pair<double, int> last = std::max(std::pair{v[n - 1][E], int(E)}, std::pair{v[n - 1][S], int(S)});
  std::vector<int> path(n);
  path[n - 1] = last.second;
  for (size_t t = n - 1; t > 0; --t) path[t - 1] = back[t][size_t(path[t])];
  size_t begin = 0, next = 0;
  for (size_t i = 0; i < n; ++i) {
    if (path[i] == B) {
      begin = i;
    } else if (path[i] == E) {
      out.push_back(obs.substr(begin, i - begin + 1));
      next = i + 1;
    } else if (path[i] == S) {
      out.push_back(obs.substr(i, 1));
      next = i + 1;
    }
  }
  if (next < n) out.push_back(obs.substr(next));
}

}  // namespace crossmoe::eval
