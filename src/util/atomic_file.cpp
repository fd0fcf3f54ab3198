#include "util/atomic_file.hpp"

#include <fstream>
#include <string>
#include <system_error>

#include "util/error.hpp"

namespace crossmoe {

void write_file_atomically(const std::filesystem::path& path, const std::function<void(std::ostream&)>& write) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    require(out.good(), "cannot write " + tmp.string());
    write(out);
    out.flush();
    require(out.good(), "failed writing " + tmp.string());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  require(!ec, "cannot write " + path.string() + ": " + ec.message());
}

}  // namespace crossmoe
