#include "util/json_file.hpp"

#include <fstream>

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
  // Written beside and renamed into place: a reader or a kill never sees half a file.
  const std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp);
    require(out.good(), "cannot write " + path.string());
    out << value.dump(2) << "\n";
    out.flush();
    require(out.good(), "failed writing " + path.string());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  require(!ec, "cannot write " + path.string() + ": " + ec.message());
}

std::string json_error_text(const nlohmann::json::exception& e) {
  const std::string what = e.what();
  const size_t tag_end = what.find("] ");
  return what.rfind("[json.exception.", 0) == 0 && tag_end != std::string::npos ? what.substr(tag_end + 2) : what;
}

}  // namespace crossmoe
