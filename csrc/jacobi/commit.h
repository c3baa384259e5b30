// The Jacobi solver's per-element convergence test, shared by the commit ops (jacobi_commit_cpu.cpp,
// jacobi_sample_commit_cpu.cpp) so that both report the same residual: that of solver._row_residual with
// rtol = 0.
#pragma once

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
// in T (the tensor-op path's arithmetic). Written as selects, without branches: whether a value moved is
// data-dependent per element, which a branch would mispredict.
template <typename T>
inline double moved_by(T old, T nw) {
  const double a = static_cast<double>(nw), b = static_cast<double>(old);
  const double delta = std::abs(static_cast<double>(T(nw - old)));
  const double moved = std::isfinite(a) && std::isfinite(b) ? delta : std::numeric_limits<double>::infinity();
  return bits_of(old) == bits_of(nw) ? 0.0 : moved;
}

}  // namespace symkernels::jacobi
