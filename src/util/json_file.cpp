#include "util/json_file.hpp"

#include <fstream>

#include "util/atomic_file.hpp"
#include "util/error.hpp"

namespace crossmoe {

nlohmann::json read_json_file(const std::filesystem::path& path) {
  require_regular_file(path);
  std::ifstream in(path);
  require(in.good(), "cannot open " + path.string());
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + ": invalid JSON: " + json_error_text(e));
  }
}

void write_json_file(const std::filesystem::path& path, const nlohmann::json& value) {
  write_file_atomically(path, [&](std::ostream& out) { out << value.dump(2) << "\n"; });
}

std::string json_error_text(const nlohmann::json::exception& e) {
  const std::string what = e.what();
  const size_t tag_end = what.find("] ");
  return what.rfind("[json.exception.", 0) == 0 && tag_end != std::string::npos ? what.substr(tag_end + 2) : what;
}

}  // namespace crossmoe
