// The accumulation type of a kernel's element type: fp32 for fp32/fp16/bf16, fp64 for fp64.
// Host-safe (no device code), so launcher declarations in headers seen by g++ can use it.
#pragma once

namespace symkernels {

template <typename T>
struct AccumulatorOf {
  using type = float;
};
template <>
struct AccumulatorOf<double> {
  using type = double;
};

}  // namespace symkernels
