#pragma once
// What `crossmoe --version` prints: the version, the git commit it was built from (when the build
// could read one), the kernels built in and the one this CPU uses, and whether the trainer is in.
#include <string>

namespace crossmoe::cli {

std::string version_text();

}  // namespace crossmoe::cli
