#include "train/corpus.hpp"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <iterator>
#include <sstream>

#include "util/error.hpp"

namespace crossmoe::train {

std::string strip_brown_tags(const std::string& tagged) {
  std::string out;
  std::istringstream lines(tagged);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    std::string sentence;
    for (std::string w; words >> w;) {
      const size_t slash = w.rfind('/');
      std::string word = slash == std::string::npos || slash == 0 ? w : w.substr(0, slash);
      if (word == "``" || word == "''") word = "\"";
      sentence += (sentence.empty() ? "" : " ") + word;
    }
    if (!sentence.empty()) out += sentence + "\n";
  }
  return out;
}

std::vector<Document> read_brown_corpus(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  require(fs::is_directory(dir), "Brown corpus directory " + dir.string() + " does not exist");
  std::vector<Document> docs;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    // Documents are named c + category letter + two digits (ca01 ... cr09).
    if (name.size() != 4 || name[0] != 'c' || name[1] < 'a' || name[1] > 'r' || !std::isdigit(name[2]) ||
        !std::isdigit(name[3]))
      continue;
    std::ifstream in(entry.path(), std::ios::binary);
    docs.push_back({name, strip_brown_tags(std::string((std::istreambuf_iterator<char>(in)), {}))});
  }
  require(!docs.empty(), "no Brown corpus documents (ca01 ... cr09) in " + dir.string());
  std::sort(docs.begin(), docs.end(), [](const Document& a, const Document& b) { return a.name < b.name; });
  return docs;
}

TokenSplit tokenize_split(const std::vector<Document>& docs, Tokenizer& tokenizer, int validation_every, int eos) {
  require(validation_every >= 2, "validation_every must be at least 2");
  require(eos >= 0, "an end-of-text token is needed between documents");
  TokenSplit split;
  for (size_t i = 0; i < docs.size(); ++i) {
    const bool held_out = (i + 1) % size_t(validation_every) == 0;
    auto& target = held_out ? split.validation : split.train;
    for (int id : tokenizer.encode(docs[i].text)) target.push_back(uint32_t(id));
    target.push_back(uint32_t(eos));
    (held_out ? split.validation_documents : split.train_documents)++;
  }
  return split;
}

void write_tokens(const std::filesystem::path& path, const std::vector<uint32_t>& tokens) {
  const auto tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    require(out.good(), "cannot write " + tmp);
    for (uint32_t t : tokens) {
      const char bytes[4] = {char(t & 0xff), char((t >> 8) & 0xff), char((t >> 16) & 0xff), char(t >> 24)};
      out.write(bytes, 4);
    }
    require(out.good(), "failed writing " + tmp);
  }
  std::filesystem::rename(tmp, path);
}

std::vector<uint32_t> read_tokens(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  require(in.good(), "cannot open " + path.string());
  const std::string bytes((std::istreambuf_iterator<char>(in)), {});
  require(bytes.size() % 4 == 0, path.string() + ": size is not a multiple of 4 bytes");
  std::vector<uint32_t> tokens(bytes.size() / 4);
  for (size_t i = 0; i < tokens.size(); ++i) {
    const auto b = [&](size_t k) { return uint32_t(static_cast<unsigned char>(bytes[4 * i + k])); };
    tokens[i] = b(0) | b(1) << 8 | b(2) << 16 | b(3) << 24;
  }
  return tokens;
}

}  // namespace crossmoe::train
