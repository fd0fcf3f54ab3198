#include "util/error.hpp"

namespace crossmoe {

void require(bool cond, const std::string& message) {
  if (!cond) throw Error(message);
}

void require_regular_file(const std::filesystem::path& path) {
  using std::filesystem::file_type;
  std::error_code ec;
  const file_type type = std::filesystem::status(path, ec).type();
  if (type == file_type::regular) return;
  const char* problem = type == file_type::not_found ? "no such file"
                        : type == file_type::directory ? "a directory, expected a file"
                        : ec ? "cannot read its status"
                             : "not a regular file (a pipe, socket or device)";
  throw Error(path.string() + ": " + problem);
}

}  // namespace crossmoe
