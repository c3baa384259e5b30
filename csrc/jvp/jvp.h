// Shared math of the JVP kernels, usable from C++ and CUDA (no torch headers): the counter-based RNG of
// seeded tangents and the activation codes. The spec (and the pure-PyTorch twin that the tests compare
// bit for bit) is in symkernels/jvp/reference.py.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace symkernels::jvp {

enum class Activation : int { kNone = 0, kRelu, kGelu, kGeluTanh, kSilu, kTanh };
enum class Distribution : int { kGaussian = 0, kRademacher = 1 };
// Row-wise duals over the last dim; same order as reference.ROW_KINDS.
enum class RowKind : int { kLayerNorm = 0, kRmsNorm = 1, kSoftmax = 2 };

// lowbias32 (Chris Wellons): a uint32 bijection with low avalanche bias. A template so that the CPU kernel
// applies the very same steps lane-wise to a GCC vector of uint32 (only uint32 lanes are meant: shifts of
// a signed type would differ).
template <typename U32>
SYMKERNELS_HD U32 mix32(U32 x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// Seed -> stream key; the seed is in [0, 2^31) so 2*seed + s fits in 32 bits.
SYMKERNELS_HD uint32_t seed_key(int64_t seed, uint32_t stream) {
  return mix32<uint32_t>(uint32_t(2 * seed) + stream);
}

SYMKERNELS_HD uint32_t seeded_bits(uint32_t index, uint32_t key) {
  return mix32<uint32_t>(mix32<uint32_t>(index + key) ^ key);
}

// One tangent element. fp32 math everywhere, so backends differ at most by the last-ulp differences of
// their log/cos (Gaussian); Rademacher values are bit-identical.
SYMKERNELS_HD float seeded_rademacher(uint32_t index, uint32_t key0) {
  return 1.0f - 2.0f * float(seeded_bits(index, key0) >> 31);
}

SYMKERNELS_HD float seeded_gaussian(uint32_t index, uint32_t key0, uint32_t key1) {
  const uint32_t b0 = seeded_bits(index, key0), b1 = seeded_bits(index, key1);
  const float u1 = float((b0 >> 8) + 1u) * 5.9604644775390625e-08f;  // 2^-24: (0, 1], so log is finite
  const float u2 = float(b1 >> 8) * 5.9604644775390625e-08f;
  return sqrtf(-2.0f * logf(u1)) * cosf(6.283185307179586f * u2);
}

}  // namespace symkernels::jvp
