#include "util/error.hpp"

namespace crossmoe {

void require(bool cond, const std::string& message) {
  if (!cond) throw Error(message);
}

}  // namespace crossmoe
