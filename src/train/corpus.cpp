#include "train/corpus.hpp"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <iterator>
#include <sstream>

#include <nlohmann/json.hpp>

#include "util/atomic_file.hpp"
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
      if (word == "``" || word == "''") word = '"';
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

namespace {

bool only_whitespace(const std::string& text) { return text.find_first_not_of(" \t\r\n\f\v") == std::string::npos; }

}  // namespace

std::vector<Document> read_text_documents(const std::vector<std::filesystem::path>& files, TextSplit split,
                                          const std::string& jsonl_field) {
  std::vector<Document> docs;
  for (const auto& file : files) {
    std::ifstream in(file, std::ios::binary);
    require(in.good() && std::filesystem::is_regular_file(file), "cannot open " + file.string());
    const bool jsonl = file.extension() == ".jsonl";
    std::string current;
    int line_number = 0, first_line = 1;
    auto flush = [&](int end_line) {
      if (!only_whitespace(current)) docs.push_back({file.string() + ":" + std::to_string(first_line), current});
      current.clear();
      first_line = end_line + 1;
    };
    for (std::string line; std::getline(in, line);) {
      ++line_number;
      if (jsonl) {
        if (only_whitespace(line)) continue;
        const std::string where = file.string() + ":" + std::to_string(line_number) + ": ";
        nlohmann::json row;
        try {
          row = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception&) {
          throw Error(where + "not a JSON object");
        }
        require(row.is_object() && row.contains(jsonl_field) && row[jsonl_field].is_string(),
                where + "expected a string field \"" + jsonl_field + "\" (choose the field with --text-field)");
        first_line = line_number;
        current = row[jsonl_field].get<std::string>();
        flush(line_number);
      } else if (split == TextSplit::Line) {
        first_line = line_number;
        current = line;
        flush(line_number);
      } else if (split == TextSplit::Paragraph && only_whitespace(line)) {
        flush(line_number);
      } else {
        current += line;
        current += "\n";
      }
    }
    require(!in.bad(), "failed reading " + file.string());
    if (!jsonl) flush(line_number);
  }
  require(!docs.empty(), "no documents in the given text files (all empty?)");
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
  write_file_atomically(path, [&](std::ostream& out) {
    for (uint32_t t : tokens) {
      const char bytes[4] = {char(t & 0xff), char((t >> 8) & 0xff), char((t >> 16) & 0xff), char(t >> 24)};
      out.write(bytes, 4);
    }
  });
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
