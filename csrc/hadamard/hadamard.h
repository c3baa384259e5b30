// Facts shared by the Hadamard kernels of every backend. No torch headers: the .cu includes it too.
#pragma once

#include <cstdint>

namespace symkernels::hadamard {

// Sizes 2^1 .. 2^15. 2^15 fp32 values (128 KiB) is the most one CUDA block keeps in shared memory
// on Hopper (227 KiB opt-in) with room to spare; the CPU kernel keeps a row within L2.
constexpr int kMinLog2Size = 1;
constexpr int kMaxLog2Size = 15;

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

}  // namespace symkernels::hadamard
