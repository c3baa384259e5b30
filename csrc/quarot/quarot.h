// Facts shared by the QuaRot kernels of every backend (no torch headers: the .cu includes it too).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SYMKERNELS_HD __host__ __device__ __forceinline__
#else
#define SYMKERNELS_HD inline
#endif

namespace symkernels::quarot {

constexpr int kQMin = -8;
constexpr int kQMax = 7;

// q = clamp(round_half_even(x / scale), −8, 7); NaN (amax = 0, or NaN/inf in the row) maps to 0 and the
// scale carries it. Division, not a multiply by 1/scale, so every backend gets the correctly rounded
// quotient the reference computes. Clamping before rounding is the same as after (integer bounds).
SYMKERNELS_HD int8_t quantize_value(float x, float scale) {
  float v = x / scale;
  if (!(v == v)) return 0;
  v = v < float(kQMin) ? float(kQMin) : (v > float(kQMax) ? float(kQMax) : v);
#if defined(__CUDA_ARCH__)
  return static_cast<int8_t>(__float2int_rn(v));  // round half to even
#else
  return static_cast<int8_t>(std::nearbyint(v));  // default FE_TONEAREST: round half to even
#endif
}

SYMKERNELS_HD uint8_t pack_pair(int8_t even, int8_t odd) {
  return static_cast<uint8_t>((even & 0xF) | ((odd & 0xF) << 4));
}

// Sign-extend the low / high nibble of a packed byte.
SYMKERNELS_HD int8_t low_nibble(uint8_t b) { return static_cast<int8_t>(static_cast<int8_t>(b << 4) >> 4); }
SYMKERNELS_HD int8_t high_nibble(uint8_t b) { return static_cast<int8_t>(static_cast<int8_t>(b) >> 4); }

}  // namespace symkernels::quarot
