// Facts shared by the QuaRot kernels of every backend (no torch headers: the .cu includes it too).
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace symkernels::quarot {

constexpr int kQMin = -8;
constexpr int kQMax = 7;

// q = clamp(round_half_even(x / scale), −8, 7) as a float; NaN (amax = 0, or NaN/inf in the row) maps
// to 0 and the scale carries it. Division, not a multiply by 1/scale, so every backend gets the correctly
// rounded quotient the reference computes. Clamping before rounding equals clamping after (integer
// bounds). Rounding: adding 1.5·2^23 leaves no fraction bits, so the FPU's round-to-nearest-even does it;
// exact for |c| ≤ 8, no libm call, and branch-free so the CPU loop vectorizes (compilers keep (c + M) − M
// without -ffast-math). NaN compares false, so it passes the clamp and is replaced at the end.
SYMKERNELS_HD float quantize_code(float x, float scale) {
  const float v = x / scale;
  const float c = v < float(kQMin) ? float(kQMin) : (v > float(kQMax) ? float(kQMax) : v);
  const float r = (c + 12582912.0f) - 12582912.0f;
  return v == v ? r : 0.0f;
}

SYMKERNELS_HD uint8_t pack_pair(int8_t even, int8_t odd) {
  return static_cast<uint8_t>((even & 0xF) | ((odd & 0xF) << 4));
}

// Sign-extend the low / high nibble of a packed byte.
SYMKERNELS_HD int8_t low_nibble(uint8_t b) { return static_cast<int8_t>(static_cast<int8_t>(b << 4) >> 4); }
SYMKERNELS_HD int8_t high_nibble(uint8_t b) { return static_cast<int8_t>(static_cast<int8_t>(b) >> 4); }

}  // namespace symkernels::quarot
