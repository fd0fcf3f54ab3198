#pragma once
// Rounding a count up to a multiple (buffer sizes to pages, batch shapes to buckets).
#include <type_traits>

namespace crossmoe {

// The smallest multiple of `multiple` (positive) that is at least `n` (not negative).
template <class Int>
constexpr Int round_up(Int n, std::type_identity_t<Int> multiple) {
  static_assert(std::is_integral_v<Int>);
  return (n + multiple - 1) / multiple * multiple;
}

}  // namespace crossmoe
