#include "util/json_file.hpp"

#include <fstream>

#include "util/error.hpp"

namespace crossmoe {

nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  require(in.good(), "cannot open " + path.string());
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + ": invalid JSON: " + e.what());
  }
}

void write_json_file(const std::filesystem::path& path, const nlohmann::json& value) {
  std::ofstream out(path);
  require(out.good(), "cannot write " + path.string());
  out << value.dump(2) << "\n";
  require(out.good(), "failed writing " + path.string());
}

}  // namespace crossmoe
