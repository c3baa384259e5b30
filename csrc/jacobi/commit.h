// The Jacobi solver's per-element convergence test, shared by the commit ops (jacobi_commit_cpu.cpp,
// jacobi_sample_commit_cpu.cpp) so that both report the same residual: that of solver._row_residual with
// rtol = 0.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

namespace symkernels::jacobi {

// The value's bits as an unsigned integer of its size: "changed" is a bitwise test (−0 vs +0 changed, a NaN
// equal to itself).
template <typename T>
inline auto bits_of(T v) {
  using U = std::conditional_t<sizeof(T) == 8, uint64_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint16_t>>;
  static_assert(sizeof(T) == sizeof(U));
  U u;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}

// How far a value moved when an iteration replaced `old` by `nw`: 0 where the bits are equal (an exact
// inf/NaN of the true solution has not moved), inf where a moved value is non-finite, else |nw − old| rounded
// in T (the tensor-op path's arithmetic), held in float (double for double: exact either way).
//
// Returned as the bits of that amount: an amount is never negative or NaN, so its bits, read as an unsigned
// integer, order as the amounts do, and a residual over many elements is an integer max. All of it is integer
// masks, no branches or floating-point selects: GCC vectorizes the residual loop only so (2× faster on a
// sampler's commit), and whether a value moved is data-dependent per element, which a branch would mispredict.
template <typename T>
using MovedAmount = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
inline auto moved_bits(T old, T nw) {
  using Amount = MovedAmount<T>;
  using Bits = decltype(bits_of(Amount{}));
  constexpr Bits kMagnitude = ~Bits{0} >> 1;  // all but the sign bit
  const Bits inf = bits_of(std::numeric_limits<Amount>::infinity());
  const Bits a = bits_of(static_cast<Amount>(nw)) & kMagnitude, b = bits_of(static_cast<Amount>(old)) & kMagnitude;
  const Bits delta = bits_of(static_cast<Amount>(T(nw - old))) & kMagnitude;
  const Bits non_finite = -Bits((a >= inf) | (b >= inf));  // all ones where either is inf or NaN
  const Bits same = -Bits(bits_of(old) == bits_of(nw));
  return ((delta & ~non_finite) | (inf & non_finite)) & ~same;
}

// The residual of `count` elements: the largest moved amount (0 for none), as a double.
template <typename T>
inline double max_moved(const T* old, const T* nw, int64_t count) {
  decltype(moved_bits(T{}, T{})) most = 0;
  for (int64_t k = 0; k < count; ++k) most = std::max(most, moved_bits(old[k], nw[k]));
  MovedAmount<T> amount;
  std::memcpy(&amount, &most, sizeof(amount));
  return amount;
}

}  // namespace symkernels::jacobi
