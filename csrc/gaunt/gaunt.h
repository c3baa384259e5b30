// Facts shared by the Gaunt kernels of every backend. No torch headers: the .cu includes it too.
#pragma once

#include <cstdint>

namespace symkernels::gaunt {

// Degrees up to 32 per input, i.e. (32+1)^2 = 1089 coefficients; the output holds at most 2*32.
// (The Python table generator, symkernels/gaunt/coefficients.py, has the same MAX_L.)
constexpr int kMaxL = 32;

// The sparse table is sorted by output index so a kernel keeps one accumulator per run of entries;
// any order is still correct (runs are flushed with +=), only slower.
struct PathEntry {
  int32_t i1, i2, i3;
};

}  // namespace symkernels::gaunt
